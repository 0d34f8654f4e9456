"""The stateful Optimizer: checkpoints, the in-place NumPy path against the JAX path, bad input."""
import copy
import json
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from opt_lab.stateful import ALIASES, Optimizer
from opt_lab.sgd import sgd
from opt_lab.transform import power_law

RNG = np.random.default_rng(0)
SHAPES = [(4, 3), (3,), (2, 2)]
GRADS = [[RNG.standard_normal(s) for s in SHAPES] for _ in range(60)]
VALUES = [float(1 + 0.1 * np.sin(k)) for k in range(60)]

CONFIGS = [("sgd", {}), ("sgdm", {}), ("sgdnm", {"learning_rate": 0.05}), ("rmsprop", {}),
           ("rmsprop", {"momentum": 0.9}), ("rmsprop", {"momentum": 0.5, "nesterov": True}), ("adam", {}),
           ("adam", {"b1": 0.0, "b2": 0.99}), ("polyak", {"max_stepsize": 0.1, "momentum": 0.3}),
           ("sgd", {"learning_rate": power_law(0.1, 0.7, 5.0)})]
IDS = [f"{n}-{k}" for k, (n, _) in enumerate(CONFIGS)]


def _params(): return [np.ones(s) for s in SHAPES]


def _run(opt, ks):
    for k in ks: opt.update([g.copy() for g in GRADS[k]], value=VALUES[k])
    return opt


@pytest.mark.parametrize("name,hp", CONFIGS, ids=IDS)
def test_numpy_path_matches_jax_path(name, hp):
    jax_opt = _run(Optimizer(name, _params(), **hp), range(60))
    np_opt = _run(Optimizer(name, _params(), inplace=True, **hp), range(60))
    for a, b in zip(np_opt.params, jax_opt.params):
        assert np.linalg.norm(a - np.asarray(b)) <= 1e-12 * np.linalg.norm(b)


@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("name,hp", CONFIGS, ids=IDS)
def test_checkpoint_round_trip_is_bitwise(name, hp, inplace):
    live = _run(Optimizer(name, _params(), inplace=inplace, **hp), range(30))
    ckpt = live.state_dict()
    frozen = copy.deepcopy(ckpt)
    _run(live, range(30, 60))
    # mutating the live optimizer left the saved dict alone
    for a, b in zip(jax.tree_util.tree_leaves(ckpt), jax.tree_util.tree_leaves(frozen)):
        if not callable(a): np.testing.assert_array_equal(a, b)
    forms = [pickle.loads(pickle.dumps(ckpt))]
    if not any(callable(v) for v in hp.values()): forms.append(json.loads(json.dumps(live.state_dict(as_json=True))))
    for form in forms[:1]:
        restored = Optimizer(name, [np.zeros(s) for s in SHAPES], inplace=inplace, **hp)
        restored.load_state_dict(form)
        _run(restored, range(30, 60))
        assert restored.step == live.step == 60
        for a, b in zip(restored.params, live.params): np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    if len(forms) == 2:  # the JSON form restores the live state exactly too
        restored = Optimizer(name, [np.zeros(s) for s in SHAPES], inplace=inplace, **hp)
        restored.load_state_dict(forms[1])
        for a, b in zip(restored.params, live.params): np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_loading_switches_rmsprop_momentum_on():
    with_momentum = _run(Optimizer("rmsprop", _params(), momentum=0.9), range(10))
    target = Optimizer("rmsprop", _params())  # momentum 0: no buffer
    target.load_state_dict(with_momentum.state_dict())
    assert target.hyperparameters["momentum"] == 0.9
    _run(target, range(10, 20)); _run(with_momentum, range(10, 20))
    for a, b in zip(target.params, with_momentum.params): np.testing.assert_array_equal(a, b)


def test_optax_transform_inside_the_optimizer():
    optax = pytest.importorskip("optax")
    a = _run(Optimizer(optax.adam(1e-3), _params()), range(20))
    b = _run(Optimizer("adam", _params()), range(20))
    for x, y in zip(a.params, b.params): np.testing.assert_allclose(x, y, rtol=1e-12)
    restored = Optimizer(optax.adam(1e-3), _params())
    restored.load_state_dict(a.state_dict())
    np.testing.assert_array_equal(restored.params[0], a.params[0])


def test_params_passed_in_are_not_mutated_on_the_jax_path():
    params = _params()
    _run(Optimizer("adam", params), range(3))
    for p in params: np.testing.assert_array_equal(p, 1.0)


