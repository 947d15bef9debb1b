r"""Kernel states and the layers that map them: Dense and the activations.

An infinite-width network maps a pair of inputs :math:`(x, x')` to a *kernel state*: the
covariances :math:`\Sigma_{11} = \Sigma(x, x)`, :math:`\Sigma_{12} = \Sigma(x, x')`,
:math:`\Sigma_{22} = \Sigma(x', x')` of the pre-activations and, for the neural tangent
kernel, :math:`\Theta_{12} = \Theta(x, x')`. Every layer is a map of that state.

The maps of the dense layers are plain functions of :math:`(\Sigma_{11}, \Sigma_{12},
\Sigma_{22})` (and :math:`\Theta_{12}`), element-wise and broadcasting, so the same formulas
serve full kernel matrices, their diagonals, spatial states and symbolic back-ends (KeOps):

* :meth:`Dense.nngp` ``(sigma12) -> sigma12'`` and :meth:`Dense.ntk` ``(sigma12', theta12)``;
* :meth:`Activation.nngp` ``(sigma11, sigma12, sigma22) -> sigma12'`` and
  :meth:`Activation.ntk` ``(sigma11, sigma12, sigma22, theta12) -> theta12'``.

Conventions are those of neural-tangents: NTK parameterisation, :math:`z' = \sigma_w
W \phi(z) / \sqrt{n} + \sigma_b b` with standard normal :math:`W, b`, input kernel
:math:`x \cdot x' / d_{\mathrm{in}}`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch

from gpkern.kernels.nngp import duals

__all__ = [
    "KernelState",
    "Layer",
    "Dense",
    "Activation",
    "ABRelu",
    "Relu",
    "LeakyRelu",
    "Erf",
    "Gelu",
    "Elementwise",
    "LayerNorm",
    "check_variance",
]

Variances = dict | None  # {layer: {"W_std": tensor, "b_std": tensor}} overrides, or None


# -- the kernel state -------------------------------------------------------------------------
@dataclass(frozen=True)
class KernelState:
    r"""Covariances of one layer's pre-activations for a pair of input batches.

    Dense states hold ``var1`` (n1,), ``var2`` (n2,) and ``cov12`` (n1, n2), or, in diagonal
    mode, ``cov12`` (n,) pairing ``x1[i]`` with ``x2[i]``. Spatial states (images after a
    convolution) keep full spatial covariances: ``var1`` (n1, H, W, H, W), ``var2``
    (n2, H, W, H, W), ``cov12`` (n1, n2, H, W, H, W) or (n, H, W, H, W) in diagonal mode.
    ``ntk12`` has ``cov12``'s shape, or is ``None`` for an NNGP-only computation.
    """

    var1: torch.Tensor
    var2: torch.Tensor
    cov12: torch.Tensor
    ntk12: torch.Tensor | None
    spatial: tuple[int, int] | None = None  # (H, W) of a spatial state
    diag: bool = False

    def replace(self, **kw) -> KernelState:
        return replace(self, **kw)

    @property
    def is_spatial(self) -> bool:
        return self.spatial is not None

    def pair_variances(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Variances broadcastable against ``cov12``: :math:`\\Sigma_{11}` and :math:`\\Sigma_{22}`."""
        if not self.is_spatial:
            if self.diag:
                return self.var1, self.var2
            return self.var1[:, None], self.var2[None, :]
        d1, d2 = spatial_diagonal(self.var1), spatial_diagonal(self.var2)  # (n, H, W)
        if self.diag:
            return d1[:, :, :, None, None], d2[:, None, None, :, :]
        return d1[:, None, :, :, None, None], d2[None, :, None, None, :, :]

    @staticmethod
    def self_variances(var: torch.Tensor, spatial: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Variances broadcastable against a self covariance ``var``."""
        if not spatial:
            return var, var
        d = spatial_diagonal(var)
        return d[:, :, :, None, None], d[:, None, None, :, :]

    def map_all(self, fn: Callable) -> KernelState:
        """Apply a linear map ``fn`` to every covariance (and the NTK) of the state."""
        return self.replace(
            var1=fn(self.var1),
            var2=fn(self.var2),
            cov12=fn(self.cov12),
            ntk12=None if self.ntk12 is None else fn(self.ntk12),
        )


def spatial_diagonal(var: torch.Tensor) -> torch.Tensor:  # (..., H, W, H, W) -> (..., H, W)
    """The variances :math:`\\Sigma[p, p]` of a full spatial covariance."""
    H, W = var.shape[-2:]
    flat = var.reshape(*var.shape[:-4], H * W, H * W)
    return torch.diagonal(flat, dim1=-2, dim2=-1).reshape(*var.shape[:-4], H, W)


# -- checks -----------------------------------------------------------------------------------
def check_variance(name: str, value, allow_zero: bool = True) -> float:
    """Validate a standard deviation hyperparameter (finite, non-negative real)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}.")
    value = float(value)
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be finite and {bound}, got {value!r}.")
    return value


