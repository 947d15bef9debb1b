r"""Primitive kernel formulas: functions of operands and hyperparameter slices.

Each works on LazyTensors and on torch tensors alike (see :mod:`gpkern.linalg.keops.operands`):
squared distances, RBF, Matérn, rational-quadratic, periodic and spectral-mixture kernels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from gpkern.linalg.keops.operands import _dim_vec, _inner_dim, _sqrt, _whole

__all__ = [
    "sq_dist",
    "rbf",
    "matern",
    "rational_quadratic",
    "periodic",
    "spectral_mixture",
    "spectral_mixture_product",
    "spectral_mixture_sum",
]


def sq_dist(xi, xj, inv_lengthscale):
    r"""Scaled squared distance :math:`r^2 = \sum_d (x_d - x'_d)^2 / \ell_d^2`.

    Parameters
    ----------
    xi, xj : LazyTensor or torch.Tensor
        Operands of shape ``(n, 1, d)`` and ``(1, m, d)`` (or paired ``(n, d)``, ``(n, d)``).
    inv_lengthscale : LazyTensor, torch.Tensor or None
        :math:`1/\ell`, of size ``d`` or 1; ``None`` when the inputs are already scaled.

    Returns
    -------
    r2 : LazyTensor or torch.Tensor of shape ``(n, m)`` (or ``(n,)`` when paired)
    """
    diff = _whole(xi) - _whole(xj)
    return ((diff if inv_lengthscale is None else diff * inv_lengthscale) ** 2).sum(-1)


def rbf(r2):
    r"""Squared-exponential kernel :math:`k = \exp(-r^2/2)` of a scaled squared distance."""
    return (r2 * -0.5).exp()


def matern(r2, nu: float):
    r"""Matérn kernel of a scaled squared distance, :math:`\nu \in \{1/2, 3/2, 5/2\}`.

    .. math::

        k_{1/2} = e^{-r}, \quad k_{3/2} = (1 + \sqrt3 r) e^{-\sqrt3 r}, \quad
        k_{5/2} = (1 + \sqrt5 r + \tfrac53 r^2) e^{-\sqrt5 r}
    """
    # Written as GPyTorch's KeOps Matern writes it (constant factors in front, sqrt(r2 + 1e-20)):
    # KeOps compiles this arrangement 1.2 times faster on a CPU than s = sqrt(5) r reused.
    r = _sqrt(r2 + 1e-20)
    if nu == 0.5:
        return (-1.0 * r).exp()
    if nu == 1.5:
        return (math.sqrt(3.0) * r + 1) * (-math.sqrt(3.0) * r).exp()
    if nu == 2.5:
        return (math.sqrt(5.0) * r + (1 + 5.0 / 3.0 * r2)) * (-math.sqrt(5.0) * r).exp()
    raise ValueError(f"nu must be 0.5, 1.5 or 2.5, got {nu!r}.")


def rational_quadratic(r2, alpha):
    r"""Rational-quadratic kernel :math:`k = (1 + r^2 / (2\alpha))^{-\alpha}`.

    Written as :math:`\exp(-\alpha \log(1 + r^2/(2\alpha)))` so that :math:`\alpha` may be a
    KeOps parameter.
    """
    return (((r2 / (alpha * 2.0)) + 1.0).log() * -alpha).exp()


def periodic(xi, xj, pi_over_period, inv_lengthscale):
    r"""GPyTorch's periodic kernel.

    .. math::

        k = \exp\Big(-2 \sum_d \sin^2\big(\pi (x_d - x'_d) / p_d\big) / \ell_d\Big)

    Parameters
    ----------
    xi, xj : LazyTensor or torch.Tensor
        Operands, see :func:`sq_dist`.
    pi_over_period : LazyTensor, torch.Tensor or None
        :math:`\pi / p` (size ``d`` or 1); ``None`` when the inputs are already scaled by it.
    inv_lengthscale : LazyTensor or torch.Tensor
        :math:`1 / \ell` (size ``d`` or 1; GPyTorch divides by :math:`\ell`, not :math:`\ell^2`).
    """
    diff = _whole(xi) - _whole(xj)
    s = (diff if pi_over_period is None else diff * pi_over_period).sin()
    return ((s * s * inv_lengthscale).sum(-1) * -2.0).exp()



def _envelope(tau_d, rate, kind: str):
    if kind == "gaussian":  # exp(-rate tau^2)
        return (tau_d * tau_d * rate * -1.0).exp()
    if kind == "matern52":  # (1 + a + a^2/3) exp(-a), a = sqrt5 |tau| rate
        a = tau_d.abs() * rate * math.sqrt(5.0)
        return (a + a * a * (1.0 / 3.0) + 1.0) * (-a).exp()
    raise ValueError(f"envelope must be 'gaussian' or 'matern52', got {kind!r}.")


def spectral_mixture_product(
    xi, xj, weights: Sequence, rates: Sequence, freqs: Sequence, envelope: str = "gaussian"
):
    r"""Product over dimensions of one-dimensional spectral mixtures.

    .. math::

        k(x, x') = \prod_{d=1}^{D} \sum_{q=1}^{Q} w_{dq}\, e(\tau_d; \ell_{dq})
            \cos(2\pi \mu_{dq} \tau_d), \qquad \tau = x - x',

    with the Gaussian envelope :math:`e = \exp(-\ell \tau^2)` (Gaussian spectral density) or the
    Matérn-5/2 envelope :math:`e = (1 + \sqrt5|\tau|\ell + \tfrac53 \tau^2\ell^2)
    e^{-\sqrt5|\tau|\ell}` (Student-t spectral density).  The :math:`Q` components of each
    dimension are one KeOps vector, so the formula grows with :math:`D`, not with :math:`QD`.
    GPyTorch's ``SpectralMixtureKernel`` is the Gaussian case with :math:`w_{dq} = w_q`,
    :math:`\ell_{dq} = 2\pi^2 s_{qd}^2`; gpkern's ``GaussianSpectralMixtureKernel`` and
    ``StudentTSpectralMixtureKernel`` (issue 4) are the two envelopes with their own parameters.

    Parameters
    ----------
    xi, xj : LazyTensor or torch.Tensor
        Operands, see :func:`sq_dist`.
    weights, rates, freqs : sequences of length D (or 1: shared by every dimension)
        Per dimension, the Q-vectors :math:`w_{d\cdot}`, :math:`\ell_{d\cdot}`, :math:`\mu_{d\cdot}`.
    envelope : {"gaussian", "matern52"}, default="gaussian"
    """
    tau = _whole(xi) - _whole(xj)
    total = None
    for d in range(_inner_dim(tau)):
        j = d if len(weights) > 1 else 0
        t = _dim_vec(tau, d)
        comp = (
            _envelope(t, rates[j], envelope) * (t * freqs[j] * (2.0 * math.pi)).cos() * weights[j]
        )
        term = comp.sum(-1)
        total = term if total is None else total * term
    return total


def spectral_mixture_sum(xi, xj, weights, rates: Sequence, freqs: Sequence):
    r"""Sum over components of products over dimensions (Wilson & Adams; the GSMP kernel).

    .. math::

        k(x, x') = \sum_{a=1}^{A} \theta_a \prod_{p=1}^{P}
            \exp(-\ell_{ap} \tau_p^2) \cos(2\pi \mu_{ap} \tau_p), \qquad \tau = x - x'.

    The GSMP kernel of Suwandi et al. (gpkern's ``GSMPKernel``, issue 8) has
    :math:`\ell_{ap} = 2\pi^2\sigma_{ap}^2` and learns only :math:`\theta \ge 0`.

    Parameters
    ----------
    xi, xj : LazyTensor or torch.Tensor
        Operands, see :func:`sq_dist`.
    weights : LazyTensor or torch.Tensor
        :math:`\theta`, an A-vector.
    rates, freqs : sequences of length P
        Per dimension, the A-vectors :math:`\ell_{\cdot p}` and :math:`\mu_{\cdot p}`.
    """
    tau = _whole(xi) - _whole(xj)
    prod = None
    for p in range(len(rates)):
        t = _dim_vec(tau, p)
        f = _envelope(t, rates[p], "gaussian") * (t * freqs[p] * (2.0 * math.pi)).cos()
        prod = f if prod is None else prod * f
    return (prod * weights).sum(-1)


def spectral_mixture(xi, xj, weights: Sequence, scales: Sequence, means: Sequence, n_dims: int):
    r"""GPyTorch's spectral mixture kernel (Wilson & Adams, 2013), as GPyTorch computes it.

    GPyTorch sums the mixture in each dimension and multiplies over dimensions:

    .. math::

        k(\tau) = \prod_{d=1}^D \sum_{q=1}^Q w_q \exp(-2\pi^2 \tau_d^2 s_{qd}^2)
            \cos(2\pi \tau_d \mu_{qd}), \qquad \tau = x - x'

    (for :math:`D = 1` this is the original spectral mixture).  A thin wrapper of
    :func:`spectral_mixture_product`.

    Parameters
    ----------
    xi, xj : LazyTensor or torch.Tensor
        Operands, see :func:`sq_dist`.
    weights : LazyTensor or torch.Tensor
        The Q-vector :math:`w`.
    scales, means : sequences of length ``n_dims``
        Per dimension, the Q-vectors :math:`2\pi^2 s_{\cdot d}^2` (rates) and :math:`\mu_{\cdot d}`.
    n_dims : int
    """
    return spectral_mixture_product(
        xi, xj, [weights] * n_dims, list(scales), list(means), "gaussian"
    )
