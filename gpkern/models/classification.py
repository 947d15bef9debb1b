r"""Sparse variational GP classification with an inverse-gamma scale mixture (robust classification).

One latent function per class, :math:`f_c \mid \sigma^2 \sim \mathcal{GP}(0, \sigma^2 k)`, with
a shared last-layer variance :math:`\sigma^2 \sim \mathrm{IG}(a, b)` and a softmax likelihood
(Lee, Yun, Yang and Lee, ICLR 2022). With inducing points :math:`Z` and whitened inducing
values :math:`u_c = L_Z w_c` (:math:`L_Z L_Z^\top = K_{ZZ}`), the variational family is

.. math::

    q(\sigma^2) = \mathrm{IG}(\alpha, \beta), \qquad q(w_c \mid \sigma^2) = \mathcal{N}(m_c, \sigma^2 S_c),

the structure of the exact posterior of a scale mixture (mean free of :math:`\sigma^2`,
covariance proportional to it). Then :math:`f_c(x) \mid \sigma^2 \sim \mathcal{N}(\mu_c(x),
\sigma^2 v_c(x))` with :math:`A = L_Z^{-1} K_{Zx}`, :math:`\mu_c = A^\top m_c`,
:math:`v_c = k_{xx} - \lVert A \rVert^2 + \lVert S_c^{1/2\top} A \rVert^2`, so marginally each
:math:`f_c(x)` is a Student-t with :math:`2\alpha` degrees of freedom. The evidence lower bound is

.. math::

    \mathcal{L} = \sum_i E_{q}\big[\log \operatorname{softmax}(f(x_i))_{y_i}\big]
      - \sum_c \tfrac12\Big[\operatorname{tr} S_c + \tfrac{\alpha}{\beta} \lVert m_c \rVert^2 - M
      - \log|S_c|\Big] - \mathrm{KL}\big(\mathrm{IG}(\alpha, \beta) \,\|\, \mathrm{IG}(a, b)\big),

using :math:`E_q[1/\sigma^2] = \alpha/\beta`; the expectation is estimated by Monte Carlo (the
scale by the reparameterised gamma, then :math:`f`) on minibatches. With no prior
(``prior=None``) :math:`\sigma^2 = 1` is fixed: the plain sparse variational GP classifier.
"""

from __future__ import annotations

import math

import gpytorch
import torch

from gpkern.linalg.cholesky import robust_cholesky

__all__ = ["inverse_gamma_kl", "SparseScaleMixtureClassifier"]


def inverse_gamma_kl(
    alpha_q: torch.Tensor, beta_q: torch.Tensor, alpha_p: torch.Tensor, beta_p: torch.Tensor
) -> torch.Tensor:
    r"""Closed-form :math:`\mathrm{KL}(\mathrm{IG}(\alpha_q, \beta_q) \,\|\, \mathrm{IG}(\alpha_p, \beta_p))`.

    .. math::

        (\alpha_q - \alpha_p)\psi(\alpha_q) - \log\Gamma(\alpha_q) + \log\Gamma(\alpha_p)
        + \alpha_p(\log\beta_q - \log\beta_p) + \alpha_q\frac{\beta_p - \beta_q}{\beta_q}

    (the KL between the gamma laws of :math:`1/\sigma^2`, which a change of variables keeps).
    """
    return (
        (alpha_q - alpha_p) * torch.digamma(alpha_q)
        - torch.lgamma(alpha_q)
        + torch.lgamma(alpha_p)
        + alpha_p * (torch.log(beta_q) - torch.log(beta_p))
        + alpha_q * (beta_p - beta_q) / beta_q
    )


