"""paysage's optimizers, GradientMemory and schedules (seed: gradient_optimizers_api.txt) against paysage 0.2.1
itself (a test-only reference, installed with `pip install --no-deps paysage==0.2.1 numexpr cytoolz toolz`)."""
from collections import namedtuple

import numpy as np
import pytest

import opt_lab.compat.paysage as ours
from opt_lab.compat.paysage import optimizers as ours_optimizers, schedules as ours_schedules

paysage_optimizers = pytest.importorskip("paysage.optimizers")
paysage_schedules = pytest.importorskip("paysage.schedules")

Gradient = namedtuple("Gradient", ["layers", "weights"])
Params = namedtuple("Params", ["value"])


class Model:
    "paysage's contract: `parameter_update` subtracts the step."
    def __init__(self, seed=0):
        rng = np.random.default_rng(seed)
        self.params = Gradient([[Params(rng.normal(size=5))]], [[Params(rng.normal(size=(5, 2)))]])

    def parameter_update(self, deltas):
        for p, d in zip(self.params.layers + self.params.weights, deltas.layers + deltas.weights):
            p[0].value[...] -= d[0].value

    def arrays(self): return [self.params.layers[0][0].value, self.params.weights[0][0].value]


def grad_of(arrays):
    x, W = arrays
    return Gradient([[Params(np.sin(x) + 0.2 * x)]], [[Params(W ** 3 - 0.5)]])


OPTIMIZERS = [("Gradient", {}), ("Momentum", dict(momentum=0.8)), ("RMSProp", dict(mean_square_weight=0.7)),
              ("ADAM", dict(mean_weight=0.85, mean_square_weight=0.99))]
SCHEDULES = [("Constant", dict(initial=0.02)), ("ExponentialDecay", dict(initial=0.05, coefficient=0.9)),
             ("PowerLawDecay", dict(initial=0.05, coefficient=0.5))]


@pytest.mark.parametrize("name,options", OPTIMIZERS, ids=[o[0] for o in OPTIMIZERS])
@pytest.mark.parametrize("schedule,settings", SCHEDULES, ids=[s[0] for s in SCHEDULES])
def test_the_same_steps_as_paysage(name, options, schedule, settings):
    runs = []
    for optimizers, schedules in ((paysage_optimizers, paysage_schedules), (ours_optimizers, ours_schedules)):
        model = Model()
        opt = getattr(optimizers, name)(stepsize=getattr(schedules, schedule)(**settings), **options)
        converged = []
        for epoch in range(6):
            opt.update_lr()
            for _ in range(4):
                opt.update(model, grad_of(model.arrays()))
                converged.append(opt.check_convergence())
            if epoch == 3: opt.reset()
        runs.append((model.arrays(), converged))
    for a, b in zip(runs[0][0], runs[1][0]): np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-15)
    assert runs[0][1] == runs[1][1]


@pytest.mark.parametrize("weights", [(0.9, 0.0), (0.0, 0.9), (0.7, 0.99)])
@pytest.mark.parametrize("unbiased", [False, True])
def test_gradient_memory_is_paysages(weights, unbiased):
    mine, theirs = ours.GradientMemory(*weights), paysage_optimizers.GradientMemory(*weights)
    rng = np.random.default_rng(1)
    for _ in range(5):
        g = Gradient([[Params(rng.normal(size=3))]], [[Params(rng.normal(size=(3, 2)))]])
        mine.update(g); theirs.update(g)
    probe = Gradient([[Params(np.ones(3))]], [[Params(np.ones((3, 2)))]])
    got, want = mine.normalize(probe, unbiased), theirs.normalize(probe, unbiased)
    for a, b in zip((got.layers[0][0].value, got.weights[0][0].value), (want.layers[0][0].value, want.weights[0][0].value)):
        np.testing.assert_allclose(np.asarray(a), b, rtol=1e-12)
    assert (mine.mean_gradient is None) == (theirs.mean_gradient is None)


def test_a_model_given_as_arrays_is_stepped_in_place():
    x = np.array([1.0, -2.0])
    opt = ours.Momentum(stepsize=ours.Constant(initial=0.1))
    opt.update_lr()
    for _ in range(3): opt.update([x], [x.copy()])
    assert x.dtype == np.float64 and np.all(np.abs(x) < [1.0, 2.0])
    up = np.array([1.0])
    climb = ours.Gradient(stepsize=ours.Constant(initial=0.5), ascent=True)
    climb.update([up], [np.array([2.0])])
    np.testing.assert_allclose(up, [2.0])


def test_fixes_of_paysages_failures():
    a, b = ours.Gradient(), ours.Gradient()
    assert a.stepsize is not b.stepsize                       # paysage shares one default schedule object
    assert a.check_convergence() is False                     # paysage fails on the empty step
    x = np.array([1.0])
    a.update([x], [np.array([1.0])])                          # paysage fails before the first update_lr
    np.testing.assert_allclose(x, [1.0 - 0.001], rtol=1e-6)
    with pytest.raises(ValueError, match="stepsize must be a schedule"): ours.ADAM(stepsize=0.1)
    with pytest.raises(ValueError, match="mean_weight must be in"): ours.Momentum(momentum=1.5)
    with pytest.raises(ValueError, match="grad has shapes"): a.update([np.zeros(2)], [np.zeros(3)])


def test_schedule_objects_are_paysages():
    for name, settings in SCHEDULES:
        mine, theirs = getattr(ours, name)(**settings), getattr(paysage_schedules, name)(**settings)
        assert [next(mine) for _ in range(30)] == [float(next(theirs)) for _ in range(30)]
        mine.set_value(0.3); theirs.set_value(0.3)
        assert [next(mine) for _ in range(5)] == [float(next(theirs)) for _ in range(5)]
        copy = mine.copy()
        assert next(copy) == next(mine)
        mine.reset(); theirs.reset()
        assert next(mine) == float(next(theirs))
