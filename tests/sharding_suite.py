"""Run by tests/test_sharding.py in a process of its own: eight simulated CPU devices, set here before JAX starts (never
globally). A sharded fit equals the one-device fit on the same keys; the reductions equal the plain ones; every optimizer
keeps its parameters' sharding."""
import jax

jax.config.update("jax_num_cpu_devices", 8)

import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from opt_lab.em import (BatchEMFitter, Gaussian, GeneralizedHyperbolic, IncrementalEMFitter, NormalInverseGamma,
                        NormalInverseGaussian, VarianceGamma)
from opt_lab.em.rules import EWMAUpdate, Shrinkage, eta0_from_model
from opt_lab.sharding import Rows, ShardedRows, rows_on

FAMILIES = [NormalInverseGaussian, VarianceGamma, NormalInverseGamma, GeneralizedHyperbolic, Gaussian]
MESH = jax.make_mesh((8,), ("data",))
MESH_2D = jax.make_mesh((2, 4), ("hosts", "devices"))
TRUE = NormalInverseGaussian.from_classical(mu=[0.0, 1.0, -1.0], gamma=[0.3, -0.2, 0.1], sigma=np.eye(3) + 0.3, mu_ig=1.0, lam=2.0)
X = np.asarray(TRUE.rvs(4003, seed=0))  # 4003 = 8 * 500 + 3: the rows left over after equal blocks are reduced apart
EVEN = X[:4000]  # equal blocks only: one copy of each program (a leftover part compiles the E-step a second time)


def test_eight_devices_are_simulated():
    assert len(jax.devices()) == 8


def relative_gap(a, b):
    return max(float(jnp.max(jnp.abs(u - v)) / max(float(jnp.max(jnp.abs(v))), 1e-300)) for u, v in zip(a, b))


def tolerances(family):
    """Relative tolerances of the parameters and of the log-likelihoods: 1e-10 and 1e-12, except for GH, whose GIG
    parameters (p, a, b) are weakly identified: reordering the additions alone (one device, rows reversed) moves them by
    1.4e-9 after 15 batch iterations, the sharded fits by 8e-10 (batch) and 1e-7 (40 incremental steps)."""
    return (1e-6, 1e-9) if family is GeneralizedHyperbolic else (1e-10, 1e-12)


@pytest.mark.parametrize("mesh, n", [(MESH, 4003), (MESH, 4000), (MESH_2D, 4003), (MESH_2D, 5)], ids=["8-4003", "8-4000", "2x4-4003", "2x4-5"])
def test_reductions_equal_the_plain_ones(mesh, n):
    data = jnp.asarray(X[:n])
    split, plain = rows_on(data, mesh), Rows(data)
    assert isinstance(split, ShardedRows) and split.n == n
    stats = lambda x: (x.mean(0), (x[:, :, None] * x[:, None, :]).mean(0))
    assert relative_gap(split.mean(stats), plain.mean(stats)) < 1e-13
    idx = jnp.asarray(np.random.default_rng(1).permutation(n)[:min(n, 37)])
    np.testing.assert_array_equal(split.take(idx), data[idx])
    assert relative_gap(split.batch_mean(stats, batch=data[idx]), stats(data[idx])) < 1e-13
    scored = lambda x: (x[:, 0], x[:, 1] ** 2)
    k = max(1, n // 100)
    assert relative_gap(split.mean_and_top(scored, k), plain.mean_and_top(scored, k)) < 1e-13


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.__name__)
def test_sharded_batch_em_equals_one_device(family):
    data = X if family is NormalInverseGaussian else EVEN
    start = family.default_init(data)
    fitter = dict(tol=1e-9, max_iter=15)
    one, many = BatchEMFitter(**fitter).fit(start, data), BatchEMFitter(**fitter, mesh=MESH).fit(start, data)
    assert one.n_iter == many.n_iter
    parameters, log_likelihood = tolerances(family)
    assert relative_gap(many.model, one.model) < parameters
    np.testing.assert_allclose(many.log_likelihoods, one.log_likelihoods, rtol=log_likelihood)
    assert abs(many.dominance - one.dominance) < 1e-12


