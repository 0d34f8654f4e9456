"""The generalised hyperbolic family: GIG moments, sampling and the moment-to-parameter solver against scipy, the
three new mixtures' densities against scipy, EM with every η-rule for every family, and bad input."""
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, stats
from scipy.special import digamma

from opt_lab.em import (GIG, AffineUpdate, BatchEMFitter, EWMAUpdate, GeneralizedHyperbolic, IdentityUpdate, IncrementalEMFitter,
                        NormalInverseGamma, NormalInverseGaussian, RobbinsMonroUpdate, SampleWeightedUpdate, Shrinkage,
                        VarianceGamma, eta0_from_model, gamma_shape, gig_expectations, gig_from_expectations, gig_log_partition,
                        gig_log_prob, gig_rvs)

RNG = np.random.default_rng(11)
GRID = [(RNG.uniform(-6, 6), 10 ** RNG.uniform(-3, 2), 10 ** RNG.uniform(-3, 2)) for _ in range(25)]


def _scipy_gig(p, a, b): return stats.geninvgauss(p, math.sqrt(a * b), scale=math.sqrt(b / a))


@pytest.mark.parametrize("p,a,b", GRID[:12])
def test_gig_log_density_and_moments_match_scipy(p, a, b):
    law = _scipy_gig(p, a, b)
    w = law.ppf(np.linspace(0.01, 0.99, 25))
    np.testing.assert_allclose(gig_log_prob(jnp.asarray(w), p, a, b), law.logpdf(w), rtol=1e-10, atol=1e-10)
    mean, mean_reciprocal, mean_log = (float(v) for v in gig_expectations(p, a, b))
    assert mean == pytest.approx(law.mean(), rel=1e-9)
    assert mean_reciprocal == pytest.approx(law.expect(lambda x: 1 / x), rel=1e-6)
    assert mean_log == pytest.approx(law.expect(np.log), rel=1e-6, abs=1e-7)


@pytest.mark.parametrize("k", [0.3, 1.0, 2.5, 40.0])
def test_gig_edges_are_the_gamma_and_inverse_gamma(k):
    w = np.linspace(0.05, 6, 30)
    np.testing.assert_allclose(gig_log_prob(jnp.asarray(w), k, 3.0, 0.0), stats.gamma(k, scale=2 / 3).logpdf(w), rtol=1e-12)
    np.testing.assert_allclose(gig_log_prob(jnp.asarray(w), -k, 0.0, 3.0), stats.invgamma(k, scale=1.5).logpdf(w), rtol=1e-12)
    assert float(gig_expectations(k, 3.0, 0.0)[2]) == pytest.approx(float(digamma(k)) - math.log(1.5), rel=1e-13)
    # the interior tends to the edge, with an error of order b for k > 1 (of order b**k below)
    if k >= 1: assert float(gig_log_partition(k, 3.0, 1e-14)) == pytest.approx(float(gig_log_partition(k, 3.0, 0.0)), abs=1e-8)


def test_gig_functions_never_return_nan_for_valid_input():
    p = jnp.asarray([-80.0, -3.3, -0.5, 0.0, 1e-9, 0.5, 7.2, 80.0])
    for a, b in [(1e-12, 1e-12), (1e-12, 1e6), (1e6, 1e-12), (1e4, 1e4), (1.0, 1.0)]:
        values = [gig_log_partition(p, a, b), *gig_expectations(p, a, b)]
        assert all(np.isfinite(np.asarray(v)).all() for v in values), (a, b)


@pytest.mark.parametrize("p,a,b", [(0.7, 2.0, 3.0), (-2.3, 0.5, 4.0), (6.0, 0.01, 0.02), (0.0, 50.0, 0.1), (-0.5, 1.0, 1.0)])
def test_gig_sampler_passes_a_ks_test(p, a, b):
    draws = np.asarray(gig_rvs(jax.random.key(5), p, a, b, 10_000))
    assert stats.kstest(draws, _scipy_gig(p, a, b).cdf).pvalue > 1e-3


