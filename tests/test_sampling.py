"""Samplers of gpkern.sampling against exact enumeration, quadrature and scipy/numpy references."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import scipy.stats
import torch

from gpkern.sampling import (
    sample_finite_projection_dpp,
    sample_kdpp,
)

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
