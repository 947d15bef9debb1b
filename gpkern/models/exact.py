"""Exact Gaussian-likelihood GP regression on dense kernel matrices.

The model is a :class:`torch.nn.Module` holding a GPyTorch kernel and a Gaussian noise
variance; it maps training tensors to a log marginal likelihood and to a
:class:`ExactPosterior` that predicts. Tensors only: validation and numpy live in
:mod:`gpkern.estimators`.
"""

from __future__ import annotations

import math

import gpytorch
import torch

from gpkern.kernels.dense_stationary import stationary_matrix
from gpkern.linalg.cholesky import (
    cholesky_logdet,
    gaussian_log_likelihood,
    mvn_log_likelihood,
    robust_cholesky,
)

__all__ = ["ExactGP", "ExactPosterior", "GaussianNoise", "gaussian_log_density", "kernel_matrix"]


def kernel_matrix(
    kernel: gpytorch.kernels.Kernel,
    X1: torch.Tensor,  # (n, d)
    X2: torch.Tensor | None = None,  # (m, d)
) -> torch.Tensor:  # (n, m)
    """Dense :math:`K(X_1, X_2)` (``X2=None``: :math:`K(X_1, X_1)`), differentiable.

    Registered stationary kernels are evaluated directly in torch
    (:func:`gpkern.kernels.dense_stationary.stationary_matrix`: same values and gradients,
    without GPyTorch's lazy-tensor overhead); any other kernel through GPyTorch.
    """
    K = stationary_matrix(kernel, X1, X2)
    if K is None:
        K = kernel(X1, X1 if X2 is None else X2).to_dense()
    return K


def gaussian_log_density(
    y: torch.Tensor,  # (m, t)
    mean: torch.Tensor,  # (m, t)
    var: torch.Tensor,  # (m, t) or (m, 1)
) -> torch.Tensor:  # (m, t)
    r"""Element-wise :math:`\log \mathcal{N}(y \mid \mu, \sigma^2)`."""
    return -0.5 * ((y - mean) ** 2 / var + var.log() + math.log(2 * math.pi))


class GaussianNoise:
    """The Gaussian noise variance of a GP module: learned above a floor, or fixed exactly.

    Mixed into a :class:`torch.nn.Module`, which calls :meth:`_init_noise` in ``__init__``.
    """

    def _init_noise(self, noise: float, learn: bool, lower: float) -> None:
        # Log space above the floor: a step rescales the noise, equally well conditioned at
        # every level (softplus is linear there and costs L-BFGS many more evaluations).
        self.noise_constraint = gpytorch.constraints.GreaterThan(
            lower, transform=torch.exp, inv_transform=torch.log
        )
        if learn:
            # float64, so that the start is the value given, not its float32 rounding; a model
            # cast with .float() or .double() casts it with the rest.
            start = torch.tensor(max(noise, lower * 1.0001), dtype=torch.float64)
            self.raw_noise = torch.nn.Parameter(self.noise_constraint.inverse_transform(start))
        else:
            # A buffer, not a constrained parameter: the transform would round the value and
            # the constraint floor it.
            self.raw_noise = None
            self.register_buffer("fixed_noise", torch.tensor(float(noise), dtype=torch.float64))

    @property
    def noise(self) -> torch.Tensor:
        """Noise variance :math:`\\sigma^2` (scalar tensor)."""
        if self.raw_noise is None:
            return self.fixed_noise
        return self.noise_constraint.transform(self.raw_noise)


