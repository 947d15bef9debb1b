r"""Spectral mixture kernels with Gaussian and Student-t (Matérn-5/2) envelopes.

Each input dimension gets a one-dimensional stationary kernel whose power spectrum is a mixture
of :math:`Q` bumps; by the Wiener-Khinchin theorem the covariance is

.. math::

    k(d) = \sum_{q=1}^{Q} w_q \, e_q(d) \cos(2\pi \mu_q d),

with the envelope either Gaussian, :math:`e_q(d) = \exp(-\ell_q d^2)` (the spectral mixture
kernel: Gaussian spectral bumps), or Matérn-5/2,
:math:`e_q(d) = (1 + \sqrt5 |d| \ell_q + \tfrac53 d^2 \ell_q^2) \exp(-\sqrt5 |d| \ell_q)`
(Student-t spectral bumps). Over several dimensions the kernel is the product of the
per-dimension kernels, which is what makes grid Gram matrices Kronecker products.

Derivatives :math:`k^{(m)}(d)` up to order 4 are closed-form (Leibniz rule on envelope and
cosine; Hermite polynomials for the Gaussian envelope, a polynomial recursion for the Matérn
one); :func:`spectral_mixture_1d` returns them. :func:`spectral_mixture_lags` is its fused
twin for one vector of lags, with a closed-form backward pass: the PDE solver builds its
derivative kernel matrices from it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import gpytorch
import torch
from gpytorch.constraints import Positive

from gpkern.linalg.keops.formula import SpectralProductFormula
from gpkern.linalg.keops.registry import register_formula

__all__ = [
    "ENVELOPES",
    "spectral_mixture_1d",
    "spectral_mixture_lags",
    "GaussianSpectralMixtureKernel",
    "StudentTSpectralMixtureKernel",
]

#: Envelope names accepted by :func:`spectral_mixture_1d`.
ENVELOPES = ("gaussian", "matern52")
MAX_ORDER = 4
_SQRT5 = math.sqrt(5.0)


def _gaussian_envelope_derivatives(
    d: torch.Tensor,  # (..., 1)
    scale: torch.Tensor,  # (..., Q)
    order: int,
) -> list[torch.Tensor]:  # order + 1 tensors of shape (..., Q)
    # e(d) = exp(-l d^2) = exp(-t^2) with t = sqrt(l) d, so
    # e^(n)(d) = (-sqrt(l))^n H_n(t) e(d) with physicists' Hermite polynomials H_n.
    root = scale.sqrt()
    t = root * d
    env = torch.exp(-t * t)
    hermite = [torch.ones_like(t), 2.0 * t]
    for n in range(1, order):
        hermite.append(2.0 * t * hermite[n] - 2.0 * n * hermite[n - 1])
    return [(-root) ** n * hermite[n] * env for n in range(order + 1)]


def _matern52_envelope_derivatives(
    d: torch.Tensor,  # (..., 1)
    scale: torch.Tensor,  # (..., Q)
    order: int,
) -> list[torch.Tensor]:  # order + 1 tensors of shape (..., Q)
    # e(d) = p_0(r) exp(-a r) with r = |d|, a = sqrt(5) l, p_0 = 1 + a r + a^2 r^2 / 3;
    # e^(n)(d) = sign(d)^n p_n(r) exp(-a r) with p_{n+1} = p_n' - a p_n (p_n stays quadratic).
    # p_1(0) = p_3(0) = 0, so the odd derivatives are continuous through d = 0 up to order 4.
    a = _SQRT5 * scale
    r = d.abs()
    sign = torch.sign(d)
    decay = torch.exp(-a * r)
    c0, c1, c2 = torch.ones_like(a), a, a * a / 3.0
    out = []
    for n in range(order + 1):
        poly = c0 + r * (c1 + r * c2)
        out.append((sign**n if n % 2 else 1.0) * poly * decay)
        c0, c1, c2 = c1 - a * c0, 2.0 * c2 - a * c1, -a * c2
    return out


def spectral_mixture_1d(
    d: torch.Tensor,  # (...)
    weights: torch.Tensor,  # (..., Q), broadcastable against d[..., None]
    frequencies: torch.Tensor,  # (..., Q)
    scales: torch.Tensor,  # (..., Q)
    *,
    envelope: str = "gaussian",
    orders: Sequence[int] = (0,),
) -> list[torch.Tensor]:  # one tensor of shape (...) per order
    r"""Closed-form derivatives of a one-dimensional spectral mixture kernel.

    .. math::

        k^{(m)}(d) = \sum_{q=1}^{Q} w_q \sum_{i=0}^{m} \binom{m}{i}\, e_q^{(i)}(d)\,
            \omega_q^{m-i} \cos\!\big(\omega_q d + (m - i)\tfrac{\pi}{2}\big),
        \qquad \omega_q = 2\pi\mu_q .

    For a stationary kernel :math:`\partial_x^a \partial_{x'}^b k(x - x') = (-1)^b k^{(a+b)}(x - x')`.

    Parameters
    ----------
    d : torch.Tensor of shape (...)
        Differences :math:`x - x'`.
    weights, frequencies, scales : torch.Tensor of shape (..., Q)
        Mixture weights :math:`w_q \ge 0`, frequencies :math:`\mu_q` (cycles per unit) and
        envelope rates :math:`\ell_q > 0`; broadcast against ``d[..., None]``.
    envelope : {"gaussian", "matern52"}, default="gaussian"
        :math:`\exp(-\ell d^2)` or the Matérn-5/2 form (a Student-t spectral density).
    orders : sequence of int, default=(0,)
        Derivative orders wanted, each in ``0..4``.

    Returns
    -------
    list of torch.Tensor of shape (...)
        :math:`k^{(m)}(d)` for each ``m`` in ``orders``.

    Examples
    --------
    >>> import torch
    >>> from gpkern.kernels.spectral import spectral_mixture_1d
    >>> w, mu, ls = torch.ones(1), torch.zeros(1), torch.ones(1)
    >>> k, k2 = spectral_mixture_1d(torch.tensor([0.0]), w, mu, ls, orders=(0, 2))
    >>> float(k), float(k2)  # exp(-d^2) and its second derivative at 0
    (1.0, -2.0)
    """
    if envelope not in ENVELOPES:
        raise ValueError(f"envelope must be one of {ENVELOPES}, got {envelope!r}.")
    orders = [int(m) for m in orders]
    if any(m < 0 or m > MAX_ORDER for m in orders):
        raise ValueError(f"derivative orders must lie in 0..{MAX_ORDER}, got {orders}.")
    top = max(orders)
    dq = d.unsqueeze(-1)
    env_fn = _gaussian_envelope_derivatives if envelope == "gaussian" else _matern52_envelope_derivatives
    env = env_fn(dq, scales, top)
    omega = 2.0 * math.pi * frequencies
    phase = omega * dq
    cos, sin = torch.cos(phase), torch.sin(phase)
    # cos(phi + j pi/2) cycles through cos, -sin, -cos, sin.
    trig = [cos, -sin, -cos, sin]
    omega_pow = [torch.ones_like(omega)]
    for _ in range(top):
        omega_pow.append(omega_pow[-1] * omega)
    out = []
    for m in orders:
        term = 0.0
        for i in range(m + 1):
            term = term + math.comb(m, i) * env[i] * omega_pow[m - i] * trig[(m - i) % 4]
        out.append((weights * term).sum(-1))
    return out


def _envelope_stack(
    d: torch.Tensor,  # (n, 1)
    scale: torch.Tensor,  # (Q,)
    envelope: str,
    top: int,
) -> torch.Tensor:  # (top + 1, n, Q): e^(i)(d) for i = 0..top
    if envelope == "gaussian":
        return torch.stack(_gaussian_envelope_derivatives(d, scale, top))
    # Matérn: the polynomial coefficients are (Q,) vectors, so build them first and evaluate
    # all orders in one broadcast.
    a = _SQRT5 * scale
    coef = [[torch.ones_like(a), a, a * a / 3.0]]
    for _ in range(top):
        c0, c1, c2 = coef[-1]
        coef.append([c1 - a * c0, 2.0 * c2 - a * c1, -a * c2])
    c0, c1, c2 = (torch.stack(c)[:, None, :] for c in zip(*coef))  # (top + 1, 1, Q)
    r = d.abs()
    env = (c0 + r * (c1 + r * c2)) * torch.exp(-a * r)
    # odd orders carry sign(d)^n (0 at d = 0, as in spectral_mixture_1d)
    env[1::2] *= torch.sign(d)
    return env


class _SpectralMixtureLags(torch.autograd.Function):
    r"""All orders of :math:`k^{(m)}` at a vector of lags; backward in closed form.

    With :math:`E_i = e^{(i)}(d)`, :math:`T_p = \cos(\omega d + p\pi/2)` and
    :math:`f_m = \sum_i \binom{m}{i} E_i \omega^{m-i} T_{m-i}` (so :math:`k^{(m)} = \sum_q w_q f_{mq}`),

    .. math::

        \partial_\omega f_m = \sum_i \binom{m}{i} E_i \big(p\,\omega^{p-1} T_p
            + d\,\omega^{p} T_{p+1}\big),\qquad
        \partial_\ell f_m = \sum_i \binom{m}{i} \frac{i E_i + d E_{i+1}}{\kappa \ell}\,
            \omega^{p} T_p \quad (p = m - i),

    the second because :math:`e(d; \ell) = h(\ell^{1/\kappa} d)` is a scale family
    (:math:`\kappa = 1` Matérn, :math:`2` Gaussian). Autograd would record ~100 small
    elementwise nodes here; this records one.
    """

    @staticmethod
    def forward(ctx, d, weights, frequencies, scales, envelope, orders):
        top = max(orders)
        dq = d[:, None]
        E = _envelope_stack(dq, scales, envelope, top + 1)  # (top + 2, n, Q)
        omega = 2.0 * math.pi * frequencies
        phase = omega * dq
        cos, sin = torch.cos(phase), torch.sin(phase)
        trig = [cos, -sin, -cos, sin]
        products: dict = {}

        def prod(i: int, p: int) -> torch.Tensor:  # E_i * T_p, shared by forward and backward
            if (i, p) not in products:
                products[(i, p)] = E[i] * trig[p % 4]
            return products[(i, p)]

        opow = [torch.ones_like(omega)]
        for _ in range(top + 1):
            opow.append(opow[-1] * omega)
        out = []
        for m in orders:
            coef = torch.stack([math.comb(m, i) * opow[m - i] for i in range(m + 1)])  # (m + 1, Q)
            f = sum(prod(i, m - i) * coef[i] for i in range(m + 1))
            out.append(f @ weights)
        ctx.save_for_backward(d, weights, omega, scales)
        ctx.cache = (prod, opow, envelope, orders)
        return torch.stack(out)

    @staticmethod
    def backward(ctx, G):  # (M, n)
        d, weights, omega, scales = ctx.saved_tensors
        prod, opow, envelope, orders = ctx.cache
        kappa = 2.0 if envelope == "gaussian" else 1.0
        gw = torch.zeros_like(weights)
        go = torch.zeros_like(weights)
        gl = torch.zeros_like(weights)
        for g, m in zip(G, orders):
            gd = g * d
            for i in range(m + 1):
                p, c = m - i, math.comb(m, i)
                s1 = g @ prod(i, p)
                s2 = gd @ prod(i, p + 1)
                s3 = gd @ prod(i + 1, p)
                gw = gw + c * opow[p] * s1
                go = go + c * ((p * opow[p - 1] * s1 if p else 0.0) + opow[p] * s2)
                gl = gl + c * opow[p] * (i * s1 + s3)
        return None, gw, 2.0 * math.pi * weights * go, weights * gl / (kappa * scales), None, None


def spectral_mixture_lags(
    d: torch.Tensor,  # (n,)
    weights: torch.Tensor,  # (Q,)
    frequencies: torch.Tensor,  # (Q,)
    scales: torch.Tensor,  # (Q,)
    *,
    envelope: str = "gaussian",
    orders: Sequence[int] = (0,),
) -> torch.Tensor:  # (len(orders), n)
    r"""Closed-form kernel derivatives :math:`k^{(m)}(d)` at one vector of lags, fused.

    The same values as :func:`spectral_mixture_1d` for a 1-D ``d`` and ``(Q,)`` parameters,
    computed in one broadcast over components and orders, with a closed-form backward pass for
    the weights, frequencies and scales (scale-family and phase identities): one autograd node
    instead of about a hundred, which is what one optimisation step of the PDE solver costs at
    small grids. ``d`` is treated as a constant; if it requires a gradient this falls back to
    :func:`spectral_mixture_1d`.

    Parameters
    ----------
    d : torch.Tensor of shape (n,)
        Lags :math:`x - x'`.
    weights, frequencies, scales : torch.Tensor of shape (Q,)
        :math:`w_q`, :math:`\mu_q`, :math:`\ell_q` as in :func:`spectral_mixture_1d`.
    envelope : {"gaussian", "matern52"}, default="gaussian"
    orders : sequence of int, default=(0,)
        Derivative orders, each in ``0..4``.

    Returns
    -------
    torch.Tensor of shape (len(orders), n)
        Row ``r`` is :math:`k^{(m_r)}(d)`.

    Examples
    --------
    >>> import torch
    >>> from gpkern.kernels.spectral import spectral_mixture_lags
    >>> w, mu, ls = torch.ones(1), torch.zeros(1), torch.ones(1)
    >>> spectral_mixture_lags(torch.tensor([0.0]), w, mu, ls, orders=(0, 2)).flatten().tolist()
    [1.0, -2.0]
    """
    if envelope not in ENVELOPES:
        raise ValueError(f"envelope must be one of {ENVELOPES}, got {envelope!r}.")
    orders = tuple(int(m) for m in orders)
    if not orders or any(m < 0 or m > MAX_ORDER for m in orders):
        raise ValueError(f"derivative orders must lie in 0..{MAX_ORDER}, got {list(orders)}.")
    if d.dim() != 1 or any(p.dim() != 1 for p in (weights, frequencies, scales)):
        raise ValueError("spectral_mixture_lags takes a 1-D d and (Q,) parameters; use spectral_mixture_1d to broadcast.")
    if d.requires_grad:
        return torch.stack(spectral_mixture_1d(d, weights, frequencies, scales, envelope=envelope, orders=orders))
    return _SpectralMixtureLags.apply(d, weights, frequencies, scales, envelope, orders)


class _SpectralMixtureProductKernel(gpytorch.kernels.Kernel):
    _envelope = "gaussian"
    is_stationary = True
    has_lengthscale = False

    def __init__(
        self,
        num_mixtures: int = 30,
        *,
        ard_num_dims: int | None = None,
        max_frequency: float = 20.0,
        batch_shape: torch.Size | None = None,
        **kwargs,
    ) -> None:
        if int(num_mixtures) < 1:
            raise ValueError(f"num_mixtures must be a positive integer, got {num_mixtures}.")
        if not max_frequency >= 0:
            raise ValueError(f"max_frequency must be >= 0, got {max_frequency}.")
        batch_shape = torch.Size([]) if batch_shape is None else torch.Size(batch_shape)
        super().__init__(ard_num_dims=ard_num_dims, batch_shape=batch_shape, **kwargs)
        self.num_mixtures = int(num_mixtures)
        dims = 1 if ard_num_dims is None else int(ard_num_dims)
        shape = (*self.batch_shape, dims, self.num_mixtures)
        # The paper's initialisation: equal weights 1/Q, unit rates, frequencies on a uniform grid.
        self.register_parameter("raw_weights", torch.nn.Parameter(torch.full(shape, -math.log(self.num_mixtures))))
        self.register_parameter("raw_scales", torch.nn.Parameter(torch.zeros(shape)))
        freq = torch.linspace(0.0, 1.0, self.num_mixtures) * float(max_frequency)
        self.register_parameter("raw_frequencies", torch.nn.Parameter(freq.expand(shape).clone()))
        # Log-domain weights and rates: exp / log transforms, as in the paper.
        self.register_constraint("raw_weights", Positive(transform=torch.exp, inv_transform=torch.log))
        self.register_constraint("raw_scales", Positive(transform=torch.exp, inv_transform=torch.log))

    @property
    def weights(self) -> torch.Tensor:  # (*batch, dims, Q)
        return self.raw_weights_constraint.transform(self.raw_weights)

    @weights.setter
    def weights(self, value: torch.Tensor) -> None:
        value = torch.as_tensor(value, dtype=self.raw_weights.dtype).expand_as(self.raw_weights)
        self.initialize(raw_weights=self.raw_weights_constraint.inverse_transform(value))

    @property
    def scales(self) -> torch.Tensor:  # (*batch, dims, Q)
        return self.raw_scales_constraint.transform(self.raw_scales)

    @scales.setter
    def scales(self, value: torch.Tensor) -> None:
        value = torch.as_tensor(value, dtype=self.raw_scales.dtype).expand_as(self.raw_scales)
        self.initialize(raw_scales=self.raw_scales_constraint.inverse_transform(value))

    @property
    def frequencies(self) -> torch.Tensor:  # (*batch, dims, Q)
        return self.raw_frequencies

    @frequencies.setter
    def frequencies(self, value: torch.Tensor) -> None:
        value = torch.as_tensor(value, dtype=self.raw_frequencies.dtype).expand_as(self.raw_frequencies)
        self.initialize(raw_frequencies=value)

    def forward(
        self,
        x1: torch.Tensor,  # (*batch, n, D)
        x2: torch.Tensor,  # (*batch, m, D)
        diag: bool = False,
        last_dim_is_batch: bool = False,
        **params,
    ) -> torch.Tensor:  # (*batch, n, m) or (*batch, n); (*batch, D, ...) if last_dim_is_batch
        w, mu, ls = self.weights, self.frequencies, self.scales  # (*kernel_batch, dims, Q)
        if last_dim_is_batch:
            # Column j becomes batch member j, with mixture j (ARD) or the shared one.
            x1, x2 = x1.mT.unsqueeze(-1), x2.mT.unsqueeze(-1)
            w, mu, ls = (p.unsqueeze(-2) for p in (w, mu, ls))  # (*kernel_batch, dims, 1, Q)
        diff = x1 - x2 if diag else x1.unsqueeze(-2) - x2.unsqueeze(-3)  # (..., n[, m], D)
        # (*kernel_batch, dims, Q) -> (*kernel_batch, 1, [1,] dims, Q): the kernel's batch
        # dimensions line up with the inputs' trailing batch dimensions, as in GPyTorch.
        points = (1,) if diag else (1, 1)
        w, mu, ls = (p.reshape(*p.shape[:-2], *points, *p.shape[-2:]) for p in (w, mu, ls))
        (k,) = spectral_mixture_1d(diff, w, mu, ls, envelope=self._envelope, orders=(0,))
        return k.prod(-1)


class GaussianSpectralMixtureKernel(_SpectralMixtureProductKernel):
    r"""Product over dimensions of Gaussian spectral mixture kernels (GP-HM-GM).

    .. math::

        k(\mathbf x, \mathbf x') = \prod_{j=1}^{D} \sum_{q=1}^{Q} w_{jq}
            \exp\!\big(-\ell_{jq} d_j^2\big) \cos(2\pi\mu_{jq} d_j), \qquad
            d_j = x_j - x'_j .

    Its spectral density in each dimension is a mixture of Gaussians centred at
    :math:`\pm\mu_{jq}`. Weights and rates are stored in the log domain (``raw_weights`` is
    :math:`\log w`), so optimising them with no prior term is the Jeffreys-prior pruning of
    Fang et al. (2024).

    Parameters
    ----------
    num_mixtures : int, default=30
        Number of components :math:`Q`.
    ard_num_dims : int, optional
        Number of input dimensions with their own mixture; by default one mixture is shared by
        every dimension.
    max_frequency : float, default=20.0
        Initial frequencies are ``linspace(0, max_frequency, Q)`` (cycles per unit of input).
    batch_shape : torch.Size, optional
        Batch of independent kernels.
    **kwargs
        Passed to :class:`gpytorch.kernels.Kernel` (``active_dims``, ...).

    Attributes
    ----------
    weights, frequencies, scales : torch.Tensor of shape (\*batch_shape, dims, Q)
        :math:`w`, :math:`\mu`, :math:`\ell`; ``dims`` is ``ard_num_dims`` or 1.

    Examples
    --------
    >>> import torch
    >>> from gpkern.kernels import GaussianSpectralMixtureKernel
    >>> k = GaussianSpectralMixtureKernel(num_mixtures=4)
    >>> x = torch.rand(5, 2, dtype=torch.float64)
    >>> k(x).to_dense().shape
    torch.Size([5, 5])
    """

    _envelope = "gaussian"


class StudentTSpectralMixtureKernel(_SpectralMixtureProductKernel):
    r"""Product over dimensions of Student-t spectral mixture kernels (GP-HM-StM).

    .. math::

        k(\mathbf x, \mathbf x') = \prod_{j=1}^{D} \sum_{q=1}^{Q} w_{jq}
            \Big(1 + \sqrt5 |d_j| \ell_{jq} + \tfrac53 d_j^2 \ell_{jq}^2\Big)
            e^{-\sqrt5 |d_j| \ell_{jq}} \cos(2\pi\mu_{jq} d_j).

    Each component is a Matérn-5/2 kernel modulated by a cosine: its spectral density is a
    Student-t bump (heavier tails than the Gaussian one) at :math:`\pm\mu_{jq}`. The kernel is
    four times differentiable, enough for second-order PDE operators.

    Parameters
    ----------
    num_mixtures : int, default=30
        Number of components :math:`Q`.
    ard_num_dims : int, optional
        Number of input dimensions with their own mixture; by default one mixture is shared by
        every dimension.
    max_frequency : float, default=20.0
        Initial frequencies are ``linspace(0, max_frequency, Q)`` (cycles per unit of input).
    batch_shape : torch.Size, optional
        Batch of independent kernels.
    **kwargs
        Passed to :class:`gpytorch.kernels.Kernel` (``active_dims``, ...).

    Attributes
    ----------
    weights, frequencies, scales : torch.Tensor of shape (\*batch_shape, dims, Q)
        :math:`w`, :math:`\mu`, :math:`\ell`; ``dims`` is ``ard_num_dims`` or 1.

    Examples
    --------
    >>> import torch
    >>> from gpkern.kernels import StudentTSpectralMixtureKernel
    >>> k = StudentTSpectralMixtureKernel(num_mixtures=3, ard_num_dims=2)
    >>> k.weights.shape
    torch.Size([2, 3])
    """

    _envelope = "matern52"


register_formula(
    GaussianSpectralMixtureKernel, lambda kernel, d: SpectralProductFormula(kernel, "gaussian")
)
register_formula(
    StudentTSpectralMixtureKernel, lambda kernel, d: SpectralProductFormula(kernel, "matern52")
)
