"""Property and bad-input tests for opt_lab.core (the examples live in nbs/00_core.ipynb)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from opt_lab.core import (History, as_generator, as_key, check_finite, check_in_range, check_int, check_positive,
                          check_same_structure, check_shape, flatten_params)
from opt_lab.book.display import sample_mean_explorer, sample_mean_path

shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=1, max_side=4)
leaves = st.one_of(hnp.arrays(np.float32, shapes, elements=st.floats(-1e3, 1e3, width=32, allow_subnormal=False)),
                   hnp.arrays(np.float64, shapes, elements=st.floats(-1e6, 1e6, allow_subnormal=False)))
trees = st.recursive(leaves, lambda sub: st.one_of(st.lists(sub, min_size=1, max_size=3),
                                                   st.dictionaries(st.text("abcdef", min_size=1, max_size=3), sub,
                                                                   min_size=1, max_size=3)), max_leaves=6)


@settings(max_examples=60, deadline=None)
@given(trees, st.integers(0, 3))
def test_flatten_roundtrip_and_batches(tree, batch):
    vec, unflatten = flatten_params(tree)
    leaves_in = jax.tree_util.tree_leaves(tree)
    assert vec.shape == (sum(np.size(l) for l in leaves_in),)
    back = unflatten(vec)
    for a, b in zip(leaves_in, jax.tree_util.tree_leaves(back)):
        assert np.shape(a) == b.shape and np.asarray(a).dtype == b.dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    stacked = unflatten(jnp.stack([vec] * batch)) if batch else None
    if batch:
        for a, b in zip(leaves_in, jax.tree_util.tree_leaves(stacked)): assert b.shape == (batch,) + np.shape(a)


def test_flatten_does_not_mutate_input():
    tree = {"w": np.arange(4.0)}
    vec, unflatten = flatten_params(tree)
    unflatten(vec * 0)
    np.testing.assert_array_equal(tree["w"], np.arange(4.0))


@given(st.integers(0, 2**31 - 1))
@settings(max_examples=25, deadline=None)
def test_seeds_are_reproducible(seed):
    assert np.array_equal(jax.random.key_data(as_key(seed)), jax.random.key_data(as_key(seed)))
    assert as_generator(seed).integers(1 << 30) == as_generator(seed).integers(1 << 30)


def test_none_means_fresh_entropy():
    assert as_generator(None).integers(1 << 62) != as_generator(None).integers(1 << 62)
    assert jax.random.key_data(as_key(None)).shape == (2,)


@pytest.mark.parametrize("bad", [-1, 2.0, "3", True, [1]])
def test_bad_seeds(bad):
    with pytest.raises((ValueError, TypeError), match="seed must be"): as_generator(bad)


@pytest.mark.parametrize("closed,low_in,high_in", [("both", True, True), ("left", True, False),
                                                   ("right", False, True), ("neither", False, False)])
def test_in_range_endpoints(closed, low_in, high_in):
    for value, inside in ((0.0, low_in), (1.0, high_in), (0.5, True), (-0.1, False), (1.1, False)):
        if inside: assert check_in_range("p", value, 0, 1, closed=closed) == value
        else:
            with pytest.raises(ValueError, match=r"^p must be in [\[(]0, 1[\])], got "): check_in_range("p", value, 0, 1, closed=closed)


@pytest.mark.parametrize("check,args,message", [
    (check_positive, ("lr", -1.0), "lr must be > 0 and finite, got -1.0"),
    (check_positive, ("lr", math.inf), "lr must be > 0 and finite, got inf"),
    (check_positive, ("lr", None), "lr must be a real number, got None"),
    (check_positive, ("lr", np.array([1.0, 2.0])), "lr must be a real number"),
    (check_positive, ("lr", jnp.float32(-2)), "lr must be > 0 and finite, got -2.0"),
    (check_int, ("n", np.float64(3.0)), "n must be an integer, got 3.0"),
    (check_int, ("n", -1, 0), "n must be an integer >= 0, got -1"),
    (check_in_range, ("b1", float("nan"), 0, 1), "b1 must be a real number, got nan"),
    (check_in_range, ("b1", 0.5, 0, 1, "open"), "closed must be"),
    (check_shape, ("X", np.zeros((2, 3)), (None, 2)), "X must have shape (any, 2), got (2, 3)"),
    (check_finite, ("g", [np.ones(2), np.array([np.nan])]), "g[1] has 1 non-finite entry (nan) out of 1"),
    (check_finite, ("g", np.array(["a"])), "g must be numeric"),
    (check_same_structure, ("g", (np.ones(2),), [np.ones(2)]), "g must have the structure"),
])
def test_bad_input_messages(check, args, message):
    with pytest.raises(ValueError) as err: check(*args)
    assert message in str(err.value)


def test_checks_pass_traced_values_through():
    f = jax.jit(lambda lr: check_positive("lr", lr) * 2)
    assert float(f(-1.0)) == -2.0  # traced: the value is unknown at trace time, so it is not judged


def test_history_copies_and_frames():
    h, x = History(), jnp.arange(3.0)
    h.record(step=0, x=x, loss=np.float64(2.0))
    h.record(step=1, note="restart")
    assert isinstance(h.rows[0]["loss"], float) and isinstance(h.rows[0]["x"], np.ndarray)
    df = h.to_frame()
    assert df.shape == (2, 4) and df["note"].isna().tolist() == [True, False]
    h.clear()
    assert len(h) == 0 and h.last is None and h.to_frame().empty


def test_explorer_reacts_to_every_control():
    ex = sample_mean_explorer(n=100)
    first = ex.data["running_mean"].copy()
    ex.controls["sigma"].value = 2.5
    np.testing.assert_allclose(ex.data["running_mean"] - 1.0, 2.5 * (first - 1.0))
    ex.controls["n"].value = 300
    assert len(ex.data["k"]) == 300 and len(ex.ax.lines[0].get_xdata()) == 300
    assert ex.values == {"n": 300, "sigma": 2.5, "seed": 0}


def test_sample_mean_path_validates():
    with pytest.raises(ValueError, match="n must be an integer >= 1, got 0"): sample_mean_path(n=0)
    with pytest.raises(ValueError, match="sigma must be > 0"): sample_mean_path(sigma=0.0)
