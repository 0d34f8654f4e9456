"""MICE compiled (nbs/31_mice_compiled.ipynb), run by tests/test_mice_compiled.py in a pytest process of its own:
the same decisions as the NumPy path on the same statistics, and the invariants tests/test_mice.py checks for `MICE` (budget, error control, sample complexity, full-data levels, failure
modes) on the compiled program and on vmapped runs."""
import copy
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from opt_lab.mice import MICE, DropRestartClipPolicy, EVENTS, LOG_COLUMNS, CompiledMICE, mice_runs, optimal_sample_sizes
from opt_lab.mice.compiled import (FEISTEL_ROUNDS, MiceConfig, MiceState, apply_policy, constrained_sizes, feistel_permute,
                                   keep_smallest, kept_for_quantile, quantile_from_kept, should_stop, summaries, top_up_targets,
                                   try_drop, _config)
from opt_lab.book.mice_quadratic import random_quadratic, run_mice

QUAD = random_quadratic()
H0, H1, B = jnp.eye(2), jnp.array([[200.0, 0.5], [0.5, 1.0]]), jnp.ones(2)
H = np.asarray((H0 + H1) / 2)
X_STAR = np.linalg.solve(H, np.ones(2))
X0 = np.array([20.0, 50.0])


def quad_grad(x, thetas):
    t = thetas[:, None]
    return (1 - t) * (H0 @ x) + t * (H1 @ x) - B


def uniform(key, n): return jax.random.uniform(key, (n,), dtype=jnp.float64)


def quad_gap(x):
    f = lambda z: 0.5 * z @ jnp.asarray(H) @ z - jnp.ones(2) @ z
    return (f(x) - f(jnp.asarray(X_STAR))) / (f(jnp.asarray(X0)) - f(jnp.asarray(X_STAR)))


def finite_grad(x, rows): return x - rows + 0.1 * rows * x


# -- the pieces ----------------------------------------------------------------------------------------
@settings(max_examples=30, deadline=None)
@given(n=st.integers(2, 5000), seed=st.integers(0, 2**31 - 1))
def test_feistel_is_a_bijection_of_the_range(n, seed):
    keys = jax.random.bits(jax.random.key(seed), (FEISTEL_ROUNDS,), jnp.uint32)
    image = np.asarray(feistel_permute(keys, jnp.arange(n, dtype=jnp.uint32), n))
    np.testing.assert_array_equal(np.sort(image), np.arange(n))


def test_feistel_positions_are_uniform_over_keys():
    "The first position of a level lands on each row about equally often over many levels (keys)."
    n, levels = 10, 4000
    keys = jax.random.bits(jax.random.key(0), (levels, FEISTEL_ROUNDS), jnp.uint32)
    first = np.asarray(jax.vmap(lambda k: feistel_permute(k, jnp.zeros(1, jnp.uint32), n))(keys))[:, 0]
    counts = np.bincount(first, minlength=n)
    expected = levels / n
    assert ((counts - expected) ** 2 / expected).sum() < 30  # chi-square, 9 degrees of freedom: p ~ 4e-4


@settings(max_examples=60, deadline=None)
@given(V=st.lists(st.floats(1e-6, 1e6), min_size=1, max_size=6), tol=st.floats(1e-3, 1e2),
       N=st.sampled_from([None, 50, 1000]), data=st.data())
def test_sizes_match_the_numpy_sweep(V, tol, N, data):
    L = len(V)
    c = np.array(data.draw(st.lists(st.sampled_from([1.0, 2.0]), min_size=L, max_size=L)))
    low = np.array(data.draw(st.lists(st.sampled_from([0.0, 2.0, 10.0, 49.0, 300.0]), min_size=L, max_size=L)))
    expected = optimal_sample_sizes(V, c, tol, N, low)
    pad = lambda a: jnp.asarray(np.concatenate([np.asarray(a, float), np.ones(2)]))
    got = np.asarray(constrained_sizes(pad(V), pad(c), tol**2, math.inf if N is None else N, pad(low), jnp.arange(L + 2) < L))
    np.testing.assert_allclose(got[:L], expected, rtol=1e-9)