def test_history_and_convergence():
    opt = Optimizer("sgd", np.array([3.0]), learning_rate=0.5, tolerance=1e-6)
    while not opt.check_convergence() and opt.step < 100: opt.update(opt.params, value=0.5 * float(opt.params[0] ** 2))
    df = opt.history.to_frame()
    assert opt.check_convergence() and df.grad_norm.iloc[-1] <= 1e-6 and {"step", "grad_norm", "value"} <= set(df)
    by_value = Optimizer("sgd", np.array([3.0]), learning_rate=0.5, tolerance=1e-9, convergence="value_change")
    assert not by_value.check_convergence()


@pytest.mark.parametrize("call,message", [
    (lambda: Optimizer("adamw", _params()), "optimizer must be one of"),
    (lambda: Optimizer("sgd", _params(), learning_rate=0.0), "learning_rate must be > 0"),
    (lambda: Optimizer("sgdm", _params(), momentum=1.0), "momentum must be in [0, 1), got 1.0"),
    (lambda: Optimizer("rmsprop", _params(), eps=0.0), "eps must be > 0"),
    (lambda: Optimizer("adam", _params(), b1=-0.1), "b1 must be in [0, 1), got -0.1"),
    (lambda: Optimizer(sgd(0.1), _params(), learning_rate=0.1), "belong to the transform"),
    (lambda: Optimizer("sgd", _params(), convergence="loss"), "convergence must be"),
    (lambda: Optimizer("sgd", (np.ones(2),), inplace=True), "list of floating-point NumPy arrays"),
    (lambda: Optimizer("sgd", [], inplace=True), "list of floating-point NumPy arrays"),
    (lambda: Optimizer("sgd", _params()).update([np.ones(s) for s in SHAPES[:2]]), "grads must have the structure"),
    (lambda: Optimizer("sgd", _params(), inplace=True).update([np.full(s, np.inf) for s in SHAPES]), "grads[0] has 12 non-finite"),
    (lambda: Optimizer("polyak", _params(), inplace=True).update([np.ones(s) for s in SHAPES]), "needs value="),
    (lambda: Optimizer("adam", _params()).load_state_dict({"format": "torch"}), "not an opt_lab optimizer checkpoint"),
    (lambda: Optimizer("adam", _params()).load_state_dict(Optimizer("adam", [np.ones(2)]).state_dict()), "checkpoint parameters have structure"),
    (lambda: Optimizer("adam", _params(), learning_rate=power_law(0.1)).state_dict(as_json=True), "cannot be written as JSON"),
])
def test_bad_input(call, message):
    with pytest.raises(ValueError) as err: call()
    assert message in str(err.value)


def test_every_alias_runs_both_paths():
    for name in ALIASES:
        for inplace in (False, True):
            opt = _run(Optimizer(name, _params(), inplace=inplace), range(3))
            assert opt.step == 3 and all(np.isfinite(np.asarray(p)).all() for p in opt.params)


def test_inplace_path_runs_any_transform_and_writes_into_the_callers_arrays():
    arrays = _params()
    held = list(arrays)
    functional = _run(Optimizer(sgd(0.05, momentum=0.5), _params()), range(10))
    in_place = _run(Optimizer(sgd(0.05, momentum=0.5), arrays, inplace=True), range(10))
    assert all(a is b for a, b in zip(in_place.params, held))
    for a, b in zip(arrays, functional.params): np.testing.assert_array_equal(a, np.asarray(b))


def test_inplace_path_refuses_float64_without_x64():
    with jax.enable_x64(False):
        with pytest.raises(ValueError, match=r"params\[0\] is float64 but JAX computes in float32"):
            Optimizer("adam", _params(), inplace=True)
        opt = Optimizer("adam", [np.ones(3, np.float32)], inplace=True)
        opt.update([np.ones(3, np.float32)])
        assert opt.params[0].dtype == np.float32


def test_rosenbrock_explorer_headless():
    from opt_lab.book.optim_race import rosenbrock_explorer
    ex = rosenbrock_explorer()
    first = ex.data["path"].copy()
    ex.controls["optimizer"].value = "polyak"
    assert ex.data["label"].startswith("polyak") and not np.array_equal(first, ex.data["path"])
    ex.controls["log10_lr"].value = 0.0
    ex.controls["optimizer"].value = "sgd"  # diverges at this learning rate: shown, not raised
    assert ex.data["label"].endswith("(diverged)")
    ex.controls["steps"].value = 20
    assert len(ex.data["loss"]) == 21 and len(ex.ax[1].lines[0].get_xdata()) == 21
