r"""Convolution and pooling on spatial kernel states (infinite channels).

A spatial state holds, for images :math:`x, x'` of shape (C, H, W), the full covariance
:math:`\Sigma[p, q]` between position :math:`p = (h, w)` of :math:`x` and :math:`q` of
:math:`x'`, as a tensor (..., H, W, H, W). A convolution with infinitely many channels moves a
filter window along the *diagonal* of that covariance; pooling averages each position axis
independently. Every operation here is separable over the two image axes and is computed as a
sum of strided slices, never as a dense (HW)² × (HW)² operator.
"""

from __future__ import annotations

import numbers

import torch

from gpkern.kernels.nngp.layers import (
    KernelState,
    Layer,
    Variances,
    check_variance,
    spatial_diagonal,
)

__all__ = ["Conv", "AvgPool", "GlobalAvgPool", "Flatten", "conv_output_size"]


def _pair(name: str, value, minimum: int = 1) -> tuple[int, int]:
    vals = (value, value) if isinstance(value, numbers.Integral) and not isinstance(value, bool) else value
    try:
        vals = tuple(vals)
    except TypeError:
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}.") from None
    if len(vals) != 2 or any(isinstance(v, bool) or not isinstance(v, numbers.Integral) for v in vals):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}.")
    if any(v < minimum for v in vals):
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}.")
    return int(vals[0]), int(vals[1])


def _check_padding(padding: str) -> str:
    if padding not in ("same", "valid"):
        raise ValueError(f"padding must be 'same' or 'valid', got {padding!r}.")
    return padding


