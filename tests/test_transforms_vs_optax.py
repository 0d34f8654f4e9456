"""opt_lab's transforms against optax (a test-only oracle): 500 steps on a fixed pre-drawn gradient
sequence in float64, every iterate equal to relative 1e-12; jit == eager; vmap over hyper-parameters."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

optax = pytest.importorskip("optax")

from opt_lab.adam import adam
from opt_lab.rmsprop import rmsprop
from opt_lab.sgd import sgd
from opt_lab.transform import apply_updates, exponential_decay, power_law

STEPS = 500


def _grads(seed=0, steps=STEPS):
    rng = np.random.default_rng(seed)
    # a pytree with mixed shapes and magnitudes spanning 8 decades
    return [{"w": rng.standard_normal((3, 4)) * 10.0 ** rng.integers(-4, 4, (3, 4)), "b": rng.standard_normal(5)}
            for _ in range(steps)]


def _trajectory(tx, grads):
    params = jax.tree_util.tree_map(jnp.zeros_like, grads[0])
    state, out = tx.init(params), []
    update = jax.jit(tx.update)
    for g in grads:
        updates, state = update(g, state, params)
        params = apply_updates(params, updates)
        out.append(params)
    return out


def _assert_same(ours, theirs, rtol=1e-12):
    "Every iterate, every leaf: ‖ours − theirs‖ ≤ rtol ‖theirs‖ (norm-wise: entries that cross zero make an\n    entry-wise ratio meaningless)."
    worst = 0.0
    for k, (a, b) in enumerate(zip(ours, theirs)):
        for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
            x, y = np.asarray(x), np.asarray(y)
            err = np.linalg.norm(x - y) / max(np.linalg.norm(y), 1e-300)
            assert err <= rtol, f"step {k}: relative difference {err:.3g} > {rtol:g}"
            worst = max(worst, err)
    return worst


CASES = {
    "sgd": (lambda: sgd(0.05), lambda: optax.sgd(0.05)),
    "sgd-momentum": (lambda: sgd(0.05, momentum=0.9), lambda: optax.sgd(0.05, momentum=0.9)),
    "sgd-nesterov": (lambda: sgd(0.05, momentum=0.9, nesterov=True), lambda: optax.sgd(0.05, momentum=0.9, nesterov=True)),
    # optax's own schedules run in float32; the oracle gets the same schedule written in float64
    "sgd-schedule": (lambda: sgd(exponential_decay(0.1, 0.99)),
                     lambda: optax.sgd(lambda c: 0.1 * 0.99 ** jnp.asarray(c, jnp.float64))),
    "adam-schedule": (lambda: adam(power_law(1e-2, 0.75, 20.0)),
                      lambda: optax.adam(lambda c: 1e-2 * (1 + jnp.asarray(c, jnp.float64) / 20.0) ** -0.75)),
    "rmsprop-eps-outside": (lambda: rmsprop(1e-3, 0.9, 1e-8),
                            lambda: optax.rmsprop(1e-3, 0.9, 1e-8, eps_in_sqrt=False)),
    "rmsprop-eps-inside": (lambda: rmsprop(1e-3, 0.9, 1e-8, eps_in_sqrt=True),
                           lambda: optax.rmsprop(1e-3, 0.9, 1e-8, eps_in_sqrt=True)),
    "rmsprop-momentum": (lambda: rmsprop(1e-3, 0.95, 1e-6, momentum=0.9),
                         lambda: optax.rmsprop(1e-3, 0.95, 1e-6, eps_in_sqrt=False, momentum=0.9)),
    "rmsprop-nesterov-inside": (lambda: rmsprop(1e-3, 0.9, 1e-8, momentum=0.5, nesterov=True, eps_in_sqrt=True),
                                lambda: optax.rmsprop(1e-3, 0.9, 1e-8, eps_in_sqrt=True, momentum=0.5, nesterov=True)),
    "rmsprop-bias-correction": (lambda: rmsprop(1e-3, 0.99, 1e-8, bias_correction=True, initial_scale=0.0),
                                lambda: optax.rmsprop(1e-3, 0.99, 1e-8, eps_in_sqrt=False, bias_correction=True)),
    "rmsprop-initial-scale": (lambda: rmsprop(1e-3, 0.9, 1e-8, initial_scale=1.0),
                              lambda: optax.rmsprop(1e-3, 0.9, 1e-8, eps_in_sqrt=False, initial_scale=1.0)),
    "adam": (lambda: adam(1e-3), lambda: optax.adam(1e-3)),
    "adam-b1-zero": (lambda: adam(1e-3, b1=0.0), lambda: optax.adam(1e-3, b1=0.0)),
    "adam-b2-near-one": (lambda: adam(1e-3, b2=1 - 1e-9), lambda: optax.adam(1e-3, b2=1 - 1e-9)),
    "adam-tiny-eps": (lambda: adam(1e-3, eps=1e-300), lambda: optax.adam(1e-3, eps=1e-300)),
    "adam-eps-root": (lambda: adam(1e-3, eps_root=1e-10), lambda: optax.adam(1e-3, eps_root=1e-10)),
}


@pytest.mark.parametrize("name", CASES)
def test_every_iterate_matches_optax(name):
    ours, theirs = CASES[name]
    grads = _grads(seed=len(name))
    _assert_same(_trajectory(ours(), grads), _trajectory(theirs(), grads))


@pytest.mark.parametrize("name", ["sgd-momentum", "rmsprop-momentum", "adam"])
def test_works_inside_optax_chain(name):
    ours, theirs = CASES[name]
    grads = _grads(seed=3, steps=50)
    chained = optax.chain(optax.clip_by_global_norm(1.0), ours())
    reference = optax.chain(optax.clip_by_global_norm(1.0), theirs())
    _assert_same(_trajectory(chained, grads), _trajectory(reference, grads))


def test_schedules_run_in_float64():
    # optax computes its schedules in float32; ours keep float64 under x64
    assert power_law(1e-3, 0.6, 7.0)(jnp.asarray(123)).dtype == jnp.float64
    exact = 0.1 * 0.99 ** 123
    assert abs(float(exponential_decay(0.1, 0.99)(123)) - exact) <= 1e-16 * exact
    count = jnp.asarray(123, jnp.int32)  # what the optimizers' states hold
    assert abs(float(exponential_decay(0.1, 0.99)(count)) - exact) <= 1e-16 * exact
    assert abs(float(optax.exponential_decay(0.1, 1, 0.99)(count)) - exact) > 1e-10 * exact
    np.testing.assert_allclose(float(power_law(1e-3, 0.6, 7.0)(123)), 1e-3 * (1 + 123 / 7.0) ** -0.6, rtol=1e-15)


@pytest.mark.parametrize("make", [lambda: sgd(0.1, momentum=0.5, nesterov=True), lambda: rmsprop(0.01, momentum=0.3),
                                  lambda: adam(0.01)])
def test_jit_equals_eager(make):
    tx, grads = make(), _grads(seed=9, steps=20)
    params = jax.tree_util.tree_map(jnp.zeros_like, grads[0])
    s_eager = s_jit = tx.init(params)
    p_eager = p_jit = params
    for g in grads:
        u, s_eager = tx.update(g, s_eager, p_eager); p_eager = apply_updates(p_eager, u)
        u, s_jit = jax.jit(tx.update)(g, s_jit, p_jit); p_jit = apply_updates(p_jit, u)
    _assert_same([p_eager], [p_jit], rtol=1e-13)


def test_vmap_over_hyperparameters():
    grads = jnp.asarray(np.random.default_rng(0).standard_normal((30, 4)))

    def final(lr, b1):
        tx = adam(lr, b1=b1, nonfinite=None)
        def body(carry, g):
            x, s = carry
            u, s = tx.update(g, s)
            return (x + u, s), None
        return jax.lax.scan(body, (jnp.zeros(4), tx.init(jnp.zeros(4))), grads)[0][0]

    lrs, b1s = jnp.array([1e-3, 1e-2, 1e-1]), jnp.array([0.0, 0.5, 0.9])
    batched = jax.vmap(final)(lrs, b1s)
    for i in range(3): np.testing.assert_allclose(batched[i], final(float(lrs[i]), float(b1s[i])), rtol=1e-13)


def test_vmap_with_the_default_nonfinite_guard():
    tx = sgd(0.1, momentum=0.5)
    xs = jnp.ones((3, 2))
    u, _ = jax.vmap(tx.update)(xs, jax.vmap(tx.init)(xs))
    np.testing.assert_allclose(u, -0.1 * xs)


@pytest.mark.parametrize("make,message", [
    (lambda: sgd(-0.1), "learning_rate must be > 0 and finite, got -0.1"),
    (lambda: sgd(0.1, momentum=-0.1), "momentum must be in [0, 1), got -0.1"),
    (lambda: sgd(0.1, momentum=1.0), "momentum must be in [0, 1), got 1.0"),
    (lambda: rmsprop(0.0), "learning_rate must be > 0"),
    (lambda: rmsprop(1e-3, decay=-0.5), "decay must be in [0, 1), got -0.5"),
    (lambda: rmsprop(1e-3, eps=0.0), "eps must be > 0 and finite, got 0.0"),
    (lambda: rmsprop(1e-3, momentum=1.5), "momentum must be in [0, 1), got 1.5"),
    (lambda: adam(1e-3, b1=1.0), "b1 must be in [0, 1), got 1.0"),
    (lambda: adam(1e-3, b2=-0.1), "b2 must be in [0, 1), got -0.1"),
    (lambda: adam(1e-3, eps=-1.0), "eps must be > 0"),
    (lambda: adam(float("nan")), "learning_rate must be a real number, got nan"),
    (lambda: adam("fast"), "learning_rate must be a real number, got 'fast'"),
])
def test_bad_hyperparameters(make, message):
    with pytest.raises(ValueError) as err: make()
    assert message in str(err.value)


@pytest.mark.parametrize("make", [lambda **k: sgd(0.1, **k), lambda **k: rmsprop(0.1, **k), lambda **k: adam(0.1, **k)])
def test_nonfinite_gradients(make):
    params = {"a": jnp.ones(3), "b": jnp.ones(2)}
    bad = {"a": jnp.ones(3), "b": jnp.array([1.0, jnp.inf])}
    tx = make()
    with pytest.raises(Exception, match=r"grads\['b'\]"):
        jax.block_until_ready(jax.jit(tx.update)(bad, tx.init(params)))
    tx = make(nonfinite="skip")
    state = tx.init(params)
    u, state2 = jax.jit(tx.update)(bad, state)
    assert all(float(jnp.abs(x).max()) == 0 for x in jax.tree_util.tree_leaves(u)) and int(state2.skipped) == 1
    for x, y in zip(jax.tree_util.tree_leaves(state.inner), jax.tree_util.tree_leaves(state2.inner)): np.testing.assert_array_equal(x, y)


def test_mismatched_structures_are_refused():
    tx = adam(0.1)
    state = tx.init({"a": jnp.ones(2)})
    with pytest.raises(ValueError): tx.update({"b": jnp.ones(2)}, state)
