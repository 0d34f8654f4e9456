"""Every name, parameter and default of the five seed APIs (../shared/seeds/, transcribed here so that a clean
checkout carries them), checked against opt_lab's objects at the seed's module paths with only the prefix changed."""
import importlib
import inspect
import math

import pytest

FACTORY = object()  # the seed's `<factory>` default: a fresh object per call (opt_lab's `None` builds the same)

# (module, name, [(parameter, default)...] in the seed's positional order); `inspect.Parameter.empty` = required
SEEDS = {
    "mice": [
        ("opt_lab.compat.mice.core_impl", "MICE", [("grad", inspect.Parameter.empty), ("sampler", inspect.Parameter.empty),
            ("eps", 0.577), ("min_batch", 10), ("restart_factor", 10), ("max_cost", math.inf), ("stop_crit_norm", 0.0),
            ("stop_crit_prob", 0.05), ("convex", False), ("policy", FACTORY), ("recorder", None), ("use_resampling", True),
            ("re_part", 5), ("re_quantile", 0.05), ("re_tot_cost", 0.2), ("re_min_n", 5), ("re_max_samp", 1000),
            ("max_grad_batch_elems", 5_000_000)]),
        ("opt_lab.compat.mice.core", "MICE", None),
        ("opt_lab.compat.mice.policy", "DropRestartClipPolicy", [("drop_param", 0.5), ("restart_param", 0.0),
            ("max_hierarchy_size", 1000), ("aggr_cost", 0.1), ("clip_type", None), ("clip_every", 0)]),
        ("opt_lab.compat.mice.norms", "PlainNormEstimator", [("convex", False), ("_best", math.inf)]),
        ("opt_lab.compat.mice.norms", "ResamplingNormEstimator", [("re_part", 5), ("re_quantile", 0.05), ("stop_quantile", 0.95),
            ("convex", False), ("_best_tol", math.inf), ("_best_stop", math.inf)]),
        ("opt_lab.compat.mice.state", "WelfordVec", [("mean", inspect.Parameter.empty), ("m2", inspect.Parameter.empty), ("n", 0)]),
        ("opt_lab.compat.mice.state", "ResamplingAcc", [("re_part", inspect.Parameter.empty), ("sum_total", inspect.Parameter.empty),
            ("cnt_total", inspect.Parameter.empty), ("sum_part", inspect.Parameter.empty), ("cnt_part", inspect.Parameter.empty)]),
        ("opt_lab.compat.mice.state", "LevelState", [("x", inspect.Parameter.empty), ("cost", inspect.Parameter.empty),
            ("x_prev", inspect.Parameter.empty), ("sample_fn", inspect.Parameter.empty), ("delta_stats", inspect.Parameter.empty),
            ("base_stats", inspect.Parameter.empty), ("m_min", inspect.Parameter.empty), ("delta_resamp", None),
            ("base_resamp", None), ("m_prev", 0)]),
        ("opt_lab.compat.mice.logging", "Recorder", [("events", FACTORY)]),
        ("opt_lab.compat.mice.plot_mice", "plot_mice", [("data", inspect.Parameter.empty), ("ax", inspect.Parameter.empty),
            ("x", inspect.Parameter.empty), ("y", inspect.Parameter.empty), ("style", "loglog"), ("markers", True),
            ("legend", True), ("color", "C0")]),
    ],
    "neuroscope": [
        ("opt_lab.compat.neuroscope.mlp.optimizers", "SGD", [("learning_rate", 0.01)]),
        ("opt_lab.compat.neuroscope.mlp.optimizers", "SGDMomentum", [("learning_rate", 0.01), ("momentum", 0.9), ("nesterov", False)]),
        ("opt_lab.compat.neuroscope.mlp.optimizers", "Adam", [("learning_rate", 0.001), ("beta1", 0.9), ("beta2", 0.999), ("eps", 1e-8)]),
        ("opt_lab.compat.neuroscope.mlp.optimizers", "RMSprop", [("learning_rate", 0.001), ("rho", 0.9), ("eps", 1e-8), ("momentum", 0.0)]),
    ],
    "paysage": [
        ("opt_lab.compat.paysage.optimizers", "GradientMemory", [("mean_weight", 0.9), ("mean_square_weight", 0.0)]),
        ("opt_lab.compat.paysage.optimizers", "Optimizer", [("stepsize", FACTORY), ("tolerance", 1e-7), ("ascent", False)]),
        ("opt_lab.compat.paysage.optimizers", "Gradient", [("stepsize", FACTORY), ("tolerance", 1e-7), ("ascent", False)]),
        ("opt_lab.compat.paysage.optimizers", "Momentum", [("stepsize", FACTORY), ("momentum", 0.9), ("tolerance", 1e-7), ("ascent", False)]),
        ("opt_lab.compat.paysage.optimizers", "RMSProp", [("stepsize", FACTORY), ("mean_square_weight", 0.9), ("tolerance", 1e-7),
            ("ascent", False)]),
        ("opt_lab.compat.paysage.optimizers", "ADAM", [("stepsize", FACTORY), ("mean_weight", 0.9), ("mean_square_weight", 0.999),
            ("tolerance", 1e-7), ("ascent", False)]),
        ("opt_lab.compat.paysage.schedules", "Constant", [("initial", 1.0)]),
        ("opt_lab.compat.paysage.schedules", "ExponentialDecay", [("initial", 1.0), ("coefficient", 0.9)]),
        ("opt_lab.compat.paysage.schedules", "PowerLawDecay", [("initial", 1.0), ("coefficient", 0.9)]),
    ],
    "normix": [
        ("opt_lab.compat.normix.fitting.em", "IncrementalEMFitter", [("batch_size", 256), ("max_steps", 200), ("eta_update", None),
            ("verbose", 0), ("inner_iter", 1), ("e_step_backend", "jax"), ("m_step_backend", "jax")]),
        ("opt_lab.compat.normix", "RobbinsMonroUpdate", [("tau0", 10.0)]),
        ("opt_lab.compat.normix", "EWMAUpdate", [("w", 0.1)]),
        ("opt_lab.compat.normix", "Shrinkage", [("base_rule", inspect.Parameter.empty), ("eta0", inspect.Parameter.empty), ("tau", 0.5)]),  # the seed passes the first two by position and shows no default
        ("opt_lab.compat.normix", "eta0_from_model", [("model", inspect.Parameter.empty)]),
        ("opt_lab.compat.normix", "eta0_isotropic", [("model", inspect.Parameter.empty), ("sigma2", inspect.Parameter.empty)]),
        ("opt_lab.compat.normix", "eta0_diagonal", [("model", inspect.Parameter.empty), ("diag", inspect.Parameter.empty)]),
        ("opt_lab.compat.normix", "eta0_with_sigma", [("model", inspect.Parameter.empty), ("Sigma0", inspect.Parameter.empty)]),
        ("opt_lab.compat.normix.utils.plotting", "set_theme", []),
    ],
    "jaxopt": [
        ("opt_lab.compat.jaxopt", "PolyakSGD", [("fun", inspect.Parameter.empty), ("value_and_grad", False), ("has_aux", False),
            ("max_stepsize", 1.0), ("delta", 0.0), ("momentum", 0.0), ("pre_update", None), ("maxiter", 500), ("tol", 0.001),
            ("verbose", 0), ("implicit_diff", False), ("implicit_diff_solve", None), ("jit", "auto"), ("unroll", "auto")]),
    ],
}
METHODS = {
    ("opt_lab.compat.neuroscope.mlp.optimizers", "Adam"): ["update", "state_dict", "load_state_dict", "learning_rate"],
    ("opt_lab.compat.neuroscope.mlp.optimizers", "SGD"): ["update", "state_dict", "load_state_dict", "learning_rate"],
    ("opt_lab.compat.paysage.optimizers", "GradientMemory"): ["normalize", "reset", "update", "update_mean", "update_mean_square"],
    ("opt_lab.compat.paysage.optimizers", "ADAM"): ["check_convergence", "reset", "update", "update_lr"],
    ("opt_lab.compat.paysage.optimizers", "Gradient"): ["check_convergence", "reset", "update", "update_lr"],
    ("opt_lab.compat.paysage.schedules", "ExponentialDecay"): ["reset", "set_value", "get_config", "copy", "__next__"],
    ("opt_lab.compat.normix", "NormalInverseGaussian"): ["from_classical", "default_init", "rvs", "marginal_log_likelihood"],
    ("opt_lab.compat.normix.fitting.em", "IncrementalEMFitter"): ["fit"],
    ("opt_lab.compat.mice.core_impl", "MICE"): ["evaluate", "get_log", "policy"],
    ("opt_lab.compat.mice.state", "WelfordVec"): ["zeros", "update_batch", "var_sum"],
    ("opt_lab.compat.mice.state", "ResamplingAcc"): ["zeros", "update_batch", "loo_means"],
    ("opt_lab.compat.mice.state", "LevelState"): ["m", "v_delta", "v_base", "v_batch", "mean_delta", "delta_loo_means"],
    ("opt_lab.compat.mice.logging", "Recorder"): ["add", "as_list"],
    ("opt_lab.compat.mice.norms", "ResamplingNormEstimator"): ["update_from_norms"],
    ("opt_lab.compat.mice.norms", "PlainNormEstimator"): ["update"],
    ("opt_lab.compat.jaxopt", "PolyakSGD"): ["attribute_names", "attribute_values", "init_state", "l2_optimality_error",
                                     "optimality_fun", "run", "run_iterator", "update", "fun", "delta", "has_aux",
                                     "implicit_diff", "implicit_diff_solve", "jit", "max_stepsize", "maxiter", "momentum",
                                     "pre_update", "tol", "unroll", "value_and_grad", "verbose"],
}
ROWS = [(system, *row) for system, rows in SEEDS.items() for row in rows]


