r"""Dense matrices of stationary GPyTorch kernels, computed directly in torch.

A stationary kernel with (ARD) length-scales :math:`\ell` is a function of the scaled squared
distance,

.. math::

    k(x, x') = s \, \kappa\big(r^2\big), \qquad
    r^2 = \sum_{j} \frac{(x_j - x'_j)^2}{\ell_j^2},

with an optional output scale :math:`s` (``ScaleKernel``). :func:`stationary_matrix` forms
:math:`K` with one matrix product for :math:`r^2` and a few element-wise operations for
:math:`\kappa`, reading the hyperparameters through the kernel's own properties (so through its
constraints): autograd yields the same gradients as GPyTorch's lazy evaluation, at a fraction of
its cost in a marginal-likelihood loop (no lazy tensors, no ``(n, n, d)`` intermediates).

A kernel type takes part by registering its profile :math:`\kappa` with
:func:`register_stationary`; GPyTorch's ``RBFKernel``, ``MaternKernel`` and ``RQKernel`` are
registered here. Matching is on the exact type, so a subclass that changes ``forward`` is never
mistaken for its parent; anything else (another kernel, batch shapes, ``active_dims``) gets
``None`` and the caller evaluates the kernel through GPyTorch.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import gpytorch
import torch

__all__ = ["register_stationary", "stationary_matrix"]

Profile = Callable[[gpytorch.kernels.Kernel, torch.Tensor], torch.Tensor]

_PROFILES: dict[type, Profile] = {}


def register_stationary(kernel_type: type, profile: Profile) -> None:
    r"""Declare ``kernel_type`` stationary with profile :math:`\kappa(r^2)`.

    Parameters
    ----------
    kernel_type : type
        A :class:`gpytorch.kernels.Kernel` subclass with a ``lengthscale`` whose ``forward``
        divides the inputs by it; only this exact type matches.
    profile : callable
        ``profile(kernel, sq)`` maps the matrix of scaled squared distances ``sq`` (may be
        modified in place) to the kernel matrix, differentiably in the kernel's parameters.

    Examples
    --------
    >>> import gpytorch, torch
    >>> from gpkern.kernels.dense_stationary import register_stationary
    >>> class Cauchy(gpytorch.kernels.Kernel):
    ...     has_lengthscale = True
    ...     def forward(self, x1, x2, **kw):
    ...         return 1 / (1 + self.covar_dist(x1 / self.lengthscale, x2 / self.lengthscale,
    ...                                         square_dist=True, **kw))
    >>> register_stationary(Cauchy, lambda kernel, sq: 1 / (1 + sq))
    """
    _PROFILES[kernel_type] = profile


def _rbf(kernel: gpytorch.kernels.Kernel, sq: torch.Tensor) -> torch.Tensor:
    return sq.mul_(-0.5).exp_()


def _matern(kernel: gpytorch.kernels.Kernel, sq: torch.Tensor) -> torch.Tensor:
    nu = kernel.nu
    # The clamp (as in GPyTorch) keeps the gradient of the square root finite at r = 0.
    r = sq.clamp_min_(1e-30).sqrt_()
    decay = torch.exp(-math.sqrt(2 * nu) * r)
    if nu == 0.5:
        return decay
    if nu == 1.5:
        return (math.sqrt(3) * r).add_(1).mul_(decay)
    return (math.sqrt(5) * r + (5.0 / 3.0) * r.square()).add_(1).mul_(decay)


def _rq(kernel: gpytorch.kernels.Kernel, sq: torch.Tensor) -> torch.Tensor:
    alpha = kernel.alpha.reshape(())
    return (sq / (2 * alpha)).add_(1).pow(-alpha)


class _GaussianGram(torch.autograd.Function):
    r""":math:`s \exp(-\tfrac12 \lVert z_i - z_k \rVert^2)` with a fused backward.

    With :math:`W = G \circ K` for the incoming gradient :math:`G`,
    :math:`\partial / \partial z_i = \sum_k (W_{ik} + W_{ki}) (z_k - z_i)` and
    :math:`\partial / \partial s = \sum W / s`: two matrix products and three passes over
    :math:`n^2` entries, against about fifteen for autograd through the element-wise graph.
    """

    @staticmethod
    def forward(ctx, Z: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:  # (n, d), ()
        norms = Z.square().sum(-1)
        sq = torch.addmm(norms[:, None] + norms, Z, Z.T, alpha=-2.0).clamp_min_(0.0)
        sq.diagonal().zero_()
        K = sq.mul_(-0.5).exp_().mul_(scale)
        ctx.save_for_backward(Z, K, scale)
        return K

    @staticmethod
    def backward(ctx, G: torch.Tensor):
        Z, K, scale = ctx.saved_tensors
        W = G * K
        grad_Z = grad_scale = None
        if ctx.needs_input_grad[0]:
            grad_Z = W @ Z + W.T @ Z - (W.sum(1) + W.sum(0))[:, None] * Z
        if ctx.needs_input_grad[1]:
            grad_scale = W.sum() / scale
        return grad_Z, grad_scale


register_stationary(gpytorch.kernels.RBFKernel, _rbf)
register_stationary(gpytorch.kernels.MaternKernel, _matern)
register_stationary(gpytorch.kernels.RQKernel, _rq)


def _plain(kernel: gpytorch.kernels.Kernel) -> bool:
    return kernel.active_dims is None and kernel.batch_shape == torch.Size([])


def stationary_matrix(
    kernel: gpytorch.kernels.Kernel,
    X1: torch.Tensor,  # (n, d)
    X2: torch.Tensor | None = None,  # (m, d)
) -> torch.Tensor | None:  # (n, m), or None when the kernel is not covered
    r"""Dense :math:`K(X_1, X_2)` of a registered stationary kernel, optionally scaled.

    Parameters
    ----------
    kernel : gpytorch.kernels.Kernel
        A registered stationary kernel, or a ``ScaleKernel`` around one; no batch shape, no
        ``active_dims``.
    X1 : torch.Tensor of shape (n, d)
    X2 : torch.Tensor of shape (m, d), optional
        ``None`` for :math:`K(X_1, X_1)`, whose diagonal is then exactly :math:`s\,\kappa(0)`.

    Returns
    -------
    torch.Tensor of shape (n, m) or None
        The kernel matrix, differentiable in the kernel's raw parameters; ``None`` when the
        kernel is not covered (evaluate it through GPyTorch then).

    Examples
    --------
    >>> import gpytorch, torch
    >>> from gpkern.kernels.dense_stationary import stationary_matrix
    >>> kernel = gpytorch.kernels.ScaleKernel(gpytorch.kernels.RBFKernel(ard_num_dims=2)).double()
    >>> X = torch.rand(5, 2, dtype=torch.float64)
    >>> K = stationary_matrix(kernel, X)
    >>> torch.allclose(K, kernel(X).to_dense())
    True
    """
    scale = None
    base = kernel
    if type(kernel) is gpytorch.kernels.ScaleKernel:
        if not _plain(kernel):
            return None
        scale, base = kernel.outputscale, kernel.base_kernel
    profile = _PROFILES.get(type(base))
    if profile is None or not _plain(base) or X1.dim() != 2:
        return None
    lengthscale = base.lengthscale  # (1, 1) or (1, d)
    if lengthscale.shape[-1] not in (1, X1.shape[-1]):
        return None
    # Centring (as GPyTorch does) keeps the quadratic expansion of r^2 free of cancellation.
    center = X1.mean(0, keepdim=True).detach()
    Z1 = (X1 - center) / lengthscale
    if X2 is None and type(base) is gpytorch.kernels.RBFKernel:
        # The default kernel of every exact estimator: the hot loop of their fits.
        one = torch.ones((), dtype=Z1.dtype, device=Z1.device)
        return _GaussianGram.apply(Z1, one if scale is None else scale.reshape(()))
    Z2 = Z1 if X2 is None else (X2 - center) / lengthscale
    norms = Z1.square().sum(-1, keepdim=True) + Z2.square().sum(-1)
    sq = torch.addmm(norms, Z1, Z2.T, alpha=-2.0).clamp_min(0.0)
    if X2 is None:
        sq.diagonal().zero_()
    K = profile(base, sq)
    return K if scale is None else K * scale