def test_gig_sampler_is_reproducible():
    first, again = (np.asarray(gig_rvs(jax.random.key(9), 1.3, 2.0, 0.5, 100)) for _ in range(2))
    np.testing.assert_array_equal(first, again)


@pytest.mark.parametrize("p,a,b", GRID)
def test_solver_recovers_the_moments_from_a_cold_start(p, a, b):
    target = [float(v) for v in gig_expectations(p, a, b)]
    solution = gig_from_expectations(*target)
    assert bool(solution.converged) and int(solution.iterations) <= 30
    back = [float(v) for v in gig_expectations(solution.p, solution.a, solution.b)]
    for got, want in zip(back, target): assert abs(got - want) <= 1e-8 * max(1.0, abs(want))


@pytest.mark.slow
def test_solver_robustness_dense():
    rng = np.random.default_rng(2)
    for _ in range(300):
        p, a, b = rng.uniform(-20, 20), 10 ** rng.uniform(-4, 3), 10 ** rng.uniform(-4, 3)
        solution = gig_from_expectations(*gig_expectations(p, a, b))
        assert bool(solution.converged), (p, a, b)
        assert all(np.isfinite(float(v)) for v in solution[:3])


def test_solver_flags_inadmissible_moments_without_nan_elsewhere():
    for eta in [(1.0, 0.5, 0.0), (1.0, 2.0, 0.5), (1.0, 2.0, -1.0), (-1.0, 2.0, 0.0), (np.inf, 1.0, 0.0)]:
        solution = gig_from_expectations(*eta)
        assert not bool(solution.converged) and np.isnan(float(solution.p))
    with pytest.raises(ValueError, match="not the moments"):
        GIG.from_expectations(1.0, 0.5, 0.0)


def test_solver_warm_start_takes_few_steps():
    target = gig_expectations(1.1, 2.0, 0.7)
    solution = gig_from_expectations(*target, start=jnp.array([1.0, 2.1, 0.65]))
    assert bool(solution.converged) and int(solution.iterations) <= 5


@pytest.mark.parametrize("alpha", [1e-3, 0.2, 1.0, 7.0, 300.0])
def test_gamma_shape_inverts_log_minus_digamma(alpha):
    assert float(gamma_shape(math.log(alpha) - float(digamma(alpha)))) == pytest.approx(alpha, rel=1e-11)


def test_gig_class_checks_its_parameters():
    with pytest.raises(ValueError, match="a = 0 needs p < 0"): GIG.from_params(1.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="a must be a real number, got nan"): GIG.from_params(1.0, float("nan"), 1.0)
    assert float(GIG.from_params(2.0, 4.0, 0.0).mean) == pytest.approx(1.0)


# ---------------------------------------------------------------- the mixtures

def _models(d=2):
    sigma = np.eye(d) + 0.3 * (np.ones((d, d)) - np.eye(d))
    mu, gamma = np.linspace(-0.5, 0.5, d), np.linspace(0.4, -0.2, d)
    return dict(
        vg=VarianceGamma.from_classical(mu=mu, gamma=gamma, sigma=sigma, alpha=1.6, beta=1.3),
        nigamma=NormalInverseGamma.from_classical(mu=mu, gamma=gamma, sigma=sigma, alpha=3.5, beta=2.5),
        gh=GeneralizedHyperbolic.from_classical(mu=mu, gamma=gamma, sigma=sigma, p=1.3, a=1.4, b=0.8).normalized())


def _density_by_quadrature(x, model):
    "1-D density of a mixture by integrating the normal over the mixing law."
    p, a, b = (float(v) for v in model.mixing_law())
    mu, gamma, s2 = float(model.mu[0]), float(model.gamma[0]), float(model.sigma[0, 0])
    mixing = lambda w: math.exp(float(gig_log_prob(w, p, a, b)))
    return integrate.quad(lambda w: stats.norm.pdf(x, mu + gamma * w, math.sqrt(w * s2)) * mixing(w), 0, np.inf,
                          limit=400, epsabs=0, epsrel=1e-12)[0]


