r"""Scale mixtures of Gaussian processes: Student-t processes and general priors on the scale.

The model (Lee, Yun, Yang and Lee, *Scale Mixtures of Neural Network Gaussian Processes*,
ICLR 2022) puts a prior on the variance :math:`\sigma^2` of the last layer of an infinitely
wide network, which scales the whole covariance, noise included:

.. math::

    \sigma^2 \sim H, \qquad y \mid \sigma^2 \sim \mathcal{N}\big(0, \sigma^2 (K + \varepsilon I)\big).

Because :math:`\sigma^2` multiplies the whole covariance :math:`C = K + \varepsilon I`, the
posterior of :math:`f_*` given :math:`\sigma^2` has a mean that does not depend on
:math:`\sigma^2` and a covariance proportional to it, and the data enter the posterior of
:math:`\sigma^2` only through :math:`q = y^\top C^{-1} y` and :math:`n`:

.. math::

    p(\sigma^2 \mid y) \propto h(\sigma^2)\, (\sigma^2)^{-n/2} e^{-q / (2\sigma^2)}, \qquad
    f_* \mid \sigma^2, y \sim \mathcal{N}\big(K_{*X} C^{-1} y,\;
    \sigma^2 (K_{**} - K_{*X} C^{-1} K_{X*})\big).

With an inverse-gamma prior :math:`\mathrm{IG}(a, b)` everything is closed form
(:class:`StudentTProcess`); any other prior is handled by self-normalised importance sampling
over :math:`\sigma^2` (:class:`ScaleMixtureGP`). Both return a :class:`ScaleMixturePosterior`.
Several outputs (columns of ``Y``) are independent draws, each with its own :math:`\sigma^2`.
"""

from __future__ import annotations

import copy
import math
import numbers
import warnings

import gpytorch
import torch
from torch.distributions import constraints

from gpkern.exceptions import LowESSWarning
from gpkern.linalg.cholesky import cholesky_logdet, quadratic_form_and_logdet, robust_cholesky
from gpkern.models.exact import ExactGP, ExactPosterior

__all__ = [
    "Burr12",
    "make_scale_prior",
    "student_t_log_density",
    "student_t_variance",
    "multivariate_t_log_likelihood",
    "InverseGammaScale",
    "WeightedScale",
    "ScaleMixturePosterior",
    "StudentTProcess",
    "ScaleMixtureGP",
]

_LOG_2PI = math.log(2 * math.pi)
_EMPTY = torch.Size()


# -- scale priors ---------------------------------------------------------------------------------
class Burr12(torch.distributions.Distribution):
    r"""Burr type XII distribution (the paper's heavy-tailed prior on :math:`\sigma^2`).

    .. math::

        p(x) = \frac{c k}{\lambda} \Big(\frac{x}{\lambda}\Big)^{c-1}
               \Big(1 + \big(\tfrac{x}{\lambda}\big)^{c}\Big)^{-k-1}, \qquad
        F(x) = 1 - \Big(1 + \big(\tfrac{x}{\lambda}\big)^{c}\Big)^{-k}, \quad x > 0.

    Its right tail decays like :math:`x^{-ck-1}`: moments of order :math:`r < ck` exist.
    Samples use the inverse CDF, :math:`x = \lambda\big((1-u)^{-1/k} - 1\big)^{1/c}`.

    Parameters
    ----------
    c, k : float or torch.Tensor
        Positive shape parameters.
    scale : float or torch.Tensor, default=1.0
        Positive scale :math:`\lambda`.

    Examples
    --------
    >>> import torch
    >>> from gpkern.models.scale_mixture import Burr12
    >>> d = Burr12(2.0, 1.0)
    >>> round(float(d.cdf(torch.tensor(1.0))), 6)
    0.5
    """

    arg_constraints = {
        "c": constraints.positive,
        "k": constraints.positive,
        "scale": constraints.positive,
    }
    support = constraints.positive
    has_rsample = True

    def __init__(self, c, k, scale=1.0, validate_args=None):
        self.c, self.k, self.scale = torch.broadcast_tensors(
            *(torch.as_tensor(v, dtype=torch.float64) for v in (c, k, scale))
        )
        super().__init__(self.c.shape, validate_args=validate_args)

    def rsample(self, sample_shape=_EMPTY, generator: torch.Generator | None = None):
        shape = self._extended_shape(sample_shape)
        u = torch.rand(shape, dtype=self.c.dtype, device=self.c.device, generator=generator)
        # (1 - u)^(-1/k) - 1 = expm1(-log1p(-u) / k): accurate for small u.
        return self.scale * torch.expm1(-torch.log1p(-u) / self.k).pow(1.0 / self.c)

    def sample(self, sample_shape=_EMPTY, generator: torch.Generator | None = None):
        with torch.no_grad():
            return self.rsample(sample_shape, generator=generator)

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        z = value / self.scale
        return (
            torch.log(self.c * self.k / self.scale)
            + (self.c - 1) * torch.log(z)
            - (self.k + 1) * torch.log1p(z.pow(self.c))
        )

    def cdf(self, value):
        return -torch.expm1(-self.k * torch.log1p((value / self.scale).pow(self.c)))