@pytest.mark.parametrize("count", [1, 2, 7, 32, 33, 500, 1001])
@pytest.mark.parametrize("q", [0.0, 0.05, 0.3, 0.7, 0.95, 1.0])
def test_quantile_from_the_kept_order_statistics_is_numpys(count, q):
    values = np.random.default_rng(count).normal(size=1001)
    values[::7] = values[1::7][: len(values[::7])]  # ties
    sign = -1.0 if q > 0.5 else 1.0
    merge = jax.jit(keep_smallest)
    kept = jnp.full(kept_for_quantile(q, 1001), jnp.inf)
    for start in range(0, count, 16):
        chunk = sign * values[start:min(start + 16, count)]
        kept = merge(kept, jnp.asarray(np.pad(chunk, (0, 16 - len(chunk)), constant_values=np.inf)))
    assert float(quantile_from_kept(kept, count, q)) == pytest.approx(np.quantile(values[:count], q), abs=1e-12)


# -- the same decisions as MICE on the same statistics --------------------------------------------------
compiled = lambda f: jax.jit(f, static_argnums=0)  # one program per configuration, as inside the estimator
SUMMARIES, TARGETS, POLICY, DROP = compiled(summaries), compiled(top_up_targets), compiled(apply_policy), compiled(try_drop)
# run op by op: the stopping threshold is part of the static configuration, so a jitted call would compile once per value
STOP = should_stop

def state_from(est, cfg):
    "A compiled state holding exactly the NumPy estimator's hierarchy."
    s, C = est._stack, cfg.capacity
    pad = lambda a, dtype=None: jnp.asarray(np.concatenate([a[:s.size], np.zeros((C - s.size,) + a.shape[1:], a.dtype)]), dtype)
    return MiceState(x=pad(s.x), n=pad(s.n), n_prev=pad(s.n_prev), cost=pad(s.cost), shift=pad(s.shift), psum=pad(s.psum),
                     sq=pad(s.sq), perm=jnp.zeros((C, FEISTEL_ROUNDS), jnp.uint32), size=jnp.asarray(s.size),
                     counter=jnp.asarray(est.counter), budget=jnp.asarray(math.inf), k=jnp.asarray(est.k),
                     last_call_cost=jnp.asarray(est._last_call_cost), last_tol=jnp.asarray(est._last_tol),
                     best_norm=jnp.asarray(math.inf), reason=jnp.asarray(0, jnp.int32), key=jax.random.key(0))


CASES = {
    "expectation": (QUAD["grad"], QUAD["sampler"], dict(policy=DropRestartClipPolicy(drop_param=0.5))),
    "expectation, clip all": (QUAD["grad"], QUAD["sampler"], dict(policy=DropRestartClipPolicy(clip_type="all", restart_param=1.0))),
    "finite, clip full": (lambda x, rows: x - rows + 0.1 * rows * x, np.random.default_rng(0).normal(size=(300, 2)),
                          dict(eps=0.3, min_batch=5, policy=DropRestartClipPolicy(clip_type="full", drop_param=0.2))),
}


