"MICE: the invariants, error control, budgets and failure modes that the issue asks for (see nbs/2*_mice_*.ipynb)."
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st

from opt_lab.mice import MICE, DropRestartClipPolicy, FiniteSampler, mice_error, optimal_sample_sizes, plot_mice
from opt_lab.book.mice_logistic import logistic_mice, logistic_problem
from opt_lab.book.mice_quadratic import evaluations_to, random_quadratic, rms_error, run_mice

QUAD = random_quadratic()


def counting(grad):
    "Wrap a grad so that it counts the per-sample gradients it returns."
    seen = [0]
    def wrapped(x, thetas):
        out = grad(x, thetas)
        seen[0] += len(out)
        return out
    return wrapped, seen


def quad_est(**kw):
    return MICE(QUAD["grad"], QUAD["sampler"], **kw)


def drive(est, x0, step, calls=None):
    x, k = np.array(x0, float), 0
    while not est.terminate and (calls is None or k < calls):
        x = x - step * est(x)
        k += 1
    return x


# -- finite sums -------------------------------------------------------------------------------------
def test_level_with_all_samples_is_the_full_data_set():
    rng = np.random.default_rng(0)
    data = np.sort(rng.normal(size=(300, 2)), axis=0)  # sorted: sampling must not depend on the order
    grad = lambda x, rows: x - rows + 0.1 * rows * x
    full = lambda x: grad(x, data).mean(0)
    est = MICE(grad, data, eps=0.1, min_batch=5, max_cost=20_000, seed=0)
    x, checked = np.array([3.0, -2.0]), 0
    while not est.terminate:
        g = est(x)
        for lvl in est.levels:
            if lvl.m == len(data):
                np.testing.assert_allclose(lvl.mean_grad, full(lvl.x), atol=1e-12)
                checked += 1
        x = x - 0.5 * g
    assert checked > 0


def test_finite_sampler_is_a_permutation_whatever_the_order():
    data = np.arange(1000.0)
    draws = FiniteSampler(data, np.random.default_rng(1))
    first = draws(50)
    assert abs(first.mean() - 499.5) < 150  # not the first 50 rows
    rest = np.concatenate([draws(n) for n in (100, 300, 550)])
    np.testing.assert_array_equal(np.sort(np.concatenate([first, rest])), data)


# -- error control -----------------------------------------------------------------------------------
def test_error_control_on_the_quadratic():
    log = run_mice(quad_est(max_cost=40_000, seed=3), QUAD)
    assert rms_error(log) <= 1.1 * 0.577


def test_error_control_and_convergence_on_logistic_regression():
    problem = logistic_problem()
    log = run_mice(logistic_mice(problem, seed=1), problem)
    assert rms_error(log) <= 1.1 * 0.577
    assert (log.gap <= 1e-6).any()


def test_sample_complexity_not_worse_than_mice_1_0_5():
    counts = np.median([evaluations_to(run_mice(quad_est(max_cost=60_000, seed=s), QUAD)) for s in range(5)], axis=0)
    assert np.all(counts <= [2780, 10160, 17600, 35856])


# -- costs and budget ----------------------------------------------------------------------------------
def test_every_evaluation_counted_once_differences_cost_two():
    grad, seen = counting(QUAD["grad"])
    est = MICE(grad, QUAD["sampler"], max_cost=5000, seed=0)
    drive(est, QUAD["x0"], 1 / QUAD["L"])
    assert est.counter == seen[0]
    assert est.levels[0].cost == 1 and all(lvl.cost == 2 for lvl in est.levels[1:])


@settings(max_examples=25, deadline=None)
@given(budget=st.integers(1, 6000), seed=st.integers(0, 10**6), finite=st.booleans(), clip=st.sampled_from([None, "full", "all"]))
def test_max_cost_is_a_hard_budget(budget, seed, finite, clip):
    rng = np.random.default_rng(seed)
    sampler = rng.uniform(size=400) if finite else QUAD["sampler"]
    grad, seen = counting(QUAD["grad"])
    est = MICE(grad, sampler, max_cost=budget, seed=seed, policy=DropRestartClipPolicy(clip_type=clip))
    x = drive(est, QUAD["x0"], 1 / QUAD["L"])
    assert est.counter <= budget and est.counter == seen[0]
    assert est.terminate_reason == "max_cost" and np.isfinite(x).all()