# -- layers -----------------------------------------------------------------------------------
class Layer:
    """A map of kernel states; subclasses implement :meth:`apply`.

    ``requires`` says which states a layer accepts: ``"any"``, ``"spatial"`` (convolution
    and pooling) or ``"dense"``; :meth:`output_kind` checks a composition before any data
    flows.
    """

    requires = "any"

    def output_kind(self, kind: str | None) -> str | None:
        """The state kind this layer outputs given its input kind (``None``: not yet known)."""
        if self.requires == "spatial" and kind == "dense":
            raise ValueError(
                f"{self!r} needs spatial (image) inputs but follows a layer that removed the "
                "spatial axes (Flatten or GlobalAvgPool); move it before that layer."
            )
        return kind

    def apply(self, state: KernelState, variances: Variances = None) -> KernelState:
        raise NotImplementedError

    def parametric_layers(self) -> list[Layer]:
        """Layers with learnable standard deviations, in order (this one if it has any)."""
        return [self] if hasattr(self, "W_std") else []

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Dense(Layer):
    r"""Fully connected layer in the NTK parameterisation (infinite width).

    .. math::

        \Sigma' = \sigma_w^2 \Sigma + \sigma_b^2, \qquad
        \Theta' = \Sigma' + \sigma_w^2 \Theta

    On spatial states it acts on the channels at every position (a 1 × 1 convolution).

    Parameters
    ----------
    W_std : float, default=1.0
        Weight standard deviation :math:`\sigma_w` (before the :math:`1/\sqrt{n}` fan-in).
    b_std : float, default=0.0
        Bias standard deviation :math:`\sigma_b`.

    Examples
    --------
    >>> from gpkern.kernels.nngp import Dense
    >>> Dense(W_std=1.5, b_std=0.1)
    Dense(W_std=1.5, b_std=0.1)
    """

    def __init__(self, W_std: float = 1.0, b_std: float = 0.0):
        self.W_std = check_variance("W_std", W_std)
        self.b_std = check_variance("b_std", b_std)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(W_std={self.W_std}, b_std={self.b_std})"

    def stds(self, variances: Variances) -> tuple:
        """:math:`(\\sigma_w, \\sigma_b)`: the learnable overrides when given, else the floats."""
        if variances is not None and self in variances:
            v = variances[self]
            return v.get("W_std", self.W_std), v.get("b_std", self.b_std)
        return self.W_std, self.b_std

    @staticmethod
    def nngp(sigma12, W_std, b_std):
        """:math:`\\sigma_w^2 \\Sigma_{12} + \\sigma_b^2`."""
        return W_std**2 * sigma12 + b_std**2

    @staticmethod
    def ntk(new_sigma12, theta12, W_std):
        """:math:`\\Sigma'_{12} + \\sigma_w^2 \\Theta_{12}`."""
        return new_sigma12 + W_std**2 * theta12

    def apply(self, state: KernelState, variances: Variances = None) -> KernelState:
        W, b = self.stds(variances)
        cov12 = self.nngp(state.cov12, W, b)
        return state.replace(
            var1=self.nngp(state.var1, W, b),
            var2=self.nngp(state.var2, W, b),
            cov12=cov12,
            ntk12=None if state.ntk12 is None else self.ntk(cov12, state.ntk12, W),
        )


