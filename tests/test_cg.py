"""The one preconditioned CG and its Lanczos log-determinant against dense torch references."""

import math
import warnings

import pytest
import torch

from gpkern.exceptions import CGConvergenceWarning
from gpkern.linalg.cg import pcg, slq_logdet, stochastic_logdet


def _spd(n, cond_scale=1.0, seed=0, dtype=torch.float64):
    """A well-conditioned random SPD matrix, rows and columns scaled by exp(cond_scale * u)."""
    g = torch.Generator().manual_seed(seed)
    M = torch.randn(n, n, generator=g, dtype=dtype)
    C = M @ M.T / n + 0.5 * torch.eye(n, dtype=dtype)
    s = torch.exp(cond_scale * torch.rand(n, generator=g, dtype=dtype))
    return s[:, None] * C * s[None, :]


def _sym_fn(A, fn):
    lam, Q = torch.linalg.eigh(A)
    return (Q * fn(lam)) @ Q.T


# -- the solve ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "dtype, tol, rtol", [(torch.float64, 1e-11, 1e-8), (torch.float32, 1e-6, 1e-3)]
)
@pytest.mark.parametrize("preconditioned", [False, True])
def test_pcg_matches_dense_solve(dtype, tol, rtol, preconditioned):
    A = _spd(60, cond_scale=1.5, dtype=dtype)
    B = torch.randn(60, 5, generator=torch.Generator().manual_seed(1), dtype=dtype)
    jacobi = A.diagonal().reciprocal()
    pre = (lambda V: jacobi[:, None] * V) if preconditioned else None
    with warnings.catch_warnings():
        warnings.simplefilter("error", CGConvergenceWarning)
        res = pcg(lambda V: A @ V, B, pre, tol=tol, max_iter=500)
    ref = torch.linalg.solve(A.double(), B.double())
    err = (res.solution.double() - ref).norm(dim=0) / ref.norm(dim=0)
    assert err.max() < rtol
    assert res.solution.dtype == dtype and res.converged.all()
    assert 0 < res.n_iter < 500