@pytest.mark.parametrize("case", list(CASES))
def test_decisions_match_the_numpy_estimator(case):
    grad, sampler, options = CASES[case]
    est = MICE(grad, sampler, max_cost=15_000, seed=1, **options)
    population = None if callable(sampler) else len(sampler)
    cfg = _config(2, population, 64, 32, grad, sampler, options)
    x, checked = np.array([3.0, -2.0]) if population else QUAD["x0"].copy(), dict(drop=0, sizes=0, policy=0, stop=0)
    step = 0.5 if population else 1 / QUAD["L"]
    while not est.terminate and est.k < 120:
        if est._stack is not None and est._stack.size >= 2 and est._stack.size + 1 < 32:
            st = state_from(est, cfg)
            events = []
            copy.deepcopy(est)._try_drop(x, est._last_tol, events)
            assert bool(DROP(cfg, st, jnp.asarray(x), SUMMARIES(cfg, st)[1], st.last_tol)) == ("dropped" in events)
            checked["drop"] += 1
        g = est(x)
        L = est._stack.size
        if not est.terminate and L and L < 32 and math.isfinite(est._last_tol):
            st = state_from(est, cfg)
            means, v, dev = SUMMARIES(cfg, st)
            np.testing.assert_allclose(np.asarray(means[:L]), est._stack.means(), rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(np.asarray(v[:L, 0]), est._stack.variances(0), rtol=1e-10)
            np.testing.assert_allclose(np.asarray(dev[:L]), est._stack.deviations(), rtol=1e-9, atol=1e-12)
            for tol in (est._last_tol, 0.3 * est._last_tol, 0.05 * est._last_tol):
                targets = np.asarray(TARGETS(cfg, st, v, tol))
                expected = {i: s for i, h, s in copy.deepcopy(est)._top_ups(tol)}
                assert set(np.flatnonzero(targets[:L] > est._stack.n[:L])) == set(expected)
                for i, s in expected.items(): assert targets[i] == pytest.approx(s, rel=1e-9)
                checked["sizes"] += 1
                if L >= 2:
                    events, numpy_est = [], copy.deepcopy(est)
                    numpy_est._last_plan = None
                    numpy_est._apply_policy(tol, events)
                    new, restart, clip = POLICY(cfg, st, v, tol)
                    assert (bool(restart), bool(clip)) == ("restart" in events, "clip" in events)
                    assert int(new.size) == numpy_est._stack.size
                    checked["policy"] += 1
            estimate = est._stack.estimate()
            for scale in (0.5, 1.5, 4.0, 50.0):  # thresholds on the squared norm around the bound
                numpy_est = copy.deepcopy(est)
                numpy_est.stop_crit_norm = scale * float(estimate @ estimate)
                stop = STOP(cfg._replace(stop_crit_norm=numpy_est.stop_crit_norm), st, jnp.asarray(estimate), v)
                assert bool(stop) == numpy_est._should_stop(estimate)
                checked["stop"] += 1
        x = x - step * g
    assert min(checked.values()) > 5, checked


# -- the invariants of tests/test_mice.py, on the compiled program ----------------------------------------
def drive(est, x0, step, calls=10**6):
    x, errors = np.array(x0, float), []
    while not est.terminate and est.k < calls:
        g = np.asarray(est(x))
        true = QUAD["grad_F"](x)
        errors.append(np.linalg.norm(g - true) / np.linalg.norm(true))
        x = x - step * g
    return x, errors


@pytest.mark.parametrize("budget", [1, 150, 4321])
@pytest.mark.parametrize("finite, clip", [(False, None), (True, "full"), (False, "all")])
def test_max_cost_is_a_hard_budget(budget, finite, clip):
    sampler = np.random.default_rng(budget).uniform(size=400) if finite else uniform
    est = CompiledMICE(quad_grad, sampler, max_cost=budget, seed=budget, policy=DropRestartClipPolicy(clip_type=clip))
    x, _ = drive(est, X0, 1 / QUAD["L"])
    log = est.get_log()
    assert est.counter <= budget and log.num_grads.max() <= budget
    assert est.terminate_reason == "max_cost" and np.isfinite(x).all()
    assert (np.diff(log.num_grads.to_numpy()) >= 0).all()


def test_error_control_and_convergence_on_the_quadratic():
    "The RMS relative error of a run is a random quantity (one unlucky pilot can dominate it): its median over seeds."
    rms, gaps = [], []
    for seed in range(5):
        x, errors = drive(CompiledMICE(quad_grad, uniform, max_cost=40_000, seed=seed), X0, 1 / QUAD["L"])
        rms.append(np.sqrt(np.mean(np.square(errors[:-1]))))
        gaps.append((QUAD["F"](x) - QUAD["F"](QUAD["x_star"])) / (QUAD["F"](X0) - QUAD["F"](QUAD["x_star"])))
    assert np.median(rms) <= 0.577 and max(gaps) < 1e-6


def test_sample_complexity_not_worse_than_mice_1_0_5_and_close_to_the_numpy_path():
    runs = mice_runs(quad_grad, uniform, X0, 1 / QUAD["L"], steps=700, seeds=5, trace=quad_gap, max_cost=60_000)
    gaps, grads = np.asarray(runs.traced), np.asarray(runs.rows.num_grads)
    counts = np.median([[grads[s][gaps[s] <= g][0] for g in (1e-2, 1e-4, 1e-6)] for s in range(5)], axis=0)
    assert np.all(counts <= [2780, 10160, 17600])
    from opt_lab.book.mice_quadratic import evaluations_to
    numpy_counts = np.median([evaluations_to(run_mice(MICE(QUAD["grad"], QUAD["sampler"], max_cost=60_000, seed=s), QUAD),
                                             (1e-2, 1e-4, 1e-6)) for s in range(5)], axis=0)
    assert np.all(counts <= 1.5 * numpy_counts) and np.all(numpy_counts <= 1.5 * counts)


def test_level_with_all_samples_is_the_full_data_set():
    data = np.sort(np.random.default_rng(0).normal(size=(300, 2)), axis=0)  # sorted: sampling must not depend on the order
    est = CompiledMICE(finite_grad, data, eps=0.1, min_batch=5, max_cost=20_000, seed=0)
    x, checked = np.array([3.0, -2.0]), 0
    while not est.terminate:
        g = np.asarray(est(x))
        means, _, _ = SUMMARIES(est.cfg, est.state)
        for i in range(int(est.state.size)):
            if int(est.state.n[i]) == len(data):
                xi = np.asarray(est.state.x[i])
                np.testing.assert_allclose(np.asarray(means[i, 2:]), finite_grad(xi, data).mean(0), atol=1e-12)
                checked += 1
        x = x - 0.5 * g
    assert checked > 0


def test_vmapped_runs_are_the_sequential_runs():
    "Three runs advanced a pass per tick in lockstep equal each run alone, a scan over whole calls."
    keys = jax.random.split(jax.random.key(7), 3)
    together = mice_runs(quad_grad, uniform, X0, 1 / QUAD["L"], steps=60, seeds=keys, trace=quad_gap, max_cost=8000)
    for s in range(3):
        alone = mice_runs(quad_grad, uniform, X0, 1 / QUAD["L"], steps=60, seeds=keys[s:s + 1], trace=quad_gap, max_cost=8000)
        np.testing.assert_allclose(np.asarray(together.traced[s]), np.asarray(alone.traced[0]), rtol=1e-9, atol=1e-15)
        for field in ("num_grads", "hier_length", "events", "reason"):
            np.testing.assert_array_equal(np.asarray(getattr(together.rows, field)[s]), np.asarray(getattr(alone.rows, field)[0]))
        np.testing.assert_allclose(np.asarray(together.rows.grad_norm[s]), np.asarray(alone.rows.grad_norm[0]), rtol=1e-9)


def test_capacity_doubles_when_the_hierarchy_outgrows_it():
    est = CompiledMICE(quad_grad, uniform, capacity=2, max_cost=6000, seed=0, policy=DropRestartClipPolicy(drop_param=0.0))
    drive(est, X0, 1 / QUAD["L"])
    assert est.capacity_log and est.cfg.capacity == 2 ** (1 + len(est.capacity_log))
    assert est.get_log().hier_length.max() > 2


def test_a_run_does_not_depend_on_the_capacity():
    "Calls run on the fewest rows that hold the hierarchy (`row_buckets`); rows past it change nothing but rounding."
    options = dict(max_cost=40_000, eps=0.3, restart_factor=100, policy=DropRestartClipPolicy(drop_param=0.0))
    # 32 rows: calls on 16 rows, then on 32; 128 rows: every call on 32
    runs = [mice_runs(quad_grad, uniform, X0, 0.3 / QUAD["L"], 900, 1, trace=quad_gap, capacity=c, **options) for c in (32, 128)]
    assert int(runs[0].rows.hier_length.max()) + 1 > 16 and runs[0].capacity == 32
    for field in ("num_grads", "hier_length", "events", "reason"):
        np.testing.assert_array_equal(np.asarray(getattr(runs[0].rows, field)), np.asarray(getattr(runs[1].rows, field)))
    np.testing.assert_allclose(np.asarray(runs[0].traced), np.asarray(runs[1].traced), rtol=1e-9, atol=1e-15)
    # driven from Python, the host picks the rows: 32 rows (calls on 16, then 32) against 128 (every call on 32)
    ends, logs = [], []
    for capacity in (32, 128):
        est = CompiledMICE(quad_grad, uniform, capacity=capacity, seed=0, **options)
        ends.append(drive(est, X0, 0.3 / QUAD["L"], calls=900)[0])
        logs.append(est.get_log().groupby("iteration")[["num_grads", "hier_length"]].last().to_numpy())
    assert logs[0][:, 1].max() + 1 > 16
    np.testing.assert_array_equal(logs[0], logs[1])
    np.testing.assert_allclose(ends[0], ends[1], rtol=1e-9, atol=1e-15)


def test_seed_reproduces_a_run_and_seeds_differ():
    runs = [drive(CompiledMICE(quad_grad, uniform, max_cost=3000, seed=s), X0, 1 / QUAD["L"])[0] for s in (0, 0, 1)]
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])


