"""log K for real orders: the accuracy map against scipy and mpmath, derivatives, edge cases, transformations."""
import jax
import jax.numpy as jnp
import mpmath
import numpy as np
import pytest
from scipy.special import kve

from opt_lab.book.em_explorers import log_kv_oracle
from opt_lab.em import kv_ratio, log_kv, log_kv_and_ratio, log_kv_ladder


def log_kv_reference(nu: float, z: float) -> float:
    "log K_nu(z) at 40 digits with mpmath: the oracle where scipy over- or underflows."
    with mpmath.workdps(40): return float(mpmath.log(mpmath.besselk(nu, z)))


def _check_grid(orders, arguments, mpmath_cells):
    NU, Z = np.meshgrid(orders, arguments, indexing="ij")
    got = np.asarray(log_kv(jnp.asarray(NU), jnp.asarray(Z)))
    assert np.isfinite(got).all()
    with np.errstate(over="ignore", divide="ignore"):
        want = np.log(kve(NU, Z)) - Z
    finite = np.isfinite(want)
    # scipy's kve is itself off by up to ~5e-14 at large orders and moderate arguments (mpmath agrees with log_kv there),
    # so cells where the two differ by more than 1e-14 are settled by 40-digit mpmath
    error = np.where(finite, np.abs(got - want) / np.maximum(1, np.abs(np.where(finite, want, 0))), 0.0)
    disputed = np.argwhere(error > 1e-14)
    overflow = np.argwhere(~finite)
    overflow = overflow[:: max(1, len(overflow) // mpmath_cells)]
    for i, j in np.concatenate([disputed, overflow]):
        exact = log_kv_reference(NU[i, j], Z[i, j])
        assert abs(got[i, j] - exact) <= 1e-13 * max(1, abs(exact)), (NU[i, j], Z[i, j], got[i, j], exact)
    assert error.max() < 1e-13


def test_accuracy_map_coarse():
    _check_grid(np.linspace(-100, 100, 81), np.logspace(-8, 4, 61), mpmath_cells=40)


@pytest.mark.slow
def test_accuracy_map_dense():
    _check_grid(np.linspace(-100, 100, 801), np.logspace(-8, 4, 601), mpmath_cells=300)


@pytest.mark.parametrize("nu, z", [(0.0, 1e-8), (0.0, 1e-300), (1e-9, 1e-8), (100.0, 1e-8), (-100.0, 1e-8), (100.0, 1e4),
                                   (0.5, 1e4), (37.5, 2.0), (37.5, 2.0 + 1e-12), (250.0, 1e-3), (0.0, 5e5)])
def test_edge_cases_are_finite_and_right(nu, z):
    got = float(log_kv(nu, z))
    assert np.isfinite(got)
    with mpmath.workdps(40):
        exact = float(mpmath.log(mpmath.besselk(nu, z)))
    assert abs(got - exact) <= 1e-13 * max(1, abs(exact))


@pytest.mark.parametrize("nu", [0.0, 1e-6, 0.4999, 0.5, 0.5001, 1.5, 3.25, 12.0, 59.6, -7.7])
@pytest.mark.parametrize("z", [1e-8, 0.05, 1.9999, 2.0001, 30.0, 4e3])
def test_derivatives_match_mpmath(nu, z):
    d_nu, d_z = jax.grad(log_kv, (0, 1))(nu, z)
    with mpmath.workdps(40):
        h = mpmath.mpf("1e-15")
        want_nu = (mpmath.log(mpmath.besselk(nu + h, z)) - mpmath.log(mpmath.besselk(nu - h, z))) / (2 * h)
        want_z = mpmath.diff(lambda x: mpmath.log(mpmath.besselk(nu, x)), z)
    assert abs(float(d_nu) - float(want_nu)) <= 1e-12 * max(1, abs(float(want_nu)))
    assert abs(float(d_z) - float(want_z)) <= 1e-12 * max(1, abs(float(want_z)))


def test_second_derivative_in_the_order_matches_finite_differences():
    nu, z, h = 1.3, 0.8, 1e-4
    hess = jax.hessian(log_kv, 0)(nu, z)
    fd = (float(log_kv(nu + h, z)) - 2 * float(log_kv(nu, z)) + float(log_kv(nu - h, z))) / h**2
    assert abs(float(hess) - fd) < 1e-6 * abs(fd) + 1e-7 and float(hess) > 0  # log K is convex in the order


def test_even_in_the_order_and_consistent_with_the_integer_ladder():
    z = jnp.logspace(-8, 4, 200)
    for twice_nu in range(0, 12, 3):
        here, below = log_kv_ladder(twice_nu, z)
        np.testing.assert_allclose(log_kv(twice_nu / 2, z), here, rtol=1e-13, atol=1e-13)
        np.testing.assert_allclose(log_kv(-twice_nu / 2, z), here, rtol=1e-13, atol=1e-13)
        np.testing.assert_allclose(log_kv_and_ratio(twice_nu / 2, z)[1], kv_ratio(twice_nu, z), rtol=1e-13)


def test_vmap_and_broadcasting():
    nu, z = jnp.linspace(-3, 3, 7), jnp.logspace(-2, 2, 5)
    table = log_kv(nu[:, None], z[None, :])
    mapped = jax.vmap(lambda n: log_kv(n, z))(nu)
    assert table.shape == (7, 5)
    # the same arithmetic, up to XLA fusing it differently for the two layouts (one ulp)
    np.testing.assert_allclose(table, mapped, rtol=4e-16, atol=0)


def _plane_sample(n: int, seed: int):
    "Orders log-uniform on [1e-3, 1e12] plus a uniform band across the switch at 32; arguments log-uniform on [1e-300, 1e300]."
    rng = np.random.default_rng(seed)
    nu = np.concatenate([10 ** rng.uniform(-3, 12, n), rng.uniform(0, 64, n // 4), [0.0, 32.0, np.nextafter(32.0, 64), 1e12]])
    z = 10 ** rng.uniform(-300, 300, nu.size)
    z[-4:] = [1e-300, 1e300, 1e-300, 1e300]
    return nu, z


def test_whole_plane_against_the_quadrature_oracle(time_limit):
    nu, z = _plane_sample(80, 7)
    with time_limit(60):
        got = np.asarray(log_kv(nu, z))
    assert np.isfinite(got).all() and (got == np.asarray(log_kv(-nu, z))).all()
    want = np.array([float(log_kv_oracle(a, b)) for a, b in zip(nu, z)])
    error = np.abs(got - want) / np.maximum(1, np.abs(want))
    assert error.max() <= 1e-13, (nu[error.argmax()], z[error.argmax()], error.max())


def test_derivatives_across_the_plane_against_the_oracle():
    nu, z = _plane_sample(16, 11)
    d_nu, d_z = (np.asarray(jax.vmap(jax.grad(log_kv, i))(jnp.asarray(nu), jnp.asarray(z))) for i in (0, 1))
    assert np.isfinite(d_nu).all() and np.isfinite(d_z).all()
    with mpmath.workdps(45):
        for a, b, got_nu, got_z in zip(nu, z, d_nu, d_z):
            a, b = mpmath.mpf(a), mpmath.mpf(b)
            step_nu, step_z = mpmath.mpf("1e-15") * max(1, a), mpmath.mpf("1e-15") * b
            want_nu = (log_kv_oracle(a + step_nu, b, 45) - log_kv_oracle(a - step_nu, b, 45)) / (2 * step_nu)
            want_z = (log_kv_oracle(a, b + step_z, 45) - log_kv_oracle(a, b - step_z, 45)) / (2 * step_z)
            # d/dz is about -max(nu, z)/z: its scale is that of z * d/dz
            assert abs(got_nu - want_nu) <= 1e-13 * max(1, abs(want_nu)), (a, b, got_nu, want_nu)
            assert abs(got_z - want_z) * b <= 1e-13 * max(1, abs(want_z * b)), (a, b, got_z, want_z)


def test_orders_mixed_in_one_batch_give_the_values_they_give_alone(time_limit):
    "A batch pays for no order: one point at 1e12 among small orders returns at once and changes no other value."
    nu = np.array([1.5, 1e12, 0.25, 31.9, 32.5, 1e5, 1e8, 7.0])
    z = np.array([0.5, 3e11, 1e-300, 40.0, 1e300, 1e-3, 1e-300, 2.0])
    with time_limit(30):
        together = np.asarray(log_kv(nu, z))
    alone = np.array([float(log_kv(a, b)) for a, b in zip(nu, z)])
    np.testing.assert_allclose(together, alone, rtol=1e-15)
