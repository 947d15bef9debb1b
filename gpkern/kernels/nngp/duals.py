r"""Dual activations: the Gaussian expectations that make an infinite-width layer.

For a centred Gaussian pair

.. math::

    (u, v) \sim \mathcal{N}\Big(0, \begin{bmatrix} \Sigma_{11} & \Sigma_{12} \\
        \Sigma_{12} & \Sigma_{22} \end{bmatrix}\Big),

the *dual* of an activation :math:`\phi` is :math:`\mathbb{E}[\phi(u)\phi(v)]` and its
*derivative dual* is :math:`\dot\Sigma_{12} = \mathbb{E}[\phi'(u)\phi'(v)]`, which equals
:math:`\partial\,\mathbb{E}[\phi(u)\phi(v)] / \partial\Sigma_{12}` (Price's theorem). The NNGP
of a network applies the dual layer after layer, its NTK multiplies by the derivative dual.

Every function here takes ``(sigma11, sigma12, sigma22)`` as tensors that broadcast against
each other (full kernel matrices, their diagonals, spatial states) and returns the
broadcast shape. This module is the only place these formulas live: the NNGP layers, the
deep kernel machine's Gram maps, the hierarchical and infinite-depth kernels and the SNNK
layer call it; the KeOps formula of :mod:`gpkern.linalg.keops` keeps its own symbolic
arrangement and is tested against these functions.

The hard points are the pairs with correlation :math:`\rho = \pm 1` (a point with itself,
or with its negative), where :math:`\arccos` has an infinite derivative and loses half the
digits, and inputs of zero variance, where the correlation is :math:`0/0`. The arc-cosine
family goes through :func:`arccos_angle`, which is exact at :math:`\rho = \pm 1`, treats a
zero-variance input as orthogonal to everything, and keeps gradients finite at both.

Examples
--------
>>> import torch
>>> from gpkern.kernels.nngp import duals
>>> s = torch.tensor([[2.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
>>> d = s.diagonal()
>>> duals.abrelu_dual(d[:, None], s, d[None, :], 0.0, 1.0)  # ReLU
tensor([[1.0000, 0.6090],
        [0.6090, 1.0000]], dtype=torch.float64)
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "safe_sqrt",
    "arccos_angle",
    "arccos_kernel",
    "arccos_correlation",
    "abrelu_dual",
    "abrelu_dual_and_dot",
    "abrelu_dual_dot",
    "abrelu_dual_diag",
    "erf_dual",
    "erf_dual_dot",
    "erf_dual_diag",
    "gelu_dual",
    "gelu_dual_dot",
    "sine_dual",
    "sine_dual_dot",
]


def safe_sqrt(x: torch.Tensor) -> torch.Tensor:
    r""":math:`\sqrt{\max(x, 0)}` with a zero (not infinite) gradient at 0.

    Examples
    --------
    >>> import torch
    >>> safe_sqrt(torch.tensor([4.0, 0.0, -1.0]))
    tensor([2., 0., 0.])
    """
    pos = x > 0
    return torch.where(
        pos, torch.sqrt(torch.where(pos, x, torch.ones_like(x))), torch.zeros_like(x)
    )


def _needs_grad(*tensors) -> bool:
    return any(isinstance(x, torch.Tensor) and x.requires_grad for x in tensors)


def _positive(x) -> bool:
    return bool((torch.as_tensor(x) > 0).all())


def arccos_angle(sigma11, sigma12, sigma22) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Angle :math:`\theta = \arccos(\Sigma_{12}/\sqrt{\Sigma_{11}\Sigma_{22}})` and
    :math:`\sqrt{\Sigma_{11}\Sigma_{22} - \Sigma_{12}^2} = \sqrt{\Sigma_{11}\Sigma_{22}}\sin\theta`.

    .. math::

        \theta = \operatorname{atan2}\Big(\sqrt{\Sigma_{11}\Sigma_{22} - \Sigma_{12}^2},\;
            \Sigma_{12}\Big)

    ``atan2`` keeps full precision near :math:`|\rho| = 1` where ``arccos`` loses half the
    digits. Gaps :math:`\Sigma_{11}\Sigma_{22} - \Sigma_{12}^2` below
    :math:`64\,\epsilon_{\mathrm{mach}}\Sigma_{11}\Sigma_{22}` (rounding of a point paired with
    itself or its negative) are exactly zero, so :math:`\theta` is exactly :math:`0` or
    :math:`\pi` there, and negative gaps (a covariance that rounding made slightly indefinite)
    count as zero. A zero-variance input (:math:`\Sigma_{12} = 0` and a zero gap) is orthogonal
    to everything: :math:`\theta = \pi/2`. Gradients are finite everywhere; at the snapped
    points the root has zero gradient, which gives the one-sided derivatives of the
    arc-cosine kernels in :math:`\Sigma_{12}` (the infinite terms cancel analytically).

    Parameters
    ----------
    sigma11, sigma12, sigma22 : torch.Tensor or float
        Variances and covariance, broadcastable (``sigma12`` a tensor).

    Returns
    -------
    theta : torch.Tensor
        :math:`\theta \in [0, \pi]`, of the broadcast shape.
    root : torch.Tensor
        :math:`\sqrt{\max(\Sigma_{11}\Sigma_{22} - \Sigma_{12}^2, 0)}` (zero at snapped gaps).

    Examples
    --------
    >>> import torch
    >>> one = torch.tensor(1.0, dtype=torch.float64)
    >>> arccos_angle(one, -one, one)
    (tensor(3.1416, dtype=torch.float64), tensor(0., dtype=torch.float64))
    """
    sigma12 = torch.as_tensor(sigma12)
    prod = sigma11 * sigma22
    gap = prod - sigma12**2
    # Rounding leaves |rho| = 1 pairs (a point with itself) with a gap of order eps * prod, whose
    # square root would move theta by sqrt(eps); snap gaps at that level to exactly zero.
    tiny = 64 * torch.finfo(gap.dtype).eps
    snap = gap <= tiny * prod
    if not (torch.is_grad_enabled() and _needs_grad(sigma11, sigma12, sigma22)):
        # inference: the same values in place, without the gradient guards
        root = gap.clamp_min_(0).sqrt_().masked_fill_(snap, 0)
        theta = torch.atan2(root, sigma12)
        if not (_positive(sigma11) and _positive(sigma22)):
            theta.masked_fill_((root == 0) & (sigma12 == 0), math.pi / 2)
        return theta, root
    root = safe_sqrt(torch.where(snap, torch.zeros_like(gap), gap))
    # atan2(0, 0) (a zero-variance input) has a NaN gradient: treat it as orthogonal.
    zero = (root == 0) & (sigma12 == 0)
    x = torch.where(zero, torch.ones_like(sigma12), sigma12)
    theta = torch.where(zero, torch.full_like(root, math.pi / 2), torch.atan2(root, x))
    return theta, root