# VG and normal-inverse gamma run GH's code (GIGMixture) with a fixed parameter: the batch test covers them, and each
# incremental comparison compiles two programs of about 10 s
@pytest.mark.parametrize("family", [NormalInverseGaussian, GeneralizedHyperbolic, Gaussian], ids=lambda f: f.__name__)
def test_sharded_incremental_em_equals_one_device(family):
    data = X if family is NormalInverseGaussian else EVEN
    start = family.default_init(data)
    fitter = dict(batch_size=203 if family is NormalInverseGaussian else 200, max_steps=40, eta_update=EWMAUpdate(w=0.2))  # 203 = 8 * 25 + 3
    one = IncrementalEMFitter(**fitter).fit(start, data, key=3)
    many = IncrementalEMFitter(**fitter, mesh=MESH_2D).fit(start, data, key=3)
    parameters, log_likelihood = tolerances(family)
    assert relative_gap(many.model, one.model) < parameters
    np.testing.assert_allclose(many.history.param_change, one.history.param_change, rtol=parameters * 1e3, atol=1e-14)
    np.testing.assert_allclose(many.final_log_likelihood, one.final_log_likelihood, rtol=log_likelihood)


def test_refinement_and_shrinkage_run_sharded_too():
    X = EVEN
    start = NormalInverseGaussian.default_init(X)
    rule = Shrinkage(EWMAUpdate(w=0.3), eta0_from_model(start), tau=5.0)
    fitter = dict(batch_size=64, max_steps=12, eta_update=rule, inner_iter=3, verbose=0)
    one = IncrementalEMFitter(**fitter).fit(start, X, key=0)
    many = IncrementalEMFitter(**fitter, mesh=MESH).fit(start, X, key=0)
    assert relative_gap(many.model, one.model) < 1e-10


def test_data_already_split_by_rows_fit_on_their_mesh_in_either_mesh_mode():
    explicit = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Explicit,))
    start = NormalInverseGaussian.default_init(X)
    for mesh in (MESH, explicit):
        placed = jax.device_put(jnp.asarray(EVEN), NamedSharding(mesh, P("data")))
        one = IncrementalEMFitter(batch_size=100, max_steps=20).fit(start, EVEN, key=1)
        many = IncrementalEMFitter(batch_size=100, max_steps=20).fit(start, placed, key=1)
        assert relative_gap(many.model, one.model) < 1e-10


def test_bad_mesh_arguments_are_refused():
    with pytest.raises(ValueError, match="mesh must be"): BatchEMFitter(mesh=8)
    with pytest.raises(ValueError, match="cpu"): IncrementalEMFitter(mesh=MESH, e_step_backend="cpu")


def sharded_params(mode):
    "A pytree with a row-sharded matrix, a column-sharded matrix and a replicated vector on a (2, 4) mesh in `mode`."
    mesh = jax.make_mesh((2, 4), ("hosts", "devices"), axis_types=(mode, mode))
    rows, cols, same = (NamedSharding(mesh, spec) for spec in (P(("hosts", "devices")), P(None, "devices"), P()))
    key = jax.random.key(0)
    return {"w": jax.device_put(jax.random.normal(key, (16, 4)), rows),
            "v": jax.device_put(jax.random.normal(key, (3, 8)), cols),
            "b": jax.device_put(jnp.arange(5.0), same)}


def build_transforms():
    from opt_lab import optim
    return {"sgd": optim.sgd(0.1), "heavy ball": optim.sgd(0.1, momentum=0.9), "nesterov": optim.sgd(0.1, momentum=0.9, nesterov=True),
            "rmsprop": optim.rmsprop(0.01, momentum=0.5), "adam": optim.adam(0.01), "adam, skip": optim.adam(0.01, nonfinite="skip"),
            "polyak": optim.polyak_sgd(momentum=0.5), "scale_by_rms": optim.scale_by_rms(),
            "schedule": optim.chain(optim.scale_by_adam(), optim.scale_by_schedule(optim.exponential_decay(0.1, 0.5))),
            "trace": optim.trace(0.9), "scale": optim.scale(0.5), "scale_by_adam": optim.scale_by_adam(),
            "scale_by_polyak": optim.scale_by_polyak(), "sgd, power-law schedule": optim.sgd(optim.power_law(0.1, 0.6)),
            "rmsprop, nesterov, skip": optim.rmsprop(0.01, momentum=0.9, nesterov=True, nonfinite="skip")}


