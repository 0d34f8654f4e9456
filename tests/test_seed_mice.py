"""A mice 1.0.5 user's script with only the import prefix changed (`mice.` -> `opt_lab.compat.mice.`), run beside mice
itself (a test-only oracle), and the seed's accumulators and estimators checked number for number."""
import importlib

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

mice = pytest.importorskip("mice")
REF = {m: importlib.import_module(f"mice.{m}") for m in ("core_impl", "core", "policy", "norms", "state", "logging", "plot_mice")}
OURS = {m: importlib.import_module(f"opt_lab.compat.mice.{m}") for m in REF}


def grad(x, thetas): return thetas[:, None] * x   # f(x, θ) = θ|x|²/2 with θ ~ U(0, 1): ∇F(x) = x/2


def seed_script(lib, seed, **options):
    "The seed's usage: build, seed through `est.rng`, step until `terminate`, read the log and plot it."
    rng = np.random.default_rng(seed)
    options = dict(dict(eps=0.5, max_cost=10**6), **options)
    est = lib["core_impl"].MICE(grad, lambda n: rng.uniform(size=n), policy=lib["policy"].DropRestartClipPolicy(drop_param=0.5),
                                recorder=lib["logging"].Recorder(), **options)
    est.rng = np.random.default_rng(seed)
    x = np.array([3.0, -2.0])
    while not est.terminate: x = x - est.evaluate(x)
    log = pd.DataFrame(est.get_log())
    fig, ax = plt.subplots()
    lib["plot_mice"].plot_mice(log, ax, "num_grads", "grad_norm", style="loglog")
    plt.close(fig)
    return est, x, log


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_seed_script_runs_on_both_and_stops_at_the_same_tolerance(seed):
    tol_sq = 1e-4   # mice's stop_crit_norm is a tolerance on |∇F|²
    for lib in (REF, OURS):
        est, x, log = seed_script(lib, seed, stop_crit_norm=tol_sq)
        assert est.terminate_reason == "stop_crit"
        assert np.linalg.norm(x / 2) < np.sqrt(tol_sq)
        assert set(log.event) <= {"start", "add", "dropped", "restart", "clip", "end"}
        assert {"event", "num_grads", "vl", "grad_norm", "hier_length", "iteration", "terminate_reason"} <= set(log.columns)


def test_seeding_through_rng_is_reproducible():
    runs = [seed_script(OURS, s, max_cost=5000)[1] for s in (4, 4, 5)]
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])


def test_core_is_core_impl():
    assert OURS["core"].MICE is OURS["core_impl"].MICE


@pytest.mark.parametrize("convex", [False, True])
def test_resampling_quantiles_are_mices(convex):
    rng = np.random.default_rng(0)
    ours = OURS["norms"].ResamplingNormEstimator(re_quantile=0.05, stop_quantile=0.95, convex=convex)
    ref = REF["norms"].ResamplingNormEstimator(re_quantile=0.05, stop_quantile=0.95, convex=convex)
    for scale in (3.0, 1.0, 2.0, 0.5):
        norms = scale * rng.gamma(2.0, size=37)
        assert ours.update_from_norms(norms) == ref.update_from_norms(norms)
    assert (ours._best_tol, ours._best_stop) == (ref._best_tol, ref._best_stop)


def test_plain_norm_is_mices():
    ours, ref = OURS["norms"].PlainNormEstimator(convex=True), REF["norms"].PlainNormEstimator(convex=True)
    for g in np.random.default_rng(1).normal(size=(5, 3)):
        assert ours.update(g) == pytest.approx(ref.update(g), rel=1e-15)


def test_accumulators_are_mices():
    data = np.random.default_rng(2).normal(size=(23, 4))
    ours_w, ref_w = OURS["state"].WelfordVec.zeros(4), REF["state"].WelfordVec.zeros(4)
    ours_r, ref_r = OURS["state"].ResamplingAcc.zeros(5, 4), REF["state"].ResamplingAcc.zeros(5, 4)
    for chunk in (data[:7], data[7:8], data[8:]):
        ours_w.update_batch(chunk); ref_w.update_batch(chunk)
        ours_r.update_batch(chunk); ref_r.update_batch(chunk)
    np.testing.assert_allclose(ours_w.mean, ref_w.mean, rtol=1e-14)
    assert ours_w.var_sum == pytest.approx(ref_w.var_sum, rel=1e-13) and ours_w.n == ref_w.n == 23
    np.testing.assert_allclose(ours_r.loo_means(), ref_r.loo_means(), rtol=1e-13)


def test_level_state_is_built_as_in_the_seed():
    W = OURS["state"].WelfordVec
    stats = W.zeros(2).update_batch(np.array([[1.0, 2.0], [3.0, 6.0]]))
    lvl = OURS["state"].LevelState(x=np.zeros(2), cost=1, x_prev=None, sample_fn=lambda n: np.ones(n),
                                   delta_stats=stats, base_stats=None, m_min=10)
    assert (lvl.m, lvl.m_prev, lvl.delta_resamp) == (2, 0, None)
    assert lvl.v_delta == lvl.v_base == lvl.v_batch == pytest.approx(10.0)
    np.testing.assert_array_equal(lvl.mean_delta, [2.0, 4.0])
    assert lvl.delta_loo_means() is None


def test_recorder_takes_mices_keywords():
    for lib in (REF, OURS):
        rec = lib["logging"].Recorder()
        rec.add(event="add", num_grads=10, hier_length=2, last_v=0.5, grad_norm=1.0, iteration=3)
        assert rec.as_list()[0]["vl"] == 0.5 and "last_v" not in rec.as_list()[0]


def test_the_estimators_levels_are_level_states():
    est, _, _ = seed_script(OURS, 0, max_cost=3000)
    levels = est.levels
    assert all(isinstance(lvl, OURS["state"].LevelState) for lvl in levels)
    assert levels[0].base_stats is None and levels[0].m_min == est.m_restart_min
    assert all(lvl.m_min == est.m_pilot and lvl.base_stats is not None for lvl in levels[1:])


# mice 1.0.5's measured failures stay fixed through the seed-named API


def test_finite_sum_levels_draw_their_own_samples_without_replacement():
    data = np.arange(40.0)
    drawn = []
    def grad(x, thetas):
        drawn.append(np.asarray(thetas).copy())
        return np.ones((len(thetas), 1)) * x
    est = OURS["core_impl"].MICE(grad, data, eps=0.3, max_cost=2000, seed=0)
    for x in ([1.0], [0.9], [0.8]): est.evaluate(np.array(x))
    levels = est.levels
    assert all(lvl.m <= 40 for lvl in levels)
    # each level's samples come from a stream of its own: a level never holds a point twice
    per_level = {}
    for lvl in levels: per_level.setdefault(id(lvl.sample_fn), lvl)
    assert len(per_level) == len(levels)


def test_zero_variance_and_nonfinite_gradients_are_handled():
    est = OURS["core_impl"].MICE(lambda x, t: np.zeros((len(t), 2)), lambda n: np.ones(n), seed=0)
    np.testing.assert_array_equal(est.evaluate(np.ones(2)), 0.0)           # mice: ZeroDivisionError
    assert est.terminate_reason.startswith("zero_gradient")
    bad = OURS["core_impl"].MICE(lambda x, t: np.full((len(t), 2), np.nan), lambda n: np.ones(n), seed=0)
    with pytest.warns(RuntimeWarning, match="nonfinite_gradient"):
        g = bad.evaluate(np.ones(2))                                       # mice: a silent NaN estimate
    assert np.isfinite(g).all() and bad.terminate_reason.startswith("nonfinite_gradient")