@pytest.mark.parametrize("name", ["vg", "nigamma", "gh"])
def test_one_dimensional_densities_match_quadrature(name):
    model = _models(1)[name]
    for x in (-3.0, -0.4, 0.9, 4.0):
        assert float(model.log_prob(jnp.array([x]))) == pytest.approx(math.log(_density_by_quadrature(x, model)), abs=1e-9)


def test_gh_matches_scipy_genhyperbolic_and_the_nig_special_case():
    for p, a, b, g in [(1.4, 0.8, 2.5, 0.7), (-2.2, 1.5, 0.3, -0.4), (0.0, 3.0, 3.0, 0.0)]:
        model = GeneralizedHyperbolic.from_classical(mu=[0.2], gamma=[g], sigma=[[1.3]], p=p, a=a, b=b)
        delta = math.sqrt(1.3 * b)
        law = stats.genhyperbolic(p, delta * math.sqrt(a + g * g / 1.3) / math.sqrt(1.3), delta * g / 1.3, loc=0.2, scale=delta)
        x = np.linspace(-8, 8, 17)
        np.testing.assert_allclose(model.log_prob(x[:, None]), law.logpdf(x), rtol=1e-10, atol=1e-10)
    nig = NormalInverseGaussian.from_classical(mu=[0.0], gamma=[0.5], sigma=[[1.0]], mu_ig=1.5, lam=0.8)
    gh = GeneralizedHyperbolic(nig.mu, nig.gamma, nig.sigma, jnp.float64(-0.5), nig.lam / nig.mu_ig ** 2, nig.lam)
    x = np.linspace(-10, 15, 51)[:, None]
    np.testing.assert_allclose(gh.log_prob(x), nig.log_prob(x), rtol=1e-11)


def test_normal_inverse_gamma_without_skew_is_student_t():
    model = NormalInverseGamma.from_classical(mu=[1.0], gamma=[0.0], sigma=[[2.0]], alpha=2.0, beta=3.0)
    x = np.linspace(-20, 20, 41)
    np.testing.assert_allclose(model.log_prob(x[:, None]), stats.t(4.0, loc=1.0, scale=math.sqrt(3.0)).logpdf(x), rtol=1e-12)


@pytest.mark.parametrize("name", ["vg", "nigamma", "gh"])
def test_moments_match_draws_and_complete_data_m_step_is_a_fixed_point(name):
    model = _models(3)[name]
    draws = model.rvs(300_000, seed=4)
    np.testing.assert_allclose(draws.mean(0), model.mean, atol=0.02)
    if name != "nigamma":  # the inverse gamma's sample covariance converges too slowly for a tight check
        np.testing.assert_allclose(np.cov(np.asarray(draws).T), model.cov, atol=0.05)
    back = model.m_step(model.expectation_params())
    for got, want in zip(back, model): np.testing.assert_allclose(got, want, rtol=1e-7, atol=1e-9)


def test_gh_normalisation_keeps_the_law_and_fixes_the_determinant():
    model = GeneralizedHyperbolic.from_classical(mu=[0.0, 0.0], gamma=[0.3, 0.1], sigma=[[3.0, 0.4], [0.4, 2.0]], p=0.3, a=2.0, b=1.0)
    x = np.asarray(model.rvs(20, seed=0))
    np.testing.assert_allclose(model.normalized().log_prob(x), model.log_prob(x), rtol=1e-12)
    assert float(jnp.linalg.det(model.normalized().sigma)) == pytest.approx(1.0, rel=1e-12)


RULES = dict(identity=IdentityUpdate(), robbins_monro=RobbinsMonroUpdate(tau0=5.0), sample_weighted=SampleWeightedUpdate(),
             ewma=EWMAUpdate(w=0.2), affine=AffineUpdate(b=0.8, c=0.2))


@pytest.fixture(scope="module")
def fits():
    "Data from each family and a batch fit of each (shared by the rule tests)."
    out = {}
    for name, truth in _models(2).items():
        X = np.asarray(truth.rvs(3000, seed=7))
        start = type(truth).default_init(X)
        out[name] = truth, X, start, BatchEMFitter(tol=1e-7, max_iter=400).fit(start, X)
    return out


