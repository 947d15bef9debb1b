"""Dense Cholesky factorisation with escalating jitter, and the Gaussian log density built on it.

This is the dense twin of every structured backend: the structured paths in
:mod:`gpkern.linalg` are tested against the functions here.
"""

from __future__ import annotations

import math
import warnings

import torch

from gpkern.exceptions import NotPSDError, NumericalWarning

__all__ = [
    "robust_cholesky",
    "cholesky_logdet",
    "cholesky_solve",
    "gaussian_log_likelihood",
    "mvn_log_likelihood",
    "quadratic_form_and_logdet",
]


def robust_cholesky(
    A: torch.Tensor,  # (..., n, n)
    *,
    max_tries: int = 6,
    initial_jitter: float | None = None,
    warn: bool = True,
) -> tuple[torch.Tensor, float]:  # (..., n, n), jitter
    r"""Cholesky factor of a symmetric positive definite matrix, adding jitter if needed.

    Tries :math:`A = L L^\top` first. On failure it retries with
    :math:`A + \epsilon_k \bar{a} I`, where :math:`\bar{a}` is the mean diagonal of
    :math:`A` and :math:`\epsilon_k = \epsilon_0 10^{k}` for :math:`k = 0, 1, \dots`,
    and warns with the jitter that succeeded.

    Parameters
    ----------
    A : torch.Tensor of shape (..., n, n)
        Symmetric matrix (or batch of matrices).
    max_tries : int, default=6
        Number of jitter levels tried after the plain factorisation fails.
    initial_jitter : float, optional
        Relative jitter of the first retry; defaults to 1e-8 in float64 and 1e-6 in float32.
    warn : bool, default=True
        Emit a :class:`~gpkern.exceptions.NumericalWarning` when jitter was needed.

    Returns
    -------
    L : torch.Tensor of shape (..., n, n)
        Lower-triangular factor.
    jitter : float
        Absolute jitter added to the diagonal (0.0 when none was needed).

    Raises
    ------
    NotPSDError
        If the matrix has non-finite entries, or is not positive definite even with the
        largest jitter tried.

    Examples
    --------
    >>> import torch
    >>> from gpkern.linalg.cholesky import robust_cholesky
    >>> A = torch.ones(3, 3, dtype=torch.float64)  # rank one: needs jitter
    >>> L, jitter = robust_cholesky(A, warn=False)
    >>> jitter > 0
    True
    """
    if not torch.isfinite(A).all():
        raise NotPSDError(
            "The kernel matrix contains NaN or inf entries; check the kernel hyperparameters "
            "and that the inputs are finite."
        )
    L, info = torch.linalg.cholesky_ex(A)
    if not bool(info.any()):
        return L, 0.0
    if initial_jitter is None:
        initial_jitter = 1e-8 if A.dtype == torch.float64 else 1e-6
    scale = A.diagonal(dim1=-2, dim2=-1).abs().mean().item()
    scale = scale if scale > 0 else 1.0
    eye = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
    jitter = 0.0
    for k in range(max_tries):
        jitter = initial_jitter * 10.0**k * scale
        L, info = torch.linalg.cholesky_ex(A + jitter * eye)
        if not bool(info.any()):
            if warn:
                warnings.warn(
                    f"Kernel matrix was not numerically positive definite; added jitter "
                    f"{jitter:.3g} to its diagonal.",
                    NumericalWarning,
                    stacklevel=2,
                )
            return L, jitter
    raise NotPSDError(
        f"The kernel matrix is not positive definite, even after adding jitter {jitter:.3g} "
        f"({max_tries} escalating tries). Check that the kernel is a valid (PSD) covariance "
        "function and that its hyperparameters are sensible, or increase the noise."
    )


def cholesky_logdet(L: torch.Tensor) -> torch.Tensor:  # (..., n, n) -> (...)
    r"""Log-determinant :math:`\log|A| = 2 \sum_i \log L_{ii}` from a Cholesky factor."""
    return 2.0 * L.diagonal(dim1=-2, dim2=-1).log().sum(-1)