@settings(max_examples=40, deadline=None)
@given(V=st.lists(st.floats(1e-6, 1e3), min_size=1, max_size=8), tol=st.floats(1e-3, 10.0),
       N=st.one_of(st.none(), st.integers(2, 10**5)), data=st.data())
def test_optimal_sizes_meet_the_tolerance_within_bounds(V, tol, N, data):
    held = data.draw(st.lists(st.integers(2, 10**4), min_size=len(V), max_size=len(V)))
    cost = [1] + [2] * (len(V) - 1)
    sizes = optimal_sample_sizes(V, cost, tol, N, lower=held)
    cap = np.inf if N is None else N
    assert np.all(sizes >= np.minimum(held, cap) - 1e-9) and np.all(sizes <= cap)
    # the error of a level just below N is V/M - V/N: rounding in that difference scales with V/M, not with tol
    assert mice_error(V, sizes, N) <= tol**2 * (1 + 1e-9) + 1e-13 * np.sum(np.asarray(V) / sizes)


@settings(max_examples=40, deadline=None)
@given(V=st.lists(st.one_of(st.just(0.0), st.floats(1e-3, 1e4)), min_size=1, max_size=6), tol=st.floats(0.05, 3.0),
       N=st.one_of(st.none(), st.integers(50, 5000)), data=st.data())
def test_optimal_sizes_are_the_optimum_of_the_constrained_problem(V, tol, N, data):
    "Cross-check against scipy's SLSQP: no feasible sizes within the bounds cost less."
    from scipy.optimize import minimize
    held = data.draw(st.lists(st.integers(0, 3000), min_size=len(V), max_size=len(V)))
    cost = [1] + [2] * (len(V) - 1)
    sizes = optimal_sample_sizes(V, cost, tol, N, lower=held)
    live = [i for i, v in enumerate(V) if v > 0]
    if not live or N is None and any(held[i] == 0 for i in live): return  # SLSQP needs a strictly positive start
    cap = 1e9 if N is None else N
    lower = [max(min(held[i], cap), 1e-6) for i in live]
    error = lambda s: sum(V[i] / m * (1 - (m / N if N else 0.0)) for i, m in zip(live, s))
    best = minimize(lambda s: sum(cost[i] * m for i, m in zip(live, s)), x0=[cap if N else max(h, 1e4) for h in lower],
                    bounds=[(lo, cap) for lo in lower], constraints=[{"type": "ineq", "fun": lambda s: tol**2 - error(s)}],
                    method="SLSQP", options=dict(maxiter=500, ftol=1e-12))
    ours = sum(cost[i] * sizes[i] for i in live)
    if best.success and error(best.x) <= tol**2 * (1 + 1e-6):
        assert ours <= best.fun * (1 + 1e-6) + 1e-6


@pytest.mark.parametrize("problem", ["quadratic", "logistic"])
def test_top_ups_meet_the_tolerance_and_avoid_tiny_passes(problem):
    "Every pass plans sizes (targets where it grows, what is held elsewhere) that meet tol², and at most one level grows by less than min_batch."
    from opt_lab.mice.theory import _error_model
    if problem == "quadratic": est, p, calls = quad_est(seed=2, policy=DropRestartClipPolicy(drop_param=0.0)), QUAD, 150
    else: p = logistic_problem(); est, calls = logistic_mice(p, seed=2), 120
    plans = []
    def recording(tol, _top_ups=est._top_ups):
        out = _top_ups(tol)
        plans.append((tol, *est._levels(), out))
        return out
    est._top_ups = recording
    drive(est, p["x0"], 1 / p["L"], calls=calls)
    checked = 0
    for tol, v, _, held, out in plans:
        if np.isinf(v).any(): continue
        sizes = [float(h) for h in held]
        for i, h, target in out: sizes[i] = target
        assert _error_model(v, sizes, est.data_size) <= tol * tol * (1 + 1e-9)
        assert sum(target - h < est.min_batch - 1e-9 for _, h, target in out) <= 1
        checked += bool(out)
    assert checked >= 20  # enough passes that grew something