class Activation(Layer):
    r"""An element-wise nonlinearity :math:`\phi` in the infinite-width limit.

    For :math:`(u, v) \sim \mathcal{N}(0, [[\Sigma_{11}, \Sigma_{12}], [\Sigma_{12},
    \Sigma_{22}]])`,

    .. math::

        \Sigma'_{12} = \mathbb{E}[\phi(u)\phi(v)], \qquad
        \Theta'_{12} = \Theta_{12}\, \mathbb{E}[\phi'(u)\phi'(v)].

    Subclasses implement :meth:`nngp` and :meth:`ntk_factor` as broadcasting functions of
    :math:`(\Sigma_{11}, \Sigma_{12}, \Sigma_{22})`; the closed forms live in
    :mod:`gpkern.kernels.nngp.duals`.
    """

    def nngp(self, sigma11, sigma12, sigma22):
        """:math:`\\mathbb{E}[\\phi(u)\\phi(v)]`."""
        raise NotImplementedError

    def ntk_factor(self, sigma11, sigma12, sigma22):
        """:math:`\\dot\\Sigma_{12} = \\mathbb{E}[\\phi'(u)\\phi'(v)]`."""
        raise NotImplementedError

    def nngp_diag(self, sigma11):
        """:math:`\\mathbb{E}[\\phi(u)^2]` (override for a cheaper or smoother closed form)."""
        return self.nngp(sigma11, sigma11, sigma11)

    def ntk(self, sigma11, sigma12, sigma22, theta12):
        """:math:`\\Theta_{12} \\dot\\Sigma_{12}`."""
        return theta12 * self.ntk_factor(sigma11, sigma12, sigma22)

    def nngp_and_factor(self, sigma11, sigma12, sigma22, need_factor: bool):
        """:math:`(\\Sigma'_{12}, \\dot\\Sigma_{12})` together (subclasses share work); the
        factor is ``None`` unless ``need_factor``."""
        value = self.nngp(sigma11, sigma12, sigma22)
        return value, (self.ntk_factor(sigma11, sigma12, sigma22) if need_factor else None)

    def apply(self, state: KernelState, variances: Variances = None) -> KernelState:
        s11, s22 = state.pair_variances()
        cov12, dot = self.nngp_and_factor(s11, state.cov12, s22, state.ntk12 is not None)
        ntk12 = None if state.ntk12 is None else state.ntk12 * dot
        return state.replace(
            var1=self._self_map(state.var1, state.is_spatial),
            var2=self._self_map(state.var2, state.is_spatial),
            cov12=cov12,
            ntk12=ntk12,
        )

    def _self_map(self, var: torch.Tensor, spatial: bool) -> torch.Tensor:
        if not spatial:
            return self.nngp_diag(var)
        a, b = KernelState.self_variances(var, True)
        return self.nngp(a, var, b)


class ABRelu(Activation):
    r""":math:`\phi(x) = a \min(x, 0) + b \max(x, 0)` (arc-cosine kernel of degree 1).

    With :math:`\theta = \arccos(\Sigma_{12}/\sqrt{\Sigma_{11}\Sigma_{22}})`,

    .. math::

        \Sigma' &= \frac{(a-b)^2}{2\pi}\sqrt{\Sigma_{11}\Sigma_{22} - \Sigma_{12}^2}
            + \Big[\frac{a^2 + b^2}{2} - \frac{(a-b)^2\theta}{2\pi}\Big]\Sigma_{12}, \\
        \dot\Sigma &= \frac{a^2 + b^2}{2} - \frac{(a-b)^2\theta}{2\pi}.

    Parameters
    ----------
    a : float
        Slope for negative inputs.
    b : float
        Slope for positive inputs.
    """

    def __init__(self, a: float, b: float):
        for name, v in (("a", a), ("b", b)):
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
                raise ValueError(f"ABRelu slope {name} must be a finite real number, got {v!r}.")
        self.a, self.b = float(a), float(b)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(a={self.a}, b={self.b})"

    def nngp(self, sigma11, sigma12, sigma22):
        return duals.abrelu_dual(sigma11, sigma12, sigma22, self.a, self.b)

    def nngp_and_factor(self, sigma11, sigma12, sigma22, need_factor: bool):
        value, dot = duals.abrelu_dual_and_dot(sigma11, sigma12, sigma22, self.a, self.b)
        return value, (dot if need_factor else None)

    def ntk_factor(self, sigma11, sigma12, sigma22):
        return duals.abrelu_dual_dot(sigma11, sigma12, sigma22, self.a, self.b)

    def nngp_diag(self, sigma11):
        return duals.abrelu_dual_diag(sigma11, self.a, self.b)


