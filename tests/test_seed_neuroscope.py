"""neuroscope's MLP optimizers (seed: mlp_optimizers_spec.md) against the spec's formulas written out in NumPy,
neuroscope itself not being installable here; and its two measured checkpoint bugs, fixed."""
import numpy as np
import pytest

from opt_lab.compat.neuroscope.mlp.optimizers import ALIASES, SGD, Adam, RMSprop, SGDMomentum


def reference_steps(kind, hp, params, grads_seq):
    "The seed's update rules, literally."
    lr = hp["learning_rate"]
    buf = {k: [np.zeros_like(p) for p in params] for k in ("v", "m", "s")}
    for t, grads in enumerate(grads_seq, start=1):
        for i, (p, g) in enumerate(zip(params, grads)):
            if kind == "sgd": p -= lr * g
            elif kind == "sgdm":
                v = buf["v"][i]; v[:] = hp["momentum"] * v + g
                p -= lr * (hp["momentum"] * v + g) if hp["nesterov"] else lr * v
            elif kind == "adam":
                m, v = buf["m"][i], buf["v"][i]
                m[:] = hp["beta1"] * m + (1 - hp["beta1"]) * g
                v[:] = hp["beta2"] * v + (1 - hp["beta2"]) * g * g
                p -= lr * (m / (1 - hp["beta1"] ** t)) / (np.sqrt(v / (1 - hp["beta2"] ** t)) + hp["eps"])
            elif kind == "rmsprop":
                s, v = buf["s"][i], buf["v"][i]
                s[:] = hp["rho"] * s + (1 - hp["rho"]) * g * g
                if hp["momentum"] == 0: p -= lr * g / (np.sqrt(s) + hp["eps"])
                else:
                    v[:] = hp["momentum"] * v + lr * g / (np.sqrt(s) + hp["eps"])
                    p -= v
    return params


CASES = [("sgd", SGD, dict(learning_rate=0.05)),
         ("sgdm", SGDMomentum, dict(learning_rate=0.02, momentum=0.9, nesterov=False)),
         ("sgdm", SGDMomentum, dict(learning_rate=0.02, momentum=0.8, nesterov=True)),
         ("adam", Adam, dict(learning_rate=0.01, beta1=0.9, beta2=0.999, eps=1e-8)),
         ("rmsprop", RMSprop, dict(learning_rate=0.01, rho=0.9, eps=1e-8, momentum=0.0)),
         ("rmsprop", RMSprop, dict(learning_rate=0.01, rho=0.8, eps=1e-6, momentum=0.7))]


def _model(seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(5, 3)).astype(dtype), rng.normal(size=(3, 2)).astype(dtype)], [np.zeros(3, dtype), np.zeros(2, dtype)]


def _grads(weights, biases):
    return [np.tanh(w) + 0.3 * w for w in weights], [np.sin(b) + 0.1 for b in biases]


@pytest.mark.parametrize("kind,cls,hp", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_update_follows_the_spec(kind, cls, hp):
    weights, biases = _model()
    ref = [a.copy() for a in weights + biases]
    opt, seq = cls(**hp), []
    for _ in range(12):
        gw, gb = _grads(weights, biases)
        seq.append([g.copy() for g in gw + gb])
        assert opt.update(weights, biases, gw, gb) is None
    reference_steps(kind, hp, ref, seq)
    for got, want in zip(weights + biases, ref): np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-15)


def test_defaults_are_the_seeds():
    assert SGD().learning_rate == 0.01 and (SGDMomentum().learning_rate, SGDMomentum().momentum, SGDMomentum().nesterov) == (0.01, 0.9, False)
    assert Adam().hyperparameters() == dict(learning_rate=0.001, beta1=0.9, beta2=0.999, eps=1e-8)
    assert RMSprop().hyperparameters() == dict(learning_rate=0.001, rho=0.9, eps=1e-8, momentum=0.0)
    assert ALIASES["sgdnm"]().nesterov is True and isinstance(ALIASES["sgdm"](), SGDMomentum)


def test_float32_models_step_in_float32():
    weights, biases = _model(dtype=np.float32)
    Adam().update(weights, biases, *_grads(weights, biases))
    assert all(a.dtype == np.float32 for a in weights + biases)


def test_buffers_are_created_lazily_and_checkpoints_are_copies():
    opt = SGDMomentum()
    assert opt.state_dict() == {"type": "SGDMomentum", "learning_rate": 0.01, "momentum": 0.9, "nesterov": False, "t": 0}
    weights, biases = _model()
    opt.update(weights, biases, *_grads(weights, biases))
    saved = opt.state_dict()
    before = saved["velocity"]["weights"][0].copy()
    opt.update(weights, biases, *_grads(weights, biases))
    np.testing.assert_array_equal(saved["velocity"]["weights"][0], before)   # neuroscope's aliased the live buffer


def test_resume_is_bitwise_and_a_changed_momentum_loads():
    weights, biases = _model()
    opt = RMSprop(momentum=0.0)
    for _ in range(4): opt.update(weights, biases, *_grads(weights, biases))
    saved = opt.state_dict()
    twin_w, twin_b = [w.copy() for w in weights], [b.copy() for b in biases]
    for _ in range(3): opt.update(weights, biases, *_grads(weights, biases))
    twin = RMSprop()
    twin.load_state_dict(saved)
    for _ in range(3): twin.update(twin_w, twin_b, *_grads(twin_w, twin_b))
    for a, b in zip(weights + biases, twin_w + twin_b): np.testing.assert_array_equal(a, b)
    # neuroscope raised IndexError here: the saved state has no velocity for the new momentum
    changed = RMSprop()
    changed.load_state_dict(saved | {"momentum": 0.9})
    w, b = _model()
    changed.update(w, b, *_grads(w, b))
    assert changed.momentum == 0.9 and changed.state_dict()["t"] == 5 and "velocity" in changed.state_dict()


def test_learning_rate_can_change_between_steps():
    w1, b1 = _model(); w2, b2 = _model()
    fast, slow = SGD(learning_rate=0.1), SGD(learning_rate=0.1)
    fast.update(w1, b1, *_grads(w1, b1)); slow.update(w2, b2, *_grads(w2, b2))
    slow.learning_rate = 0.001
    g1, g2 = _grads(w1, b1), _grads(w2, b2)
    start = w2[0].copy()
    fast.update(w1, b1, *g1); slow.update(w2, b2, *g2)
    np.testing.assert_allclose(w2[0], start - 0.001 * g2[0][0], rtol=1e-14)


@pytest.mark.parametrize("make,message", [(lambda: SGD(learning_rate=-1.0), "learning_rate must be a finite number > 0, got -1.0"),
                                          (lambda: SGDMomentum(momentum=1.0), "momentum must be in [0, 1)"),
                                          (lambda: Adam(eps=0.0), "eps"), (lambda: RMSprop(rho=-0.1), "rho"),
                                          (lambda: SGDMomentum(momentum=0.0, nesterov=True), "nesterov=True needs momentum > 0")])
def test_bad_hyperparameters_name_the_value(make, message):
    with pytest.raises(ValueError) as err: make()
    assert message in str(err.value)


def test_bad_gradients_and_checkpoints_are_refused():
    weights, biases = _model()
    gw, gb = _grads(weights, biases)
    gw[1][0, 0] = np.nan
    with pytest.raises(ValueError, match="finite"): Adam().update(weights, biases, gw, gb)
    with pytest.raises(ValueError, match="does not know"): Adam().load_state_dict({"type": "Adam", "velocityy": 1})
