"""Bad input, generated: every class of bad input the public API meets gets a `ValueError` (or, for a non-finite number
found while stepping, a `FloatingPointError`) that names the parameter; every valid numeric type is accepted; nothing a
caller passes is mutated. The EM units property lives in tests/test_em_units.py.

Classes: hyper-parameters out of their domain or not real numbers; shapes, structures and dtypes of parameters and
gradients; non-finite values, losses and schedules inside a step; checkpoints of another optimizer, layout or with
non-finite values; MICE's parameters, `x`, `grad` and sampler; EM data, model parameters and rules; `log_kv`."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st

from opt_lab.em import (AffineUpdate, BatchEMFitter, EWMAUpdate, GeneralizedHyperbolic, IdentityUpdate, IncrementalEMFitter,
                        NormalInverseGaussian, RobbinsMonroUpdate, Shrinkage, VarianceGamma, log_kv)
from opt_lab.mice import MICE
from opt_lab.optim import Optimizer, PolyakSGD, adam, apply_updates, polyak_sgd, rmsprop, sgd

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
COMPILING = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- numbers: what is not a real number, and every type a real number may come in ---------------------------------------------
not_real = st.one_of(st.text(max_size=4), st.complex_numbers(allow_nan=False).filter(lambda z: z.imag != 0), st.booleans(),
                     st.just(float("nan")), st.lists(st.floats(0.1, 1), min_size=2, max_size=3))


def as_every_type(value: float):
    "The same number as a Python float, NumPy float32/float64, a JAX scalar (and an int where it is one)."
    kinds = [st.just(float(value)), st.just(np.float64(value)), st.just(np.float32(value)), st.just(jnp.float32(value))]
    if float(value).is_integer(): kinds += [st.just(int(value)), st.just(np.int64(int(value)))]
    return st.one_of(kinds)


positive = st.floats(1e-6, 10.0)
unit_interval = st.floats(0.0, 0.999)

# factory -> {name: (valid values, invalid values)}
DOMAINS = {
    sgd: {"learning_rate": (positive, st.one_of(st.floats(max_value=0.0), st.just(math.inf), not_real)),
          "momentum": (unit_interval, st.one_of(st.floats(max_value=-1e-9), st.floats(min_value=1.0), not_real))},
    adam: {"learning_rate": (positive, st.one_of(st.floats(max_value=0.0), st.just(math.inf), not_real)),
           "b1": (unit_interval, st.one_of(st.floats(max_value=-1e-9), st.floats(min_value=1.0), not_real)),
           "b2": (unit_interval, st.one_of(st.floats(max_value=-1e-9), st.floats(min_value=1.0), not_real)),
           "eps": (positive, st.one_of(st.floats(max_value=0.0), st.just(math.inf), not_real)),
           "eps_root": (st.floats(0.0, 1.0), st.one_of(st.floats(max_value=-1e-9), st.just(math.inf), not_real))},
    rmsprop: {"decay": (unit_interval, st.one_of(st.floats(max_value=-1e-9), st.floats(min_value=1.0), not_real)),
              "eps": (positive, st.one_of(st.floats(max_value=0.0), not_real)),
              "momentum": (unit_interval, st.one_of(st.floats(min_value=1.0), not_real))},
    polyak_sgd: {"max_stepsize": (positive, st.one_of(st.floats(max_value=0.0), st.just(math.inf), not_real)),
                 "delta": (st.floats(0.0, 1.0), st.one_of(st.floats(max_value=-1e-9), not_real)),
                 "fun_min": (st.floats(-10.0, 10.0), st.one_of(st.just(math.inf), st.just(-math.inf), not_real)),
                 "momentum": (unit_interval, st.one_of(st.floats(min_value=1.0), not_real))},
}
CASES = [(factory, name) for factory, names in DOMAINS.items() for name in names]


@pytest.mark.parametrize("factory,name", CASES, ids=[f"{f.__name__}-{n}" for f, n in CASES])
@FAST
@given(data=st.data())
def test_hyperparameter_out_of_domain_is_named(factory, name, data):
    bad = data.draw(DOMAINS[factory][name][1])
    with pytest.raises(ValueError, match=rf"^{name} must .*got"):
        factory(**{name: bad})


@pytest.mark.parametrize("factory,name", CASES, ids=[f"{f.__name__}-{n}" for f, n in CASES])
@FAST
@given(data=st.data())
def test_hyperparameter_of_every_numeric_type_is_accepted(factory, name, data):
    value = data.draw(DOMAINS[factory][name][0].flatmap(as_every_type))
    tx = factory(**{name: value})
    params = {"w": jnp.ones(3)}
    updates, _ = tx.update({"w": jnp.full(3, 0.5)}, tx.init(params), params, value=jnp.float32(1.0))
    assert np.isfinite(np.asarray(updates["w"])).all()


# --- shapes, structures and dtypes -----------------------------------------------------------------------------------------------
shapes = st.lists(st.integers(1, 4), min_size=0, max_size=3).map(tuple)


@COMPILING
@given(param_shape=shapes, grad_shape=shapes, factory=st.sampled_from([sgd, adam, rmsprop]), jit=st.booleans())
def test_gradient_of_another_shape_is_refused_while_tracing(param_shape, grad_shape, factory, jit):
    assume(param_shape != grad_shape)
    tx, params = factory(), {"w": jnp.ones(param_shape)}
    step = jax.jit(tx.update) if jit else tx.update
    with pytest.raises(ValueError, match=r"grads\['w'\]"):
        step({"w": jnp.ones(grad_shape)}, tx.init(params), params)


@FAST
@given(dtype=st.sampled_from([np.int32, np.int64, np.bool_, np.complex64, np.uint8]), factory=st.sampled_from([sgd, adam, polyak_sgd]),
       where=st.sampled_from(["params", "grads"]))
def test_non_float_arrays_are_refused_by_name(dtype, factory, where):
    tx, good = factory(), {"w": jnp.ones(3)}
    bad = {"w": jnp.ones(3, dtype)}
    with pytest.raises(ValueError, match=rf"{where}\['w'\] must have a real floating dtype"):
        if where == "params": tx.init(bad)
        else: tx.update(bad, tx.init(good), good)


@pytest.mark.parametrize("empty", [{}, [], ()])
def test_empty_parameters_are_refused(empty):
    with pytest.raises(ValueError, match="params must hold at least one array"):
        adam().init(empty)


@FAST
@given(param_shape=shapes.filter(bool), update_shape=shapes.filter(bool))
def test_apply_updates_checks_shapes_and_dtypes(param_shape, update_shape):
    assume(param_shape != update_shape)
    with pytest.raises(ValueError, match=r"updates\['w'\] must have shape"):
        apply_updates({"w": jnp.ones(param_shape)}, {"w": jnp.ones(update_shape)})
    with pytest.raises(ValueError, match=r"params\['w'\] must have a real floating dtype"):
        apply_updates({"w": jnp.ones(param_shape, jnp.int32)}, {"w": jnp.ones(param_shape)})


# --- non-finite numbers inside a step ----------------------------------------------------------------------------------------------
nonfinite = st.sampled_from([math.nan, math.inf, -math.inf])
JIT_RAISED = (FloatingPointError, jax.errors.JaxRuntimeError)


@COMPILING
@given(bad=nonfinite, where=st.sampled_from(["grads", "value", "schedule"]), factory=st.sampled_from([sgd, adam, polyak_sgd]))
def test_nonfinite_numbers_in_a_step_raise_or_are_skipped(bad, where, factory):
    learning = {"learning_rate": (lambda t: jnp.asarray(bad))} if where == "schedule" and factory is not polyak_sgd else {}
    assume(where != "schedule" or learning)
    params = {"w": jnp.ones(2)}
    grads = {"w": jnp.array([1.0, bad])} if where == "grads" else {"w": jnp.ones(2)}
    value = jnp.asarray(bad) if where == "value" else jnp.asarray(1.0)
    raising, skipping = factory(**learning), factory(**learning, nonfinite="skip")
    # the guard checks a value whenever one is passed, whether or not the transform reads it
    cause = {"grads": r"grads has non-finite", "value": "value .* is not finite", "schedule": "schedule or a hyper-parameter"}[where]
    # the guard raises from a host callback inside a compiled branch, so JAX may hand the error on wrapped, message intact
    with pytest.raises(JIT_RAISED, match=cause):
        jax.block_until_ready(raising.update(grads, raising.init(params), params, value=value))
    with pytest.raises(JIT_RAISED, match=cause):
        jax.block_until_ready(jax.jit(raising.update)(grads, raising.init(params), params, value=value))
    updates, state = jax.jit(skipping.update)(grads, skipping.init(params), params, value=value)
    assert int(state.skipped) == 1 and np.array_equal(np.asarray(updates["w"]), np.zeros(2))


@FAST
@given(size=st.integers(1, 5000), where=st.data(), bad=nonfinite, dtype=st.sampled_from([jnp.float32, jnp.float64]))
def test_the_guards_probe_sees_one_bad_entry_anywhere(size, where, bad, dtype):
    # a vectorised max drops a nan in some lanes; the probe must not, whatever the size and the position
    from opt_lab.transform import _all_finite
    position = where.draw(st.integers(0, size - 1))
    x = np.ones(size, dtype); x[position] = bad
    assert not bool(jax.jit(_all_finite)({"a": jnp.ones(3), "b": jnp.asarray(x)}))
    assert bool(jax.jit(_all_finite)({"a": jnp.ones(3), "b": jnp.full(size, 3e38 if dtype == jnp.float32 else 1e300, dtype)}))


@pytest.mark.parametrize("factory", [sgd, adam, rmsprop])
def test_a_vmapped_guarded_step_raises_only_for_a_bad_member(factory):
    tx = factory(0.1)
    params = {"w": jnp.ones((4, 3))}
    step = jax.jit(jax.vmap(lambda g, s, p: tx.update(g, s, p)))
    state = jax.vmap(tx.init)(params)
    updates, _ = step({"w": jnp.ones((4, 3))}, state, params)
    assert np.isfinite(np.asarray(updates["w"])).all()
    # under vmap JAX hands the callback's error on as a ValueError; the message is intact
    with pytest.raises((*JIT_RAISED, ValueError), match=r"grads has non-finite values"):
        jax.block_until_ready(step({"w": jnp.ones((4, 3)).at[2, 1].set(jnp.nan)}, state, params))


@FAST
@given(bad=nonfinite, alias=st.sampled_from(["sgd", "adam", "polyak"]))
def test_stateful_optimizer_refuses_a_bad_step_and_changes_nothing(bad, alias):
    opt = Optimizer(alias, {"w": np.ones(3)})
    before = opt.state_dict()
    with pytest.raises(ValueError, match=r"grads\['w'\] has 1 non-finite"):
        opt.update({"w": np.array([1.0, bad, 1.0])}, value=1.0)
    with pytest.raises(ValueError, match="value must be"):
        opt.update({"w": np.ones(3)}, value=bad)
    after = opt.state_dict()
    assert after["step"] == before["step"] == 0
    np.testing.assert_array_equal(after["params"][0], before["params"][0])


# --- checkpoints -------------------------------------------------------------------------------------------------------------------
@FAST
@given(saver=st.sampled_from(["sgd", "sgdm", "rmsprop", "adam", "polyak"]), loader=st.sampled_from(["sgd", "sgdm", "rmsprop", "adam", "polyak"]))
def test_checkpoint_of_another_optimizer_is_refused(saver, loader):
    assume(saver != loader)
    saved = Optimizer(saver, {"w": np.ones(3)}).state_dict()
    with pytest.raises(ValueError, match="the checkpoint is of optimizer"):
        Optimizer(loader, {"w": np.ones(3)}).load_state_dict(saved)


@FAST
@given(shape=shapes.filter(bool), bad=nonfinite, alias=st.sampled_from(["sgdm", "adam"]), part=st.sampled_from(["params", "state"]))
def test_checkpoint_with_nonfinite_values_or_another_layout_is_refused(shape, bad, alias, part):
    opt = Optimizer(alias, {"w": np.ones(3)})
    opt.update({"w": np.ones(3)})
    poisoned = opt.state_dict()
    leaf = next(i for i, a in enumerate(poisoned[part]) if np.ndim(a) > 0)
    poisoned[part][leaf] = poisoned[part][leaf].copy(); poisoned[part][leaf][0] = bad
    with pytest.raises(ValueError, match=f"checkpoint {part}"):
        opt.load_state_dict(poisoned)
    assume(shape != (3,))
    with pytest.raises(ValueError, match="checkpoint"):
        Optimizer(alias, {"w": np.ones(shape)}).load_state_dict(opt.state_dict())


@pytest.mark.parametrize("bad", [[1, 2], "state", None, 3.0])
def test_checkpoint_that_is_not_a_dict_is_refused(bad):
    with pytest.raises(ValueError, match="a checkpoint is the dict that state_dict returns"):
        Optimizer("adam", {"w": np.ones(2)}).load_state_dict(bad)


@FAST
@given(name=st.sampled_from(["max_stepsize", "delta", "momentum", "tol", "maxiter"]), bad=st.one_of(st.floats(max_value=-1e-6), not_real))
def test_polyak_solver_settings_are_checked_when_used(name, bad):
    solver = PolyakSGD(lambda x: jnp.sum(x ** 2))
    setattr(solver, name, bad)  # jaxopt's solvers are dataclasses: a user may change a setting after construction
    with pytest.raises(ValueError, match=rf"^{name} must"):
        solver.run(jnp.ones(2))


# --- MICE ---------------------------------------------------------------------------------------------------------------------------
def _grad(x, thetas): return x - thetas
def _sampler(n, rng): return rng.normal(size=(n, 2))

MICE_DOMAINS = {"eps": st.one_of(st.floats(max_value=0.0), st.floats(min_value=1.0), not_real),
                "min_batch": st.one_of(st.integers(max_value=1), st.floats(2.5, 9.5), not_real),
                "max_cost": st.one_of(st.floats(max_value=-1e-9), not_real),
                "stop_crit_prob": st.one_of(st.floats(max_value=0.0), st.floats(min_value=1.0), not_real),
                "re_quantile": st.one_of(st.floats(max_value=-1e-9), st.floats(min_value=1.0 + 1e-9), not_real),
                "max_grad_batch_elems": st.one_of(st.integers(max_value=0), not_real)}


@pytest.mark.parametrize("name", list(MICE_DOMAINS))
@FAST
@given(data=st.data())
def test_mice_parameter_out_of_domain_is_named(name, data):
    bad = data.draw(MICE_DOMAINS[name])
    with pytest.raises(ValueError, match=rf"^{name} must"):
        MICE(_grad, _sampler, **{name: bad})


@FAST
@given(eps=st.floats(0.05, 0.95).flatmap(as_every_type), budget=st.integers(100, 10_000).flatmap(lambda n: st.sampled_from([n, np.int64(n), float(n)])))
def test_mice_accepts_every_numeric_type(eps, budget):
    est = MICE(_grad, _sampler, eps=eps, max_cost=budget, seed=0)
    assert np.isfinite(est(np.ones(2))).all() and est.counter <= budget


@FAST
@given(x=st.one_of(st.just(np.array(["1", "2"])), st.just(np.array([1j, 2.0])), st.just(np.array([True, False])),
                   st.just(np.array([1.0, math.nan])), st.just(np.ones((2, 2)))))
def test_mice_refuses_a_bad_x_by_name(x):
    est = MICE(_grad, _sampler, max_cost=1000, seed=0)
    if x.shape == (2, 2): est(np.ones(2))  # the first call fixes the shape
    with pytest.raises(ValueError, match="^x "):
        est(x)


@FAST
@given(rows=st.integers(0, 30), cols=st.integers(1, 4))
def test_mice_names_the_culprit_of_a_wrong_batch(rows, cols):
    "A sampler that returns the wrong number of samples is named as the sampler; a grad of the wrong shape as the grad."
    est = MICE(_grad, lambda n, rng: rng.normal(size=(rows, 2)), max_cost=1000, seed=0)
    if rows != 100:  # the first call asks restart_factor · min_batch = 100 samples
        with pytest.raises(ValueError, match="sampler"): est(np.ones(2))
    wrong = MICE(lambda x, t: np.ones((len(t), cols + 2)), _sampler, max_cost=1000, seed=0)
    with pytest.raises(ValueError, match=r"grad\(x, thetas\) must return shape"): wrong(np.ones(2))


@pytest.mark.parametrize("bad,message", [(3, "grad must be callable"), ("g", "grad must be callable")])
def test_mice_grad_must_be_callable(bad, message):
    with pytest.raises(ValueError, match=message): MICE(bad, _sampler)


@FAST
@given(where=st.integers(0, 19), bad=nonfinite)
def test_mice_refuses_a_data_set_with_nonfinite_entries(where, bad):
    data = np.arange(40.0).reshape(20, 2)
    data[where, 1] = bad
    with pytest.raises(ValueError, match="sampler \\(the data set\\) has 1 non-finite"):
        MICE(_grad, data)


# --- EM ----------------------------------------------------------------------------------------------------------------------------
NIG = NormalInverseGaussian.from_classical(mu=[0.0, 0.0], gamma=[0.3, -0.2], sigma=[[1.0, 0.2], [0.2, 1.0]], mu_ig=1.0, lam=1.5)
X = np.asarray(NIG.rvs(600, seed=2))


@FAST
@given(row=st.integers(0, 599), col=st.integers(0, 1), bad=nonfinite)
def test_em_data_with_nonfinite_values_are_refused_naming_the_row(row, col, bad):
    data = X.copy()
    data[row, col] = bad
    with pytest.raises(ValueError, match=f"X has non-finite values .* first at row {row}"):
        IncrementalEMFitter(max_steps=2).fit(NIG, data, key=0)
    with pytest.raises(ValueError, match="X has non-finite"):
        NIG.log_prob(data)


@pytest.mark.parametrize("bad,message", [(X.astype(complex), "X must hold real numbers, got dtype complex128"),
                                         (X.astype(str), "X must hold real numbers"), (X[:, 0], r"X\[:, None\]"),
                                         (X[:, :1], "X has 1 columns but the model has dimension 2"), (X[:2], "at least d\\+1")])
def test_em_data_of_the_wrong_kind_are_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        BatchEMFitter().fit(NIG, bad)


@FAST
@given(family_and_name=st.sampled_from([(NormalInverseGaussian, "mu_ig"), (NormalInverseGaussian, "lam"), (VarianceGamma, "alpha"),
                                         (VarianceGamma, "beta"), (GeneralizedHyperbolic, "a"), (GeneralizedHyperbolic, "b")]),
       bad=st.one_of(st.floats(max_value=0.0), st.just(math.inf), not_real))
def test_em_mixing_parameter_out_of_domain_is_named(family_and_name, bad):
    family, name = family_and_name
    good = {"mu_ig": 1.0, "lam": 1.0, "alpha": 1.0, "beta": 1.0, "p": 0.5, "a": 1.0, "b": 1.0}
    mixing = {f: (bad if f == name else good[f]) for f in family.mixing_fields}
    with pytest.raises(ValueError, match=rf"^{name} must"):
        family.from_classical(mu=[0.0], gamma=[0.0], sigma=[[1.0]], **mixing)


@FAST
@given(bad=st.sampled_from([[[1.0, 2.0], [2.0, 1.0]], [[1.0, 0.5], [0.0, 1.0]], [[1.0, math.nan], [math.nan, 1.0]], [[1j, 0], [0, 1]]]))
def test_em_sigma_must_be_real_symmetric_positive_definite(bad):
    with pytest.raises(ValueError, match="sigma"):
        NormalInverseGaussian.from_classical(mu=[0.0, 0.0], gamma=[0.0, 0.0], sigma=bad, mu_ig=1.0, lam=1.0)


@FAST
@given(rule=st.sampled_from(["ewma", "robbins", "affine_b", "affine_c", "affine_sum", "tau"]), bad=st.one_of(st.floats(-10, -1e-6), not_real))
def test_em_rule_parameters_are_checked(rule, bad):
    make = {"ewma": lambda: EWMAUpdate(w=bad), "robbins": lambda: RobbinsMonroUpdate(tau0=bad),
            "affine_b": lambda: AffineUpdate(b=bad, c=0.5), "affine_c": lambda: AffineUpdate(b=0.5, c=bad),
            "affine_sum": lambda: AffineUpdate(b=0.5, c=0.6 + abs(bad) if isinstance(bad, float) and bad == bad else bad),
            "tau": lambda: Shrinkage(IdentityUpdate(), NIG.expectation_params(), tau=bad)}[rule]
    with pytest.raises(ValueError, match=r"(w|tau0|b|c|tau\[\w+\]|b \+ c) must"):
        make()


@FAST
@given(nu=st.one_of(st.just(math.nan), st.just(math.inf), st.just(-math.inf)), z=st.floats(1e-3, 1e3))
def test_log_kv_refuses_what_has_no_log_k(nu, z):
    with pytest.raises(ValueError, match="nu must be finite"): log_kv(nu, z)
    with pytest.raises(ValueError, match="z must be > 0"): log_kv(1.5, -z)
    with pytest.raises(ValueError, match="z must hold real numbers"): log_kv(1.5, np.array([z * 1j]))


@FAST
@given(nu=st.floats(-50, 50).flatmap(as_every_type), z=st.floats(1e-3, 1e3).flatmap(as_every_type))
def test_log_kv_accepts_every_numeric_type(nu, z):
    assert np.isfinite(float(log_kv(nu, z)))


# --- nothing a caller passes is mutated ---------------------------------------------------------------------------------------------
arrays = st.integers(1, 6).flatmap(lambda n: st.lists(st.floats(-5, 5), min_size=n, max_size=n)).map(np.array)


@COMPILING
@given(params=arrays, alias=st.sampled_from(["sgdm", "adam", "rmsprop", "polyak"]))
def test_the_stateful_optimizer_mutates_nothing_it_is_given(params, alias):
    tree, grads = {"w": params}, {"w": params * 0.5 + 1.0}
    copies = {"w": params.copy()}, {"w": grads["w"].copy()}
    opt = Optimizer(alias, tree)
    opt.update(grads, value=1.0)
    checkpoint = opt.state_dict()
    saved = [a.copy() for a in checkpoint["params"]]
    opt.update(grads, value=1.0)
    opt.load_state_dict(checkpoint)
    np.testing.assert_array_equal(tree["w"], copies[0]["w"]); np.testing.assert_array_equal(grads["w"], copies[1]["w"])
    np.testing.assert_array_equal(checkpoint["params"][0], saved[0])


@COMPILING
@given(x=arrays)
def test_mice_mutates_neither_x_nor_the_data_set(x):
    data = np.random.default_rng(0).normal(size=(50, x.size))
    copies = x.copy(), data.copy()
    est = MICE(lambda y, t: y - t, data, max_cost=500, seed=0)
    est(x)
    np.testing.assert_array_equal(x, copies[0]); np.testing.assert_array_equal(data, copies[1])


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scale=st.floats(1e-3, 1e3), shift=st.floats(-1e3, 1e3))
def test_em_mutates_neither_the_data_nor_the_start(scale, shift):
    data = X * scale + shift
    start = NormalInverseGaussian.default_init(data)
    copies = data.copy(), [np.asarray(leaf).copy() for leaf in start]
    IncrementalEMFitter(batch_size=128, max_steps=4).fit(start, data, key=0)
    NormalInverseGaussian.default_init(data).log_prob(data)
    np.testing.assert_array_equal(data, copies[0])
    for leaf, copy in zip(start, copies[1]): np.testing.assert_array_equal(np.asarray(leaf), copy)