@pytest.mark.parametrize("mode", [AxisType.Explicit, AxisType.Auto], ids=["explicit", "auto"])
@pytest.mark.parametrize("name", list(build_transforms()))
def test_every_transform_keeps_its_parameters_sharding(name, mode):
    from opt_lab.optim import apply_updates
    tx, params = build_transforms()[name], sharded_params(mode)
    placed = params
    grads = jax.tree.map(lambda p: 0.1 * p + 1.0, params)

    def like_params(state):
        "Every array of the state shaped like a parameter has that parameter's sharding."
        for leaf in jax.tree.leaves(state):
            for key, p in params.items():
                if isinstance(leaf, jax.Array) and leaf.shape == p.shape and leaf.ndim:
                    assert leaf.sharding.is_equivalent_to(p.sharding, leaf.ndim), (name, key)

    state = tx.init(params)
    like_params(state)
    step = jax.jit(lambda g, s, p: tx.update(g, s, p, value=jnp.float32(2.0)))
    for _ in range(2):
        updates, state = step(grads, state, params)
        for key, p in params.items(): assert updates[key].sharding.is_equivalent_to(p.sharding, p.ndim), (name, key)
        params = apply_updates(params, updates)
        like_params(state)
    for key, p in params.items(): assert p.sharding.is_equivalent_to(placed[key].sharding, p.ndim), (name, key)


H0, H1 = jnp.eye(2), jnp.array([[200.0, 0.5], [0.5, 1.0]])


def quad_grad(x, thetas):
    "The paper's random quadratic: ∇f(x, θ) = ((1-θ)H0 + θH1) x - 1, one row per θ."
    t = thetas[:, None]
    return (1 - t) * (H0 @ x) + t * (H1 @ x) - 1.0


def uniform(key, n): return jax.random.uniform(key, (n,), dtype=jnp.float64)


def test_sharded_mice_makes_the_same_decisions_on_the_same_samples():
    from opt_lab.mice import CompiledMICE
    runs = []
    for mesh in (None, MESH):
        est = CompiledMICE(quad_grad, uniform, rows=64, seed=4, mesh=mesh, max_cost=8000)
        x, estimates = np.array([20.0, 50.0]), []
        while not est.terminate:
            g = np.asarray(est(x))
            estimates.append(g)
            x = x - g / 200.5
        runs.append((np.array(estimates), est.get_log(), est.counter))
    (one, log_one, spent_one), (many, log_many, spent_many) = runs
    assert spent_one == spent_many and one.shape == many.shape
    np.testing.assert_allclose(many, one, rtol=1e-10, atol=1e-12)
    for column in ("event", "num_grads", "hier_length"):
        np.testing.assert_array_equal(log_many[column].to_numpy(), log_one[column].to_numpy())
    with pytest.raises(ValueError, match="rows must be a multiple"): CompiledMICE(quad_grad, uniform, rows=20, mesh=MESH)


def test_runs_split_over_devices_are_the_runs_on_one_device():
    "Each device advances its share of the runs in lockstep: 10 seeds are padded to 16, two per device, and cut back."
    from opt_lab.mice import mice_runs
    seeds = 10
    keys = jax.random.split(jax.random.key(5), seeds)
    one, split = (mice_runs(quad_grad, uniform, np.array([20.0, 50.0]), 1 / 200.5, 80, keys, max_cost=4000, mesh=mesh)
                  for mesh in (None, MESH))
    assert split.x.shape == (seeds, 2) and split.traced.shape == (seeds, 80)
    np.testing.assert_allclose(np.asarray(split.x), np.asarray(one.x), rtol=1e-9)
    for field in ("num_grads", "hier_length", "events", "reason"):
        np.testing.assert_array_equal(np.asarray(getattr(split.rows, field)), np.asarray(getattr(one.rows, field)))
    assert len({float(a) for a in np.asarray(split.x)[:, 0]}) == seeds  # every run its own