@pytest.mark.parametrize("name", ["vg", "nigamma", "gh"])
def test_batch_em_is_monotone_and_beats_the_truth(fits, name):
    truth, X, _, batch = fits[name]
    assert batch.converged
    assert np.all(np.diff(batch.log_likelihoods) > -1e-9)
    assert batch.final_log_likelihood >= float(truth.marginal_log_likelihood(X)) - 1e-6
    if name == "gh": assert float(jnp.linalg.det(batch.model.sigma)) == pytest.approx(1.0, rel=1e-9)


@pytest.mark.parametrize("rule", list(RULES) + ["shrinkage"])
@pytest.mark.parametrize("name", ["vg", "nigamma", "gh"])
def test_incremental_em_with_every_rule(fits, name, rule):
    truth, X, start, batch = fits[name]
    # shrinkage toward the batch fit: a target that is right, so the pull costs no likelihood
    eta_update = Shrinkage(RobbinsMonroUpdate(tau0=5.0), eta0_from_model(batch.model), tau=0.05) if rule == "shrinkage" else RULES[rule]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no rejected steps, no dominance warnings
        result = IncrementalEMFitter(batch_size=256, max_steps=150, eta_update=eta_update).fit(start, X, key=1)
    assert bool(result.model.is_admissible()) and result.rejected_steps == 0
    tolerance = {"identity": 0.05, "ewma": 0.03, "affine": 0.03}.get(rule, 0.02)
    assert result.final_log_likelihood > batch.final_log_likelihood - tolerance
    again = IncrementalEMFitter(batch_size=256, max_steps=150, eta_update=eta_update).fit(start, X, key=1)
    np.testing.assert_array_equal(np.asarray(again.model.sigma), np.asarray(result.model.sigma))


def test_a_fit_whose_every_step_is_rejected_raises(fits):
    _, X, start, _ = fits["gh"]
    bad_rule = AffineUpdate.tree_unflatten(None, [None, 0.0, -1.0])  # past the rule's checks: negates η
    with pytest.raises(FloatingPointError, match="every one of the 5 M-steps was rejected"):
        IncrementalEMFitter(batch_size=256, max_steps=5, eta_update=bad_rule).fit(start, X, key=0)


@pytest.mark.parametrize("family,kwargs,message", [
    (VarianceGamma, dict(alpha=0.0, beta=1.0), r"alpha must be in \[1e-300, 1e\+300\], got 0.0"),
    (NormalInverseGamma, dict(alpha=1.0, beta=float("inf")), "beta must be finite"),
    (GeneralizedHyperbolic, dict(p=0.5, a=1.0, b=-1.0), r"b must be in \[1e-300, 1e\+300\], got -1.0"),
    (GeneralizedHyperbolic, dict(p=2e12, a=1.0, b=1.0), r"p must satisfy \|p\| <= 1e\+12"),
    (NormalInverseGamma, dict(alpha=1e13, beta=1.0), r"alpha must satisfy \|alpha\| <= 1e\+12"),
    (GeneralizedHyperbolic, dict(p=0.5, a=1.0), "p=, a=, b="),
    (VarianceGamma, dict(alpha=1.0, beta=1.0, gamma_=1.0), "alpha=, beta="),
])
def test_bad_parameters_are_refused(family, kwargs, message):
    with pytest.raises(ValueError, match=message):
        family.from_classical(mu=[0.0], gamma=[0.0], sigma=[[1.0]], **kwargs)


def test_bad_data_are_refused():
    model = _models(2)["gh"]
    with pytest.raises(ValueError, match="non-finite"): model.log_prob(np.array([[0.0, np.nan]]))
    with pytest.raises(ValueError, match="dimension 2"): model.e_step(np.zeros((5, 3)))
    with pytest.raises(ValueError, match="constant"): GeneralizedHyperbolic.default_init(np.ones((10, 2)))
    with pytest.raises(ValueError, match="E\\[log W\\]"): model.m_step(model.expectation_params()._replace(log_w=None))