def cholesky_solve(
    B: torch.Tensor,  # (..., n, k)
    L: torch.Tensor,  # (..., n, n)
) -> torch.Tensor:  # (..., n, k)
    r""":math:`(L L^\top)^{-1} B` by two triangular solves.

    Same result as :func:`torch.cholesky_solve`, which copies the factor on every call; for a
    few right-hand sides that copy costs more than the solve itself.

    Parameters
    ----------
    B : torch.Tensor of shape (..., n, k)
        Right-hand sides.
    L : torch.Tensor of shape (..., n, n)
        Lower Cholesky factor.

    Returns
    -------
    torch.Tensor of shape (..., n, k)

    Examples
    --------
    >>> import torch
    >>> from gpkern.linalg.cholesky import cholesky_solve
    >>> A = torch.tensor([[4.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
    >>> B = torch.tensor([[1.0], [2.0]], dtype=torch.float64)
    >>> torch.allclose(cholesky_solve(B, torch.linalg.cholesky(A)), torch.linalg.solve(A, B))
    True
    """
    return torch.linalg.solve_triangular(
        L.mT, torch.linalg.solve_triangular(L, B, upper=False), upper=True
    )


def gaussian_log_likelihood(
    L: torch.Tensor,  # (n, n)
    Y: torch.Tensor,  # (n, t)
) -> tuple[torch.Tensor, torch.Tensor]:  # (), (n, t)
    r"""Log density of the columns of ``Y`` under :math:`\mathcal{N}(0, A)`, with :math:`A = LL^\top`.

    .. math::

        \log p(Y) = \sum_{j=1}^{t} \Big[ -\tfrac12 y_j^\top A^{-1} y_j
            - \tfrac12 \log|A| - \tfrac{n}{2}\log 2\pi \Big]

    Parameters
    ----------
    L : torch.Tensor of shape (n, n)
        Lower Cholesky factor of the covariance.
    Y : torch.Tensor of shape (n, t)
        Independent outputs sharing the covariance.

    Returns
    -------
    log_likelihood : torch.Tensor, scalar
        Sum over the ``t`` outputs.
    alpha : torch.Tensor of shape (n, t)
        :math:`A^{-1} Y`, reused for predictions.
    """
    n, t = Y.shape
    alpha = torch.cholesky_solve(Y, L)
    quad = (Y * alpha).sum()
    return -0.5 * quad - 0.5 * t * cholesky_logdet(L) - 0.5 * n * t * math.log(2 * math.pi), alpha


class _QuadraticLogdet(torch.autograd.Function):
    """(q, log|C|, L, alpha, jitter) with the closed-form gradient instead of autograd through
    the factor."""

    @staticmethod
    def forward(ctx, C: torch.Tensor, Y: torch.Tensor, warn: bool):
        L, jitter = robust_cholesky(C, warn=warn)
        alpha = torch.cholesky_solve(Y, L)
        q = (Y * alpha).sum(0)
        ctx.save_for_backward(L, alpha)
        jitter = C.new_tensor(jitter)
        ctx.mark_non_differentiable(L, alpha, jitter)
        return q, cholesky_logdet(L), L, alpha, jitter

    @staticmethod
    def backward(ctx, grad_q, grad_logdet, *_):
        L, alpha = ctx.saved_tensors
        grad_C = grad_Y = None
        if ctx.needs_input_grad[0]:
            # d q_j / dC = -alpha_j alpha_j^T, d log|C| / dC = C^{-1}: one extra n^3/3 for C^{-1},
            # several times cheaper than differentiating through the Cholesky factorisation.
            grad_C = -(alpha * grad_q) @ alpha.T + grad_logdet * torch.cholesky_inverse(L)
        if ctx.needs_input_grad[1]:
            grad_Y = 2.0 * alpha * grad_q
        return grad_C, grad_Y, None