class _SquaredHalfCauchy(torch.distributions.Distribution):
    r""":math:`\sigma^2` when :math:`\sigma \sim \text{half-Cauchy}(s)`:
    :math:`p(v) = \frac{1}{\pi s \sqrt{v}\,(1 + v / s^2)}`."""

    arg_constraints = {"scale": constraints.positive}
    support = constraints.positive

    def __init__(self, scale, validate_args=None):
        self.scale = torch.as_tensor(scale, dtype=torch.float64)
        super().__init__(self.scale.shape, validate_args=validate_args)

    def sample(self, sample_shape=_EMPTY, generator: torch.Generator | None = None):
        shape = self._extended_shape(sample_shape)
        u = torch.rand(shape, dtype=self.scale.dtype, device=self.scale.device, generator=generator)
        return (self.scale * torch.tan(0.5 * math.pi * u)).pow(2)

    def log_prob(self, value):
        return -math.log(math.pi) - torch.log(self.scale) - 0.5 * torch.log(value) - torch.log1p(
            value / self.scale**2
        )


_PRIORS = {
    # name: (parameter names, defaults, constructor)
    "inverse_gamma": (
        ("concentration", "rate"),
        {"concentration": 2.0, "rate": 2.0},
        lambda p: torch.distributions.InverseGamma(p["concentration"], p["rate"]),
    ),
    "burr12": (("c", "k", "scale"), {"c": 2.0, "k": 1.0, "scale": 1.0}, lambda p: Burr12(**p)),
    "half_cauchy": (("scale",), {"scale": 1.0}, lambda p: _SquaredHalfCauchy(p["scale"])),
    "lognormal": (
        ("loc", "scale"),
        {"loc": 0.0, "scale": 1.0},
        lambda p: torch.distributions.LogNormal(p["loc"], p["scale"]),
    ),
}


def make_scale_prior(
    prior: str | torch.distributions.Distribution, params: dict | None = None
) -> torch.distributions.Distribution:
    r"""A prior on the scale :math:`\sigma^2` from a name and parameters.

    ============== ====================================== ==============================
    name           distribution of :math:`\sigma^2`       parameters (defaults)
    ============== ====================================== ==============================
    inverse_gamma  :math:`\mathrm{IG}(a, b)`              concentration=2, rate=2
    burr12         Burr XII (:class:`Burr12`)             c=2, k=1, scale=1
    half_cauchy    :math:`\sigma \sim` half-Cauchy(s)      scale=1
    lognormal      :math:`\log\sigma^2 \sim \mathcal{N}`   loc=0, scale=1
    ============== ====================================== ==============================

    Parameters
    ----------
    prior : str or torch.distributions.Distribution
        A name from the table, or a scalar distribution over :math:`\sigma^2 > 0` with
        ``sample`` and ``log_prob`` (used as is; ``params`` must then be ``None``).
    params : dict, optional
        Overrides of the defaults above; every value must be a finite number, and every
        parameter but ``lognormal``'s ``loc`` must be positive.

    Returns
    -------
    torch.distributions.Distribution

    Raises
    ------
    ValueError
        Unknown name or parameter, or a parameter that is not positive / finite.
    """
    if isinstance(prior, torch.distributions.Distribution):
        if params:
            raise ValueError("prior_params must be None when prior is a Distribution instance.")
        if prior.batch_shape != torch.Size() or prior.event_shape != torch.Size():
            raise ValueError(
                "A Distribution prior must be scalar (empty batch and event shapes), got batch "
                f"shape {tuple(prior.batch_shape)} and event shape {tuple(prior.event_shape)}."
            )
        return prior
    if not isinstance(prior, str) or prior not in _PRIORS:
        raise ValueError(
            f"prior must be one of {sorted(_PRIORS)} or a torch.distributions.Distribution, "
            f"got {prior!r}."
        )
    names, defaults, build = _PRIORS[prior]
    params = {} if params is None else dict(params)
    unknown = set(params) - set(names)
    if unknown:
        raise ValueError(f"Unknown parameter(s) {sorted(unknown)} for prior {prior!r}; expected {names}.")
    merged = {**defaults, **params}
    for name, value in merged.items():
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
        if not ok or (value <= 0 and not (prior == "lognormal" and name == "loc")):
            raise ValueError(
                f"Parameter {name!r} of prior {prior!r} must be a finite positive number, got {value!r}."
            )
    return build({k: torch.tensor(float(v), dtype=torch.float64) for k, v in merged.items()})