def arccos_kernel(sigma11, sigma12, sigma22, order: int = 1) -> torch.Tensor:
    r"""Arc-cosine kernel of Cho & Saul (2009) of degree ``order`` on a covariance.

    With :math:`\theta` from :func:`arccos_angle` and :math:`J_n` the angular parts

    .. math::

        J_0(\theta) &= \pi - \theta, \qquad
        J_1(\theta) = \sin\theta + (\pi - \theta)\cos\theta, \\
        J_2(\theta) &= 3\sin\theta\cos\theta + (\pi - \theta)(1 + 2\cos^2\theta),

    the kernel is

    .. math::

        k_n = \frac{1}{\pi}(\Sigma_{11}\Sigma_{22})^{n/2} J_n(\theta)
            = 2\,\mathbb{E}\big[\Theta(u)\Theta(v)\,u^n v^n\big],

    twice the dual of :math:`\phi(z) = \max(z, 0)^n` (:math:`\Theta` the step function). So
    :math:`k_1` is twice the ReLU dual and :math:`k_0` twice its derivative dual; in general
    :math:`\partial k_n / \partial\Sigma_{12} = n^2 k_{n-1}`. Written with
    :math:`\sqrt{\Sigma_{11}\Sigma_{22}}\sin\theta` and :math:`\Sigma_{12}` there is no
    division, so zero variances need no guard: :math:`k_1 = k_2 = 0` and :math:`k_0 = 1/2`.

    Parameters
    ----------
    sigma11, sigma12, sigma22 : torch.Tensor
        Variances and covariance, broadcastable.
    order : {0, 1, 2}, default=1
        Degree :math:`n`.

    Returns
    -------
    torch.Tensor
        :math:`k_n`, of the broadcast shape.

    Examples
    --------
    >>> import torch
    >>> s11, s22 = torch.tensor(1.0, dtype=torch.float64), torch.tensor(4.0, dtype=torch.float64)
    >>> arccos_kernel(s11, torch.tensor(0.0, dtype=torch.float64), s22, order=1)  # 2 / pi
    tensor(0.6366, dtype=torch.float64)
    """
    sigma12 = torch.as_tensor(sigma12)
    theta, root = arccos_angle(sigma11, sigma12, sigma22)
    rest = math.pi - theta
    if order == 0:
        return rest / math.pi
    if order == 1:
        return torch.addcmul(root, rest, sigma12) / math.pi
    if order == 2:
        return (3 * root * sigma12 + rest * (sigma11 * sigma22 + 2 * sigma12**2)) / math.pi
    raise ValueError(f"arc-cosine kernel order must be 0, 1 or 2, got {order!r}.")