def test_calls_consume_their_own_state_never_the_callers_arrays():
    "The state is donated to each call; the caller's key and iterates survive, and NumPy and JAX iterates run alike."
    key = jax.random.key(3)
    runs = []
    for as_array in (np.asarray, jnp.asarray):
        est, x = CompiledMICE(quad_grad, uniform, max_cost=2000, seed=key), as_array(X0)
        while not est.terminate:
            before = np.array(x)
            g = est(x)
            np.testing.assert_array_equal(np.asarray(x), before)
            x = as_array(np.asarray(x) - np.asarray(g) / QUAD["L"])
        runs.append(np.asarray(x))
        assert (est.counter, est.k) == (int(est.state.counter), int(est.state.k))  # the cached reads are the state's
    np.testing.assert_array_equal(jax.random.key_data(key), jax.random.key_data(jax.random.key(3)))
    np.testing.assert_array_equal(runs[0], runs[1])


def test_log_has_the_numpy_estimators_columns_and_events():
    est = CompiledMICE(quad_grad, uniform, max_cost=5000, seed=0, policy=DropRestartClipPolicy(restart_param=0.5))
    drive(est, X0, 1 / QUAD["L"])
    log = est.get_log()
    assert list(log.columns) == list(LOG_COLUMNS)
    assert {"start", "add", "dropped", "restart", "end"} <= set(log.event) <= set(EVENTS)
    assert log.terminate_reason.iloc[-1] == "max_cost" and log.iteration.iloc[-1] == est.k - 1