class SparseScaleMixtureClassifier(torch.nn.Module):
    """Sparse variational multi-class GP classifier with an optional inverse-gamma scale prior.

    Parameters
    ----------
    kernel : gpytorch.kernels.Kernel
        Covariance function shared by the classes.
    inducing_points : torch.Tensor of shape (M, d)
        Initial inducing inputs :math:`Z` (learned).
    n_classes : int
        Number of classes :math:`C` (at least 2).
    prior : tuple of float or None, default=(2.0, 2.0)
        :math:`(a, b)` of the inverse-gamma prior on :math:`\\sigma^2`; ``None`` fixes
        :math:`\\sigma^2 = 1`.
    jitter : float, default=1e-6
        Relative jitter on :math:`K_{ZZ}`.

    Examples
    --------
    >>> import torch, gpytorch
    >>> from gpkern.models.classification import SparseScaleMixtureClassifier
    >>> X = torch.randn(30, 2, dtype=torch.float64)
    >>> y = (X[:, 0] > 0).long()
    >>> model = SparseScaleMixtureClassifier(gpytorch.kernels.RBFKernel(), X[:10], 2).double()
    >>> model.elbo(X, y, n=30, n_samples=8).shape
    torch.Size([])
    """

    def __init__(
        self,
        kernel: gpytorch.kernels.Kernel,
        inducing_points: torch.Tensor,
        n_classes: int,
        prior: tuple[float, float] | None = (2.0, 2.0),
        jitter: float = 1e-6,
    ) -> None:
        super().__init__()
        if n_classes < 2:
            raise ValueError(f"n_classes must be >= 2, got {n_classes}.")
        if prior is not None and not (len(prior) == 2 and all(math.isfinite(p) and p > 0 for p in prior)):
            raise ValueError(f"prior must be None or positive finite (a, b), got {prior!r}.")
        M = inducing_points.shape[0]
        dtype = inducing_points.dtype
        self.kernel = kernel
        self.n_classes = n_classes
        self.jitter = jitter
        self.inducing_points = torch.nn.Parameter(inducing_points.detach().clone())
        self.q_mean = torch.nn.Parameter(torch.zeros(M, n_classes, dtype=dtype))
        # Lower-triangular square roots of S_c; the diagonal goes through softplus.
        self.q_sqrt_raw = torch.nn.Parameter(torch.zeros(n_classes, M, M, dtype=dtype))
        with torch.no_grad():
            self.q_sqrt_raw.diagonal(dim1=-2, dim2=-1).fill_(math.log(math.e - 1))
        self.has_scale_prior = prior is not None
        if prior is not None:
            self.register_buffer("prior_concentration", torch.tensor(float(prior[0]), dtype=dtype))
            self.register_buffer("prior_rate", torch.tensor(float(prior[1]), dtype=dtype))
            self.scale_constraint = gpytorch.constraints.Positive()
            inv = self.scale_constraint.inverse_transform
            self.raw_q_concentration = torch.nn.Parameter(inv(torch.tensor(float(prior[0]), dtype=dtype)))
            self.raw_q_rate = torch.nn.Parameter(inv(torch.tensor(float(prior[1]), dtype=dtype)))

    # -- variational parameters -----------------------------------------------------------------
    @property
    def q_sqrt(self) -> torch.Tensor:  # (C, M, M)
        tril = torch.tril(self.q_sqrt_raw, diagonal=-1)
        diag = torch.nn.functional.softplus(self.q_sqrt_raw.diagonal(dim1=-2, dim2=-1)) + 1e-8
        return tril + torch.diag_embed(diag)

    @property
    def q_concentration(self) -> torch.Tensor:
        """:math:`\\alpha` of :math:`q(\\sigma^2)`."""
        return self.scale_constraint.transform(self.raw_q_concentration)

    @property
    def q_rate(self) -> torch.Tensor:
        """:math:`\\beta` of :math:`q(\\sigma^2)`."""
        return self.scale_constraint.transform(self.raw_q_rate)

    # -- model ------------------------------------------------------------------------------
    def _chol_zz(self) -> torch.Tensor:
        Kzz = self.kernel(self.inducing_points).to_dense()
        eye = torch.eye(Kzz.shape[0], dtype=Kzz.dtype, device=Kzz.device)
        scale = Kzz.diagonal().mean().detach().clamp_min(1e-12)
        return robust_cholesky(Kzz + self.jitter * scale * eye, warn=False)[0]

    def marginals(self, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # (B, d) -> (B, C) x2
        r"""Mean :math:`\mu_c(x)` and unit-scale variance :math:`v_c(x)` of :math:`f_c(x) \mid \sigma^2`."""
        Lz = self._chol_zz()
        Kzx = self.kernel(self.inducing_points, X).to_dense()  # (M, B)
        A = torch.linalg.solve_triangular(Lz, Kzx, upper=False)  # (M, B)
        kxx = self.kernel(X, diag=True)
        kxx = kxx.to_dense() if hasattr(kxx, "to_dense") else kxx
        mean = A.T @ self.q_mean  # (B, C)
        SA = self.q_sqrt.transpose(-1, -2) @ A  # (C, M, B)
        var = (kxx - A.pow(2).sum(0))[:, None] + SA.pow(2).sum(1).T
        return mean, var.clamp_min(1e-10)

    def kl(self) -> torch.Tensor:
        """KL of the variational posterior from the prior (inducing values and scale)."""
        L = self.q_sqrt
        M = L.shape[-1]
        inv_scale = self.q_concentration / self.q_rate if self.has_scale_prior else 1.0
        kl_u = 0.5 * (
            L.pow(2).sum()
            + inv_scale * self.q_mean.pow(2).sum()
            - M * self.n_classes
            - 2 * L.diagonal(dim1=-2, dim2=-1).log().sum()
        )
        if not self.has_scale_prior:
            return kl_u
        return kl_u + inverse_gamma_kl(
            self.q_concentration, self.q_rate, self.prior_concentration, self.prior_rate
        )

    def sample_scale(self, n_samples: int) -> torch.Tensor:  # -> (S,)
        """Reparameterised draws of :math:`\\sigma^2 \\sim q` (ones without a scale prior)."""
        if not self.has_scale_prior:
            return torch.ones(n_samples, dtype=self.q_mean.dtype, device=self.q_mean.device)
        g = torch._standard_gamma(self.q_concentration.expand(n_samples))
        return self.q_rate / g.clamp_min(1e-300)

    def elbo(self, X: torch.Tensor, y: torch.Tensor, n: int, n_samples: int = 16) -> torch.Tensor:
        """ELBO per training point, :math:`\\mathcal{L} / n`, estimated on the minibatch ``(X, y)``."""
        mean, var = self.marginals(X)
        s2 = self.sample_scale(n_samples)[:, None, None]  # one sigma^2 per draw, shared by points
        eps = torch.randn((n_samples, *mean.shape), dtype=mean.dtype, device=mean.device)
        f = mean + (s2 * var).sqrt() * eps  # (S, B, C)
        loglik = torch.log_softmax(f, -1).gather(-1, y.view(1, -1, 1).expand(n_samples, -1, 1))
        return loglik.mean(0).sum() * (1.0 / X.shape[0]) - self.kl() / n

    @torch.no_grad()
    def predict_proba(
        self, X: torch.Tensor, scale_draws: torch.Tensor, normal_draws: torch.Tensor
    ) -> torch.Tensor:  # (m, d), (S,), (S, C) -> (m, C)
        r""":math:`p(y = c \mid x) \approx \frac1S \sum_s \operatorname{softmax}\big(\mu(x) +
        \sigma_s \sqrt{v(x)} \odot \epsilon_s\big)_c`.

        ``scale_draws`` are :math:`\sigma^2_s` (from :meth:`sample_scale`) and ``normal_draws``
        are :math:`\epsilon_s \sim \mathcal{N}(0, I_C)`. The same draws serve every test point,
        so a point's probabilities never depend on the other points in ``X``.
        """
        mean, var = self.marginals(X)
        f = mean[None] + (scale_draws[:, None, None] * var[None]).sqrt() * normal_draws[:, None, :]
        return torch.softmax(f, -1).mean(0)