def _sample(dist: torch.distributions.Distribution, n: int, generator: torch.Generator | None):
    """``n`` draws, seeded by ``generator`` where the distribution allows it."""
    if generator is not None and isinstance(dist, (Burr12, _SquaredHalfCauchy)):
        return dist.sample((n,), generator=generator)
    if generator is None:
        return dist.sample((n,))
    # torch distributions draw from the global generator: fork it so the caller's seed decides.
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return dist.sample((n,))


# -- Student-t densities --------------------------------------------------------------------------
def student_t_log_density(
    y: torch.Tensor, loc: torch.Tensor, scale2: torch.Tensor, df: torch.Tensor | float
) -> torch.Tensor:
    r"""Element-wise log density of a univariate Student-t, :math:`t_\nu(y \mid \mu, s^2)`.

    .. math::

        \log t_\nu(y \mid \mu, s^2) = \log\Gamma\big(\tfrac{\nu+1}{2}\big) - \log\Gamma\big(\tfrac{\nu}{2}\big)
            - \tfrac12 \log(\nu \pi s^2) - \tfrac{\nu+1}{2} \log\Big(1 + \frac{(y-\mu)^2}{\nu s^2}\Big)
    """
    df = torch.as_tensor(df, dtype=y.dtype, device=y.device)
    return (
        torch.lgamma(0.5 * (df + 1))
        - torch.lgamma(0.5 * df)
        - 0.5 * torch.log(df * math.pi * scale2)
        - 0.5 * (df + 1) * torch.log1p((y - loc) ** 2 / (df * scale2))
    )


def student_t_variance(df: torch.Tensor | float, scale2: torch.Tensor) -> torch.Tensor:
    r"""Variance :math:`s^2 \nu / (\nu - 2)` of a Student-t with scale :math:`s^2`.

    Raises
    ------
    ValueError
        If any :math:`\nu \le 2`, where the variance is infinite; use quantiles instead.
    """
    df = torch.as_tensor(df, dtype=scale2.dtype, device=scale2.device)
    if bool((df <= 2).any()):
        raise ValueError(
            f"A Student-t with df={float(df.min()):.4g} <= 2 has infinite variance; ask for "
            "quantiles (predict_quantiles) instead of a standard deviation, or use df > 2."
        )
    return scale2 * df / (df - 2)


