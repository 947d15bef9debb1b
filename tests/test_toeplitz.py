"""Toeplitz algebra against scipy's dense Toeplitz matrices and autograd through dense twins."""

import numpy as np
import pytest
import scipy.linalg
import torch

from gpkern.exceptions import NotPSDError
from gpkern.linalg.toeplitz import (
    toeplitz_dense,
    toeplitz_lag_grad,
    toeplitz_logdet,
    toeplitz_matmul,
    toeplitz_solve,
)


def _scipy_dense(v):
    n = (len(v) + 1) // 2
    v = np.asarray(v)
    return scipy.linalg.toeplitz(v[n - 1 :], v[n - 1 :: -1])  # first column, first row


def _symmetric(u):  # the n non-negative lags -> the 2n - 1 lag vector of a symmetric T
    return torch.cat([u[1:].flip(0), u])


def _kernel_lags(n, seed=0):
    """Non-negative lags of a Matérn-5/2 kernel plus noise on a uniform grid (SPD Toeplitz)."""
    g = torch.Generator().manual_seed(seed)
    ell = 0.5 + torch.rand((), generator=g, dtype=torch.float64)
    r = torch.arange(n, dtype=torch.float64) / ell
    u = (1 + 5**0.5 * r + 5 / 3 * r**2) * torch.exp(-(5**0.5) * r)
    u[0] += 0.1
    return u


@pytest.mark.parametrize("n", [1, 2, 6])
def test_dense_matches_scipy(n):
    v = torch.randn(2 * n - 1, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
    np.testing.assert_array_equal(toeplitz_dense(v).numpy(), _scipy_dense(v.numpy()))


@pytest.mark.parametrize("k", [1, 3])  # one column: correlation path; several: diagonal sums
def test_matmul_matches_scipy_and_gradcheck(k):
    n = 7
    g = torch.Generator().manual_seed(k)
    v = torch.randn(2 * n - 1, generator=g, dtype=torch.float64, requires_grad=True)
    Y = torch.randn(n, k, generator=g, dtype=torch.float64, requires_grad=True)
    dense = _scipy_dense(v.detach().numpy())
    np.testing.assert_allclose(toeplitz_matmul(v, Y).detach().numpy(), dense @ Y.detach().numpy())
    np.testing.assert_allclose(
        toeplitz_matmul(v, Y, rows=slice(2, 6)).detach().numpy(), dense[2:6] @ Y.detach().numpy()
    )
    assert torch.autograd.gradcheck(lambda v, Y: toeplitz_matmul(v, Y, rows=slice(2, 6)), (v, Y))
    assert torch.autograd.gradcheck(toeplitz_dense, (v,))
    # a precomputed dense matrix gives the same value and gradient
    K = toeplitz_dense(v.detach())
    a = torch.autograd.grad(toeplitz_matmul(v, Y, rows=slice(1, 4), dense=K).sum(), v)[0]
    b = torch.autograd.grad((toeplitz_dense(v)[1:4] @ Y).sum(), v)[0]
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("k", [1, 4])
def test_solve_matches_scipy_and_dense_autograd(k):
    n = 9
    g = torch.Generator().manual_seed(10 + k)
    u = _kernel_lags(n, seed=k).requires_grad_()
    B = torch.randn(n, k, generator=g, dtype=torch.float64, requires_grad=True)
    v = _symmetric(u)
    X = toeplitz_solve(v, B)
    ref = scipy.linalg.solve_toeplitz(u.detach().numpy(), B.detach().numpy())  # Levinson
    np.testing.assert_allclose(X.detach().numpy(), ref.reshape(n, k), rtol=1e-10)
    # the symmetric parametrisation keeps T symmetric under gradcheck's perturbations
    assert torch.autograd.gradcheck(lambda u, B: toeplitz_solve(_symmetric(u), B), (u, B))
    # all 2n - 1 lags as independent inputs, at a symmetric point: dense autograd
    w = v.detach().clone().requires_grad_()
    W = torch.randn(n, k, generator=g, dtype=torch.float64)
    L = torch.linalg.cholesky(toeplitz_dense(w.detach()))
    got = torch.autograd.grad((toeplitz_solve(w, B, chol=L) * W).sum(), [w, B])
    idx = torch.arange(n)[:, None] - torch.arange(n)[None, :] + n - 1
    want = torch.autograd.grad((torch.linalg.solve(w[idx], B) * W).sum(), [w, B])
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_logdet_matches_dense_and_gradcheck():
    n = 11
    u = _kernel_lags(n, seed=3).requires_grad_()
    v = _symmetric(u)
    sign, ref = np.linalg.slogdet(_scipy_dense(v.detach().numpy()))
    assert sign > 0
    np.testing.assert_allclose(float(toeplitz_logdet(v.detach())), ref, rtol=1e-12)
    assert torch.autograd.gradcheck(lambda u: toeplitz_logdet(_symmetric(u)), (u,))
    w = v.detach().clone().requires_grad_()
    idx = torch.arange(n)[:, None] - torch.arange(n)[None, :] + n - 1
    (a,) = torch.autograd.grad(toeplitz_logdet(w), w)  # Gohberg-Semencul
    (b,) = torch.autograd.grad(torch.logdet(w[idx]), w)
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("k", [1, 3])
def test_lag_grad_is_the_dense_vjp(k):
    n, p, offset = 8, 5, 2
    g = torch.Generator().manual_seed(20 + k)
    A = torch.randn(p, k, generator=g, dtype=torch.float64)
    B = torch.randn(n, k, generator=g, dtype=torch.float64)
    v = torch.randn(2 * n - 1, generator=g, dtype=torch.float64, requires_grad=True)
    idx = torch.arange(n)[:, None] - torch.arange(n)[None, :] + n - 1  # plain autograd gather
    (want,) = torch.autograd.grad((A * (v[idx][offset : offset + p] @ B)).sum(), v)
    torch.testing.assert_close(toeplitz_lag_grad(A, B, offset), want, rtol=1e-12, atol=1e-12)


def test_bad_input_raises():
    with pytest.raises(ValueError, match="odd length"):
        toeplitz_dense(torch.ones(4))
    with pytest.raises(ValueError, match="contiguous"):
        toeplitz_matmul(torch.ones(5), torch.ones(3, 1), rows=slice(0, 3, 2))
    indefinite = _symmetric(torch.tensor([1.0, 2.0, 0.0], dtype=torch.float64))
    with pytest.raises(NotPSDError, match="not positive definite"):
        toeplitz_solve(indefinite, torch.ones(3, 1, dtype=torch.float64))
    with pytest.raises(NotPSDError):
        toeplitz_logdet(indefinite)
