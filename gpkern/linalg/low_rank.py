r"""Low-rank plus diagonal Gaussian algebra: :math:`K = \Phi\Phi^\top + \sigma^2 I` in :math:`O(n D^2)`.

A kernel with an explicit feature map (random features, a linear kernel on a network's
features) has Gram matrix :math:`\Phi\Phi^\top` with :math:`\Phi \in \mathbb{R}^{n\times D}`.
When :math:`D < n` the Woodbury identity and the matrix determinant lemma replace the
:math:`O(n^3)` Cholesky of :math:`K` by one of the :math:`D\times D` matrix
:math:`A = \Phi^\top\Phi + \sigma^2 I_D`:

.. math::

    (\Phi\Phi^\top + \sigma^2 I)^{-1} = \sigma^{-2}\big(I - \Phi A^{-1}\Phi^\top\big), \qquad
    \log|\Phi\Phi^\top + \sigma^2 I| = (n - D)\log\sigma^2 + \log|A|.

The dense twin is :func:`gpkern.linalg.cholesky.gaussian_log_likelihood` on
:math:`\Phi\Phi^\top + \sigma^2 I`; the tests check both agree.
"""

from __future__ import annotations

import math

import torch

from gpkern.linalg.cholesky import cholesky_logdet, robust_cholesky

__all__ = ["woodbury_log_likelihood", "LowRankPosterior"]


def _factor(F: torch.Tensor, noise: torch.Tensor | float, warn: bool) -> torch.Tensor:  # (n, D) -> (D, D)
    value = float(torch.as_tensor(noise).detach())
    if not value > 0:
        raise ValueError(f"noise must be > 0 for the Woodbury identity, got {value!r}.")
    if F.dim() != 2:
        raise ValueError(f"features must be an (n, D) matrix, got shape {tuple(F.shape)}.")
    D = F.shape[-1]
    A = F.mT @ F + noise * torch.eye(D, dtype=F.dtype, device=F.device)
    L, _ = robust_cholesky(A, warn=warn)
    return L


def woodbury_log_likelihood(
    F: torch.Tensor,  # (n, D)
    Y: torch.Tensor,  # (n, t)
    noise: torch.Tensor | float,
    *,
    warn: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:  # (), (n, t)
    r"""Gaussian log likelihood of the columns of ``Y`` under :math:`\mathcal{N}(0, \Phi\Phi^\top + \sigma^2 I)`.

    .. math::

        \log p(Y) = \sum_j -\tfrac12 y_j^\top (\Phi\Phi^\top + \sigma^2 I)^{-1} y_j
            - \tfrac12\log|\Phi\Phi^\top + \sigma^2 I| - \tfrac n2 \log 2\pi

    computed in :math:`O(n D^2 + D^3)` time and :math:`O(nD)` memory.

    Parameters
    ----------
    F : torch.Tensor of shape (n, D)
        Feature matrix :math:`\Phi`.
    Y : torch.Tensor of shape (n, t)
        Targets, one independent output per column.
    noise : float or scalar tensor
        Noise variance :math:`\sigma^2 > 0`; differentiable if a tensor.
    warn : bool, default=False
        Warn when jitter is needed to factorise :math:`A`.

    Returns
    -------
    lml : torch.Tensor
        Log likelihood summed over the columns.
    alpha : torch.Tensor of shape (n, t)
        :math:`(\Phi\Phi^\top + \sigma^2 I)^{-1} Y`.

    Examples
    --------
    >>> import torch
    >>> from gpkern.linalg.low_rank import woodbury_log_likelihood
    >>> F = torch.randn(50, 5, dtype=torch.float64)
    >>> Y = torch.randn(50, 1, dtype=torch.float64)
    >>> lml, alpha = woodbury_log_likelihood(F, Y, 0.1)
    >>> alpha.shape
    torch.Size([50, 1])
    """
    if F.dim() != 2 or Y.dim() != 2 or Y.shape[0] != F.shape[0]:
        raise ValueError(f"F must be (n, D) and Y (n, t), got shapes {tuple(F.shape)} and {tuple(Y.shape)}.")
    n, D = F.shape
    t = Y.shape[1]
    L = _factor(F, noise, warn)
    FtY = F.mT @ Y  # (D, t)
    beta = torch.cholesky_solve(FtY, L)  # A^{-1} F^T Y
    alpha = (Y - F @ beta) / noise
    quad = (Y * alpha).sum()
    noise_t = torch.as_tensor(noise, dtype=F.dtype, device=F.device)
    logdet = (n - D) * noise_t.log() + cholesky_logdet(L)
    return -0.5 * quad - 0.5 * t * logdet - 0.5 * n * t * math.log(2 * math.pi), alpha


class LowRankPosterior:
    r"""Posterior of Bayesian linear regression on features (a GP with kernel :math:`\phi(x)^\top\phi(y)`).

    With :math:`A = \Phi^\top\Phi + \sigma^2 I_D` and :math:`\beta = A^{-1}\Phi^\top Y`,

    .. math::

        \mu(x_*) = \phi(x_*)^\top \beta, \qquad
        \operatorname{var} f(x_*) = \sigma^2\, \phi(x_*)^\top A^{-1} \phi(x_*),

    identical to the GP posterior :math:`k_{*X}(K + \sigma^2 I)^{-1}Y` and
    :math:`k_{**} - k_{*X}(K + \sigma^2 I)^{-1}k_{X*}` with :math:`K = \Phi\Phi^\top`, at
    :math:`O(D^2)` per test point.

    Parameters
    ----------
    F : torch.Tensor of shape (n, D)
        Training features :math:`\Phi`.
    Y : torch.Tensor of shape (n, t)
        Training targets.
    noise : float
        Noise variance :math:`\sigma^2`.

    Examples
    --------
    >>> import torch
    >>> from gpkern.linalg.low_rank import LowRankPosterior
    >>> F = torch.randn(50, 5, dtype=torch.float64)
    >>> post = LowRankPosterior(F, torch.randn(50, 2, dtype=torch.float64), 0.1)
    >>> mean, var = post.predict(F[:3])
    >>> mean.shape, var.shape
    (torch.Size([3, 2]), torch.Size([3]))
    """

    def __init__(self, F: torch.Tensor, Y: torch.Tensor, noise: float) -> None:
        if Y.dim() != 2 or Y.shape[0] != F.shape[0]:
            raise ValueError(f"Y must be (n, t) with n = {F.shape[0]} rows of F, got shape {tuple(Y.shape)}; use Y[:, None] for one output.")
        with torch.no_grad():
            self.noise = float(noise)
            self.L = _factor(F, self.noise, warn=True)
            self.beta = torch.cholesky_solve(F.mT @ Y, self.L)  # (D, t)

    @torch.no_grad()
    def predict(
        self, Fs: torch.Tensor, *, full_cov: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:  # (m, D) -> (m, t), (m,) or (m, m)
        """Posterior mean and variance (or covariance) of ``f`` at test features ``Fs``."""
        V = torch.linalg.solve_triangular(self.L, Fs.mT, upper=False)  # (D, m)
        mean = Fs @ self.beta
        if full_cov:
            return mean, self.noise * V.mT @ V
        return mean, self.noise * (V * V).sum(0)