def test_preconditioner_cuts_iterations():
    # badly scaled rows/columns: Jacobi undoes the scaling, CG on the raw matrix crawls
    A = _spd(80, cond_scale=4.0, seed=2)
    B = torch.randn(80, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    d = A.diagonal().reciprocal()
    plain = pcg(lambda V: A @ V, B, tol=1e-10, max_iter=2000)
    jac = pcg(lambda V: A @ V, B, lambda V: d[:, None] * V, tol=1e-10, max_iter=2000)
    exact = pcg(lambda V: A @ V, B, lambda V: torch.linalg.solve(A, V), tol=1e-10)
    assert jac.n_iter * 2 < plain.n_iter
    assert exact.n_iter <= 2  # P = A: one step (a second one only for round-off)
    for r in (plain, jac, exact):
        torch.testing.assert_close(r.solution, torch.linalg.solve(A, B), rtol=1e-7, atol=1e-9)


def test_pcg_keeps_a_conjugate_directions():
    A = _spd(80, seed=4)
    B = torch.randn(80, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    res = pcg(lambda V: A @ V, B, lambda V: V, tol=1e-10, max_iter=500, keep=5)
    torch.testing.assert_close(res.solution, torch.linalg.solve(A, B), rtol=1e-7, atol=1e-8)
    assert res.directions.shape == (80, 15)
    torch.testing.assert_close(res.matmul_directions, A @ res.directions)
    G = res.directions[:, 0::3].T @ A @ res.directions[:, 0::3]  # first right-hand side
    off = G - torch.diag(G.diagonal())
    assert off.abs().max() < 1e-6 * G.diagonal().abs().max()


def test_zero_right_hand_side_and_empty_budget():
    A = _spd(10, seed=6)
    B = torch.zeros(10, 2, dtype=torch.float64)
    B[:, 1] = 1.0
    res = pcg(lambda V: A @ V, B, tol=1e-12)
    assert torch.isfinite(res.solution).all()
    assert (res.solution[:, 0] == 0).all()
    torch.testing.assert_close(res.solution[:, 1], torch.linalg.solve(A, B[:, 1]))
    with pytest.warns(CGConvergenceWarning):
        res = pcg(lambda V: A @ V, B, max_iter=0)
    assert res.n_iter == 0 and (res.solution == 0).all()
    with pytest.raises(ValueError, match="shape"):
        pcg(lambda V: A @ V, B[:, 0])


def test_budget_exhausted_warns_with_advice():
    A = _spd(50, cond_scale=3.0, seed=7)
    B = torch.randn(50, 2, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    with pytest.warns(CGConvergenceWarning, match=r"max_iter=3\).*2 of 2.*Raise max_iter"):
        res = pcg(lambda V: A @ V, B, tol=1e-10, max_iter=3)
    assert res.n_iter == 3 and not res.converged.any()
    with pytest.warns(CGConvergenceWarning, match="use more probes"):
        pcg(lambda V: A @ V, B, tol=1e-10, max_iter=3, advice="use more probes")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pcg(lambda V: A @ V, B, tol=1e-10, max_iter=3, warn=False)
        pcg(lambda V: A @ V, B, tol=1e-10, max_iter=1000)  # converges: silent


# -- Lanczos ---------------------------------------------------------------------------------
def test_full_lanczos_quadrature_is_exact_per_probe():
    # after n steps the Krylov space is everything: ||z||^2 e1^T log(T) e1 = z^T log(A) z, also
    # for a column that stops after one step (an eigenvector: its T is padded)
    n = 12
    A = _spd(n, seed=9)
    lam, Q = torch.linalg.eigh(A)
    z = torch.randn(n, generator=torch.Generator().manual_seed(10), dtype=torch.float64)
    Z = torch.stack([Q[:, 3], z], 1)
    res = pcg(lambda V: A @ V, Z, tol=1e-13, max_iter=n, tridiag=True, warn=False)
    assert res.tridiag.shape == (2, res.n_iter, res.n_iter)
    logA = _sym_fn(A, torch.log)
    for j in range(2):
        got = slq_logdet(res.tridiag[j : j + 1], (Z[:, j] ** 2).sum()[None])
        torch.testing.assert_close(got, Z[:, j] @ logA @ Z[:, j], rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("preconditioned", [False, True])
def test_stochastic_logdet_exact_with_complete_probes(preconditioned):
    # probes with (1/c) Z Z^T = P exactly (the identity columns, or a Cholesky factor of P,
    # scaled by sqrt(n)) make both the estimate and its Hutchinson gradient exact
    n = 30
    M0 = torch.randn(n, n, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    M = M0.clone().requires_grad_()
    s = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)

    def amat(V):
        return M @ (M.T @ V) / n + s * V

    A = (M0 @ M0.T / n + 0.3 * torch.eye(n, dtype=torch.float64))
    if preconditioned:
        P = torch.diag(A.diagonal()) + 0.1 * torch.ones(n, n, dtype=torch.float64)
        Lp = torch.linalg.cholesky(P)
        Z = math.sqrt(n) * Lp
        pre = lambda V: torch.cholesky_solve(V, Lp)  # noqa: E731
        pre_logdet = torch.logdet(P)
    else:
        Z = math.sqrt(n) * torch.eye(n, dtype=torch.float64)
        pre, pre_logdet = None, 0.0
    est = stochastic_logdet(
        lambda V: A @ V, Z, pre, precond_logdet=pre_logdet, tol=1e-13, max_iter=n, warn=False
    )
    ref = torch.logdet(M @ M.T / n + s * torch.eye(n, dtype=torch.float64))
    torch.testing.assert_close(est.value, ref.detach(), rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(est.solves, torch.linalg.solve(A, Z), rtol=1e-7, atol=1e-8)
    out = est.with_gradient(amat)
    assert out.item() == est.value.item()
    got = torch.autograd.grad(out, [M, s])
    want = torch.autograd.grad(ref, [M, s])
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("preconditioned", [False, True])
def test_stochastic_logdet_and_gradient_monte_carlo(preconditioned):
    # Gaussian probes: z^T f z has variance 2 ||f||_F^2, so the mean over c probes is within
    # 4 standard errors of the trace (the value: f = log(P^-1/2 A P^-1/2); d/ds: f = A^-1)
    n, c = 40, 4000
    g = torch.Generator().manual_seed(12)
    A = _spd(n, cond_scale=1.0, seed=13)
    s = torch.tensor(0.0, dtype=torch.float64, requires_grad=True)
    eps = torch.randn(n, c, generator=g, dtype=torch.float64)
    if preconditioned:
        P = torch.diag(A.diagonal())
        Z = P.diagonal().sqrt()[:, None] * eps
        d = P.diagonal()
        pre, pre_logdet = (lambda V: V / d[:, None]), d.log().sum()
        Pm = torch.diag(d.rsqrt())
        f_val = _sym_fn(Pm @ A @ Pm, torch.log)
    else:
        Z, pre, pre_logdet, d = eps, None, 0.0, None
        f_val = _sym_fn(A, torch.log)
    est = stochastic_logdet(lambda V: A @ V, Z, pre, precond_logdet=pre_logdet, tol=1e-8)
    se = math.sqrt(2 * float((f_val**2).sum()) / c)
    assert abs(float(est.value - torch.logdet(A))) < 4 * se
    (grad_s,) = torch.autograd.grad(est.with_gradient(lambda V: A @ V + s * V), s)
    # z = P^1/2 e: the d/ds estimator is e^T S e, S = P^1/2 A^-1 P^-1/2, variance 2 ||sym S||_F^2
    Ph = torch.diag(d.sqrt()) if preconditioned else torch.eye(n, dtype=torch.float64)
    S = Ph @ torch.linalg.solve(A, torch.linalg.inv(Ph))
    se_g = math.sqrt(2 * float((((S + S.T) / 2) ** 2).sum()) / c)
    assert abs(float(grad_s) - float(torch.linalg.inv(A).trace())) < 4 * se_g
    assert est.n_iter < n


def test_stochastic_logdet_float32_agrees():
    n = 30
    A = _spd(n, seed=14)
    Z = math.sqrt(n) * torch.eye(n, dtype=torch.float64)
    est64 = stochastic_logdet(lambda V: A @ V, Z, tol=1e-6, max_iter=n, warn=False)
    A32 = A.float()
    est32 = stochastic_logdet(lambda V: A32 @ V, Z.float(), tol=1e-6, max_iter=n, warn=False)
    assert est32.value.dtype == torch.float32
    torch.testing.assert_close(est32.value.double(), torch.logdet(A), rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(est64.value, torch.logdet(A), rtol=1e-6, atol=1e-6)


def test_batched_columns_run_their_own_recursion():
    # a batch gives each column exactly what a run on that column alone gives: the same
    # solution and a tridiagonal padded by an identity block decoupled from the first one
    A = _spd(40, cond_scale=2.0, seed=15)
    g = torch.Generator().manual_seed(16)
    lam, Q = torch.linalg.eigh(A)
    B = torch.stack([Q[:, :3].sum(1), torch.randn(40, generator=g, dtype=torch.float64)], 1)
    batch = pcg(lambda V: A @ V, B, tol=1e-2, tridiag=True)
    for j in range(2):
        alone = pcg(lambda V: A @ V, B[:, j : j + 1], tol=1e-2, tridiag=True)
        m = alone.n_iter
        torch.testing.assert_close(batch.solution[:, j], alone.solution[:, 0])
        T = batch.tridiag[j]
        torch.testing.assert_close(T[:m, :m], alone.tridiag[0])
        rest = batch.n_iter - m
        torch.testing.assert_close(T[m:, m:], torch.eye(rest, dtype=T.dtype))
        assert (T[:m, m:] == 0).all() and (T[m:, :m] == 0).all()
    assert batch.n_iter > 3 >= pcg(lambda V: A @ V, B[:, :1], tol=1e-2).n_iter


def test_callers_warn_with_their_own_settings():
    # the Kronecker partial-grid solve and the iterative GP's conditioning solve pass their
    # budget through and name the setting to change
    import gpytorch

    from gpkern.linalg.kronecker import kron_diag_solve_logdet
    from gpkern.models.iterative import IterativeGP, IterativeSettings

    x = torch.linspace(0, 1, 12, dtype=torch.float64)
    K = torch.exp(-0.5 * (x[:, None] - x[None]) ** 2 / 0.2**2)
    D = torch.full((144,), 1e-4, dtype=torch.float64)
    D[::3] = math.inf
    y = torch.randn(144, generator=torch.Generator().manual_seed(17), dtype=torch.float64)
    with pytest.warns(CGConvergenceWarning, match="max_iter=2.*Raise max_iter"):
        kron_diag_solve_logdet([K, K], D, y, max_iter=2, compute_logdet=False, precond_rank=0)

    X = torch.rand(200, 2, generator=torch.Generator().manual_seed(18), dtype=torch.float64)
    Y = torch.sin(6 * X[:, :1])
    settings = IterativeSettings(max_eval_cg_iter=1, eval_preconditioner_rank=1, variance_rank=1)
    gp = IterativeGP(gpytorch.kernels.RBFKernel(), noise=1e-4, backend="torch", settings=settings)
    with pytest.warns(CGConvergenceWarning, match="max_eval_cg_iter"):
        gp.double().posterior(X, Y)
