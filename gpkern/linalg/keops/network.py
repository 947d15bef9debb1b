r"""The NNGP / NTK layer recursion of dense networks as a KeOps (or torch) formula.

The kernel of a fully connected network is a function of :math:`x \cdot x'`, :math:`|x|^2` and
:math:`|x'|^2` through the layer recursion (:func:`dense_network`); the per-point variances are
computed once per point (:func:`network_point_terms`) so a reduction only evaluates the pair part.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import gpytorch
import torch

from gpkern.linalg.keops.formula import KernelFormula
from gpkern.linalg.keops.operands import (
    _clamp,
    _elem,
    _inner_dim,
    _is_lazy,
    _slice,
    _split,
    _whole,
)
from gpkern.linalg.keops.registry import layer_translation, registered_layers

__all__ = [
    "ACTIVATIONS",
    "DenseNetworkFormula",
    "NNGPFormula",
    "dense_network",
    "layers_from_architecture",
    "network_point_terms",
    "n_point_terms",
]


#: Correlations above which an (ab)ReLU dual uses the series of :func:`_arccos_excess`.
_NEAR_ONE = 1.0 - 1e-5

#: Activation layer names of :func:`dense_network`.
ACTIVATIONS = ("relu", "abrelu", "leaky_relu", "erf")


def _share(expr, sub):
    """``expr`` with its repeated subformula ``sub`` evaluated once (KeOps ``Factorize``).

    A LazyTensor formula is a tree: a layer's correlation appears several times in the next
    layer's expression and would be recomputed (with all earlier layers) at every occurrence,
    which grows exponentially with depth. Torch tensors are already shared.
    """
    return expr.factorize(sub) if _is_lazy(expr) and _is_lazy(sub) else expr


def _one_minus_square(c):
    # (1 - c)(1 + c) is accurate near |c| = 1, where 1 - c * c cancels.
    return (1.0 - c) * (c + 1.0)


def _angle(cos):
    r""":math:`(\sin\vartheta, \vartheta)` for :math:`\cos\vartheta` = ``cos``, :math:`|c| < 1`.

    :math:`\sin\vartheta = \sqrt{(1 - c)(1 + c)}` (accurate near :math:`|c| = 1`) and
    :math:`\vartheta = \arccos c`: ``cos`` must lie strictly inside :math:`(-1, 1)`, which the
    per-point factors of :func:`network_point_terms` ensure without a per-pair clamp. (KeOps'
    ``atan2``, exact at :math:`c = \pm 1`, made a two-ReLU-layer reduction 1.7 times slower on
    CPU.)
    """
    return _one_minus_square(cos).sqrt(), cos.acos()


def _arccos_excess(cos):
    r""":math:`F = \sin\vartheta - \vartheta\cos\vartheta` for :math:`\cos\vartheta` near 1.

    With :math:`u = \sin^2(\vartheta/2) = (1 - c)/2`,
    :math:`F = u^{3/2}(8/3 + 4u/15 + 3u^2/35 + O(u^3))`, exact to double precision for
    :math:`u \le 10^{-5}`. Its symbolic derivative has no :math:`1/\sin\vartheta` terms, unlike
    that of :math:`\sin\vartheta - \vartheta c`: KeOps carries the gradient of a sum down each
    branch separately, so there the cancelling :math:`\pm 1/\sin\vartheta` terms of one ReLU
    layer are multiplied by those of the next before they meet, and two layers lose
    :math:`\epsilon/\sin^2\vartheta \approx 10^{-3}` at a diagonal pair.
    """
    u = (1.0 - cos) * 0.5
    return u.sqrt() * u * ((u * (3.0 / 35) + 4.0 / 15) * u + 8.0 / 3)


def _ifelse(cond, a, b):
    """``a`` where ``cond >= 0``, else ``b`` (a KeOps ``IfElse`` or ``torch.where``)."""
    return cond.ifelse(a, b) if _is_lazy(cond) else torch.where(cond >= 0, a, b)


def _arcsin(z):
    r""":math:`\arcsin z = \arctan(z / \sqrt{1 - z^2})` for :math:`|z| < 1` (see :func:`_angle`)."""
    return (z * _one_minus_square(z).rsqrt()).atan()


def _layer_params(layer: tuple) -> tuple:
    kind = layer[0]
    if kind == "relu":
        return 0.0, 1.0
    if kind == "leaky_relu":
        return float(layer[1]), 1.0
    if kind == "abrelu":
        return float(layer[1]), float(layer[2])
    if kind == "erf":
        return tuple(float(v) for v in layer[1:4]) if len(layer) == 4 else (1.0, 1.0, 0.0)
    raise ValueError(f"Unknown layer {layer!r}: use 'dense', {', '.join(map(repr, ACTIVATIONS))}.")


def _squared(v):
    return float(v) ** 2 if isinstance(v, (int, float)) else v * v


def n_point_terms(layers: Sequence[tuple]) -> int:
    """Number of per-point columns :func:`network_point_terms` returns: two per activation."""
    return 2 * sum(layer[0] in ACTIVATIONS for layer in layers)


def network_point_terms(
    x: torch.Tensor, layers: Sequence[tuple], n_features: int | None = None
) -> torch.Tensor:  # (..., d) -> (..., 2 * n_activations)
    r"""Per-point quantities of the layer recursion of :func:`dense_network`.

    Before each activation the pre-activation variance :math:`\Sigma_{11}(x)` depends on
    :math:`x` alone. For an (ab)ReLU the columns are :math:`s = \sqrt{\Sigma_{11}}` and
    :math:`\sqrt{1 - 16\epsilon}/s` (:math:`s = 0` and :math:`1/s = 1/\sqrt{\text{tiny}}` for a zero variance, which
    then has covariance and correlation 0 with every point, as in
    :func:`gpkern.kernels.nngp.duals.arccos_angle`); for ``erf`` they are :math:`1/\sqrt{D}` and
    :math:`D` with :math:`D = 1 + 2b^2\Sigma_{11}`.

    Parameters
    ----------
    x : torch.Tensor of shape (..., d)
    layers : sequence of tuples
        As :func:`dense_network` (dense standard deviations may be tensors).
    n_features : int, optional
        Input dimension (default ``x.shape[-1]``).

    Returns
    -------
    terms : torch.Tensor of shape (..., 2 * n_activations)
    """
    n_features = x.shape[-1] if n_features is None else n_features
    tiny = torch.finfo(x.dtype).tiny
    # sqrt(1 - 16 eps) keeps |cos| = |S12| r r' < 1 despite rounding (arccos stays finite and
    # differentiable); it moves theta at rho = +-1 from 0 to sqrt(32 eps) = 8e-8 (float64).
    shrink = math.sqrt(1.0 - 16 * torch.finfo(x.dtype).eps)
    k11 = (x * x).sum(-1) * (1.0 / n_features)
    cols = []
    for layer in layers:
        kind = layer[0]
        if kind == "dense":
            k11 = k11 * _squared(layer[1]) + _squared(layer[2])
        elif kind == "erf":
            ea, eb, ec = _layer_params(layer)
            b2 = eb * eb
            d11 = k11 * (2.0 * b2) + 1.0
            cols += [d11.rsqrt(), d11]
            k11 = ((k11 * (2.0 * b2)) / d11).asin() * (ea * ea * (2.0 / math.pi)) + ec * ec
        else:
            a, b = _layer_params(layer)
            # A zero variance gets s = 0 and a finite 1/s (zero value, correlation and gradient).
            pos = k11 > 0
            s = torch.where(pos, k11, 1.0).sqrt()
            cols += [torch.where(pos, s, 0.0), torch.where(pos, shrink / s, 1.0 / math.sqrt(tiny))]
            k11 = k11 * (0.5 * (a * a + b * b))
    if not cols:
        return x[..., :0]
    return torch.stack([c.expand(x.shape[:-1]) for c in cols], -1)


def dense_network(
    xi,
    xj,
    layers: Sequence[tuple],
    n_features: int | None = None,
    ntk: bool = False,
    eps: float = 1e-12,
    point_terms: tuple | None = None,
):
    r"""NNGP (or NTK) of a fully connected network through the layer recursion.

    The state is the covariance of pre-activations at :math:`x`, :math:`x'`:
    :math:`\Sigma_{12}` (a pair quantity) and :math:`\Sigma_{11}, \Sigma_{22}` (per point), starting
    from :math:`\Sigma_{12} = x \cdot x' / d`, :math:`\Sigma_{11} = |x|^2/d`,
    :math:`\Sigma_{22} = |x'|^2/d`.  A dense layer maps
    :math:`\Sigma \mapsto \sigma_w^2 \Sigma + \sigma_b^2` and
    :math:`\Theta \mapsto \sigma_w^2 \Theta + \Sigma_{\text{new}}`; an activation :math:`\phi`
    maps :math:`\Sigma \mapsto E[\phi(u)\phi(v)]`,
    :math:`\Theta \mapsto \Theta\, E[\phi'(u)\phi'(v)]` for
    :math:`(u, v) \sim \mathcal N(0, [[\Sigma_{11}, \Sigma_{12}], [\Sigma_{12}, \Sigma_{22}]])`.
    With :math:`\cos\vartheta = \Sigma_{12}/\sqrt{\Sigma_{11}\Sigma_{22}}` and
    :math:`\phi(z) = b\max(z, 0) + a\min(z, 0)` (ReLU: :math:`a=0, b=1`; leaky ReLU: :math:`b=1`):

    .. math::

        E[\phi\phi] = (a^2 + b^2) \tfrac{\sqrt{\Sigma_{11}\Sigma_{22}}}{2\pi}
            \big(\sin\vartheta + (\pi - \vartheta)\cos\vartheta\big)
            - 2ab \tfrac{\sqrt{\Sigma_{11}\Sigma_{22}}}{2\pi}(\sin\vartheta - \vartheta\cos\vartheta),
        \quad E[\phi'\phi'] = \frac{(a^2 + b^2)(\pi - \vartheta) + 2ab\,\vartheta}{2\pi}

    and for :math:`\phi = a \operatorname{erf}(b z) + c`, with :math:`D_i = 1 + 2b^2\Sigma_{ii}`:

    .. math::

        E[\phi\phi] = a^2 \tfrac{2}{\pi}\arcsin\frac{2b^2\Sigma_{12}}{\sqrt{D_1 D_2}} + c^2,
        \quad E[\phi'\phi'] = \frac{4 a^2 b^2}{\pi\sqrt{D_1 D_2 - 4b^4\Sigma_{12}^2}}.

    The (ab)ReLU dual is evaluated as
    :math:`\sqrt{\Sigma_{11}\Sigma_{22}}\big(\tfrac{(a - b)^2}{2\pi}\sin\vartheta +
    \cos\vartheta\, E[\phi'\phi']\big)`, which equals the expression above.

    Parameters
    ----------
    xi, xj : LazyTensor or torch.Tensor
        Operands, see :func:`sq_dist`.
    layers : sequence of tuples
        ``("dense", weight_std, bias_std)``, ``("relu",)``, ``("abrelu", a, b)``,
        ``("leaky_relu", slope)``, ``("erf",)`` or ``("erf", a, b, c)``, applied in order
        (neural-tangents conventions). Dense standard deviations may be floats or
        hyperparameter slices (tensors, LazyTensors).
    n_features : int, optional
        Input dimension :math:`d` (default: the operands' feature count).
    ntk : bool, default=False
        Return the NTK instead of the NNGP kernel.
    eps : float, default=1e-12
        The ``erf`` layers' arcsine argument is clamped to :math:`[-1 + \epsilon, 1 - \epsilon]`.
    point_terms : pair of LazyTensor or torch.Tensor, optional
        ``(p_i, p_j)`` from :func:`network_point_terms` at ``xi`` and ``xj`` (same layers): the
        variances :math:`\Sigma_{11}, \Sigma_{22}` depend on one point each, so they are
        computed once per point (:math:`O(nL)`) and the per-pair work is only the
        :math:`\Sigma_{12}` recursion. Required for LazyTensor operands; computed here for
        torch tensors when omitted.

    Returns
    -------
    k : LazyTensor or torch.Tensor of shape ``(n, m)`` (or ``(n,)`` when paired)
    """
    xi, xj = _whole(xi), _whole(xj)
    n_features = _inner_dim(xi) if n_features is None else n_features
    if point_terms is None:
        if _is_lazy(xi) or _is_lazy(xj):
            raise TypeError("dense_network on LazyTensor operands needs point_terms.")
        point_terms = tuple(network_point_terms(x, layers, n_features) for x in (xi, xj))
    pi, pj = point_terms
    k12 = (xi * xj).sum(-1) * (1.0 / n_features)
    col = 0
    theta_ntk = None
    for layer in layers:
        kind = layer[0]
        if kind == "dense":
            w2, b2 = _squared(layer[1]), _squared(layer[2])
            k12 = k12 * w2 + b2
            if ntk:
                theta_ntk = k12 if theta_ntk is None else theta_ntk * w2 + k12
        elif kind in ("relu", "abrelu", "leaky_relu"):
            a, b = _layer_params(layer)
            # sqrt(S11 S22) and cos = S12 / sqrt(S11 S22) from per-point columns: no per-pair
            # square root of the variances, division or clamp.
            norm = _elem(pi, col) * _elem(pj, col)
            cos = k12 * _elem(pi, col + 1) * _elem(pj, col + 1)
            col += 2
            sin, theta = _angle(cos)
            # E[phi' phi'] = (a^2 + b^2) / 2 - (a - b)^2 theta / (2 pi); theta appears once.
            dot = theta * (-((a - b) ** 2) / (2 * math.pi)) + 0.5 * (a * a + b * b)
            far = sin * ((a - b) ** 2 / (2 * math.pi)) + cos * dot
            # Close pairs (and every diagonal pair) take the series of sin - theta cos, whose
            # derivative stays accurate through further layers (see _arccos_excess).
            near = cos * (0.5 * (a * a + b * b)) + _arccos_excess(cos) * ((a - b) ** 2 / (2 * math.pi))
            new12 = _ifelse(cos - _NEAR_ONE, near, far) * norm
            if ntk and theta_ntk is not None:
                theta_ntk = theta_ntk * dot
            k12 = _share(new12, cos)
            if ntk and theta_ntk is not None:
                theta_ntk = _share(theta_ntk, cos)
        elif kind == "erf":
            ea, eb, ec = _layer_params(layer)
            b2, a2 = eb * eb, ea * ea * (2.0 / math.pi)
            d11, d22 = _elem(pi, col + 1), _elem(pj, col + 1)
            arg = _clamp(k12 * _elem(pi, col) * _elem(pj, col) * (2.0 * b2), -1.0 + eps, 1.0 - eps)
            col += 2
            new12 = _arcsin(arg) * a2 + ec * ec
            if ntk and theta_ntk is not None:
                det = d11 * d22 - k12 * k12 * (4.0 * b2 * b2)
                inv = det.rsqrt() if _is_lazy(det) else det.clamp_min(1e-30).rsqrt()
                theta_ntk = theta_ntk * inv * (ea * ea * b2 * 4.0 / math.pi)
            k12 = _share(new12, arg)
            if ntk and theta_ntk is not None:
                theta_ntk = _share(theta_ntk, arg)
        else:
            raise ValueError(
                f"Unknown layer {layer!r}: use 'dense', {', '.join(map(repr, ACTIVATIONS))}."
            )
    if ntk:
        return k12 if theta_ntk is None else theta_ntk
    return k12


# -----------------------------------------------------------------------------------------------
# Formula nodes of network kernels.
# -----------------------------------------------------------------------------------------------
class DenseNetworkFormula(KernelFormula):
    """Formula of :class:`gpkern.kernels.nngp.dense_network.DenseNetworkKernel` (no theta)."""

    def __init__(self, kernel: gpytorch.kernels.Kernel) -> None:
        self.kernel = kernel
        self.size = 0
        self.n_extra = n_point_terms(kernel.layers)

    def theta_parts(self):
        return []

    def extras(self, x, theta, start=0):
        return network_point_terms(x, self.kernel.layers, self.kernel.n_features)

    def extra_widths(self):
        return [1] * self.n_extra

    def evaluate(self, xi, xj, theta, start=0):
        k = self.kernel
        (xi, pi), (xj, pj) = _split(xi, self.n_extra), _split(xj, self.n_extra)
        return dense_network(xi, xj, k.layers, k.n_features, ntk=k.ntk, point_terms=(pi, pj))


def layers_from_architecture(arch, stds: Sequence[dict] | None = None) -> list[tuple]:
    r"""Layer tuples for :func:`dense_network` from a ``gpkern.kernels.nngp`` architecture.

    Accepts ``serial(...)`` of layers whose class registered a translation with
    :func:`~gpkern.linalg.keops.registry.register_layer` (``Dense``, ``Relu``, ``LeakyRelu``,
    ``ABRelu`` and ``Erf``: the dense architectures whose kernels are functions of
    :math:`x\cdot x'`, :math:`|x|^2`, :math:`|x'|^2`); ``stds`` (one ``{"W_std", "b_std"}`` per
    Dense layer) overrides the floats.

    Raises
    ------
    TypeError
        For any other layer (convolutions, pooling, LayerNorm, ...): use ``backend="dense"``.
    """
    out, dense_index = [], 0
    for layer in getattr(arch, "layers", (arch,)):
        translate = layer_translation(layer)
        if translate is None:
            raise TypeError(
                f"NNGP layer {type(layer).__name__} has no KeOps formula (supported: "
                f"{', '.join(registered_layers())}); use backend='dense'."
            )
        sd = stds[dense_index] if stds is not None and dense_index < len(stds) else {}
        out.append(translate(layer, sd))
        dense_index += out[-1][0] == "dense"
    return out


class NNGPFormula(KernelFormula):
    """``gpkern.kernels.nngp.NNGPKernel`` of a dense architecture; theta = (W_std, b_std) per Dense."""

    def __init__(self, kernel: gpytorch.kernels.Kernel) -> None:
        if getattr(kernel, "input_shape", None) is not None:
            raise TypeError(
                "NNGPKernel with image inputs has no KeOps formula; use backend='dense'."
            )
        layers = layers_from_architecture(kernel.arch)  # raises TypeError for unsupported layers
        self.kernel = kernel
        self.n_dense = sum(layer[0] == "dense" for layer in layers)
        self.size = 2 * self.n_dense
        self.n_extra = n_point_terms(layers)

    def theta_parts(self):
        parts = []
        for sd in self.kernel.stds():
            parts += [
                torch.as_tensor(sd["W_std"]).reshape(1),
                torch.as_tensor(sd["b_std"]).reshape(1),
            ]
        return parts

    def _layers(self, theta, start):
        stds = [
            {"W_std": _slice(theta, start + 2 * i, 1), "b_std": _slice(theta, start + 2 * i + 1, 1)}
            for i in range(self.n_dense)
        ]
        return layers_from_architecture(self.kernel.arch, stds)

    def extras(self, x, theta, start=0):
        return network_point_terms(x, self._layers(theta, start))

    def extra_widths(self):
        return [1] * self.n_extra

    def evaluate(self, xi, xj, theta, start=0):
        (xi, pi), (xj, pj) = _split(xi, self.n_extra), _split(xj, self.n_extra)
        layers = self._layers(theta, start)
        return dense_network(xi, xj, layers, ntk=self.kernel.kind == "ntk", point_terms=(pi, pj))