class Relu(ABRelu):
    r""":math:`\phi(x) = \max(x, 0)`: :class:`ABRelu` with :math:`a = 0, b = 1`.

    .. math::

        \Sigma' = \frac{1}{2\pi}\Big[\sqrt{\Sigma_{11}\Sigma_{22} - \Sigma_{12}^2}
            + (\pi - \theta)\Sigma_{12}\Big], \qquad \dot\Sigma = \frac{\pi - \theta}{2\pi}.
    """

    def __init__(self):
        super().__init__(0.0, 1.0)

    def __repr__(self) -> str:
        return "Relu()"


class LeakyRelu(ABRelu):
    r""":math:`\phi(x) = \max(x, \alpha x)`: :class:`ABRelu` with :math:`a = \alpha, b = 1`.

    Parameters
    ----------
    alpha : float, default=0.01
        Slope for negative inputs.
    """

    def __init__(self, alpha: float = 0.01):
        super().__init__(alpha, 1.0)
        self.alpha = self.a

    def __repr__(self) -> str:
        return f"LeakyRelu(alpha={self.alpha})"


class Erf(Activation):
    r""":math:`\phi(x) = a\,\mathrm{erf}(b x) + c` (arcsine kernel).

    .. math::

        \Sigma' &= a^2 \frac{2}{\pi}\arcsin\frac{2 b^2\Sigma_{12}}
            {\sqrt{(1 + 2b^2\Sigma_{11})(1 + 2b^2\Sigma_{22})}} + c^2, \\
        \dot\Sigma &= a^2 b^2 \frac{4}{\pi}\big[(1 + 2b^2\Sigma_{11})(1 + 2b^2\Sigma_{22})
            - 4 b^4\Sigma_{12}^2\big]^{-1/2}.

    Parameters
    ----------
    a, b, c : float, default=(1, 1, 0)
        Output scale, input scale and output shift.
    """

    def __init__(self, a: float = 1.0, b: float = 1.0, c: float = 0.0):
        for name, v in (("a", a), ("b", b), ("c", c)):
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
                raise ValueError(f"Erf parameter {name} must be a finite real number, got {v!r}.")
        self.a, self.b, self.c = float(a), float(b), float(c)

    def __repr__(self) -> str:
        return f"Erf(a={self.a}, b={self.b}, c={self.c})"

    def nngp(self, sigma11, sigma12, sigma22):
        return duals.erf_dual(sigma11, sigma12, sigma22, self.a, self.b, self.c)

    def ntk_factor(self, sigma11, sigma12, sigma22):
        return duals.erf_dual_dot(sigma11, sigma12, sigma22, self.a, self.b)

    def nngp_diag(self, sigma11):
        return duals.erf_dual_diag(sigma11, self.a, self.b, self.c)