# -- failure modes and bad input ------------------------------------------------------------------------
def nan_beyond_origin(x, thetas):
    "Finite at the start, NaN once the iterate crosses x[0] = 10."
    g = quad_grad(x, thetas)
    return jnp.where(x[0] < 10.0, jnp.nan, g)


def zero_grad(x, thetas): return jnp.zeros((thetas.shape[0], x.shape[0]))


def test_nonfinite_gradients_end_the_run_and_never_return_nan():
    est = CompiledMICE(nan_beyond_origin, uniform, max_cost=20_000, seed=0)
    x = X0.copy()
    with pytest.warns(RuntimeWarning, match="nonfinite_gradient"):
        while not est.terminate:
            g = np.asarray(est(x))
            assert np.isfinite(g).all()
            x = x - g / QUAD["L"]
    assert est.terminate_reason == "nonfinite_gradient" and np.array_equal(g, np.zeros(2))


def test_zero_gradients_end_the_run_cleanly():
    est = CompiledMICE(zero_grad, uniform, seed=0)
    g = np.asarray(est(X0))
    assert est.terminate_reason == "zero_gradient" and np.array_equal(g, np.zeros(2))
    with pytest.raises(RuntimeError, match="has ended"): est(X0)


@pytest.mark.parametrize("kwargs, message", [
    (dict(eps=1.5), "eps"), (dict(min_batch=1), "min_batch"), (dict(max_cost=-1), "max_cost"), (dict(re_part=1), "re_part"),
    (dict(rows=0), "rows"), (dict(capacity=1), "capacity"), (dict(recorder=None), "recorder"),
    (dict(policy=DropRestartClipPolicy(clip_type="full"), re_quantile=2.0), "re_quantile")])
