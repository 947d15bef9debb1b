"""robust_cholesky and the Gaussian log likelihood against scipy."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gpkern.exceptions import NotPSDError, NumericalWarning
from gpkern.linalg.cholesky import (
    gaussian_log_likelihood,
    mvn_log_likelihood,
    quadratic_form_and_logdet,
    robust_cholesky,
)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 12), t=st.integers(1, 3), seed=st.integers(0, 1000))
def test_log_likelihood_matches_scipy(n, t, seed):
    rng = np.random.default_rng(seed)
    B = rng.standard_normal((n, n))
    A = B @ B.T + n * np.eye(n)
    Y = rng.standard_normal((n, t))
    L, jitter = robust_cholesky(torch.tensor(A))
    assert jitter == 0.0
    lml, alpha = gaussian_log_likelihood(L, torch.tensor(Y))
    ref = sum(scipy.stats.multivariate_normal(np.zeros(n), A).logpdf(Y[:, j]) for j in range(t))
    np.testing.assert_allclose(float(lml), ref, rtol=1e-10)
    np.testing.assert_allclose(alpha.numpy(), np.linalg.solve(A, Y), rtol=1e-8)


def test_jitter_escalates_and_warns():
    A = torch.ones(4, 4, dtype=torch.float64)
    with pytest.warns(NumericalWarning, match="jitter"):
        L, jitter = robust_cholesky(A)
    assert jitter > 0
    torch.testing.assert_close(L @ L.T, A + jitter * torch.eye(4, dtype=torch.float64))


def test_indefinite_and_nonfinite_raise():
    with pytest.raises(NotPSDError, match="not positive definite"):
        robust_cholesky(-torch.eye(3, dtype=torch.float64), warn=False)
    with pytest.raises(NotPSDError, match="NaN or inf"):
        robust_cholesky(torch.tensor([[1.0, float("nan")], [0.0, 1.0]]))


def test_mvn_log_likelihood_gradient_matches_autograd_through_factor():
    rng = np.random.default_rng(3)
    B = torch.tensor(rng.standard_normal((6, 6)))
    Y = torch.tensor(rng.standard_normal((6, 2)), requires_grad=True)
    C = (B @ B.T + 6 * torch.eye(6, dtype=torch.float64)).requires_grad_()
    mvn_log_likelihood(C, Y).backward()
    C2 = C.detach().clone().requires_grad_()
    Y2 = Y.detach().clone().requires_grad_()
    L = torch.linalg.cholesky(C2)
    ref = sum(
        torch.distributions.MultivariateNormal(torch.zeros(6, dtype=torch.float64), scale_tril=L).log_prob(Y2[:, j])
        for j in range(2)
    )
    ref.backward()
    torch.testing.assert_close(mvn_log_likelihood(C.detach(), Y.detach()), ref.detach())
    # The closed form is the gradient w.r.t. independent entries; symmetrise both to compare.
    torch.testing.assert_close(C.grad + C.grad.T, C2.grad + C2.grad.T)
    torch.testing.assert_close(Y.grad, Y2.grad)
    assert torch.autograd.gradcheck(
        lambda A, Z: mvn_log_likelihood(A @ A.T + torch.eye(4, dtype=torch.float64), Z),
        (torch.randn(4, 4, dtype=torch.float64, requires_grad=True), torch.randn(4, 3, dtype=torch.float64, requires_grad=True)),
    )


def test_quadratic_form_and_logdet_match_dense_solve_and_slogdet_with_gradients():
    """Values against numpy's solve and slogdet; gradients of an arbitrary smooth function of
    (q, log|C|) against autograd through torch.linalg.solve and slogdet (no Cholesky)."""
    rng = np.random.default_rng(5)
    B = rng.standard_normal((7, 7))
    A = B @ B.T + 7 * np.eye(7)
    Y = rng.standard_normal((7, 3))
    C = torch.tensor(A, requires_grad=True)
    Yt = torch.tensor(Y, requires_grad=True)
    q, logdet, L, alpha, jitter = quadratic_form_and_logdet(C, Yt)
    assert jitter == 0.0 and not L.requires_grad and not alpha.requires_grad
    np.testing.assert_allclose(q.detach().numpy(), (Y * np.linalg.solve(A, Y)).sum(0), rtol=1e-12)
    np.testing.assert_allclose(float(logdet), np.linalg.slogdet(A)[1], rtol=1e-12)
    w = torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64)
    (torch.log1p(q) * w).sum().add(torch.sin(logdet)).backward()
    C2, Y2 = C.detach().clone().requires_grad_(), Yt.detach().clone().requires_grad_()
    q2 = (Y2 * torch.linalg.solve(C2, Y2)).sum(0)
    (torch.log1p(q2) * w).sum().add(torch.sin(torch.linalg.slogdet(C2)[1])).backward()
    torch.testing.assert_close(C.grad + C.grad.T, C2.grad + C2.grad.T)
    torch.testing.assert_close(Yt.grad, Y2.grad)
    assert torch.autograd.gradcheck(
        lambda M, Z: [v.sum() for v in quadratic_form_and_logdet(M @ M.T + torch.eye(4, dtype=torch.float64), Z)[:2]],
        (torch.randn(4, 4, dtype=torch.float64, requires_grad=True), torch.randn(4, 2, dtype=torch.float64, requires_grad=True)),
    )