def arccos_correlation(rho: torch.Tensor, order: int = 1) -> torch.Tensor:
    r"""The arc-cosine kernel at unit variances: :math:`\kappa_n(\rho) = J_n(\arccos\rho)/\pi`.

    .. math::

        \kappa_0(\rho) = \frac{\pi - \arccos\rho}{\pi}, \qquad
        \kappa_1(\rho) = \frac{\sqrt{1 - \rho^2} + (\pi - \arccos\rho)\,\rho}{\pi},

    the normalised dual of :math:`\sqrt 2\max(z, 0)` (:math:`\kappa_1(1) = 1`) and its
    derivative, :math:`\kappa_1' = \kappa_0`. Correlations are clamped to :math:`[-1, 1]`
    and snapped to :math:`\pm 1` within rounding (see :func:`arccos_angle`).

    Parameters
    ----------
    rho : torch.Tensor
        Correlations (cosines), any shape.
    order : {0, 1, 2}, default=1
        Degree :math:`n`.

    Returns
    -------
    torch.Tensor
        :math:`\kappa_n(\rho)`, the shape of ``rho``.

    Examples
    --------
    >>> import torch
    >>> arccos_correlation(torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64), order=0)
    tensor([0.0000, 0.5000, 1.0000], dtype=torch.float64)
    """
    return arccos_kernel(1.0, rho.clamp(-1.0, 1.0), 1.0, order)