def test_bad_options_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message): CompiledMICE(quad_grad, uniform, **kwargs)


@pytest.mark.parametrize("sampler, message", [
    (np.array([[1.0, np.nan], [2.0, 3.0]]), "non-finite"), (np.zeros((1, 2)), "at least 2"), ("abc", "sampler"),
    (np.array(["a", "b"]), "sampler")])
def test_bad_data_is_refused(sampler, message):
    with pytest.raises(ValueError, match=message): CompiledMICE(finite_grad, sampler)


def test_bad_iterates_are_refused():
    est = CompiledMICE(quad_grad, uniform, seed=0)
    with pytest.raises(ValueError, match="non-finite"): est(np.array([np.nan, 1.0]))
    est(X0)
    with pytest.raises(ValueError, match="size of the first call"): est(np.ones(3))
    with pytest.raises(ValueError, match="x0"): mice_runs(quad_grad, uniform, np.array([np.inf, 0.0]), 0.1, 5, 2)
    with pytest.raises(ValueError, match="steps"): mice_runs(quad_grad, uniform, X0, 0.1, 0, 2)


def test_the_global_precision_is_left_alone():
    "The compiled path computes in float64 inside its calls only."
    import subprocess, sys
    code = ("import jax, numpy as np; from opt_lab.mice import CompiledMICE; from opt_lab.book.mice_quadratic import random_quadratic\n"
            "import jax.numpy as jnp\n"
            "def g(x, t): return jnp.outer(t, jnp.ones(2)) + x\n"
            "e = CompiledMICE(g, lambda k, n: jax.random.uniform(k, (n,)), max_cost=500, seed=0); e(np.ones(2)); e(np.zeros(2))\n"
            "print(jax.config.jax_enable_x64, e.state.psum.dtype)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "float64"]


LOGISTIC_RUNS = """
import jax, jax.numpy as jnp, numpy as np
from opt_lab.book.mice_compiled import _LOGISTIC_OPTIONS, logistic_grad, logistic_loss
from opt_lab.book.mice_logistic import logistic_problem, _prepare
from opt_lab.mice import mice_runs
problem = logistic_problem()
_prepare(problem)
with jax.enable_x64(True):
    runs = mice_runs(logistic_grad, problem["data"], problem["x0"], 1 / problem["L"], steps=1500, seeds=2,
                     trace=logistic_loss(problem["data"]), capacity=128, **(_LOGISTIC_OPTIONS | dict(max_cost=30 * problem["N"])))
gaps = (np.asarray(runs.traced) - problem["f_star"]) / problem["gap0"]
print(gaps.min(axis=1).max(), np.asarray(runs.rows.num_grads).max(), 30 * problem["N"])
"""


@pytest.mark.slow
def test_logistic_regression_reaches_1e_6_within_30_epochs():
    "Two vmapped seeds of the logistic chapter's SGD-MICE, compiled, in a fresh process (a large program: its own memory)."
    import subprocess, sys
    out = subprocess.run([sys.executable, "-c", LOGISTIC_RUNS], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    worst_gap, most_grads, budget = map(float, out.stdout.split())
    assert worst_gap <= 1e-6 and most_grads <= budget
