"""The EM families at the edges of their documented domains: log-densities far in the tails against mpmath, draws that
are finite or refused by name, GIG draws against scipy's where scipy can draw, and every call in bounded time."""
import math

import jax
import mpmath
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st
from scipy import stats

from opt_lab.book.em_explorers import log_kv_oracle
from opt_lab.em import GeneralizedHyperbolic, NormalInverseGamma, NormalInverseGaussian, VarianceGamma, gig_log_rvs
from opt_lab.em.expfam import ORDER_LIMIT, POSITIVE_RANGE

# time_limit is a stateless context-manager factory: sharing it between generated inputs is safe
EDGE = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
POSITIVE = st.sampled_from([POSITIVE_RANGE[0], 1e-150, 1e-8, 1.0, 1e8, 1e150, POSITIVE_RANGE[1]])
SHAPE = st.sampled_from([POSITIVE_RANGE[0], 1e-8, 0.5, 1.0, 32.5, 1e5, ORDER_LIMIT])
ORDER = st.sampled_from([-ORDER_LIMIT, -1e5, -32.5, -0.5, 0.0, 1e-300, 0.5, 32.5, 1e5, ORDER_LIMIT])
FAR = st.sampled_from([1e200, -1e200, 1e100, 1e-300, 0.0, 3.0])


def _log_z(p, a, b):
    "log of the integral of w^(p-1) exp(-(a w + b / w) / 2) over w > 0, in mpmath, edges included."
    if b == 0: return mpmath.loggamma(p) - p * mpmath.log(a / 2)
    if a == 0: return mpmath.loggamma(-p) + p * mpmath.log(b / 2)
    return mpmath.log(2) + p / 2 * mpmath.log(b / a) + log_kv_oracle(p, mpmath.sqrt(a * b), 40)


def _reference_log_density(model, x) -> float:
    "The mixture's log-density at `x` from the posterior GIG, at 40 digits."
    with mpmath.workdps(40):
        as_mp = lambda v: mpmath.matrix([[mpmath.mpf(float(e))] for e in np.ravel(v)])
        sigma = mpmath.matrix([[mpmath.mpf(float(e)) for e in row] for row in np.asarray(model.sigma)])
        centred, gamma, inverse = as_mp(x) - as_mp(model.mu), as_mp(model.gamma), sigma ** -1
        q, gg, xg = ((u.T * inverse * v)[0] for u, v in ((centred, centred), (gamma, gamma), (centred, gamma)))
        if isinstance(model, NormalInverseGaussian):
            law = (mpmath.mpf(-0.5), mpmath.mpf(float(model.lam)) / mpmath.mpf(float(model.mu_ig)) ** 2, mpmath.mpf(float(model.lam)))
        else:
            law = tuple(mpmath.mpf(float(v)) for v in model.mixing_law())
        p, a, b = law
        d = len(np.ravel(x))
        value = (_log_z(p - mpmath.mpf(d) / 2, a + gg, b + q) - _log_z(p, a, b) - d * mpmath.log(2 * mpmath.pi) / 2
                 - mpmath.log(mpmath.det(sigma)) / 2 + xg)
        return float(value)


MODELS = {
    "variance gamma": lambda: VarianceGamma.from_classical(mu=[0.5, -1.0], gamma=[0.3, 0.1], sigma=[[2.0, 0.3], [0.3, 1.0]], alpha=2.0, beta=1.5),
    "normal-inverse gamma": lambda: NormalInverseGamma.from_classical(mu=[0.5, -1.0], gamma=[0.3, 0.1], sigma=[[2.0, 0.3], [0.3, 1.0]], alpha=3.0, beta=2.0),
    "generalised hyperbolic": lambda: GeneralizedHyperbolic.from_classical(mu=[0.5, -1.0], gamma=[0.3, 0.1], sigma=[[2.0, 0.3], [0.3, 1.0]], p=-1.3, a=1.2, b=0.7),
    "normal-inverse Gaussian": lambda: NormalInverseGaussian.from_classical(mu=[0.5, -1.0], gamma=[0.3, 0.1], sigma=[[2.0, 0.3], [0.3, 1.0]], mu_ig=1.0, lam=1.5),
}