def conv_output_size(size: int, k: int, stride: int, padding: str) -> tuple[int, int, int]:
    """Output length and (low, high) zero padding of a window ``k`` sliding by ``stride``.

    ``"same"`` pads as TensorFlow / neural-tangents do (output ``ceil(size / stride)``, the
    extra zero at the high end); ``"valid"`` does not pad.

    Raises
    ------
    ValueError
        If the window is larger than the input with ``"valid"``.
    """
    if padding == "valid":
        if k > size:
            raise ValueError(
                f"window of size {k} is larger than the input size {size} with padding='valid'; "
                "use a smaller kernel_size/window, padding='same', or larger images."
            )
        return (size - k) // stride + 1, 0, 0
    out = -(-size // stride)
    total = max((out - 1) * stride + k - size, 0)
    return out, total // 2, total - total // 2


def _window_sum_axis(t: torch.Tensor, dim: int, k: int, stride: int, lo: int, hi: int, out: int):
    """Sum of ``k`` consecutive (zero-padded) entries along ``dim``, every ``stride``."""
    if lo or hi:
        pad = [0, 0] * (t.dim() - 1 - dim % t.dim()) + [lo, hi]
        t = torch.nn.functional.pad(t, pad)
    span = stride * (out - 1) + 1
    acc = t.narrow(dim, 0, span)[(slice(None),) * (dim % t.dim()) + (slice(None, None, stride),)]
    for d in range(1, k):
        acc = acc + t.narrow(dim, d, span)[(slice(None),) * (dim % t.dim()) + (slice(None, None, stride),)]
    return acc


def _diagonal_window_sum(t: torch.Tensor, dims: tuple[int, int], k: int, stride: int, padding: str):
    """:math:`\\sum_{\\delta<k} T[\\ldots, i s + \\delta, \\ldots, j s + \\delta, \\ldots]` over two axes."""
    size = t.shape[dims[0]]
    out, lo, hi = conv_output_size(size, k, stride, padding)
    nd = t.dim()
    d1, d2 = dims[0] % nd, dims[1] % nd
    if stride == 1 and out == size:
        # 'same' at stride 1: add shifted views in place, no padded copy
        acc = t.clone()
        for delta in range(k):
            sh = delta - lo
            if sh == 0:
                continue
            n = size - abs(sh)
            if n <= 0:
                continue
            src, dst = max(sh, 0), max(-sh, 0)
            acc.narrow(d1, dst, n).narrow(d2, dst, n).add_(t.narrow(d1, src, n).narrow(d2, src, n))
        return acc
    if lo or hi:
        pad = [0, 0] * nd
        for d in (d1, d2):
            pad[2 * (nd - 1 - d)] = lo
            pad[2 * (nd - 1 - d) + 1] = hi
        t = torch.nn.functional.pad(t, pad)
    span = stride * (out - 1) + 1

    def piece(delta: int) -> torch.Tensor:
        s = t.narrow(d1, delta, span).narrow(d2, delta, span)
        idx = [slice(None)] * nd
        idx[d1] = idx[d2] = slice(None, None, stride)
        return s[tuple(idx)]

    acc = piece(0).clone()
    for delta in range(1, k):
        acc.add_(piece(delta))
    return acc


def _check_spatial(state: KernelState, layer: Layer) -> None:
    if not state.is_spatial:
        raise ValueError(
            f"{layer!r} needs spatial (image) inputs of shape (n, C, H, W); it got a dense "
            "state (the input was 2-D, or a Flatten/GlobalAvgPool came before it)."
        )


class Conv(Layer):
    r"""2-D convolution with infinitely many channels, NTK parameterisation.

    For a window of :math:`k_h \times k_w` offsets :math:`\delta`,

    .. math::

        \Sigma'[p, q] = \frac{\sigma_w^2}{k_h k_w} \sum_{\delta} \Sigma[p s + \delta,
            q s + \delta] + \sigma_b^2, \qquad
        \Theta'[p, q] = \Sigma'[p, q] + \frac{\sigma_w^2}{k_h k_w}\sum_\delta
            \Theta[p s + \delta, q s + \delta],

    with zero padding (padded positions contribute zero; the divisor stays :math:`k_h k_w`).
    The finite layer is :math:`z'_p = \sigma_w/\sqrt{C k_h k_w} \sum_{c,\delta}
    W_{c\delta} x_{c, ps+\delta} + \sigma_b b` with standard normal weights.

    Parameters
    ----------
    kernel_size : int or (int, int)
    stride : int or (int, int), default=1
    padding : {"same", "valid"}, default="same"
    W_std : float, default=1.0
    b_std : float, default=0.0
    """

    requires = "spatial"

    def __init__(self, kernel_size, stride=1, padding: str = "same", W_std: float = 1.0, b_std: float = 0.0):
        self.kernel_size = _pair("kernel_size", kernel_size)
        self.stride = _pair("stride", stride)
        self.padding = _check_padding(padding)
        self.W_std = check_variance("W_std", W_std)
        self.b_std = check_variance("b_std", b_std)

    def __repr__(self) -> str:
        return (
            f"Conv(kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding!r}, "
            f"W_std={self.W_std}, b_std={self.b_std})"
        )

    def stds(self, variances: Variances) -> tuple:
        if variances is not None and self in variances:
            v = variances[self]
            return v.get("W_std", self.W_std), v.get("b_std", self.b_std)
        return self.W_std, self.b_std

    def output_shape(self, spatial: tuple[int, int]) -> tuple[int, int]:
        return tuple(
            conv_output_size(n, k, s, self.padding)[0] for n, k, s in zip(spatial, self.kernel_size, self.stride)
        )

    def _filter(self, t: torch.Tensor) -> torch.Tensor:  # (..., H, W, H, W), unnormalised
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        t = _diagonal_window_sum(t, (-4, -2), kh, sh, self.padding)
        return _diagonal_window_sum(t, (-3, -1), kw, sw, self.padding)

    def _affine(self, t: torch.Tensor, W, b) -> torch.Tensor:
        scale = W**2 / (self.kernel_size[0] * self.kernel_size[1])
        f = self._filter(t)
        if isinstance(scale, torch.Tensor) and scale.requires_grad or isinstance(b, torch.Tensor) and b.requires_grad:
            return scale * f + b**2
        return f.mul_(scale).add_(b**2)

    def apply(self, state: KernelState, variances: Variances = None) -> KernelState:
        _check_spatial(state, self)
        W, b = self.stds(variances)
        out = self.output_shape(state.spatial)
        cov12 = self._affine(state.cov12, W, b)
        ntk12 = None
        if state.ntk12 is not None:
            # the filter is linear: Theta' = W^2 filt(Sigma + Theta) / k + b^2, one pass
            ntk12 = self._affine(state.cov12 + state.ntk12, W, b)
        return state.replace(
            var1=self._affine(state.var1, W, b),
            var2=self._affine(state.var2, W, b),
            cov12=cov12,
            ntk12=ntk12,
            spatial=out,
        )


class AvgPool(Layer):
    r"""Average pooling over windows (per channel; no parameters).

    .. math::

        \Sigma'[p, q] = \frac{1}{(k_h k_w)^2}\sum_{\delta, \delta'}
            \Sigma[p s + \delta, q s + \delta']

    and the same map for :math:`\Theta`. With ``padding="same"`` padded positions count as
    zeros in the average (``count_include_pad=True`` in torch).

    Parameters
    ----------
    window : int or (int, int)
    stride : int or (int, int), optional
        Defaults to ``window``.
    padding : {"valid", "same"}, default="valid"
    """

    requires = "spatial"

    def __init__(self, window, stride=None, padding: str = "valid"):
        self.window = _pair("window", window)
        self.stride = self.window if stride is None else _pair("stride", stride)
        self.padding = _check_padding(padding)

    def __repr__(self) -> str:
        return f"AvgPool(window={self.window}, stride={self.stride}, padding={self.padding!r})"

    def output_shape(self, spatial: tuple[int, int]) -> tuple[int, int]:
        return tuple(conv_output_size(n, k, s, self.padding)[0] for n, k, s in zip(spatial, self.window, self.stride))

    def _pool(self, t: torch.Tensor, spatial: tuple[int, int]) -> torch.Tensor:
        for axis, dims in enumerate(((-4, -2), (-3, -1))):
            k, s = self.window[axis], self.stride[axis]
            out, lo, hi = conv_output_size(spatial[axis], k, s, self.padding)
            for d in dims:
                t = _window_sum_axis(t, d, k, s, lo, hi, out)
        return t / (self.window[0] * self.window[1]) ** 2

    def apply(self, state: KernelState, variances: Variances = None) -> KernelState:
        _check_spatial(state, self)
        out = self.output_shape(state.spatial)
        return state.map_all(lambda t: self._pool(t, state.spatial)).replace(spatial=out)


class GlobalAvgPool(Layer):
    r"""Average over all positions; the output state is dense.

    .. math::

        \Sigma' = \frac{1}{(HW)^2}\sum_{p, q}\Sigma[p, q], \qquad
        \Theta' = \frac{1}{(HW)^2}\sum_{p, q}\Theta[p, q].
    """

    requires = "spatial"

    def output_kind(self, kind):
        super().output_kind(kind)
        return "dense"

    def apply(self, state: KernelState, variances: Variances = None) -> KernelState:
        _check_spatial(state, self)
        return state.map_all(lambda t: t.mean((-4, -3, -2, -1))).replace(spatial=None)


class Flatten(Layer):
    r"""Flatten channels and positions into one feature axis; the output state is dense.

    Only matching positions correlate across the flattened features, and the next layer's
    fan-in is :math:`C H W`, so (NTK parameterisation)

    .. math::

        \Sigma' = \frac{1}{HW}\sum_{p}\Sigma[p, p], \qquad
        \Theta' = \frac{1}{HW}\sum_{p}\Theta[p, p].

    On a dense state it is the identity.
    """

    def output_kind(self, kind):
        return "dense"

    def apply(self, state: KernelState, variances: Variances = None) -> KernelState:
        if not state.is_spatial:
            return state
        return state.map_all(lambda t: spatial_diagonal(t).mean((-2, -1))).replace(spatial=None)