def quadratic_form_and_logdet(
    C: torch.Tensor,  # (n, n)
    Y: torch.Tensor,  # (n, t)
    *,
    warn: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float]:
    r"""Differentiable :math:`q_j = y_j^\top C^{-1} y_j` and :math:`\log|C|`, with closed-form
    gradients, and the factorisation they came from.

    Every Gaussian-based marginal likelihood (Gaussian, Student-t, scale mixtures) depends on
    :math:`C` only through these; the backward pass uses

    .. math::

        \frac{\partial q_j}{\partial C} = -\alpha_j \alpha_j^\top, \qquad
        \frac{\partial \log|C|}{\partial C} = C^{-1}, \qquad \alpha = C^{-1} Y,

    one extra Cholesky inverse instead of autograd through the factorisation. Jitter is added
    when needed (see :func:`robust_cholesky`; the gradient is that of the jittered matrix).

    Parameters
    ----------
    C : torch.Tensor of shape (n, n)
        Symmetric positive definite matrix.
    Y : torch.Tensor of shape (n, t)
        Right-hand sides (columns).
    warn : bool, default=False
        Warn when jitter was needed.

    Returns
    -------
    q : torch.Tensor of shape (t,)
    logdet : torch.Tensor, scalar
    L : torch.Tensor of shape (n, n)
        Cholesky factor of :math:`C` (+ jitter); not differentiable.
    alpha : torch.Tensor of shape (n, t)
        :math:`C^{-1} Y`; not differentiable.
    jitter : float
        Jitter added to the diagonal.

    Raises
    ------
    NotPSDError
        If ``C`` is not positive definite even with jitter.

    Examples
    --------
    >>> import torch
    >>> from gpkern.linalg.cholesky import quadratic_form_and_logdet
    >>> C = torch.tensor([[2.0, 0.0], [0.0, 4.0]], dtype=torch.float64)
    >>> q, logdet, *_ = quadratic_form_and_logdet(C, torch.ones(2, 1, dtype=torch.float64))
    >>> float(q), round(float(logdet.exp()), 6)
    (0.75, 8.0)
    """
    q, logdet, L, alpha, jitter = _QuadraticLogdet.apply(C, Y, warn)
    return q, logdet, L, alpha, float(jitter)


def mvn_log_likelihood(
    C: torch.Tensor,  # (n, n)
    Y: torch.Tensor,  # (n, t)
) -> torch.Tensor:  # ()
    r"""Differentiable :math:`\sum_j \log \mathcal{N}(y_j \mid 0, C)` with a closed-form gradient.

    The backward pass uses

    .. math::

        \frac{\partial}{\partial C} \sum_{j=1}^t \log \mathcal{N}(y_j \mid 0, C)
        = \tfrac12 \left(\alpha \alpha^\top - t\, C^{-1}\right), \qquad \alpha = C^{-1} Y,

    so that gradients with respect to kernel hyperparameters cost one extra Cholesky inverse
    instead of autograd through the factorisation. Jitter is added silently when needed
    (see :func:`robust_cholesky`; the gradient is that of the jittered matrix).

    Parameters
    ----------
    C : torch.Tensor of shape (n, n)
        Symmetric positive definite covariance.
    Y : torch.Tensor of shape (n, t)
        Independent columns sharing ``C``.

    Returns
    -------
    torch.Tensor
        Scalar log likelihood summed over columns.

    Raises
    ------
    NotPSDError
        If ``C`` is not positive definite even with jitter.

    Examples
    --------
    >>> import torch
    >>> from gpkern.linalg.cholesky import mvn_log_likelihood
    >>> C = torch.eye(2, dtype=torch.float64, requires_grad=True)
    >>> Y = torch.zeros(2, 1, dtype=torch.float64)
    >>> mvn_log_likelihood(C, Y).backward()
    >>> C.grad
    tensor([[-0.5000,  0.0000],
            [ 0.0000, -0.5000]], dtype=torch.float64)
    """
    n, t = Y.shape
    q, logdet, *_ = quadratic_form_and_logdet(C, Y)
    return -0.5 * q.sum() - 0.5 * t * logdet - 0.5 * n * t * math.log(2 * math.pi)
