r"""Exact GP regression trained by CG and stochastic Lanczos on the stored dense kernel matrix.

Between a few thousand points and the memory limit of the dense path, one Cholesky
factorisation per marginal-likelihood evaluation (:math:`n^3/3` flops, plus as much again for
the gradient's trace terms) costs more than the iterative estimator of
:class:`gpkern.models.iterative.IterativeGP`: a rank-:math:`r` randomly pivoted Cholesky
preconditioner and a few batched CG iterations, each one product of the :math:`n \times n`
matrix with ``num_probes + t`` columns. :class:`DenseIterativeGP` runs that estimator (the same
code: :func:`gpkern.linalg.cg.pcg`, :func:`gpkern.linalg.cg.slq_logdet`,
:func:`gpkern.linalg.rpcholesky.rp_cholesky`) with its products taken with the kernel matrix
formed once per evaluation (:func:`gpkern.models.exact.kernel_matrix`), instead of a lazy
operator that re-evaluates the kernel at every product.

The estimate's optimum is off the exact one by its Monte Carlo error (a few tenths of a nat
on a few thousand points). :meth:`DenseIterativeGP.finish_exactly` switches the model to the
exact likelihood (one Cholesky per evaluation), so that an optimiser started at the iterative
optimum finishes on the exact one in a few evaluations; conditioning is one exact Cholesky
(:meth:`gpkern.models.exact.ExactGP.posterior`) either way.
"""

from __future__ import annotations

import gpytorch
import torch

from gpkern.models.exact import ExactGP, ExactPosterior, kernel_matrix
from gpkern.models.iterative import IterativeGP, IterativeSettings

__all__ = ["DenseIterativeGP", "DenseKernelMatrix"]


class DenseKernelMatrix:
    """A stored kernel matrix offering the products the iterative estimator takes.

    Parameters
    ----------
    K : torch.Tensor of shape (n, n)
        Symmetric positive semi-definite, possibly part of an autograd graph.
    """

    def __init__(self, K: torch.Tensor) -> None:
        self.K = K

    def _matmul(self, V: torch.Tensor) -> torch.Tensor:  # (n, c) -> (n, c)
        return self.K @ V

    def detach(self) -> DenseKernelMatrix:
        return DenseKernelMatrix(self.K.detach())

    def columns(self, index: torch.Tensor) -> torch.Tensor:  # (b,) -> (n, b)
        return self.K[:, index]

    def _diagonal(self) -> torch.Tensor:  # (n,)
        return self.K.diagonal()


class DenseIterativeGP(IterativeGP):
    r"""Exact GP trained by the iterative estimator on the dense kernel matrix.

    Same model as :class:`gpkern.models.exact.ExactGP`. :meth:`log_marginal_likelihood` is
    :class:`~gpkern.models.iterative.IterativeGP`'s stochastic estimate (CG for
    :math:`y^\top A^{-1} y`, stochastic Lanczos quadrature for :math:`\log|A|`,
    :math:`A = K + \sigma^2 I`), its products taken with :math:`K` stored, until
    :meth:`finish_exactly` makes it :class:`~gpkern.models.exact.ExactGP`'s;
    :meth:`posterior` is exact (one Cholesky).

    Parameters
    ----------
    kernel : gpytorch.kernels.Kernel
    noise : float, default=0.1
    learn_noise : bool, default=True
    noise_lower_bound : float, default=1e-6
    settings : IterativeSettings, optional
        Training knobs (``cg_tol``, ``max_cg_iter``, ``num_probes``, ``lanczos_iter``,
        ``preconditioner_rank``, ``seed``); conditioning does not use the others.

    Examples
    --------
    >>> import torch, gpytorch
    >>> from gpkern.models.dense_iterative import DenseIterativeGP
    >>> X = torch.linspace(0, 1, 50, dtype=torch.float64)[:, None]
    >>> Y = torch.sin(6 * X)
    >>> gp = DenseIterativeGP(gpytorch.kernels.RBFKernel()).double()
    >>> gp.log_marginal_likelihood(X, Y).shape
    torch.Size([])
    >>> mean, var = gp.posterior(X, Y).predict(X[:5])
    >>> mean.shape, var.shape
    (torch.Size([5, 1]), torch.Size([5]))
    """

    def __init__(
        self,
        kernel: gpytorch.kernels.Kernel,
        noise: float = 0.1,
        learn_noise: bool = True,
        noise_lower_bound: float = 1e-6,
        settings: IterativeSettings | None = None,
    ) -> None:
        # backend="torch": cross-covariances, if any, never need a KeOps compile.
        super().__init__(kernel, noise, learn_noise, noise_lower_bound, settings, backend="torch")
        self.exact = False

    def finish_exactly(self) -> None:
        """From now on :meth:`log_marginal_likelihood` is the exact one (dense Cholesky)."""
        self.exact = True

    def log_marginal_likelihood(
        self, X: torch.Tensor, Y: torch.Tensor, *, warn: bool = False
    ) -> torch.Tensor:  # (n, d), (n, t) -> ()
        """The iterative estimate (:meth:`IterativeGP.log_marginal_likelihood`), or after
        :meth:`finish_exactly` the exact value (:meth:`ExactGP.log_marginal_likelihood`)."""
        if self.exact:
            return ExactGP.log_marginal_likelihood(self, X, Y, warn=warn)
        return super().log_marginal_likelihood(X, Y, warn=warn)

    def operator(self, X: torch.Tensor, X2: torch.Tensor | None = None):  # (n, d) -> (n, m)
        """:math:`K(X, X)` stored (:class:`DenseKernelMatrix`); a lazy operator for ``X2``."""
        if X2 is None:
            return DenseKernelMatrix(kernel_matrix(self.kernel, X))
        return super().operator(X, X2)

    def posterior(self, X: torch.Tensor, Y: torch.Tensor, *, warn: bool = True) -> ExactPosterior:
        """Condition on ``(X, Y)`` by one Cholesky (exact, as :meth:`ExactGP.posterior`)."""
        return ExactGP.posterior(self, X, Y, warn=warn)