@pytest.mark.parametrize("name", MODELS)
def test_log_density_far_in_the_tails_matches_mpmath(name):
    model = MODELS[name]()
    X = np.array([[1e200, -3e199], [-1e200, 1e200], [1e100, 0.0], [0.5 + 1e-300, -1.0], [0.5, -1.0], [3.0, 2.0], [1e154, 1e154]])
    got = np.asarray(model.log_prob(X))
    assert np.isfinite(got).all(), got
    want = np.array([_reference_log_density(model, x) for x in X])
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_variance_gamma_density_is_infinite_exactly_where_it_is_unbounded():
    model = VarianceGamma.from_classical(mu=[0.0, 0.0], gamma=[0.2, 0.0], sigma=np.eye(2), alpha=1e-3, beta=1e-3)
    draws = model.rvs(2_000, seed=0)  # half the gamma draws underflow to 0: those points sit exactly at mu
    lp = np.asarray(model.log_prob(draws))
    at_mu = (np.asarray(draws) == 0).all(axis=1)
    assert at_mu.any() and (lp[at_mu] == np.inf).all() and np.isfinite(lp[~at_mu]).all()


def _build(family, mixing):
    "The model, or a skipped example where a derived parameter leaves the domain (the NIG's a = lam / mu_ig**2)."
    try:
        return family.from_classical(mu=[0.0, 1.0], gamma=[0.5, -0.2], sigma=[[1.0, 0.2], [0.2, 0.5]], **mixing)
    except ValueError as error:
        assert "lam / mu_ig**2" in str(error)
        assume(False)


FAMILIES = st.one_of(
    st.tuples(st.just(VarianceGamma), st.fixed_dictionaries(dict(alpha=SHAPE, beta=POSITIVE))),
    st.tuples(st.just(NormalInverseGamma), st.fixed_dictionaries(dict(alpha=SHAPE, beta=POSITIVE))),
    st.tuples(st.just(GeneralizedHyperbolic), st.fixed_dictionaries(dict(p=ORDER, a=POSITIVE, b=POSITIVE))),
    st.tuples(st.just(NormalInverseGaussian), st.fixed_dictionaries(dict(mu_ig=POSITIVE, lam=POSITIVE))))


@EDGE
@given(FAMILIES, FAR, FAR)
def test_log_density_at_the_domain_edges_is_never_nan_and_returns(time_limit, family_and_mixing, x0, x1):
    family, mixing = family_and_mixing
    model = _build(family, mixing)
    with time_limit(60):
        lp = float(model.log_prob(np.array([x0, x1])))
    assert not math.isnan(lp), (family.__name__, mixing, x0, x1)
    unbounded = family is VarianceGamma and mixing["alpha"] <= 1 and (x0, x1) == (0.0, 1.0)
    assert lp < math.inf or unbounded, (family.__name__, mixing, x0, x1, lp)


@EDGE
@given(FAMILIES)
def test_draws_at_the_domain_edges_are_finite_or_refused_by_name(time_limit, family_and_mixing):
    family, mixing = family_and_mixing
    model = _build(family, mixing)
    with time_limit(60):
        try:
            draws = np.asarray(model.rvs(200, seed=3))
        except ValueError as error:
            assert "beyond float64's range" in str(error) and all(f"{k}=" in str(error) for k in mixing)
            return
    assert np.isfinite(draws).all()


@pytest.mark.parametrize("p, a, b", [(1e-3, 1e-3, 1e-3), (0.5, 1e-30, 1e-10), (0.01, 1.0, 1e-12), (1e4, 1.0, 1.0),
                                     (-50.0, 1e-5, 1e5), (1e-8, 1e-8, 1e-8), (-3.0, 1e-40, 1e-40)])
def test_gig_draws_at_the_edges_match_scipy_in_a_two_sample_test(p, a, b):
    ours = np.asarray(gig_log_rvs(jax.random.key(3), p, a, b, 4_000))
    theirs = np.log(stats.geninvgauss(p, math.sqrt(a * b), scale=math.sqrt(b / a)).rvs(4_000, random_state=np.random.default_rng(0)))
    assert np.isfinite(ours).all()
    assert stats.ks_2samp(ours, theirs).pvalue > 1e-3


@pytest.mark.parametrize("p, a, b", [(1e12, 1.0, 1.0), (-1e12, 1.0, 1.0), (1e-300, 1e-300, 1e-300), (3.0, 1e-300, 1e300)])
def test_gig_draws_at_the_corners_are_finite_and_return(time_limit, p, a, b):
    with time_limit(60):
        draws = np.asarray(gig_log_rvs(jax.random.key(4), p, a, b, 2_000))
    assert np.isfinite(draws).all()