@pytest.mark.parametrize("system,module,name,params", ROWS, ids=[f"{r[0]}:{r[1]}.{r[2]}" for r in ROWS])
def test_seed_signature(system, module, name, params):
    obj = getattr(importlib.import_module(module), name)
    if params is None: return  # an alias path: the same object as the row above
    sig = list(inspect.signature(obj).parameters.values())
    got = [(p.name, p.default) for p in sig[:len(params)]]
    assert [g[0] for g in got] == [p[0] for p in params], f"{name}: parameters {[g[0] for g in got]}"
    for (pname, want), (_, default) in zip(params, got):
        if want is FACTORY: assert default is None or repr(default) == "<factory>", f"{name}({pname}=...): {default!r}"
        else: assert default == want, f"{name}({pname}=...): default {default!r}, the seed has {want!r}"


@pytest.mark.parametrize("key", list(METHODS), ids=[f"{k[0]}.{k[1]}" for k in METHODS])
def test_seed_methods_and_attributes(key):
    module, name = key
    cls = getattr(importlib.import_module(module), name)
    if name == "PolyakSGD": target = cls(lambda x: (x ** 2).sum())
    elif name == "MICE": target = cls(lambda x, t: t[:, None] * x, lambda n: [1.0] * n)
    else:
        try: target = cls()  # instance attributes (a neuroscope optimizer's learning_rate) need an instance
        except TypeError: target = cls
    missing = [m for m in METHODS[key] if not hasattr(target, m)]
    assert not missing, f"{name} lacks {missing}"