def abrelu_dual_and_dot(
    sigma11, sigma12, sigma22, a: float, b: float
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Dual and derivative dual of :math:`\phi(z) = a\min(z, 0) + b\max(z, 0)`, together.

    With :math:`\theta` and :math:`\sqrt{\Sigma_{11}\Sigma_{22} - \Sigma_{12}^2}` from
    :func:`arccos_angle`,

    .. math::

        \mathbb{E}[\phi(u)\phi(v)] &= \frac{(a-b)^2}{2\pi}\sqrt{\Sigma_{11}\Sigma_{22}
            - \Sigma_{12}^2} + \dot\Sigma_{12}\,\Sigma_{12}
            = \frac{(a-b)^2}{2} k_1 + ab\,\Sigma_{12}, \\
        \dot\Sigma_{12} = \mathbb{E}[\phi'(u)\phi'(v)] &= \frac{a^2 + b^2}{2}
            - \frac{(a-b)^2\theta}{2\pi} = \frac{(a-b)^2}{2} k_0 + ab,

    with :math:`k_n` the arc-cosine kernels of :func:`arccos_kernel` (ReLU: :math:`a = 0,
    b = 1`; leaky ReLU: :math:`b = 1`). Without autograd the same formula runs in a few fused
    in-place passes (this map dominates the cost of a dense architecture); there the snapping
    of :func:`arccos_angle` is done by subtracting :math:`64\epsilon_{\mathrm{mach}}
    \Sigma_{11}\Sigma_{22}` from every gap, which moves other values by less than
    :math:`10^{-12}` relative.

    Parameters
    ----------
    sigma11, sigma12, sigma22 : torch.Tensor
        Variances and covariance, broadcastable.
    a, b : float
        Slopes for negative and positive inputs.

    Returns
    -------
    value : torch.Tensor
        :math:`\mathbb{E}[\phi(u)\phi(v)]`, of the broadcast shape.
    dot : torch.Tensor
        :math:`\dot\Sigma_{12}`, of the broadcast shape.

    Examples
    --------
    >>> import torch
    >>> one = torch.tensor(1.0, dtype=torch.float64)
    >>> abrelu_dual_and_dot(one, one, one, 0.0, 1.0)  # ReLU at rho = 1
    (tensor(0.5000, dtype=torch.float64), tensor(0.5000, dtype=torch.float64))
    """
    sigma12 = torch.as_tensor(sigma12)
    f = (a - b) ** 2 / (2 * math.pi)
    half = (a**2 + b**2) / 2
    if torch.is_grad_enabled() and _needs_grad(sigma11, sigma12, sigma22):
        theta, root = arccos_angle(sigma11, sigma12, sigma22)
        dot = half - f * theta
        return f * root + dot * sigma12, dot
    tiny = 64 * torch.finfo(sigma12.dtype).eps
    prod = sigma11 * sigma22
    root = torch.addcmul(prod.mul_(1 - tiny), sigma12, sigma12, value=-1).clamp_min_(0).sqrt_()
    theta = torch.atan2(root, sigma12)
    if not (bool((sigma11 > 0).all()) and bool((sigma22 > 0).all())):
        theta = torch.where(
            (root == 0) & (sigma12 == 0), torch.full_like(theta, math.pi / 2), theta
        )
    dot = theta.mul_(-f).add_(half)
    return torch.addcmul(root.mul_(f), dot, sigma12), dot


def abrelu_dual(sigma11, sigma12, sigma22, a: float, b: float) -> torch.Tensor:
    r"""Dual of the (ab)ReLU :math:`a\min(z, 0) + b\max(z, 0)`; see :func:`abrelu_dual_and_dot`.

    Examples
    --------
    >>> import torch
    >>> one = torch.tensor(1.0, dtype=torch.float64)
    >>> abrelu_dual(one, -one, one, 0.0, 1.0)  # ReLU at rho = -1
    tensor(0., dtype=torch.float64)
    """
    return abrelu_dual_and_dot(sigma11, sigma12, sigma22, a, b)[0]


def abrelu_dual_dot(sigma11, sigma12, sigma22, a: float, b: float) -> torch.Tensor:
    r"""Derivative dual of the (ab)ReLU: :math:`\frac{a^2 + b^2}{2} - \frac{(a-b)^2\theta}{2\pi}`.

    See :func:`abrelu_dual_and_dot`; :math:`\theta` from :func:`arccos_angle`.

    Examples
    --------
    >>> import torch
    >>> one = torch.tensor(1.0, dtype=torch.float64)
    >>> abrelu_dual_dot(one, torch.tensor(0.0, dtype=torch.float64), one, 0.0, 1.0)
    tensor(0.2500, dtype=torch.float64)
    """
    theta, _ = arccos_angle(sigma11, sigma12, sigma22)
    return (a**2 + b**2) / 2 - (a - b) ** 2 * theta / (2 * math.pi)


def abrelu_dual_diag(sigma11, a: float, b: float) -> torch.Tensor:
    r""":math:`\mathbb{E}[\phi(u)^2] = \frac{a^2 + b^2}{2}\Sigma_{11}` for the (ab)ReLU.

    Examples
    --------
    >>> import torch
    >>> abrelu_dual_diag(torch.tensor(2.0), 0.0, 1.0)
    tensor(1.)
    """
    return (a**2 + b**2) / 2 * sigma11


def erf_dual(
    sigma11, sigma12, sigma22, a: float = 1.0, b: float = 1.0, c: float = 0.0
) -> torch.Tensor:
    r"""Dual of :math:`\phi(z) = a\,\mathrm{erf}(bz) + c` (Williams, 1997): the arcsine kernel.

    .. math::

        \mathbb{E}[\phi(u)\phi(v)] = a^2\frac{2}{\pi}\arcsin\frac{2b^2\Sigma_{12}}
            {\sqrt{(1 + 2b^2\Sigma_{11})(1 + 2b^2\Sigma_{22})}} + c^2.

    The argument of :math:`\arcsin` stays strictly inside :math:`(-1, 1)` (the denominator
    exceeds :math:`2b^2\sqrt{\Sigma_{11}\Sigma_{22}}`), so :math:`\rho = \pm 1` and zero
    variances are regular points.

    Parameters
    ----------
    sigma11, sigma12, sigma22 : torch.Tensor
        Variances and covariance, broadcastable.
    a, b, c : float, default=(1, 1, 0)
        Output scale, input scale and output shift.

    Examples
    --------
    >>> import torch
    >>> one = torch.tensor(1.0, dtype=torch.float64)
    >>> erf_dual(one, one, one)  # (2 / pi) asin(2 / 3)
    tensor(0.4646, dtype=torch.float64)
    """
    b2 = b**2
    denom = torch.sqrt((1 + 2 * b2 * sigma11) * (1 + 2 * b2 * sigma22))
    ratio = (2 * b2 * sigma12 / denom).clamp(-1.0, 1.0)
    return a**2 * (2 / math.pi) * torch.asin(ratio) + c**2


def erf_dual_dot(sigma11, sigma12, sigma22, a: float = 1.0, b: float = 1.0) -> torch.Tensor:
    r"""Derivative dual of :math:`a\,\mathrm{erf}(bz) + c`.

    .. math::

        \mathbb{E}[\phi'(u)\phi'(v)] = \frac{4a^2b^2}{\pi}\Big[1 + 2b^2(\Sigma_{11} + \Sigma_{22})
            + 4b^4(\Sigma_{11}\Sigma_{22} - \Sigma_{12}^2)\Big]^{-1/2},

    the expanded form of :math:`[(1 + 2b^2\Sigma_{11})(1 + 2b^2\Sigma_{22}) -
    4b^4\Sigma_{12}^2]^{-1/2}`, which avoids cancellation at large variances (the gap is
    clamped at zero against rounding).

    Examples
    --------
    >>> import torch
    >>> one = torch.tensor(1.0, dtype=torch.float64)
    >>> erf_dual_dot(one, one, one)  # 4 / (pi sqrt(5))
    tensor(0.5694, dtype=torch.float64)
    """
    b2 = b**2
    gap = (sigma11 * sigma22 - sigma12**2).clamp_min(0)
    det = 1 + 2 * b2 * (sigma11 + sigma22) + 4 * b2**2 * gap
    return a**2 * b2 * (4 / math.pi) / torch.sqrt(det)


def erf_dual_diag(sigma11, a: float = 1.0, b: float = 1.0, c: float = 0.0) -> torch.Tensor:
    r"""Dual of :math:`a\,\mathrm{erf}(bz) + c` on the diagonal:
    :math:`a^2\frac{2}{\pi}\arcsin\frac{2b^2\Sigma_{11}}{1 + 2b^2\Sigma_{11}} + c^2`.

    Examples
    --------
    >>> import torch
    >>> erf_dual_diag(torch.tensor(1.0, dtype=torch.float64))
    tensor(0.4646, dtype=torch.float64)
    """
    b2 = b**2
    return a**2 * (2 / math.pi) * torch.asin(2 * b2 * sigma11 / (1 + 2 * b2 * sigma11)) + c**2


def _gelu_terms(sigma11, sigma12, sigma22):
    q = (1 + sigma11) * (1 + sigma22)
    # q - sigma12^2 expanded: no cancellation when the variances are large
    d2 = 1 + sigma11 + sigma22 + (sigma11 * sigma22 - sigma12**2).clamp_min(0)
    d = torch.sqrt(d2)
    return q, d2, d, torch.atan2(sigma12, d)


def gelu_dual(sigma11, sigma12, sigma22) -> torch.Tensor:
    r"""Dual of the exact GELU :math:`\phi(z) = z\,\Phi(z)` (:math:`\Phi` the normal CDF).

    With :math:`\Delta = \sqrt{(1 + \Sigma_{11})(1 + \Sigma_{22}) - \Sigma_{12}^2}`,
    :math:`P = \Sigma_{11}\Sigma_{22}` and :math:`\beta = \operatorname{atan2}(\Sigma_{12},
    \Delta)`,

    .. math::

        \mathbb{E}[\phi(u)\phi(v)] = \frac{\Sigma_{12}}{4} + \frac{1}{2\pi}\Big[
            \frac{\Sigma_{12}^2 + P\Delta^2}{(1 + \Sigma_{11})(1 + \Sigma_{22})\Delta}
            + \Sigma_{12}\beta\Big].

    :math:`\Delta \ge 1` for every valid covariance, so there is no singular point.

    Examples
    --------
    >>> import torch
    >>> zero = torch.tensor(0.0, dtype=torch.float64)
    >>> gelu_dual(zero, zero, zero)  # phi(0) = 0
    tensor(0., dtype=torch.float64)
    """
    q, d2, d, beta = _gelu_terms(sigma11, sigma12, sigma22)
    return sigma12 / 4 + ((sigma12**2 + sigma11 * sigma22 * d2) / (q * d) + sigma12 * beta) / (
        2 * math.pi
    )


def gelu_dual_dot(sigma11, sigma12, sigma22) -> torch.Tensor:
    r"""Derivative dual of the exact GELU, as
    :math:`\partial\,\mathbb{E}[\phi(u)\phi(v)]/\partial\Sigma_{12}`.

    With the notation of :func:`gelu_dual`,

    .. math::

        \dot\Sigma_{12} = \frac14 + \frac{\beta}{2\pi} + \frac{\Sigma_{12}}{2\pi\Delta}
            \Big[\frac{1}{\Delta^2} + \frac{1 - P}{(1 + \Sigma_{11})(1 + \Sigma_{22})} + 1\Big].

    Examples
    --------
    >>> import torch
    >>> zero = torch.tensor(0.0, dtype=torch.float64)
    >>> gelu_dual_dot(zero, zero, zero)  # Phi(0)^2
    tensor(0.2500, dtype=torch.float64)
    """
    q, d2, d, beta = _gelu_terms(sigma11, sigma12, sigma22)
    first = (1 / d2 + (1 - sigma11 * sigma22) / q + 1) * sigma12 / d / (2 * math.pi)
    return 0.25 + beta / (2 * math.pi) + first


def sine_dual(sigma11, sigma12, sigma22, w: float = 1.0) -> torch.Tensor:
    r"""Dual of :math:`\phi(z) = \sin(wz)`.

    .. math::

        \mathbb{E}[\sin(wu)\sin(wv)] = e^{-w^2(\Sigma_{11} + \Sigma_{22})/2}\sinh(w^2\Sigma_{12}),

    so at unit variances the normalised dual is :math:`\sinh(w^2\rho)/\sinh(w^2)`.

    Examples
    --------
    >>> import torch
    >>> one = torch.tensor(1.0, dtype=torch.float64)
    >>> sine_dual(one, one, one)  # (1 - exp(-2)) / 2
    tensor(0.4323, dtype=torch.float64)
    """
    w2 = w**2
    return torch.exp(-0.5 * w2 * (sigma11 + sigma22)) * torch.sinh(w2 * sigma12)


def sine_dual_dot(sigma11, sigma12, sigma22, w: float = 1.0) -> torch.Tensor:
    r"""Derivative dual of :math:`\sin(wz)`:
    :math:`w^2 e^{-w^2(\Sigma_{11} + \Sigma_{22})/2}\cosh(w^2\Sigma_{12})`.

    Examples
    --------
    >>> import torch
    >>> zero = torch.tensor(0.0, dtype=torch.float64)
    >>> sine_dual_dot(zero, zero, zero, w=2.0)  # (w cos 0)^2
    tensor(4., dtype=torch.float64)
    """
    w2 = w**2
    return w2 * torch.exp(-0.5 * w2 * (sigma11 + sigma22)) * torch.cosh(w2 * sigma12)