def test_level_stack_summaries_match_direct_statistics():
    "Shifted sums in, means, variances and leave-one-out deviations out, through removals and a restart."
    from opt_lab.mice.state import LevelStack, loo_deviations, partition_sums
    rng = np.random.default_rng(3)
    d, parts, N = 3, 4, 500
    stack, kept = LevelStack(d, parts, population=N, capacity=2), []
    for level in range(5):
        m = rng.integers(2, 60)
        g, g_prev = (rng.normal(100.0 * level, 0.01 + level, size=(m, d)) for _ in range(2))  # large means, small spread
        stack.append(rng.normal(size=d), 1 if level == 0 else 2)
        if level == 0:
            for chunk in np.array_split(g, 3): stack.absorb(level, chunk)
            kept.append(np.concatenate([g, g], axis=1))
        else:
            for a, b in zip(np.array_split(g, 3), np.array_split(g_prev, 3)): stack.absorb(level, a, b)
            kept.append(np.concatenate([g - g_prev, g], axis=1))
    stack.remove(2); del kept[2]
    stack.keep_from(1); del kept[0]
    kept[0] = np.concatenate([kept[0][:, d:], kept[0][:, d:]], axis=1)
    for i, rows in enumerate(kept):
        n = len(rows)
        np.testing.assert_allclose(stack.means()[i], rows.mean(0), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(stack.variances(0)[i], rows[:, :d].var(0, ddof=1).sum(), rtol=1e-9)
        np.testing.assert_allclose(stack.variances(1)[i], rows[:, d:].var(0, ddof=1).sum(), rtol=1e-9)
        direct = loo_deviations(rows[:, :d].sum(0), partition_sums(rows[:, :d], 0, parts), n) * np.sqrt((parts - 1) * (1 - n / N))
        np.testing.assert_allclose(stack.deviations()[i], direct, rtol=1e-9, atol=1e-12)
    assert stack.cost[0] == 1 and len(stack) == 3


def test_finite_sampler_draws_every_index_equally_often():
    counts = np.zeros(20)
    for seed in range(2000):
        draws = FiniteSampler(np.arange(20), np.random.default_rng(seed))
        counts[draws.draw_indices(3)] += 1
        counts[draws.draw_indices(2)] += 1  # a second round, rejecting what the first one took
    expected = 2000 * 5 / 20
    assert np.abs(counts - expected).max() < 5 * np.sqrt(expected)


# -- reproducibility and failures ----------------------------------------------------------------------
def test_seed_reproduces_runs_and_differs_between_seeds():
    data = np.random.default_rng(0).normal(size=(500, 2))
    grad = lambda x, rows: x - rows
    run = lambda seed: drive(MICE(grad, data, max_cost=3000, seed=seed), [5.0, 5.0], 0.5)
    np.testing.assert_array_equal(run(4), run(4))
    assert not np.array_equal(run(4), run(5))
    np.testing.assert_array_equal(drive(quad_est(max_cost=3000, seed=2), QUAD["x0"], 0.01),
                                  drive(quad_est(max_cost=3000, seed=2), QUAD["x0"], 0.01))


def test_zero_gradients_end_the_run_cleanly():
    est = MICE(lambda x, t: np.zeros((len(t), 2)), QUAD["sampler"], seed=0)
    g = est(np.ones(2))
    assert est.terminate and est.terminate_reason.startswith("zero_gradient")
    np.testing.assert_array_equal(g, 0.0)


def test_nonfinite_gradients_end_the_run_and_never_return_nan():
    calls = [0]
    def grad(x, thetas):
        calls[0] += 1
        out = QUAD["grad"](x, thetas)
        if calls[0] > 6: out[0, 0] = np.nan
        return out
    est = MICE(grad, QUAD["sampler"], seed=0)
    with pytest.warns(RuntimeWarning, match="MICE stopped: nonfinite_gradient"):
        x = drive(est, QUAD["x0"], 1 / QUAD["L"])
    assert est.terminate_reason.startswith("nonfinite_gradient") and "level" in est.terminate_reason
    assert np.isfinite(x).all()
    with pytest.raises(RuntimeError, match="has ended"): est(x)


def test_grad_shape_is_checked_on_every_call():
    calls = [0]
    def grad(x, thetas):
        calls[0] += 1
        out = QUAD["grad"](x, thetas)
        return out[:, :1] if calls[0] > 5 else out
    est = MICE(grad, QUAD["sampler"], seed=0)
    with pytest.raises(ValueError, match="must return shape"):
        drive(est, QUAD["x0"], 1 / QUAD["L"], calls=50)


@pytest.mark.parametrize("kwargs, message", [
    (dict(eps=-1), r"eps must be in \(0, 1\)"), (dict(eps=1.0), r"eps must be in \(0, 1\)"), (dict(min_batch=1), "min_batch"), (dict(stop_crit_prob=1.0), "stop_crit_prob"),
    (dict(re_part=1), "re_part"), (dict(max_cost=0), "max_cost"), (dict(policy="drop"), "policy must be"),
    (dict(re_max_samp=1, re_min_n=5), "re_max_samp")])
def test_bad_hyperparameters_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message): quad_est(**kwargs)


