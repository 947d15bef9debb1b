"""Randomly pivoted Cholesky against dense references (exact on low rank, Schur complements, PSD)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gpkern.linalg.rpcholesky import rp_cholesky


def _rbf(x: torch.Tensor, ls: float) -> torch.Tensor:
    return torch.exp(-0.5 * torch.cdist(x, x) ** 2 / ls**2)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(5, 80),
    true_rank=st.integers(1, 12),
    block=st.integers(1, 40),
    seed=st.integers(0, 10_000),
)
def test_exact_on_low_rank_matrices_and_stops_at_their_rank(n, true_rank, block, seed):
    g = _gen(seed)
    B = torch.randn(n, min(true_rank, n), generator=g, dtype=torch.float64)
    K = B @ B.T
    F, piv = rp_cholesky(lambda i: K[:, i], K.diagonal(), n, block_size=block, tol=1e-12,
                         generator=g)
    assert F.shape[1] == min(true_rank, n) == piv.numel()
    torch.testing.assert_close(F @ F.T, K, atol=1e-9 * float(K.diagonal().max()), rtol=0)


@settings(max_examples=20, deadline=None)
@given(n=st.integers(10, 120), rank=st.integers(1, 60), block=st.integers(1, 64),
       seed=st.integers(0, 10_000))
def test_factor_is_the_schur_complement_of_its_pivots(n, rank, block, seed):
    """F F^T = K_{:,P} K_{P,P}^{-1} K_{P,:} (the Nystrom approximation on the pivots) and
    K - F F^T is PSD, whatever the pivots are."""
    g = _gen(seed)
    x = torch.rand(n, 2, generator=g, dtype=torch.float64)
    K = _rbf(x, 0.4) + 1e-8 * torch.eye(n, dtype=torch.float64)
    F, piv = rp_cholesky(lambda i: K[:, i], K.diagonal(), rank, block_size=block, generator=g)
    assert piv.unique().numel() == piv.numel() == F.shape[1] <= rank
    nystrom = K[:, piv] @ torch.linalg.solve(K[piv][:, piv], K[piv, :])
    torch.testing.assert_close(F @ F.T, nystrom, atol=1e-7, rtol=0)
    assert torch.linalg.eigvalsh(K - F @ F.T).min() > -1e-7


def _greedy(K: torch.Tensor, k: int) -> torch.Tensor:
    """Greedy pivoted Cholesky (the dense reference, written out)."""
    res, F = K.diagonal().clone(), torch.zeros(K.shape[0], k, dtype=K.dtype)
    for j in range(k):
        i = int(res.argmax())
        F[:, j] = (K[:, i] - F[:, :j] @ F[i, :j]) / res[i].sqrt()
        res = (res - F[:, j] ** 2).clamp_min(0)
    return F


@pytest.mark.parametrize("layout", ["uniform", "clustered"])
def test_trace_error_near_greedy_pivoting_far_below_uniform_nystrom(layout):
    """RPCholesky's relative trace error is within 3x of greedy pivoting's; on data of uneven
    density (a tight cluster plus scattered points) it is far below a Nystrom approximation on
    uniformly drawn landmarks, which misses the scattered points."""
    g = _gen(1)
    if layout == "uniform":
        x = torch.rand(2000, 3, generator=g, dtype=torch.float64) * 6 - 3
    else:
        x = torch.cat([0.3 * torch.randn(1900, 3, generator=g, dtype=torch.float64),
                       torch.rand(100, 3, generator=g, dtype=torch.float64) * 12 - 6])
    K, k = _rbf(x, 1.0), 150

    def err(diag):
        return float((K.diagonal() - diag).sum() / K.diagonal().sum())

    F, _ = rp_cholesky(lambda i: K[:, i], K.diagonal(), k, generator=_gen(5))
    Fg = _greedy(K, k)
    assert err((F * F).sum(1)) < 3 * err((Fg * Fg).sum(1))
    if layout == "clustered":
        idx = torch.randperm(2000, generator=g)[:k]
        uniform = K[:, idx] @ torch.linalg.solve(K[idx][:, idx] + 1e-10 * torch.eye(k), K[idx, :])
        assert err((F * F).sum(1)) < 0.01 * err(uniform.diagonal())


def test_seeded_generator_reproduces_the_factor():
    x = torch.rand(300, 2, generator=_gen(2), dtype=torch.float64)
    K = _rbf(x, 0.3)
    F1, p1 = rp_cholesky(lambda i: K[:, i], K.diagonal(), 40, block_size=16, generator=_gen(5))
    F2, p2 = rp_cholesky(lambda i: K[:, i], K.diagonal(), 40, block_size=16, generator=_gen(5))
    assert torch.equal(F1, F2) and torch.equal(p1, p2)


def test_bad_arguments():
    K = torch.eye(3, dtype=torch.float64)
    with pytest.raises(ValueError, match="rank"):
        rp_cholesky(lambda i: K[:, i], K.diagonal(), 0)
    with pytest.raises(ValueError, match="block_size"):
        rp_cholesky(lambda i: K[:, i], K.diagonal(), 2, block_size=0)
    with pytest.raises(ValueError, match="1-D"):
        rp_cholesky(lambda i: K[:, i], K, 2)
    F, piv = rp_cholesky(lambda i: K[:, i], torch.zeros(3, dtype=torch.float64), 2)
    assert F.shape == (3, 0) and piv.numel() == 0


def test_terminates_on_numerically_low_rank_matrices():
    """A smooth kernel on many points is rank-deficient to rounding: the residual diagonal is
    noise at ~1e-16 and every Schur complement computed from it may come out <= 0. The
    factorisation must stop (not loop) and still reproduce K."""
    x = torch.rand(200, 2, generator=_gen(3), dtype=torch.float64)
    K = _rbf(x, 5.0)
    F, piv = rp_cholesky(lambda i: K[:, i], K.diagonal(), 200, block_size=32, generator=_gen(0))
    assert F.shape[1] < 60
    torch.testing.assert_close(F @ F.T, K, atol=1e-10, rtol=0)


def test_single_precision_storage_gives_the_double_precision_factor_rounded(monkeypatch):
    """``factor_dtype=float32``: the Nystrom approximation on its pivots within float32
    rounding, as good as the float64 factor; the row-block products upcast and agree with dense
    float64 products.  (The pivots themselves can differ: the draws depend on the residuals.)"""
    from gpkern.linalg import rpcholesky

    monkeypatch.setattr(rpcholesky, "_BLOCK_ELEMENTS", 97)  # many, uneven row blocks
    g = torch.Generator().manual_seed(3)
    x = torch.rand(300, 2, generator=g, dtype=torch.float64)
    K = _rbf(x, 0.3)
    F64, p64 = rp_cholesky(lambda i: K[:, i], K.diagonal(), 60, block_size=16, generator=_gen(1))
    F32, p32 = rp_cholesky(lambda i: K[:, i], K.diagonal(), 60, block_size=16, generator=_gen(1),
                           factor_dtype=torch.float32)
    assert F32.dtype == torch.float32 and F32.shape == F64.shape
    nystrom = K[:, p32] @ torch.linalg.solve(K[p32][:, p32], K[p32, :])
    torch.testing.assert_close(F32.double() @ F32.double().T, nystrom, atol=1e-5, rtol=0)
    err32 = (K - F32.double() @ F32.double().T).diagonal().sum()
    err64 = (K - F64 @ F64.T).diagonal().sum()
    assert err32 < 3 * err64 + 1e-4
    B = torch.randn(60, 3, generator=g, dtype=torch.float64)
    V = torch.randn(300, 3, generator=g, dtype=torch.float64)
    Fd = F32.double()  # exactly the stored values
    torch.testing.assert_close(rpcholesky.factor_matmul(F32, B), Fd @ B, rtol=1e-12, atol=1e-12)
    G = torch.randn(300, 3, generator=g, dtype=torch.float64)
    expected = G - Fd @ B
    out = rpcholesky.factor_matmul(F32, B, subtract_from=G)
    assert out is G  # in place
    torch.testing.assert_close(G, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(rpcholesky.factor_t_matmul(F32, V), Fd.T @ V, rtol=1e-12,
                               atol=1e-12)
    torch.testing.assert_close(rpcholesky.factor_gram(F32, torch.float64), Fd.T @ Fd, rtol=1e-12,
                               atol=1e-12)


def test_trim_heap_is_safe_to_call():
    from gpkern.linalg.heap import trim_heap

    assert isinstance(trim_heap(), bool)
    assert isinstance(trim_heap(), bool)  # the libc lookup is cached