class Gelu(Activation):
    r""":math:`\phi(x) = x\,\Phi(x)` with :math:`\Phi` the standard normal CDF (exact GELU).

    With :math:`\Delta = \sqrt{(1 + \Sigma_{11})(1 + \Sigma_{22}) - \Sigma_{12}^2}`,
    :math:`P = \Sigma_{11}\Sigma_{22}` and :math:`\beta = \operatorname{atan2}(\Sigma_{12},
    \Delta)`,

    .. math::

        \Sigma' &= \frac{\Sigma_{12}}{4} + \frac{1}{2\pi}\Big[
            \frac{\Sigma_{12}^2 + P\Delta^2}{(1 + \Sigma_{11})(1 + \Sigma_{22})\Delta}
            + \Sigma_{12}\beta\Big], \\
        \dot\Sigma &= \frac14 + \frac{\beta}{2\pi} + \frac{\Sigma_{12}}{2\pi\Delta}
            \Big[\frac{1}{\Delta^2} + \frac{1 - P}{(1 + \Sigma_{11})(1 + \Sigma_{22})} + 1\Big]
            \quad(\text{as } \partial\Sigma'/\partial\Sigma_{12}).
    """

    def nngp(self, sigma11, sigma12, sigma22):
        return duals.gelu_dual(sigma11, sigma12, sigma22)

    def ntk_factor(self, sigma11, sigma12, sigma22):
        return duals.gelu_dual_dot(sigma11, sigma12, sigma22)


