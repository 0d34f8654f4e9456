"""PolyakSGD against jaxopt.PolyakSGD (test-only oracle) where jaxopt is right, and each of jaxopt's
measured failures fixed here."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from opt_lab.book.problems import least_squares_problem
from opt_lab.polyak import PolyakSGD, polyak_sgd
from opt_lab.transform import apply_updates

jaxopt = pytest.importorskip("jaxopt")

A, Y, LOSS = least_squares_problem(n=40, d=30, noise=0.1, seed=3)


def _batches(steps, seed=0, size=4):
    rng = np.random.default_rng(seed)
    return [(A[i], Y[i]) for i in (rng.choice(A.shape[0], size, replace=False) for _ in range(steps))]


@pytest.mark.parametrize("kw", [dict(), dict(momentum=0.9), dict(delta=1e-3, max_stepsize=0.5),
                                dict(max_stepsize=10.0, momentum=0.5, delta=1e-6)])
def test_update_matches_jaxopt_on_a_fixed_batch_sequence(kw):
    ours, ref = PolyakSGD(LOSS, **kw), jaxopt.PolyakSGD(LOSS, **kw)
    x0 = jnp.zeros(30)
    batches = _batches(200)
    p1, s1 = x0, ours.init_state(x0, data=batches[0])
    p2, s2 = x0, ref.init_state(x0, data=batches[0])
    for k, b in enumerate(batches):
        p1, s1 = ours.update(p1, s1, data=b)
        p2, s2 = ref.update(p2, s2, data=b)
        err = float(jnp.linalg.norm(p1 - p2) / jnp.linalg.norm(p2))
        assert err <= 1e-12, f"step {k}: {err:.3g}"
        np.testing.assert_allclose(float(s1.stepsize), float(s2.stepsize), rtol=1e-12)
        np.testing.assert_allclose(float(s1.error), float(s2.error), rtol=1e-12)
        np.testing.assert_allclose(float(s1.value), float(s2.value), rtol=1e-12)
    assert int(s1.iter_num) == int(s2.iter_num) == 200


def test_transform_matches_the_solver():
    tx, solver = polyak_sgd(max_stepsize=2.0, momentum=0.3), PolyakSGD(LOSS, max_stepsize=2.0, momentum=0.3)
    x, state = jnp.zeros(30), None
    xs, ss = jnp.zeros(30), solver.init_state(jnp.zeros(30), data=_batches(1)[0])
    state = tx.init(x)
    for b in _batches(50, seed=1):
        value, grad = jax.value_and_grad(LOSS)(x, b)
        updates, state = tx.update(grad, state, x, value=value)
        x = apply_updates(x, updates)
        xs, ss = solver.update(xs, ss, data=b)
    np.testing.assert_allclose(x, xs, rtol=1e-13)


def test_no_nan_at_an_exact_minimiser():
    loss = lambda x: 0.5 * jnp.sum(x ** 2)
    _, ref_state = jaxopt.PolyakSGD(loss, delta=0.0).update(jnp.zeros(3), jaxopt.PolyakSGD(loss).init_state(jnp.zeros(3)))
    ref_params, _ = jaxopt.PolyakSGD(loss, delta=0.0).update(jnp.zeros(3), jaxopt.PolyakSGD(loss).init_state(jnp.zeros(3)))
    assert bool(jnp.isnan(ref_params).all())  # the original's failure, still there
    solver = PolyakSGD(loss, delta=0.0)
    params, state = solver.update(jnp.zeros(3), solver.init_state(jnp.zeros(3)))
    np.testing.assert_array_equal(params, jnp.zeros(3))
    assert float(state.stepsize) == 0.0


def _slow_problem():
    # an ill-conditioned quadratic: the Polyak step makes the gradient norm go up and down, so the
    # norm *before* the last step says little about the norm after it
    scales = jnp.array([1.0, 30.0, 300.0])
    return lambda x: 0.5 * jnp.sum(scales * (x - 1.0) ** 2)


def test_run_returns_parameters_that_meet_tol():
    fun, tol = _slow_problem(), 1e-6
    ref = jaxopt.PolyakSGD(fun, maxiter=20_000, tol=tol)
    p_ref, s_ref = ref.run(jnp.zeros(3))
    true_ref = float(jnp.linalg.norm(jax.grad(fun)(p_ref)))
    ours = PolyakSGD(fun, maxiter=20_000, tol=tol)
    p, s = ours.run(jnp.zeros(3))
    true = float(jnp.linalg.norm(jax.grad(fun)(p)))
    assert int(s.iter_num) < 20_000
    assert true <= tol and float(s.error) == pytest.approx(true, rel=1e-12)
    assert float(s_ref.error) <= tol < true_ref  # the original reports tol met while its answer misses it


def test_run_iterator_honours_tol():
    fun = lambda x, data: 0.5 * jnp.sum((x - data) ** 2)
    batches = (jnp.ones(2) for _ in range(500))
    ref_params, ref_state = jaxopt.PolyakSGD(fun, tol=1e-2, maxiter=400).run_iterator(jnp.zeros(2), batches)
    assert int(ref_state.iter_num) == 400  # ran to maxiter although the first step already met tol
    params, state = PolyakSGD(fun, tol=1e-2, maxiter=400, max_stepsize=0.1).run_iterator(jnp.zeros(2), (jnp.ones(2) for _ in range(500)))
    assert int(state.iter_num) < 400 and float(state.error) <= 1e-2
    assert float(jnp.linalg.norm(params - 1.0)) <= 1e-2


def test_changed_hyperparameters_take_effect():
    fun = _slow_problem()
    ref = jaxopt.PolyakSGD(fun, maxiter=50, tol=0.0)
    a, _ = ref.run(jnp.zeros(3))
    ref.max_stepsize = 1e-4
    b, _ = ref.run(jnp.zeros(3))
    assert bool(jnp.all(a == b))  # the original silently keeps the first call's max_stepsize
    ours = PolyakSGD(fun, maxiter=50, tol=0.0)
    a, _ = ours.run(jnp.zeros(3))
    ours.max_stepsize = 1e-4
    b, _ = ours.run(jnp.zeros(3))
    fresh, _ = PolyakSGD(fun, maxiter=50, tol=0.0, max_stepsize=1e-4).run(jnp.zeros(3))
    np.testing.assert_array_equal(b, fresh)
    assert float(jnp.abs(a - b).max()) > 0.1


def test_has_aux_and_value_and_grad_forms():
    def with_aux(x): return 0.5 * jnp.sum(x ** 2), {"norm": jnp.linalg.norm(x)}
    def vg(x): return 0.5 * jnp.sum(x ** 2), x
    p1, s1 = PolyakSGD(with_aux, has_aux=True, tol=1e-10).run(jnp.ones(3))
    p2, s2 = PolyakSGD(vg, value_and_grad=True, tol=1e-10).run(jnp.ones(3))
    np.testing.assert_allclose(p1, p2)
    assert float(s1.aux["norm"]) == pytest.approx(float(jnp.linalg.norm(p1)))


def test_pre_update_is_applied():
    clip = lambda params, state, *a, **k: (jnp.clip(params, -0.5, 0.5), state)
    p, _ = PolyakSGD(lambda x: 0.5 * jnp.sum((x - 2.0) ** 2), pre_update=clip, maxiter=20, tol=0.0).run(jnp.zeros(2))
    assert float(jnp.max(jnp.abs(p))) <= 2.0


@pytest.mark.parametrize("kw,message", [(dict(max_stepsize=0.0), "max_stepsize must be > 0"),
                                        (dict(delta=-1.0), "delta must be >= 0"),
                                        (dict(momentum=1.0), "momentum must be in [0, 1)"),
                                        (dict(maxiter=-3), "maxiter must be an integer >= 0, got -3"),
                                        (dict(tol=-1e-3), "tol must be >= 0"),
                                        (dict(variant="SPS"), "variant must be")])
def test_bad_hyperparameters(kw, message):
    with pytest.raises(ValueError) as err: PolyakSGD(lambda x: jnp.sum(x ** 2), **kw)
    assert message in str(err.value)


def test_empty_iterator_is_an_error():
    with pytest.raises(ValueError, match="gave no batch"): PolyakSGD(LOSS).run_iterator(jnp.zeros(30), iter([]))


# jaxopt's solver contract: OptStep, the seed's positional order, optimality_fun, attributes, jit, unroll, verbose


def test_run_is_the_same_as_maxiter_updates_and_as_jaxopt():
    batch = _batches(1)[0]
    ours = PolyakSGD(LOSS, maxiter=40, tol=0.0, momentum=0.5)
    out = ours.run(jnp.zeros(30), data=batch)
    assert isinstance(out, tuple) and out._fields == ("params", "state")
    p, s = jnp.zeros(30), ours.init_state(jnp.zeros(30), data=batch)
    for _ in range(40): p, s = ours.update(p, s, data=batch)
    np.testing.assert_array_equal(out.params, p)
    ref = jaxopt.PolyakSGD(LOSS, maxiter=40, tol=0.0, momentum=0.5).run(jnp.zeros(30), data=batch)
    np.testing.assert_allclose(out.params, ref.params, rtol=1e-12)
    assert int(out.state.iter_num) == int(ref.state.iter_num) == 40


@pytest.mark.parametrize("options", [dict(jit=False), dict(unroll=True), dict(jit=False, unroll=False), dict(verbose=7)])
def test_every_loop_gives_the_same_run(options, capsys):
    fun = _slow_problem()
    base = PolyakSGD(fun, maxiter=300, tol=1e-6).run(jnp.zeros(3))
    other = PolyakSGD(fun, maxiter=300, tol=1e-6, **options).run(jnp.zeros(3))
    np.testing.assert_allclose(other.params, base.params, rtol=1e-13)
    assert int(other.state.iter_num) == int(base.state.iter_num)
    printed = capsys.readouterr().out
    if options.get("verbose"):
        lines = printed.splitlines()
        assert len(lines) == int(base.state.iter_num) // 7 and lines[0].startswith("PolyakSGD iter 7: value")
    else:
        assert printed == ""


def test_pre_update_runs_once_per_step_in_run():
    shrink = lambda params, state, *a, **k: (0.9 * params, state)
    fun = lambda x: 0.5 * jnp.sum((x - 2.0) ** 2)
    solver = PolyakSGD(fun, pre_update=shrink, maxiter=12, tol=0.0)
    p, s = jnp.ones(2), solver.init_state(jnp.ones(2))
    for _ in range(12): p, s = solver.update(p, s)
    run = solver.run(jnp.ones(2))
    np.testing.assert_allclose(run.params, p, rtol=1e-14)
    ref = jaxopt.PolyakSGD(fun, pre_update=shrink, maxiter=12, tol=0.0).run(jnp.ones(2))
    np.testing.assert_allclose(ref.params, p, rtol=1e-12)   # jaxopt agrees: 12 pre-updates for 12 steps
    calls = []
    def counting(params, state, *a, **k):
        calls.append(1)
        return params, state
    PolyakSGD(fun, pre_update=counting, maxiter=12, tol=0.0, jit=False).run(jnp.ones(2))
    assert len(calls) == 12


def test_positional_arguments_follow_the_seed_order():
    solver = PolyakSGD(LOSS, False, False, 2.0, 1e-6, 0.25, None, 77, 1e-4, 0, False, None, "auto", "auto")
    assert (solver.max_stepsize, solver.delta, solver.momentum, solver.maxiter, solver.tol) == (2.0, 1e-6, 0.25, 77, 1e-4)
    assert (solver.fun_min, solver.variant) == (0.0, "SPS_max")
    with pytest.raises(TypeError): PolyakSGD(LOSS, False, False, 1.0, 0.0, 0.0, None, 10, 1e-3, 0, False, None, "auto", "auto", 0.0)


def test_attributes_and_optimality_fun():
    solver = PolyakSGD(LOSS, max_stepsize=3.0)
    ref = jaxopt.PolyakSGD(LOSS, max_stepsize=3.0)
    assert set(solver.attribute_names()) >= set(ref.attribute_names())
    assert dict(zip(solver.attribute_names(), solver.attribute_values()))["max_stepsize"] == 3.0
    x, batch = jnp.linspace(-1, 1, 30), _batches(1)[0]
    np.testing.assert_allclose(solver.optimality_fun(x, data=batch), ref.optimality_fun(x, data=batch), rtol=1e-13)
    np.testing.assert_allclose(solver.l2_optimality_error(x, data=batch), ref.l2_optimality_error(x, data=batch), rtol=1e-13)


@pytest.mark.parametrize("kw,message", [(dict(jit="yes"), "jit must be True, False or 'auto'"),
                                        (dict(unroll=2), "unroll must be True, False or 'auto'"),
                                        (dict(implicit_diff_solve=3), "implicit_diff_solve must be a callable")])
def test_bad_loop_options(kw, message):
    with pytest.raises(ValueError, match=message): PolyakSGD(LOSS, **kw)


def test_implicit_diff_with_a_custom_linear_solve_matches_the_closed_form():
    X = jnp.array([[1.0, 2.0], [0.5, -1.0], [2.0, 0.3]])
    y = jnp.array([1.0, 0.0, 2.0])
    ridge = lambda w, lam: 0.5 * jnp.sum((X @ w - y) ** 2) + 0.5 * lam * jnp.sum(w ** 2)
    exact = lambda lam: jnp.linalg.solve(X.T @ X + lam * jnp.eye(2), X.T @ y)
    dense = lambda matvec, b: jnp.linalg.solve(jax.jacfwd(matvec)(jnp.zeros_like(b)), b)
    for solve in (None, dense):
        solver = PolyakSGD(ridge, maxiter=5000, tol=1e-10, implicit_diff=True, implicit_diff_solve=solve,
                           fun_min=float(ridge(exact(1.0), 1.0)))
        got = jax.jacrev(lambda lam: solver.run(jnp.zeros(2), lam).params)(1.0)
        np.testing.assert_allclose(got, jax.jacrev(exact)(1.0), rtol=1e-7)