def multivariate_t_log_likelihood(
    L: torch.Tensor,  # (n, n)
    Y: torch.Tensor,  # (n, t)
    concentration: torch.Tensor,
    rate: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:  # (), (n, t)
    r"""Log density of the columns of ``Y`` under :math:`y \mid \sigma^2 \sim \mathcal{N}(0, \sigma^2 C)`,
    :math:`\sigma^2 \sim \mathrm{IG}(a, b)`, with :math:`C = L L^\top`.

    This is the multivariate t with :math:`2a` degrees of freedom and scale matrix
    :math:`(b/a) C`; per column, with :math:`q = y^\top C^{-1} y`,

    .. math::

        \log p(y) = \log\Gamma\big(a + \tfrac{n}{2}\big) - \log\Gamma(a) - \tfrac{n}{2}\log(2\pi b)
            - \tfrac12 \log|C| - \big(a + \tfrac{n}{2}\big) \log\Big(1 + \frac{q}{2b}\Big).

    Returns
    -------
    log_likelihood : torch.Tensor, scalar
        Sum over the ``t`` columns (each with its own :math:`\sigma^2`).
    alpha : torch.Tensor of shape (n, t)
        :math:`C^{-1} Y`.
    """
    n, t = Y.shape
    alpha = torch.cholesky_solve(Y, L)
    q = (Y * alpha).sum(0)
    a, b = concentration, rate
    per_col = (
        torch.lgamma(a + 0.5 * n)
        - torch.lgamma(a)
        - 0.5 * n * torch.log(2 * math.pi * b)
        - 0.5 * cholesky_logdet(L)
        - (a + 0.5 * n) * torch.log1p(q / (2 * b))
    )
    return per_col.sum(), alpha


# -- posteriors over the scale --------------------------------------------------------------------
class InverseGammaScale:
    r"""Closed-form posterior :math:`\sigma^2 \mid y \sim \mathrm{IG}(a + n/2,\; b + q/2)`, per output.

    Mixing :math:`\mathcal{N}(\mu, \sigma^2 v)` over it gives a Student-t with
    :math:`\nu = 2a + n` degrees of freedom and scale :math:`s^2 = \frac{2b + q}{2a + n} v`.

    Parameters
    ----------
    concentration, rate : torch.Tensor of shape (t,)
    """

    def __init__(self, concentration: torch.Tensor, rate: torch.Tensor) -> None:
        self.concentration = concentration
        self.rate = rate

    @property
    def df(self) -> torch.Tensor:  # (t,)
        """Degrees of freedom :math:`2a'` of the mixed Student-t."""
        return 2 * self.concentration

    def mean(self) -> torch.Tensor:  # (t,)
        r""":math:`E[\sigma^2] = b' / (a' - 1)` (``inf`` where :math:`a' \le 1`)."""
        a = self.concentration
        return torch.where(a > 1, self.rate / (a - 1).clamp_min(1e-300), torch.full_like(a, math.inf))

    def variance_of(self, v: torch.Tensor) -> torch.Tensor:  # (m,) -> (m, t)
        """Variance of the mixture of :math:`\\mathcal{N}(\\mu, \\sigma^2 v)` (raises when infinite)."""
        return student_t_variance(self.df, self.rate / self.concentration * v[:, None])

    def log_density(self, Y, mean, v):  # (m, t), (m, t), (m,) -> (m, t)
        scale2 = self.rate / self.concentration * v[:, None]
        return student_t_log_density(Y, mean, scale2, self.df)

    def quantiles(self, q: torch.Tensor, mean, v):  # (r,), (m, t), (m,) -> (m, t, r)
        from scipy.special import stdtrit  # the t inverse CDF; torch has none

        z = stdtrit(self.df.cpu().numpy()[:, None], q.cpu().numpy()[None, :])  # (t, r)
        z = torch.as_tensor(z, dtype=mean.dtype, device=mean.device)
        s = (self.rate / self.concentration * v[:, None]).sqrt()  # (m, t)
        return mean[..., None] + s[..., None] * z[None]

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:  # -> (n, t)
        g = torch._standard_gamma(self.concentration.expand(n, -1).contiguous(), generator=generator)
        return self.rate / g


class WeightedScale:
    r"""Weighted draws :math:`\{(\sigma^2_s, \bar w_s)\}` of :math:`\sigma^2 \mid y`, per output.

    Mixing :math:`\mathcal{N}(\mu, \sigma^2 v)` over it gives
    :math:`\sum_s \bar w_s \mathcal{N}(\mu, \sigma^2_s v)`.

    Parameters
    ----------
    samples : torch.Tensor of shape (S, t)
    log_weights : torch.Tensor of shape (S, t)
        Self-normalised: ``log_weights.logsumexp(0) == 0``.
    """

    def __init__(self, samples: torch.Tensor, log_weights: torch.Tensor) -> None:
        self.samples = samples
        self.log_weights = log_weights

    @property
    def weights(self) -> torch.Tensor:  # (S, t)
        return self.log_weights.exp()

    @property
    def ess(self) -> torch.Tensor:  # (t,)
        r"""Effective sample size :math:`1 / \sum_s \bar w_s^2`."""
        return 1.0 / self.weights.pow(2).sum(0)

    def mean(self) -> torch.Tensor:  # (t,)
        return (self.weights * self.samples).sum(0)

    def variance_of(self, v: torch.Tensor) -> torch.Tensor:  # (m,) -> (m, t)
        return v[:, None] * self.mean()[None, :]

    def log_density(self, Y, mean, v):  # (m, t), (m, t), (m,) -> (m, t)
        var = self.samples[:, None, :] * v[None, :, None]  # (S, m, t)
        comp = -0.5 * ((Y - mean)[None] ** 2 / var + var.log() + _LOG_2PI)
        return (self.log_weights[:, None, :] + comp).logsumexp(0)

    def quantiles(self, q: torch.Tensor, mean, v, n_iter: int = 100):  # -> (m, t, r)
        normal = torch.distributions.Normal(0.0, 1.0)
        sd = (self.samples[:, None, :] * v[None, :, None]).sqrt()  # (S, m, t)
        w = self.weights[:, None, :, None]
        z = normal.icdf(q.to(mean.dtype))  # (r,)
        comp = sd[..., None] * z  # (S, m, t, r): each component's quantile
        # The mixture's quantile lies between its components' quantiles: bisect there.
        lo, hi = comp.min(0).values, comp.max(0).values
        lo, hi = lo - 1e-12 * lo.abs() - 1e-300, hi + 1e-12 * hi.abs() + 1e-300
        for _ in range(n_iter):
            mid = 0.5 * (lo + hi)
            cdf = (w * normal.cdf(mid[None] / sd[..., None].clamp_min(1e-300))).sum(0)
            below = cdf < q
            lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
        return mean[..., None] + 0.5 * (lo + hi)

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:  # -> (n, t)
        idx = torch.multinomial(self.weights.T, n, replacement=True, generator=generator)  # (t, n)
        return self.samples.gather(0, idx.T)


class ScaleMixturePosterior:
    r"""Posterior of a scale mixture of GPs: the Gaussian conditional times the scale posterior.

    .. math::

        p(f_* \mid y) = \int \mathcal{N}\big(f_* \mid \mu_*, \sigma^2 \Sigma_*\big)\,
            p(\sigma^2 \mid y)\, d\sigma^2, \qquad
        p(y_* \mid y) = \int \mathcal{N}\big(y_* \mid \mu_*, \sigma^2 (\Sigma_* + \varepsilon)\big)\,
            p(\sigma^2 \mid y)\, d\sigma^2

    Parameters
    ----------
    gaussian : ExactPosterior
        The GP posterior with covariance :math:`C = K + \varepsilon I` (unit scale).
    scale : InverseGammaScale or WeightedScale
        Posterior of :math:`\sigma^2`.
    log_marginal_likelihood : float
        :math:`\log p(y)` of the conditioning data (an estimate for :class:`WeightedScale`).
    """

    #: test points per block in densities and quantiles (memory ~ n_samples x batch_size).
    batch_size = 256

    def __init__(self, gaussian: ExactPosterior, scale, log_marginal_likelihood: float) -> None:
        self.gaussian = gaussian
        self.scale = scale
        self.log_marginal_likelihood = log_marginal_likelihood

    @property
    def noise(self) -> float:
        return self.gaussian.noise

    @property
    def jitter(self) -> float:
        return self.gaussian.jitter

    def _v(self, Xs, include_noise: bool):
        mean, var = self.gaussian.predict(Xs)
        return mean, var + self.noise if include_noise else var

    @torch.no_grad()
    def predict(self, Xs: torch.Tensor, *, full_cov: bool = False):  # (m, d) -> (m, t), (m, t) | (m, m, t)
        """Mean and variance (or covariance) of :math:`f_*`; the variance is mixed over the scale."""
        mean, cov = self.gaussian.predict(Xs, full_cov=full_cov)
        if full_cov:
            # cov(f_*) = E[sigma^2] Sigma_* for both posteriors (raises where E[sigma^2] = inf)
            factor = self.scale.variance_of(torch.ones(1, dtype=cov.dtype, device=cov.device))[0]
            return mean, cov[:, :, None] * factor
        return mean, self.scale.variance_of(cov)

    @torch.no_grad()
    def log_predictive_density(self, Xs: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:  # (m, t)
        """:math:`\\log p(y_* \\mid y)` per point and output, noise included."""
        out = []
        for start in range(0, Xs.shape[0], self.batch_size):  # the mixture is (S, batch, t)
            mean, v = self._v(Xs[start : start + self.batch_size], include_noise=True)
            out.append(self.scale.log_density(Y[start : start + self.batch_size], mean, v))
        return torch.cat(out) if out else Y.new_zeros(Y.shape)

    @torch.no_grad()
    def quantiles(self, Xs: torch.Tensor, q: torch.Tensor, *, include_noise: bool = True):
        """Quantiles of the predictive of :math:`y_*` (or :math:`f_*`), shape ``(m, t, r)``."""
        out = []
        for start in range(0, Xs.shape[0], self.batch_size):
            mean, v = self._v(Xs[start : start + self.batch_size], include_noise=include_noise)
            out.append(self.scale.quantiles(q, mean, v))
        return torch.cat(out)

    @torch.no_grad()
    def sample(self, Xs: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
        """Joint draws of :math:`f_*`, shape ``(m, t, n)``: a scale draw, then a Gaussian draw."""
        mean, cov = self.gaussian.predict(Xs, full_cov=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # posterior covariances are often singular
            L, _ = robust_cholesky(cov, initial_jitter=1e-10, max_tries=10)
        s2 = self.scale.sample(n, generator)  # (n, t)
        z = torch.randn(cov.shape[0], n, generator=generator, dtype=cov.dtype, device=cov.device)
        f = L @ z  # (m, n)
        return mean[:, :, None] + f[:, None, :] * s2.T.sqrt()[None]


# -- models -------------------------------------------------------------------------------------
class StudentTProcess(ExactGP):
    r"""Student-t process: the scale mixture with an inverse-gamma prior :math:`\mathrm{IG}(a, b)`.

    .. math::

        \sigma^2 \sim \mathrm{IG}(a, b), \quad y \mid \sigma^2 \sim \mathcal{N}\big(0, \sigma^2(K + \varepsilon I)\big)
        \;\Longrightarrow\; y \sim \mathrm{MVT}_{2a}\big(0, \tfrac{b}{a}(K + \varepsilon I)\big).

    The predictive of a test output is a Student-t with :math:`2a + n` degrees of freedom, mean
    :math:`K_{*X} C^{-1} y` and scale :math:`\frac{2b + y^\top C^{-1} y}{2a + n}
    (K_{**} - K_{*X} C^{-1} K_{X*} + \varepsilon)`. As :math:`a = b \to \infty` it becomes the GP
    with covariance :math:`C`.

    Parameters
    ----------
    kernel : gpytorch.kernels.Kernel
        Covariance function :math:`k`.
    noise : float, default=0.1
        Initial (or fixed) noise :math:`\varepsilon`.
    concentration, rate : float, default=2.0
        Initial (or fixed) :math:`a` and :math:`b`.
    learn_noise, learn_concentration, learn_rate : bool, default=True
        Which of :math:`\varepsilon, a, b` are trainable.

    Examples
    --------
    >>> import torch, gpytorch
    >>> from gpkern.models.scale_mixture import StudentTProcess
    >>> X = torch.linspace(0, 1, 20, dtype=torch.float64)[:, None]
    >>> Y = torch.sin(6 * X)
    >>> tp = StudentTProcess(gpytorch.kernels.RBFKernel()).double()
    >>> post = tp.posterior(X, Y)
    >>> round(float(post.scale.df[0]), 6)  # 2a + n
    24.0
    """

    def __init__(
        self,
        kernel: gpytorch.kernels.Kernel,
        noise: float = 0.1,
        concentration: float = 2.0,
        rate: float = 2.0,
        learn_noise: bool = True,
        learn_concentration: bool = True,
        learn_rate: bool = True,
        noise_lower_bound: float = 1e-6,
    ) -> None:
        super().__init__(kernel, noise=noise, learn_noise=learn_noise, noise_lower_bound=noise_lower_bound)
        for name, value in (("concentration", concentration), ("rate", rate)):
            if not (isinstance(value, numbers.Real) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite positive number, got {value!r}.")
        self.concentration_constraint = gpytorch.constraints.Positive()
        self.rate_constraint = gpytorch.constraints.Positive()
        dtype = torch.float64  # exact starting values even when the default dtype is float32
        self.raw_concentration = torch.nn.Parameter(
            self.concentration_constraint.inverse_transform(torch.tensor(float(concentration), dtype=dtype)),
            requires_grad=learn_concentration,
        )
        self.raw_rate = torch.nn.Parameter(
            self.rate_constraint.inverse_transform(torch.tensor(float(rate), dtype=dtype)),
            requires_grad=learn_rate,
        )

    @property
    def concentration(self) -> torch.Tensor:
        """Shape :math:`a` of the inverse-gamma prior (degrees of freedom :math:`2a`)."""
        return self.concentration_constraint.transform(self.raw_concentration)

    @property
    def rate(self) -> torch.Tensor:
        """Scale :math:`b` of the inverse-gamma prior."""
        return self.rate_constraint.transform(self.raw_rate)

    def log_marginal_likelihood(self, X, Y, *, warn: bool = False) -> torch.Tensor:
        """Multivariate-t log density of ``Y`` (see :func:`multivariate_t_log_likelihood`)."""
        L, _ = robust_cholesky(self.covariance(X), warn=warn)
        return multivariate_t_log_likelihood(L, Y, self.concentration, self.rate)[0]

    def prior_variance(self, X: torch.Tensor) -> torch.Tensor:  # (m, d) -> (m,)
        r"""Prior marginal variance of :math:`y`, :math:`\frac{b}{a - 1}(k(x, x) + \varepsilon)`.

        Raises
        ------
        ValueError
            If :math:`2a \le 2`: the prior process then has infinite variance.
        """
        with torch.no_grad():
            kd = self.kernel(X, diag=True)
            kd = kd.to_dense() if hasattr(kd, "to_dense") else kd
            a = self.concentration
            return student_t_variance(2 * a, self.rate / a * (kd + self.noise))

    def posterior(self, X, Y, *, warn: bool = True) -> ScaleMixturePosterior:
        """Condition on ``(X, Y)``: the scale posterior is :math:`\\mathrm{IG}(a + n/2, b + q/2)`."""
        with torch.no_grad():
            L, jitter = robust_cholesky(self.covariance(X), warn=warn)
            lml, alpha = multivariate_t_log_likelihood(L, Y, self.concentration, self.rate)
            q = (Y * alpha).sum(0)
            n = X.shape[0]
            scale = InverseGammaScale(
                (self.concentration + 0.5 * n).expand_as(q).clone(), self.rate + 0.5 * q
            )
        gaussian = ExactPosterior(self.kernel, X, L, alpha, float(self.noise.detach()), jitter, math.nan)
        return ScaleMixturePosterior(gaussian, scale, float(lml))


class ScaleMixtureGP(ExactGP):
    r"""Scale mixture of GPs with any prior :math:`h` on :math:`\sigma^2`, by importance sampling.

    With proposal draws :math:`\sigma^2_s \sim r` the self-normalised weights are

    .. math::

        w_s \propto \frac{h(\sigma^2_s)\, \mathcal{N}(y \mid 0, \sigma^2_s C)}{r(\sigma^2_s)}, \qquad
        \log p(y) \approx \log \frac1S \sum_s w_s ,

    and the predictive is :math:`\sum_s \bar w_s\, \mathcal{N}(y_* \mid \mu_*, \sigma^2_s(\Sigma_* + \varepsilon))`.
    ``proposal="prior"`` uses :math:`r = h` (the paper's choice). ``proposal="adaptive"`` (the
    default) uses the defensive mixture :math:`r = \tfrac12 h + \tfrac12 \mathrm{IG}(n/2, q/2)`,
    whose second half is the posterior of :math:`\sigma^2` under the scale-invariant prior
    :math:`1/\sigma^2`; it keeps the effective sample size near :math:`S/2` or better however
    concentrated the likelihood is, where the prior proposal degrades as :math:`n` grows.
    Proposal draws are fixed at construction (common random numbers), so the estimate of
    :math:`\log p(y)` is a smooth function of the hyperparameters and can be maximised.

    Parameters
    ----------
    kernel : gpytorch.kernels.Kernel
    prior : torch.distributions.Distribution
        Scalar prior on :math:`\sigma^2` (see :func:`make_scale_prior`).
    n_samples : int, default=1000
        Number of draws :math:`S`.
    proposal : {"adaptive", "prior"}, default="adaptive"
    generator : torch.Generator, optional
        Seeds the draws.
    noise : float, default=0.1
    learn_noise : bool, default=True
    min_ess : float, optional
        :meth:`posterior` warns :class:`~gpkern.exceptions.LowESSWarning` when the effective
        sample size of any output is below it; default 5% of ``n_samples``.
    """

    def __init__(
        self,
        kernel: gpytorch.kernels.Kernel,
        prior: torch.distributions.Distribution,
        n_samples: int = 1000,
        proposal: str = "adaptive",
        generator: torch.Generator | None = None,
        noise: float = 0.1,
        learn_noise: bool = True,
        noise_lower_bound: float = 1e-6,
        min_ess: float | None = None,
    ) -> None:
        super().__init__(kernel, noise=noise, learn_noise=learn_noise, noise_lower_bound=noise_lower_bound)
        if proposal not in ("adaptive", "prior"):
            raise ValueError(f"proposal must be 'adaptive' or 'prior', got {proposal!r}.")
        if not isinstance(n_samples, numbers.Integral) or n_samples < 2:
            raise ValueError(f"n_samples must be an integer >= 2, got {n_samples!r}.")
        # Out-of-support values must give log_prob = -inf (weight 0), not a validation error.
        self.prior = copy.copy(prior)
        self.prior._validate_args = False
        self.proposal = proposal
        self.min_ess = min_ess
        self.n_samples = int(n_samples)
        n_prior = self.n_samples if proposal == "prior" else self.n_samples // 2
        dtype = torch.float64
        self.register_buffer("prior_draws", _sample(prior, n_prior, generator).to(dtype).reshape(-1))
        # Standard-gamma draws G with sigma^2 = (q/2)/G ~ IG(n/2, q/2): rescaled per data set.
        self.register_buffer(
            "uniform_draws",
            torch.rand(self.n_samples - n_prior, generator=generator, dtype=dtype),
        )

    def _gamma_quantiles(self, n: int) -> torch.Tensor:  # (S2,)
        """Gamma(n/2, 1) quantiles at the fixed uniform draws; computed once per ``n`` (they
        depend on nothing that is learned, and the bisection costs more than a step)."""
        u = self.uniform_draws
        key = (n, u.device, u.dtype, u._version)
        cached = getattr(self, "_gamma_cache", None)
        if cached is None or cached[0] != key:
            shape = torch.tensor(0.5 * n, dtype=u.dtype, device=u.device)
            self._gamma_cache = (key, _gamma_icdf(shape, u))
        return self._gamma_cache[1]

    def _draws_and_log_weights(self, n: int, q: torch.Tensor, logdet: torch.Tensor):
        """(S, t) draws and unnormalised log weights; ``q`` is (t,)."""
        t = q.shape[0]
        draws = self.prior_draws[:, None].expand(-1, t)
        if self.proposal == "adaptive":
            qh = 0.5 * q.clamp_min(1e-12 * n)
            # Inverse CDF of Gamma(n/2): keeps the draw differentiable in q through the rescale.
            g = self._gamma_quantiles(n).to(q.dtype)  # (S2,)
            draws = torch.cat([draws, qh[None, :] / g[:, None]], 0)
        log_prior = self.prior.log_prob(draws).to(q.dtype)
        log_lik = -0.5 * n * (_LOG_2PI + draws.log()) - 0.5 * logdet - 0.5 * q[None, :] / draws
        if self.proposal == "prior":
            log_prop = log_prior
        else:
            ig = torch.distributions.InverseGamma(0.5 * n, qh[None, :].expand_as(draws), validate_args=False)
            log_ig = ig.log_prob(draws)
            log_prop = torch.logaddexp(log_prior, log_ig) - math.log(2)
        log_w = log_prior + log_lik - log_prop
        log_w = torch.where(torch.isnan(log_w), torch.full_like(log_w, -math.inf), log_w)
        return draws, log_w

    def _weights(self, X, Y, warn: bool):
        q, logdet, L, alpha, jitter = quadratic_form_and_logdet(self.covariance(X), Y, warn=warn)
        draws, log_w = self._draws_and_log_weights(X.shape[0], q, logdet)
        if not bool(torch.isfinite(log_w).any(0).all()):
            raise FloatingPointError(
                "All importance weights underflowed to zero: no draw of sigma^2 from the proposal "
                "gives the data a positive likelihood under the prior. Check that the prior on "
                "sigma^2 covers the scale of the (normalised) targets, or use proposal='adaptive'."
            )
        lml = (log_w.logsumexp(0) - math.log(draws.shape[0])).sum()
        return L, jitter, alpha, draws, log_w, lml

    def log_marginal_likelihood(self, X, Y, *, warn: bool = False) -> torch.Tensor:
        """Importance-sampling estimate of :math:`\\log p(Y)`, summed over outputs."""
        return self._weights(X, Y, warn)[-1]

    def posterior(self, X, Y, *, warn: bool = True) -> ScaleMixturePosterior:
        """Condition on ``(X, Y)``; warns :class:`~gpkern.exceptions.LowESSWarning` when the ESS
        of any output is below ``min_ess``."""
        with torch.no_grad():
            L, jitter, alpha, draws, log_w, lml = self._weights(X, Y, warn)
            scale = WeightedScale(draws, log_w - log_w.logsumexp(0, keepdim=True))
        threshold = 0.05 * draws.shape[0] if self.min_ess is None else self.min_ess
        ess = scale.ess
        if warn and bool((ess < threshold).any()):
            warnings.warn(
                f"Effective sample size of the importance sampler over sigma^2 is "
                f"{float(ess.min()):.1f} of {draws.shape[0]} draws (below {threshold:.1f}); "
                "predictions may be unreliable. Increase n_samples or use proposal='adaptive'.",
                LowESSWarning,
                stacklevel=2,
            )
        gaussian = ExactPosterior(self.kernel, X, L, alpha, float(self.noise.detach()), jitter, math.nan)
        return ScaleMixturePosterior(gaussian, scale, float(lml))


def _gamma_icdf(shape: torch.Tensor, u: torch.Tensor, n_iter: int = 60) -> torch.Tensor:
    """Quantiles of Gamma(shape, 1) at ``u`` by bisection on the regularised incomplete gamma."""
    lo = torch.zeros_like(u)
    hi = torch.full_like(u, float(shape) + 40.0 * math.sqrt(float(shape)) + 40.0)
    for _ in range(n_iter):
        mid = 0.5 * (lo + hi)
        below = torch.special.gammainc(shape, mid) < u
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    return (0.5 * (lo + hi)).clamp_min(1e-300)
