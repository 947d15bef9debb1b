"""Samplers of gpkern.sampling against exact enumeration, quadrature and scipy/numpy references."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import scipy.stats
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.estimator_checks import parametrize_with_checks

from gpkern.estimators import WeightedLeastSquaresRegressor
from gpkern.sampling import (
    CallableBasis,
    LegendreBasis,
    TrigonometricBasis,
    inverse_christoffel,
    sample_finite_projection_dpp,
    sample_kdpp,
    sample_optimal,
    sample_projection_dpp,
)
from gpkern.sampling.least_squares import weighted_least_squares
from gpkern.sampling.volume import sample_repeated_dpp, sample_volume_rescaled

# Chi-square tests: a quick run by default, the 20,000-draw run under `-m slow`.
DRAWS = [4000, pytest.param(20000, marks=pytest.mark.slow)]


def _chisquare_against(counts: dict, probs: dict, draws: int) -> float:
    """p-value of a chi-square test of observed subset counts against exact probabilities.

    Subsets expected fewer than 5 times are pooled into one cell (the test's validity rule).
    """
    assert all(S in probs for S in counts), "a sampled subset has probability zero"
    keys = sorted(probs)
    obs = np.array([counts.get(S, 0) for S in keys], dtype=float)
    exp = np.array([probs[S] for S in keys]) * draws
    small = exp < 5
    if small.any():
        obs = np.append(obs[~small], obs[small].sum())
        exp = np.append(exp[~small], exp[small].sum())
    return float(scipy.stats.chisquare(obs, exp).pvalue)


def _finite_features(N: int = 8, m: int = 3, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(N, m, generator=g, dtype=torch.float64)


def _projection_probs(Phi: torch.Tensor) -> dict:
    """P(S) = det(Q_S)^2 for Q orthonormal with the span of Phi (numpy QR, an independent path)."""
    Q, _ = np.linalg.qr(Phi.numpy())
    N, m = Q.shape
    return {S: np.linalg.det(Q[list(S)]) ** 2 for S in itertools.combinations(range(N), m)}


@pytest.mark.parametrize("draws", DRAWS)
def test_finite_projection_dpp_matches_enumeration(draws):
    Phi = _finite_features()
    probs = _projection_probs(Phi)
    assert math.isclose(sum(probs.values()), 1.0, rel_tol=1e-12)
    gen = torch.Generator().manual_seed(1)
    counts: dict = {}
    incl = np.zeros(Phi.shape[0])
    for _ in range(draws):
        S = tuple(sample_finite_projection_dpp(Phi, gen).tolist())
        counts[S] = counts.get(S, 0) + 1
        incl[list(S)] += 1
    assert _chisquare_against(counts, probs, draws) > 1e-3
    # inclusion probabilities are the diagonal of the projection kernel K = Q Q^T
    Q, _ = np.linalg.qr(Phi.numpy())
    K_diag = (Q**2).sum(1)
    se = np.sqrt(K_diag * (1 - K_diag) / draws)
    np.testing.assert_array_less(np.abs(incl / draws - K_diag), 5 * se + 1e-12)


def test_finite_projection_dpp_orthonormal_flag_and_errors():
    Q, _ = torch.linalg.qr(_finite_features())
    a = sample_finite_projection_dpp(Q, 3, orthonormal=True)
    b = sample_finite_projection_dpp(Q, 3)
    assert a.dtype == torch.long and len(set(a.tolist())) == 3 and b.shape == (3,)
    with pytest.raises(ValueError, match="full column rank"):
        sample_finite_projection_dpp(torch.ones(5, 2, dtype=torch.float64), 0)
    with pytest.raises(ValueError, match="at least m items"):
        sample_finite_projection_dpp(torch.randn(2, 3, dtype=torch.float64), 0)


def _kdpp_probs(L: np.ndarray, k: int) -> dict:
    N = L.shape[0]
    w = {S: np.linalg.det(L[np.ix_(S, S)]) for S in itertools.combinations(range(N), k)}
    Z = sum(w.values())
    return {S: v / Z for S, v in w.items()}


@pytest.mark.parametrize("draws", DRAWS)
@pytest.mark.parametrize("factor", [False, True])
def test_kdpp_matches_enumeration(factor, draws):
    N, k = 7, 3
    g = torch.Generator().manual_seed(2)
    B = torch.randn(N, 5, generator=g, dtype=torch.float64) * torch.tensor([3.0, 1, 1, 0.5, 0.2])
    L = B @ B.T
    probs = _kdpp_probs(L.numpy(), k)
    gen = torch.Generator().manual_seed(3)
    counts: dict = {}
    for _ in range(draws):
        S = tuple(sample_kdpp(B if factor else L, k, gen, factor=factor).tolist())
        counts[S] = counts.get(S, 0) + 1
    assert _chisquare_against(counts, probs, draws) > 1e-3


def test_kdpp_large_scale_no_overflow_and_rank_checks():
    # e_k of 2,000 eigenvalues overflows float64 outside log space
    g = torch.Generator().manual_seed(0)
    B = torch.randn(2000, 300, generator=g, dtype=torch.float64) * 10
    S = sample_kdpp(B, 250, 0, factor=True)
    assert S.shape == (250,) and S.unique().numel() == 250
    assert sample_kdpp(B[:5] @ B[:5].T, 0, 0).numel() == 0
    low_rank = B[:6, :2] @ B[:6, :2].T
    with pytest.raises(ValueError, match="rank"):
        sample_kdpp(low_rank, 3, 0)
    with pytest.raises(ValueError, match="positive semi-definite"):
        sample_kdpp(-torch.eye(4, dtype=torch.float64), 2, 0)
    with pytest.raises(ValueError, match="square"):
        sample_kdpp(B[:5], 2, 0)
    with pytest.raises(ValueError, match="k must"):
        sample_kdpp(torch.eye(3, dtype=torch.float64), -1, 0)


def test_kdpp_reproducible_with_seed():
    L = torch.eye(6, dtype=torch.float64) + 0.3
    assert torch.equal(sample_kdpp(L, 3, 5), sample_kdpp(L, 3, 5))


# ---------------------------------------------------------------- bases and optimal sampling


def _gauss_box(nodes: int, dim: int, lo: float = -1.0, hi: float = 1.0):
    """Tensor Gauss-Legendre rule for the uniform probability measure on [lo, hi]^dim (numpy)."""
    t, w = np.polynomial.legendre.leggauss(nodes)
    t = lo + (hi - lo) * (t + 1) / 2
    w = w / 2
    grids = np.meshgrid(*[t] * dim, indexing="ij")
    weights = np.prod(np.meshgrid(*[w] * dim, indexing="ij"), axis=0)
    return np.stack([g.ravel() for g in grids], 1), weights.ravel()


@pytest.mark.parametrize(
    "dim,degree,index_set", [(1, 7, "total"), (2, 4, "total"), (2, 3, "tensor"), (3, 2, "total")]
)
def test_legendre_orthonormal_by_gauss_quadrature(dim, degree, index_set):
    basis = LegendreBasis(degree, dim=dim, index_set=index_set, domain=[(-2.0, 3.0)] * dim)
    expected_m = math.comb(degree + dim, dim) if index_set == "total" else (degree + 1) ** dim
    assert basis.m == expected_m
    x, w = _gauss_box(degree + 2, dim, -2.0, 3.0)
    Phi = basis(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(Phi.T @ (w[:, None] * Phi), np.eye(basis.m), atol=1e-12)
    # against numpy's Legendre evaluation of the (deg-1) function of coordinate 0
    if dim == 1:
        t = 2 * (x[:, 0] + 2.0) / 5.0 - 1
        np.testing.assert_allclose(
            Phi[:, degree],
            np.sqrt(2 * degree + 1) * np.polynomial.legendre.legval(t, [0] * degree + [1]),
            atol=1e-12,
        )


@pytest.mark.parametrize("dim,index_set", [(1, "total"), (2, "total"), (2, "tensor")])
def test_trigonometric_orthonormal_and_flat_christoffel(dim, index_set):
    basis = TrigonometricBasis(2, dim=dim, index_set=index_set, domain=[(1.0, 3.0)] * dim)
    t = (np.arange(16) + 0.5) / 16  # midpoint rule: exact for trigonometric degree < 16
    grids = np.meshgrid(*[1.0 + 2.0 * t] * dim, indexing="ij")
    x = np.stack([g.ravel() for g in grids], 1)
    Phi = basis(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(Phi.T @ Phi / x.shape[0], np.eye(basis.m), atol=1e-12)
    np.testing.assert_allclose(
        inverse_christoffel(basis, torch.from_numpy(x)).numpy(), basis.m, rtol=1e-12
    )


def test_legendre_rejection_bound_is_valid():
    """The arcsine envelope used for phi_n^2 needs pi/4 (2n+1) P_n(t)^2 sqrt(1-t^2) <= 1."""
    t = np.cos(np.linspace(0, np.pi, 20001))
    for n in range(0, 80):
        p = np.polynomial.legendre.legval(t, [0] * n + [1])
        assert (np.pi / 4 * (2 * n + 1) * p**2 * np.sqrt(1 - t**2)).max() <= 1.0


def _optimal_cdf_1d(basis, lo, hi):
    """CDF of k_m/m d(mu) on [lo, hi], by Gauss-Legendre quadrature on [lo, s] (exact)."""
    t, w = np.polynomial.legendre.leggauss(basis.degree + 2)

    def cdf(s):
        s = np.atleast_1d(s)
        x = lo + (s[:, None] - lo) * (t[None] + 1) / 2  # (len(s), nodes)
        k = inverse_christoffel(basis, torch.from_numpy(x.reshape(-1, 1))).numpy().reshape(x.shape)
        return (k * w).sum(1) * (s - lo) / 2 / (hi - lo) / basis.m

    return cdf


def test_optimal_iid_ks_1d():
    basis = LegendreBasis(6, domain=(0.0, 2.0))
    x = sample_optimal(basis, 3000, torch.Generator().manual_seed(4))[:, 0].numpy()
    cdf = _optimal_cdf_1d(basis, 0.0, 2.0)
    assert abs(cdf(np.array([2.0]))[0] - 1) < 1e-12
    assert scipy.stats.kstest(x, cdf).pvalue > 1e-3
    # the uniform density is rejected (the test has power)
    assert scipy.stats.kstest(x, scipy.stats.uniform(0, 2).cdf).pvalue < 1e-3


def test_optimal_iid_ks_2d_marginal():
    """First coordinate of 2-D total-degree optimal samples against its quadrature marginal."""
    basis = LegendreBasis(3, dim=2)
    x = sample_optimal(basis, 3000, 5)[:, 0].numpy()
    t, w = np.polynomial.legendre.leggauss(8)

    def cdf(s):
        out = []
        for si in np.atleast_1d(s):
            x1 = -1 + (si + 1) * (t + 1) / 2
            pts = np.stack(np.meshgrid(x1, t, indexing="ij"), -1).reshape(-1, 2)
            k = inverse_christoffel(basis, torch.from_numpy(pts)).numpy().reshape(8, 8)
            out.append((w[:, None] * w[None] * k).sum() * (si + 1) / 2 / 4 / basis.m)
        return np.array(out)

    assert abs(cdf(1.0)[0] - 1) < 1e-12
    assert scipy.stats.kstest(x, cdf).pvalue > 1e-3


def test_trigonometric_optimal_is_uniform_and_callable_rejection():
    x = sample_optimal(TrigonometricBasis(3, domain=(0.0, 1.0)), 2000, 6)[:, 0].numpy()
    assert scipy.stats.kstest(x, "uniform").pvalue > 1e-3

    # a callable basis (orthonormal Legendre of degree <= 2 written by hand), by rejection
    def fn(z):
        return torch.cat(
            [torch.ones_like(z), math.sqrt(3) * z, math.sqrt(5) * (1.5 * z**2 - 0.5)], 1
        )

    basis = CallableBasis(fn, m=3, domain=(-1.0, 1.0), christoffel_bound=9.0)
    y = sample_optimal(basis, 2000, 7)[:, 0].numpy()
    cdf = _optimal_cdf_1d(LegendreBasis(2), -1.0, 1.0)
    assert scipy.stats.kstest(y, cdf).pvalue > 1e-3
    with pytest.raises(ValueError, match="exceeds christoffel_bound"):
        sample_optimal(CallableBasis(fn, m=3, domain=(-1.0, 1.0), christoffel_bound=2.0), 100, 0)
    with pytest.raises(ValueError, match="christoffel_bound"):
        sample_optimal(CallableBasis(fn, m=3, domain=(-1.0, 1.0)), 10, 0)


# ---------------------------------------------------------------- continuous projection DPP


def test_continuous_dpp_linear_statistic_and_marginals():
    basis = LegendreBasis(4)  # m = 5 on [-1, 1]
    m, R = basis.m, 2000
    gen = torch.Generator().manual_seed(8)
    X = np.stack([sample_projection_dpp(basis, gen)[:, 0].numpy() for _ in range(R)])  # (R, m)
    h = lambda x: np.cos(2 * x) + x  # noqa: E731
    stat = h(X).sum(1)
    # quadrature references (Gauss-Legendre, mu = uniform probability on [-1, 1])
    t, w = np.polynomial.legendre.leggauss(60)
    w = w / 2
    Phi = basis(torch.from_numpy(t[:, None])).numpy()
    k = (Phi**2).sum(1)
    K = Phi @ Phi.T
    mean = (w * h(t) * k).sum()
    var = (w * h(t) ** 2 * k).sum() - (w * h(t)) @ (K**2) @ (w * h(t))
    assert var > 0
    assert abs(stat.mean() - mean) < 4 * math.sqrt(var / R)
    fourth = ((stat - stat.mean()) ** 4).mean()
    assert abs(stat.var() - var) < 4 * math.sqrt((fourth - stat.var() ** 2) / R)
    # i.i.d. points would have variance m var_rho(h): much larger, so the variance test has power
    assert stat.var() < 0.5 * m * ((w * h(t) ** 2 * k).sum() / m - (mean / m) ** 2)
    # every point of the chain rule, and a uniformly chosen one, has marginal k_m/m
    cdf = _optimal_cdf_1d(basis, -1.0, 1.0)
    for i in range(m):
        assert scipy.stats.kstest(X[:, i], cdf).pvalue > 1e-3 / m
    pick = np.random.default_rng(0).integers(m, size=R)
    assert scipy.stats.kstest(X[np.arange(R), pick], cdf).pvalue > 1e-3


def _ground_set_basis(Phi: torch.Tensor) -> tuple[CallableBasis, np.ndarray]:
    """The finite ground set {0, ..., N-1} with mu uniform, as a continuous-sampler basis.

    sqrt(N) Q (Q orthonormal columns) is orthonormal in L^2(mu); points are indices as floats.
    """
    Q, _ = np.linalg.qr(Phi.numpy())
    N = Q.shape[0]
    F = torch.from_numpy(math.sqrt(N) * Q)
    basis = CallableBasis(
        lambda x: F[x[:, 0].long()],
        m=Q.shape[1],
        domain=(0.0, N - 1.0),
        sample_measure=lambda n, g: torch.randint(N, (n, 1), generator=g).double(),
        christoffel_bound=float(N * (Q**2).sum(1).max()),
    )
    return basis, Q


@pytest.mark.parametrize("draws", DRAWS)
def test_continuous_dpp_chain_rule_on_ground_set_matches_enumeration(draws):
    """The rejection chain rule on a discrete mu: sets of indices have P(S) = det(Q_S)^2."""
    Phi = _finite_features(seed=9)
    basis, _ = _ground_set_basis(Phi)
    probs = _projection_probs(Phi)
    gen = torch.Generator().manual_seed(10)
    counts: dict = {}
    for _ in range(draws):
        S = tuple(sorted(int(v) for v in sample_projection_dpp(basis, gen)[:, 0]))
        counts[S] = counts.get(S, 0) + 1
    assert _chisquare_against(counts, probs, draws) > 1e-3


# ---------------------------------------------------------------- least squares and designs


def test_weighted_least_squares_against_numpy_lstsq():
    basis = LegendreBasis(3, dim=2)
    g = torch.Generator().manual_seed(11)
    x = sample_optimal(basis, 60, g)
    y = torch.randn(60, 2, generator=g, dtype=torch.float64)
    w = torch.rand(60, generator=g, dtype=torch.float64) + 0.5
    fit = weighted_least_squares(x, y, basis, w)
    A = basis(x).numpy() * np.sqrt(w.numpy())[:, None]
    ref = np.linalg.lstsq(A, y.numpy() * np.sqrt(w.numpy())[:, None], rcond=None)[0]
    np.testing.assert_allclose(fit.coef.numpy(), ref, rtol=1e-10, atol=1e-12)
    G = A.T @ A / 60
    ev = np.linalg.eigvalsh(G)
    assert math.isclose(fit.gram_deviation, np.abs(ev - 1).max(), rel_tol=1e-9)
    assert math.isclose(fit.condition_number, np.linalg.cond(G), rel_tol=1e-8)
    # default weights are m / k_m; a 1-D y gives a 1-D coefficient vector
    fit1 = weighted_least_squares(x, y[:, 0], basis)
    w_opt = basis.m / (basis(x) ** 2).sum(1)
    np.testing.assert_allclose(
        fit1.coef.numpy(),
        weighted_least_squares(x, y[:, :1], basis, w_opt).coef[:, 0].numpy(),
        rtol=1e-12,
    )
    with pytest.raises(ValueError, match="at least m points"):
        weighted_least_squares(x[:5], y[:5], basis)
    with pytest.raises(ValueError, match="singular"):
        weighted_least_squares(x[:1].repeat(20, 1), y[:20], basis)
    with pytest.raises(ValueError, match="weights"):
        weighted_least_squares(x, y, basis, -w)


def test_interpolation_at_projection_dpp_is_m_plus_1_optimal():
    """E ||f - I_S f||^2 = (m + 1) e_m(f)^2, by exact enumeration of the finite DPP."""
    Phi = _finite_features(seed=12)
    basis, Q = _ground_set_basis(Phi)
    N, m = Q.shape
    f = np.random.default_rng(1).standard_normal(N)
    best = np.mean((f - Q @ (Q.T @ f)) ** 2)  # L^2(mu) norm, mu uniform
    expected = 0.0
    for S, p in _projection_probs(Phi).items():
        if p < 1e-14:
            continue
        x = torch.tensor(S, dtype=torch.float64)[:, None]
        coef = weighted_least_squares(x, torch.from_numpy(f[list(S)]), basis).coef
        interp = basis(torch.arange(N, dtype=torch.float64)[:, None]).numpy() @ coef.numpy()
        np.testing.assert_allclose(interp[list(S)], f[list(S)], atol=1e-8)  # interpolates
        expected += p * np.mean((f - interp) ** 2)
    assert math.isclose(expected, (m + 1) * best, rel_tol=1e-8)


def _volume_law(Q: np.ndarray, n: int) -> dict:
    """Volume-rescaled law of ordered n-tuples on the ground set (Derezinski-Warmuth-Hsu form):
    P(x) = det(sum_i w phi phi^T) prod rho(x_i) * (n - m)!/n!, with phi = sqrt(N) Q, w = m/k_m."""
    N, m = Q.shape
    lev = (Q**2).sum(1)
    rho = lev / m
    tilde = Q / np.sqrt(lev)[:, None] * math.sqrt(m)  # sqrt(w) phi
    law = {}
    for tup in itertools.product(range(N), repeat=n):
        A = tilde[list(tup)]
        law[tup] = np.linalg.det(A.T @ A) * np.prod(rho[list(tup)])
    Z = sum(law.values())
    assert math.isclose(Z, math.factorial(n) / math.factorial(n - m), rel_tol=1e-9)
    return {k: v / Z for k, v in law.items()}


def test_volume_rescaled_least_squares_is_unbiased_by_enumeration():
    Phi = _finite_features(seed=13)
    basis, Q = _ground_set_basis(Phi)
    N, m = Q.shape
    f = np.random.default_rng(2).standard_normal(N)
    target = Q.T @ f / math.sqrt(N)  # L^2(mu) projection coefficients in the basis sqrt(N) Q
    mean = np.zeros(m)
    for tup, p in _volume_law(Q, m + 1).items():
        if p < 1e-15:
            continue
        x = torch.tensor(tup, dtype=torch.float64)[:, None]
        mean += p * weighted_least_squares(x, torch.from_numpy(f[list(tup)]), basis).coef.numpy()
    np.testing.assert_allclose(mean, target, atol=1e-10)
    # ordinary least squares on i.i.d. optimal points is biased (the test has power)
    lev = (Q**2).sum(1)
    biased = np.zeros(m)
    for tup in itertools.product(range(N), repeat=m + 1):
        A = Q[list(tup)] / np.sqrt(lev[list(tup)])[:, None]
        if np.linalg.matrix_rank(A) < m:
            continue
        p = np.prod(lev[list(tup)] / m)
        biased += (
            p
            * np.linalg.lstsq(math.sqrt(N) * A, f[list(tup)] / np.sqrt(lev[list(tup)]), rcond=None)[
                0
            ]
        )
    assert np.abs(biased - target).max() > 1e-3


@pytest.mark.parametrize("draws", DRAWS)
def test_volume_rescaled_sampler_matches_its_law(draws):
    Phi = _finite_features(N=6, m=2, seed=14)
    basis, Q = _ground_set_basis(Phi)
    law = _volume_law(Q, 3)
    probs: dict = {}
    for tup, p in law.items():  # the sampler's order is random: compare multisets
        probs[tuple(sorted(tup))] = probs.get(tuple(sorted(tup)), 0.0) + p
    probs = {k: v for k, v in probs.items() if v > 1e-15}
    gen = torch.Generator().manual_seed(15)
    counts: dict = {}
    for _ in range(draws):
        S = tuple(sorted(int(v) for v in sample_volume_rescaled(basis, 3, gen)[:, 0]))
        counts[S] = counts.get(S, 0) + 1
    assert _chisquare_against(counts, probs, draws) > 1e-3


def test_repeated_dpp_stops_at_delta():
    basis = LegendreBasis(5, dim=2)
    x, dev = sample_repeated_dpp(basis, delta=0.5, generator=16)
    assert x.shape[0] % basis.m == 0 and dev <= 0.5
    Phi = basis(x).numpy()
    w = basis.m / (Phi**2).sum(1)
    G = (Phi * w[:, None]).T @ Phi / x.shape[0]
    assert math.isclose(np.abs(np.linalg.eigvalsh(G) - 1).max(), dev, rel_tol=1e-9)
    if x.shape[0] > basis.m:  # the rule stopped at the first k: k - 1 DPPs were not enough
        y = x[: x.shape[0] - basis.m]
        P = basis(y).numpy()
        G1 = (P * (basis.m / (P**2).sum(1))[:, None]).T @ P / y.shape[0]
        assert np.abs(np.linalg.eigvalsh(G1) - 1).max() > 0.5
    with pytest.warns(ConvergenceWarning, match="max_repeats"):
        sample_repeated_dpp(basis, delta=1e-3, max_repeats=2, generator=0)


# ---------------------------------------------------------------- the estimator


@parametrize_with_checks([WeightedLeastSquaresRegressor(degree=1)])
def test_sklearn_compatible(estimator, check):
    check(estimator)


def test_regressor_fit_matches_weighted_lstsq_with_numpy_legendre():
    rng = np.random.default_rng(17)
    X = rng.uniform(-1, 3, size=(80, 1))
    y = np.sin(X[:, 0]) + 0.1 * rng.standard_normal(80)
    est = WeightedLeastSquaresRegressor(degree=5, domain=(-1.0, 3.0)).fit(X, y)
    t = (X[:, 0] + 1) / 2 - 1  # [-1, 3] -> [-1, 1]
    V = np.polynomial.legendre.legvander(t, 5) * np.sqrt(2 * np.arange(6) + 1)
    w = 6 / (V**2).sum(1)
    ref = np.linalg.lstsq(V * np.sqrt(w)[:, None], y * np.sqrt(w), rcond=None)[0]
    np.testing.assert_allclose(est.coef_, ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(est.weights_, w, rtol=1e-12)
    np.testing.assert_allclose(est.predict(X), V @ ref, rtol=1e-10, atol=1e-12)
    assert est.n_samples_ == 80 and est.points_.shape == (80, 1)
    G = (V * w[:, None]).T @ V / 80
    assert math.isclose(est.gram_deviation_, np.abs(np.linalg.eigvalsh(G) - 1).max(), rel_tol=1e-9)
    assert math.isclose(est.condition_number_, np.linalg.cond(G), rel_tol=1e-8)


@pytest.mark.parametrize("sampling", ["dpp", "repeated_dpp", "volume", "optimal_iid", "uniform"])
@pytest.mark.parametrize("basis", ["legendre", "trigonometric"])
def test_fit_function_recovers_functions_of_the_space(sampling, basis):
    """A function in V_m is recovered exactly from any design (2-D, total degree 2)."""
    domain = [(-1.0, 2.0), (0.0, 1.0)]
    est = WeightedLeastSquaresRegressor(
        basis=basis, degree=2, domain=domain, sampling=sampling, random_state=0
    )
    if basis == "legendre":

        def f(X):
            return 1 + X[:, 0] * X[:, 1] - 2 * X[:, 1] ** 2

    else:

        def f(X):
            return np.cos(2 * np.pi * X[:, 0] / 3) * np.sin(2 * np.pi * X[:, 1]) + 0.5

    est.fit_function(f)
    m = est.basis_.m
    assert est.points_.shape == (est.n_samples_, 2)
    expected_n = {
        "dpp": m,
        "volume": 2 * m,
        "optimal_iid": max(2 * m, math.ceil(2 * m * math.log(m))),
    }
    if sampling in expected_n:
        assert est.n_samples_ == expected_n[sampling]
    if sampling == "repeated_dpp":
        assert est.n_samples_ % m == 0 and est.gram_deviation_ <= 0.5
    if sampling == "uniform":
        np.testing.assert_array_equal(est.weights_, 1.0)
    lo = np.array([d[0] for d in domain])
    hi = np.array([d[1] for d in domain])
    assert (est.points_ >= lo).all() and (est.points_ <= hi).all()
    Z = np.random.default_rng(0).uniform(lo, hi, size=(50, 2))
    np.testing.assert_allclose(est.predict(Z), f(Z), atol=1e-9)


def test_fit_function_runge_is_near_best_approximation():
    """Repeated DPPs at ||G - I|| <= 1/2: L2 error within a small factor of the best one."""
    degree = 12

    def runge(X):
        return 1 / (1 + 25 * X[:, 0] ** 2)

    est = WeightedLeastSquaresRegressor(
        degree=degree, sampling="repeated_dpp", random_state=1
    ).fit_function(runge, domain=(-1.0, 1.0))
    t, w = np.polynomial.legendre.leggauss(200)
    w = w / 2
    V = np.polynomial.legendre.legvander(t, degree) * np.sqrt(2 * np.arange(degree + 1) + 1)
    fx = runge(t[:, None])
    best = V.T @ (w * fx)  # L2(mu) projection coefficients by quadrature
    best_err = np.sqrt(w @ (fx - V @ best) ** 2)
    err = np.sqrt(w @ (fx - est.predict(t[:, None])) ** 2)
    assert est.gram_deviation_ <= 0.5
    assert best_err < err < 3 * best_err


def test_regressor_validation_and_failed_fit_keeps_state():
    est = WeightedLeastSquaresRegressor(degree=2, domain=(-1.0, 1.0), random_state=0)
    est.fit_function(lambda X: X[:, 0] ** 2)
    coef = est.coef_.copy()
    with pytest.raises(ValueError, match="exactly m = 3"):
        est.set_params(n_samples=5).fit_function(lambda X: X[:, 0])
    with pytest.raises(ValueError, match="at least m"):
        est.set_params(n_samples=None).fit(np.zeros((2, 1)), np.zeros(2))
    with pytest.raises(ValueError, match="sampling must be"):
        est.set_params(sampling="grid").fit_function(lambda X: X[:, 0])
    with pytest.raises(ValueError, match="basis must be"):
        WeightedLeastSquaresRegressor(basis="chebyshev").fit(np.zeros((5, 1)), np.zeros(5))
    with pytest.raises(ValueError, match="needs a domain"):
        WeightedLeastSquaresRegressor().fit_function(lambda X: X[:, 0])
    with pytest.raises(ValueError, match="f returned shape"):
        WeightedLeastSquaresRegressor(domain=(0.0, 1.0)).fit_function(lambda X: X[:3, 0])
    np.testing.assert_array_equal(est.coef_, coef)
    # a user basis instance: the domain comes from the basis
    basis = LegendreBasis(3, dim=1, domain=(0.0, 2.0))
    user = WeightedLeastSquaresRegressor(basis=basis, sampling="volume", random_state=0)
    user.fit_function(lambda X: X[:, 0] ** 3)
    np.testing.assert_allclose(user.predict(np.array([[1.5]])), [3.375], rtol=1e-10)
    with pytest.warns(ConvergenceWarning, match="max_repeats"):
        WeightedLeastSquaresRegressor(
            degree=6, domain=(-1.0, 1.0), sampling="repeated_dpp", delta=1e-3, n_samples=14
        ).fit_function(lambda X: X[:, 0])
