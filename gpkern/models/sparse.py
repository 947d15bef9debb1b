r"""Sparse GP regression: the collapsed variational bound of Titsias (2009) on inducing inputs.

With :math:`m` inducing inputs :math:`Z` and :math:`Q_{nn} = K_{nm} K_{mm}^{-1} K_{mn}`, the
bound on the log marginal likelihood, maximised over :math:`q(u)` in closed form, is

.. math::

    \mathcal{L} = \log \mathcal{N}(y \mid 0, Q_{nn} + \sigma^2 I)
        - \frac{1}{2\sigma^2} \operatorname{tr}(K_{nn} - Q_{nn})
    \;\le\; \log p(y),

with equality when :math:`Z = X`. It costs :math:`O(n m^2)` through
:math:`K_{mm} = L L^\top`, :math:`A = \sigma^{-1} L^{-1} K_{mn}` and
:math:`B = I + A A^\top = L_B L_B^\top`:

.. math::

    \mathcal{L} = -\tfrac{n}{2}\log 2\pi\sigma^2 - \log|L_B|
        - \tfrac{1}{2\sigma^2} y^\top y + \tfrac12 c^\top c
        - \tfrac{1}{2\sigma^2}\operatorname{tr} K_{nn} + \tfrac12 \operatorname{tr}(A A^\top),
    \qquad c = \sigma^{-1} L_B^{-1} A y.

Tensors only: validation and numpy live in :mod:`gpkern.estimators`.
"""

from __future__ import annotations

import math

import gpytorch
import torch

from gpkern.linalg.cholesky import robust_cholesky
from gpkern.models.exact import ExactGP

__all__ = ["SparseGP", "SparsePosterior", "collapsed_bound"]