class Elementwise(Activation):
    r"""Any element-wise activation, by two-dimensional Gauss-Hermite quadrature.

    Writing :math:`u = \sqrt{\Sigma_{11}}\, z_1`, :math:`v = \sqrt{\Sigma_{22}}(\rho z_1 +
    \sqrt{1 - \rho^2} z_2)` with :math:`\rho = \Sigma_{12}/\sqrt{\Sigma_{11}\Sigma_{22}}`,

    .. math::

        \mathbb{E}[\phi(u)\phi(v)] \approx \sum_{i,j} w_i w_j\,
            \phi(u(z_i))\,\phi(v(z_i, z_j)),

    over the probabilists' Gauss-Hermite nodes :math:`z_i` and weights :math:`w_i`
    (normalised to sum to one). The NTK factor uses :math:`\phi'` the same way; it is taken
    by automatic differentiation of ``fn`` unless ``fn_prime`` is given. Exact for
    polynomials of degree below :math:`2m`; cost :math:`O(m^2)` per kernel entry (computed in
    chunks of bounded memory). Saturating activations at large pre-activation variances
    converge slowly (e.g. ``torch.erf`` at :math:`\Sigma \approx 3`: relative error
    :math:`10^{-2}` for the NTK with :math:`m = 32`, :math:`10^{-3}` with :math:`m = 64`);
    raise ``n_points`` there or use a closed form.

    Parameters
    ----------
    fn : callable
        Torch function applied element-wise (e.g. ``torch.tanh``).
    fn_prime : callable, optional
        Its derivative; ``None`` differentiates ``fn`` with autograd.
    n_points : int, default=32
        Quadrature nodes per dimension :math:`m`.
    """

    def __init__(self, fn: Callable, fn_prime: Callable | None = None, n_points: int = 32):
        if not callable(fn):
            raise TypeError(f"Elementwise needs a callable activation fn, got {type(fn).__name__}.")
        if fn_prime is not None and not callable(fn_prime):
            raise TypeError("fn_prime must be callable or None.")
        if isinstance(n_points, bool) or not isinstance(n_points, numbers.Integral) or n_points < 2:
            raise ValueError(f"n_points must be an integer >= 2, got {n_points!r}.")
        self.fn, self.fn_prime, self.n_points = fn, fn_prime, int(n_points)
        z, w = np.polynomial.hermite_e.hermegauss(self.n_points)
        self._z, self._w = torch.from_numpy(z), torch.from_numpy(w / w.sum())

    def __repr__(self) -> str:
        name = getattr(self.fn, "__name__", type(self.fn).__name__)
        return f"Elementwise({name}, n_points={self.n_points})"

    def _derivative(self, x: torch.Tensor) -> torch.Tensor:
        if self.fn_prime is not None:
            return self.fn_prime(x)
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self.fn(xg).sum(), xg, create_graph=torch.is_grad_enabled())
        return g

    def _expect(self, f: Callable, sigma11, sigma12, sigma22):
        sigma11, sigma12, sigma22 = torch.broadcast_tensors(
            torch.as_tensor(sigma11), torch.as_tensor(sigma12), torch.as_tensor(sigma22)
        )
        shape = sigma12.shape
        flat = [t.reshape(-1) for t in (sigma11, sigma12, sigma22)]
        # each entry needs an (m, m) grid: cap the grid at ~2**22 numbers per chunk
        step = max(1, 2**22 // self.n_points**2)
        if flat[0].numel() > step:
            parts = [
                self._expect_flat(f, *(t[i : i + step] for t in flat)) for i in range(0, flat[0].numel(), step)
            ]
            return torch.cat(parts).reshape(shape)
        return self._expect_flat(f, *flat).reshape(shape)

    def _expect_flat(self, f: Callable, sigma11, sigma12, sigma22):  # (k,) x 3 -> (k,)
        z = self._z.to(sigma12)
        w = self._w.to(sigma12)
        s1, s2 = duals.safe_sqrt(sigma11), duals.safe_sqrt(sigma22)
        denom = s1 * s2
        safe = torch.where(denom > 0, denom, torch.ones_like(denom))
        rho = torch.where(denom > 0, sigma12 / safe, torch.zeros_like(denom)).clamp(-1, 1)
        perp = duals.safe_sqrt(1 - rho**2)
        u = s1[..., None] * z  # (..., m)
        fu = f(u)
        # v over the (i, j) grid, contracted over j first to keep memory at O(m^2) per entry.
        v = s2[..., None, None] * (rho[..., None, None] * z[:, None] + perp[..., None, None] * z[None, :])
        inner = (f(v) * w).sum(-1)  # (..., m)
        return ((fu * inner) * w).sum(-1)

    def nngp(self, sigma11, sigma12, sigma22):
        return self._expect(self.fn, sigma11, sigma12, sigma22)

    def ntk_factor(self, sigma11, sigma12, sigma22):
        return self._expect(self._derivative, sigma11, sigma12, sigma22)


class LayerNorm(Layer):
    r"""Layer normalisation over the channels (per position) or over channels and space.

    In the infinite-width limit the channel mean vanishes and the channel variance
    concentrates on :math:`\Sigma_{11}`, so

    .. math::

        \Sigma'_{12} = \frac{\Sigma_{12}}{\sqrt{\bar\Sigma_{11}\bar\Sigma_{22}}}, \qquad
        \Theta'_{12} = \frac{\Theta_{12}}{\sqrt{\bar\Sigma_{11}\bar\Sigma_{22}}},

    with :math:`\bar\Sigma` the variance at the position (``axis="channel"``) or averaged over
    positions (``axis="all"``). ``eps`` is added to the variances as in a finite LayerNorm.

    Parameters
    ----------
    axis : {"channel", "all"}, default="channel"
    eps : float, default=1e-12
    """

    def __init__(self, axis: str = "channel", eps: float = 1e-12):
        if axis not in ("channel", "all"):
            raise ValueError(f"LayerNorm axis must be 'channel' or 'all', got {axis!r}.")
        self.axis = axis
        self.eps = check_variance("eps", eps)

    def __repr__(self) -> str:
        return f"LayerNorm(axis={self.axis!r}, eps={self.eps})"

    def apply(self, state: KernelState, variances: Variances = None) -> KernelState:
        if not state.is_spatial or self.axis == "channel":
            s11, s22 = state.pair_variances()
            a1, b1 = KernelState.self_variances(state.var1, state.is_spatial)
            a2, b2 = KernelState.self_variances(state.var2, state.is_spatial)
        else:
            m1 = spatial_diagonal(state.var1).mean((-2, -1))  # (n1,)
            m2 = spatial_diagonal(state.var2).mean((-2, -1))
            e = (None,) * 4
            if state.diag:
                s11, s22 = m1[(...,) + e], m2[(...,) + e]
            else:
                s11, s22 = m1[(slice(None), None) + e], m2[(None, slice(None)) + e]
            a1 = b1 = m1[(...,) + e]
            a2 = b2 = m2[(...,) + e]
        norm = torch.sqrt((s11 + self.eps) * (s22 + self.eps))
        return state.replace(
            var1=state.var1 / torch.sqrt((a1 + self.eps) * (b1 + self.eps)),
            var2=state.var2 / torch.sqrt((a2 + self.eps) * (b2 + self.eps)),
            cov12=state.cov12 / norm,
            ntk12=None if state.ntk12 is None else state.ntk12 / norm,
        )