class ExactGP(GaussianNoise, torch.nn.Module):
    r"""Zero-mean GP prior with Gaussian observation noise.

    .. math::

        f \sim \mathcal{GP}(0, k), \qquad y_i = f(x_i) + \varepsilon_i, \quad
        \varepsilon_i \sim \mathcal{N}(0, \sigma^2)

    Outputs are the columns of ``Y``: independent draws sharing ``k`` and :math:`\sigma^2`.

    Parameters
    ----------
    kernel : gpytorch.kernels.Kernel
        Covariance function :math:`k`.
    noise : float, default=0.1
        Initial (or fixed) noise variance :math:`\sigma^2`. A fixed noise is used exactly as
        given, whatever ``noise_lower_bound``.
    learn_noise : bool, default=True
        Whether :math:`\sigma^2` is a trainable parameter.
    noise_lower_bound : float, default=1e-6
        Lower bound :math:`l` of a learned noise, a GPyTorch ``GreaterThan`` in log space:
        :math:`\sigma^2 = l + e^{\theta}` (a step in :math:`\theta` rescales the noise above
        the bound, equally well conditioned for every noise level).

    Examples
    --------
    >>> import torch, gpytorch
    >>> from gpkern.models.exact import ExactGP
    >>> X = torch.linspace(0, 1, 20, dtype=torch.float64)[:, None]
    >>> Y = torch.sin(6 * X)
    >>> gp = ExactGP(gpytorch.kernels.RBFKernel()).double()
    >>> post = gp.posterior(X, Y)
    >>> mean, var = post.predict(X)
    >>> mean.shape, var.shape
    (torch.Size([20, 1]), torch.Size([20]))
    """

    def __init__(
        self,
        kernel: gpytorch.kernels.Kernel,
        noise: float = 0.1,
        learn_noise: bool = True,
        noise_lower_bound: float = 1e-6,
    ) -> None:
        super().__init__()
        if not noise > 0:
            raise ValueError(f"noise must be > 0, got {noise!r}.")
        self.kernel = kernel
        self._init_noise(noise, learn_noise, noise_lower_bound)

    def covariance(self, X: torch.Tensor) -> torch.Tensor:  # (n, d) -> (n, n)
        """:math:`K_{XX} + \\sigma^2 I` as a dense matrix."""
        K = kernel_matrix(self.kernel, X)
        return K + torch.diag_embed(self.noise.expand(X.shape[0]).to(K))

    def log_marginal_likelihood(
        self, X: torch.Tensor, Y: torch.Tensor, *, warn: bool = False
    ) -> torch.Tensor:  # (n, d), (n, t) -> ()
        r"""Exact log marginal likelihood, summed over outputs.

        .. math::

            \log p(Y) = \sum_{j} -\tfrac12 y_j^\top (K + \sigma^2 I)^{-1} y_j
                - \tfrac12 \log|K + \sigma^2 I| - \tfrac{n}{2}\log 2\pi
        """
        if warn:
            robust_cholesky(self.covariance(X).detach(), warn=True)
        return mvn_log_likelihood(self.covariance(X), Y)

    def posterior(self, X: torch.Tensor, Y: torch.Tensor, *, warn: bool = True) -> ExactPosterior:
        """Condition on ``(X, Y)``; the result predicts at new inputs without refactorising."""
        with torch.no_grad():
            L, jitter = robust_cholesky(self.covariance(X), warn=warn)
            lml, alpha = gaussian_log_likelihood(L, Y)
        return ExactPosterior(
            self.kernel, X, L, alpha, float(self.noise.detach()), jitter, float(lml)
        )


class ExactPosterior:
    r"""GP posterior given a Cholesky factor :math:`L L^\top = K_{XX} + \sigma^2 I`.

    .. math::

        \mu(x_*) = k_{*X} \alpha, \quad \alpha = (K_{XX} + \sigma^2 I)^{-1} Y, \qquad
        \operatorname{cov}(f_*) = K_{**} - k_{*X} (K_{XX} + \sigma^2 I)^{-1} k_{X*}

    Attributes
    ----------
    jitter : float
        Jitter that was added to the diagonal to factorise (0 when none).
    log_marginal_likelihood : float
        Log marginal likelihood of the conditioning data.
    """

    def __init__(self, kernel, X, L, alpha, noise: float, jitter: float, lml: float) -> None:
        self.kernel = kernel
        self.X = X
        self.L = L
        self.alpha = alpha
        self.noise = noise
        self.jitter = jitter
        self.log_marginal_likelihood = lml

    @torch.no_grad()
    def predict(
        self,
        Xs: torch.Tensor,  # (m, d)
        *,
        full_cov: bool = False,
        batch_size: int = 4096,
    ) -> tuple[torch.Tensor, torch.Tensor]:  # (m, t), (m,) or (m, m)
        """Posterior mean of ``f`` and its variance (or full covariance) at ``Xs``.

        Test points are processed in batches of ``batch_size`` so that memory is
        :math:`O(n \\cdot \\text{batch\\_size})` when only variances are requested.
        """
        if full_cov:
            Ks = kernel_matrix(self.kernel, Xs, self.X)
            V = torch.linalg.solve_triangular(self.L, Ks.T, upper=False)
            cov = kernel_matrix(self.kernel, Xs) - V.T @ V
            return Ks @ self.alpha, cov
        means, variances = [], []
        for start in range(0, Xs.shape[0], batch_size):
            xb = Xs[start : start + batch_size]
            Ks = kernel_matrix(self.kernel, xb, self.X)
            V = torch.linalg.solve_triangular(self.L, Ks.T, upper=False)
            prior_var = self.kernel(xb, diag=True)
            prior_var = prior_var.to_dense() if hasattr(prior_var, "to_dense") else prior_var
            means.append(Ks @ self.alpha)
            variances.append((prior_var - (V * V).sum(0)).clamp_min(0.0))
        return torch.cat(means), torch.cat(variances)

    def logdet(self) -> torch.Tensor:
        return cholesky_logdet(self.L)