def _factors(
    kernel: gpytorch.kernels.Kernel,
    X: torch.Tensor,  # (n, d)
    Z: torch.Tensor,  # (m, d)
    noise: torch.Tensor,  # ()
    warn: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:  # L (m, m), A (m, n), L_B (m, m)
    Kmm = kernel(Z).to_dense()
    # Jitter on K_mm keeps the bound a bound: Q_nn only shrinks, so K_nn - Q_nn stays PSD.
    L, jitter = robust_cholesky(Kmm, warn=warn)
    Kmn = kernel(Z, X).to_dense()
    A = torch.linalg.solve_triangular(L, Kmn, upper=False) / noise.sqrt()
    B = A @ A.T + torch.eye(Z.shape[0], dtype=A.dtype, device=A.device)
    L_B, _ = robust_cholesky(B, warn=warn)  # B >= I: jitter only on rounding trouble
    return L, A, L_B, jitter


def collapsed_bound(
    kernel: gpytorch.kernels.Kernel,
    X: torch.Tensor,  # (n, d)
    Y: torch.Tensor,  # (n, t)
    Z: torch.Tensor,  # (m, d)
    noise: torch.Tensor,  # ()
    *,
    warn: bool = False,
) -> torch.Tensor:  # ()
    r"""The collapsed bound :math:`\mathcal{L}` of Titsias (2009), summed over the columns of ``Y``.

    See :mod:`gpkern.models.sparse` for the formula; differentiable in the kernel's
    hyperparameters, ``noise`` and ``Z``.

    Examples
    --------
    >>> import torch, gpytorch
    >>> X = torch.linspace(0, 1, 30, dtype=torch.float64)[:, None]
    >>> Y = torch.sin(6 * X)
    >>> k = gpytorch.kernels.RBFKernel().double()
    >>> noise = torch.tensor(0.1, dtype=torch.float64)
    >>> exact = ExactGP(k, noise=0.1).double().log_marginal_likelihood(X, Y)
    >>> bool(collapsed_bound(k, X, Y, X[::3], noise) <= exact)
    True
    """
    n, t = Y.shape
    L, A, L_B, _ = _factors(kernel, X, Z, noise, warn)
    c = torch.linalg.solve_triangular(L_B, A @ Y, upper=False) / noise.sqrt()  # (m, t)
    kdiag = kernel(X, diag=True)
    kdiag = kdiag.to_dense() if hasattr(kdiag, "to_dense") else kdiag
    logdet_B = 2 * L_B.diagonal().log().sum()
    fit = -0.5 * (Y * Y).sum() / noise + 0.5 * (c * c).sum()
    const = -0.5 * n * t * (math.log(2 * math.pi) + noise.log())
    trace = -0.5 * t * (kdiag.sum() / noise - (A * A).sum())
    return const - 0.5 * t * logdet_B + fit + trace


class SparseGP(ExactGP):
    r"""GP regression on :math:`m` inducing inputs :math:`Z` with the collapsed bound.

    The prior and likelihood are :class:`~gpkern.models.exact.ExactGP`'s; ``log_marginal_likelihood``
    returns the bound :func:`collapsed_bound` (the objective a fit maximises) and ``posterior``
    the optimal :math:`q(u)`'s predictive distribution (:class:`SparsePosterior`).

    Parameters
    ----------
    kernel : gpytorch.kernels.Kernel
        Covariance function :math:`k`.
    inducing : torch.Tensor of shape (m, d)
        Inducing inputs :math:`Z` (held fixed unless ``learn_inducing``).
    noise : float, default=0.1
        Initial (or fixed) noise variance :math:`\sigma^2`.
    learn_noise : bool, default=True
        Whether :math:`\sigma^2` is a trainable parameter.
    learn_inducing : bool, default=False
        Whether :math:`Z` is a trainable parameter.
    noise_lower_bound : float, default=1e-6
        Lower bound of the noise constraint.

    Examples
    --------
    >>> import torch, gpytorch
    >>> X = torch.linspace(0, 1, 50, dtype=torch.float64)[:, None]
    >>> Y = torch.sin(6 * X)
    >>> gp = SparseGP(gpytorch.kernels.RBFKernel(), X[::5]).double()
    >>> mean, var = gp.posterior(X, Y).predict(X[:3])
    >>> mean.shape, var.shape
    (torch.Size([3, 1]), torch.Size([3]))
    """

    def __init__(
        self,
        kernel: gpytorch.kernels.Kernel,
        inducing: torch.Tensor,
        noise: float = 0.1,
        learn_noise: bool = True,
        learn_inducing: bool = False,
        noise_lower_bound: float = 1e-6,
    ) -> None:
        super().__init__(kernel, noise, learn_noise, noise_lower_bound)
        self.inducing = torch.nn.Parameter(inducing.detach().clone(), requires_grad=learn_inducing)

    def log_marginal_likelihood(
        self, X: torch.Tensor, Y: torch.Tensor, *, warn: bool = False
    ) -> torch.Tensor:  # (n, d), (n, t) -> ()
        """The collapsed bound at the current :math:`Z`, kernel and noise (a lower bound)."""
        return collapsed_bound(self.kernel, X, Y, self.inducing, self.noise, warn=warn)

    elbo = log_marginal_likelihood

    def posterior(self, X: torch.Tensor, Y: torch.Tensor, *, warn: bool = True) -> SparsePosterior:
        """The optimal :math:`q(u)` given ``(X, Y)`` and its predictive distribution."""
        with torch.no_grad():
            Z = self.inducing.detach()
            noise = self.noise.detach()
            L, A, L_B, jitter = _factors(self.kernel, X, Z, noise, warn)
            c = torch.linalg.solve_triangular(L_B, A @ Y, upper=False) / noise.sqrt()
            # weights W = L^-T L_B^-T c, so that the predictive mean is K_*m W
            W = torch.linalg.solve_triangular(
                L.T, torch.linalg.solve_triangular(L_B.T, c, upper=True), upper=True
            )
            bound = float(collapsed_bound(self.kernel, X, Y, Z, noise))
        return SparsePosterior(self.kernel, Z, L, L_B, W, float(noise), jitter, bound)


class SparsePosterior:
    r"""Predictive distribution of the optimal :math:`q(u) = \mathcal{N}(u \mid \mu_u, \Sigma_u)`.

    With :math:`\Sigma = (K_{mm} + \sigma^{-2} K_{mn} K_{nm})^{-1} = L^{-\top} B^{-1} L^{-1}`,

    .. math::

        \mu(x_*) = \sigma^{-2} K_{*m} \Sigma K_{mn} y, \qquad
        \operatorname{cov}(f_*) = K_{**} - K_{*m} K_{mm}^{-1} K_{m*} + K_{*m} \Sigma K_{m*}.

    Attributes
    ----------
    jitter : float
        Jitter added to :math:`K_{mm}`'s diagonal to factorise it (0 when none).
    log_marginal_likelihood : float
        The collapsed bound of the conditioning data (a lower bound on the log marginal
        likelihood; the name lets estimators treat it like the exact one).
    """

    def __init__(self, kernel, Z, L, L_B, W, noise: float, jitter: float, bound: float) -> None:
        self.kernel = kernel
        self.Z = Z
        self.L = L
        self.L_B = L_B
        self.W = W
        self.noise = noise
        self.jitter = jitter
        self.log_marginal_likelihood = bound

    @torch.no_grad()
    def predict(
        self,
        Xs: torch.Tensor,  # (s, d)
        *,
        full_cov: bool = False,
        batch_size: int = 4096,
    ) -> tuple[torch.Tensor, torch.Tensor]:  # (s, t), (s,) or (s, s)
        """Predictive mean of ``f`` and its variance (or full covariance) at ``Xs``."""
        if full_cov:
            V1, V2, Ksm = self._projections(Xs)
            cov = self.kernel(Xs).to_dense() - V1.T @ V1 + V2.T @ V2
            return Ksm @ self.W, cov
        means, variances = [], []
        for start in range(0, Xs.shape[0], batch_size):
            xb = Xs[start : start + batch_size]
            V1, V2, Ksm = self._projections(xb)
            prior_var = self.kernel(xb, diag=True)
            prior_var = prior_var.to_dense() if hasattr(prior_var, "to_dense") else prior_var
            means.append(Ksm @ self.W)
            variances.append((prior_var - (V1 * V1).sum(0) + (V2 * V2).sum(0)).clamp_min(0.0))
        return torch.cat(means), torch.cat(variances)

    def _projections(self, Xs: torch.Tensor):
        Ksm = self.kernel(Xs, self.Z).to_dense()  # (s, m)
        V1 = torch.linalg.solve_triangular(self.L, Ksm.T, upper=False)  # L^-1 K_m*
        V2 = torch.linalg.solve_triangular(self.L_B, V1, upper=False)  # L_B^-1 L^-1 K_m*
        return V1, V2, Ksm