def test_bad_iterates_are_refused():
    est = quad_est(seed=0)
    est(np.ones(2))
    with pytest.raises(ValueError, match="shape of the first call"): est(np.ones(3))
    with pytest.raises(ValueError, match="non-finite"): est(np.array([np.nan, 1.0]))
    x = np.array([1.0, 2.0])
    est(x)
    np.testing.assert_array_equal(x, [1.0, 2.0])


# -- the log and the plot ------------------------------------------------------------------------------
def test_every_event_is_logged_and_drawn():
    import matplotlib.pyplot as plt
    est = quad_est(max_cost=30_000, seed=0, policy=DropRestartClipPolicy(clip_type="all"))
    log = run_mice(est, QUAD)
    events = set(log.event)
    assert {"start", "add", "dropped", "restart", "clip", "end"} <= events
    per_call = log.groupby("iteration").event.apply(list)
    assert any(len(e) > 1 for e in per_call)  # several events in one call are all kept
    fig, ax = plt.subplots()
    plot_mice(log, ax, "num_grads", "gap")
    assert {"Start", "Add", "Dropped", "Restart", "Clip", "End"} <= set(ax.get_legend_handles_labels()[1])
    plt.close(fig)


def test_seed_style_script_runs_with_only_the_import_changed():
    import matplotlib.pyplot as plt
    from opt_lab.mice import MICE, plot_mice  # was: from mice import MICE, plot_mice
    df = MICE(QUAD["grad"], sampler=lambda n: np.random.default_rng(0).uniform(size=n), eps=0.577, max_cost=5000)
    x = QUAD["x0"].copy()
    while not df.terminate: x = x - df(x) / QUAD["L"]
    log = pd.DataFrame(df.get_log())
    fig, ax = plt.subplots()
    plot_mice(log, ax, "num_grads", "grad_norm", style="loglog", markers=True, legend=True, color="C0")
    plt.close(fig)
    assert df.counter <= 5000 and df.terminate_reason == "max_cost"


# -- the JAX path ----------------------------------------------------------------------------------------
def test_pytree_parameters_with_per_sample_grad_match_numpy():
    import jax.numpy as jnp
    from opt_lab.mice import per_sample_grad
    def loss(params, theta):
        H = jnp.array([[1.0, 0.0], [0.0, 1.0]]) * (1 - theta) + jnp.array([[200.0, 0.5], [0.5, 1.0]]) * theta
        x = jnp.concatenate([params["a"], params["b"]])
        return 0.5 * x @ H @ x - x.sum()
    grad = per_sample_grad(loss)
    x = np.array([20.0, 50.0])
    thetas = np.random.default_rng(0).uniform(size=7)
    np.testing.assert_allclose(grad({"a": jnp.array(x[:1]), "b": jnp.array(x[1:])}, thetas), QUAD["grad"](x, thetas), rtol=1e-5)
    est = MICE(grad, QUAD["sampler"], max_cost=2000, seed=0)
    g = est({"a": jnp.array([20.0]), "b": jnp.array([50.0])})
    assert set(g) == {"a", "b"} and g["a"].shape == (1,)
