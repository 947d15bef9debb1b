r"""Composing layers into architectures, and the NNGP / NTK of an architecture.

:func:`serial` chains layers; :class:`FanOut`, :func:`parallel` and :class:`FanInSum` build
branches (residual blocks). The result's :meth:`Serial.kernel` maps inputs to the kernel
matrix, in memory-bounded blocks over ``x1`` and ``x2``.

Branches are independent: :class:`FanInSum` adds the branches' covariances, exact in the
infinite-width limit as long as every branch but one passes through a layer with fresh weights
(as in a residual block ``x + f(x)``), as in neural-tangents.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch

from gpkern.kernels.nngp.layers import KernelState, Layer, Variances

__all__ = ["Serial", "Parallel", "FanOut", "FanInSum", "serial", "parallel", "DEFAULT_MAX_MEMORY"]

#: bytes a kernel block may use for its intermediate tensors (about, per block).
DEFAULT_MAX_MEMORY = 2**24

_KINDS = ("nngp", "ntk")


def _check_layer(layer) -> Layer:
    if not isinstance(layer, Layer):
        raise TypeError(
            f"expected a gpkern NNGP layer (Dense, Relu, Conv, serial(...), ...), got "
            f"{type(layer).__name__}; did you forget the parentheses, e.g. Relu() instead of Relu?"
        )
    return layer


class FanOut(Layer):
    """Copy the state into ``n`` identical branches (for :func:`parallel`).

    Parameters
    ----------
    n : int
        Number of branches (at least 2).
    """

    def __init__(self, n: int):
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
            raise ValueError(f"FanOut needs a positive integer number of branches, got {n!r}.")
        self.n = int(n)

    def __repr__(self) -> str:
        return f"FanOut({self.n})"

    def output_kind(self, kind):
        if isinstance(kind, tuple):
            raise ValueError("FanOut got several branches; merge them (FanInSum) before fanning out again.")
        return (kind,) * self.n

    def apply(self, state, variances: Variances = None):
        return (state,) * self.n


class FanInSum(Layer):
    r"""Sum the branches: :math:`\Sigma' = \sum_b \Sigma_b`, :math:`\Theta' = \sum_b \Theta_b`."""

    def output_kind(self, kind):
        if not isinstance(kind, tuple):
            raise ValueError("FanInSum needs several branches (after FanOut and parallel).")
        known = {k for k in kind if k is not None}
        if len(known) > 1:
            raise ValueError(f"FanInSum cannot add branches of different kinds {sorted(known)}.")
        return known.pop() if known else None

    def apply(self, states, variances: Variances = None):
        states = tuple(states)
        shapes = {s.spatial for s in states}
        if len(shapes) > 1:
            raise ValueError(f"FanInSum got branches with different spatial shapes {sorted(map(str, shapes))}.")
        first = states[0]

        def total(attr):
            vals = [getattr(s, attr) for s in states]
            if any(v is None for v in vals):
                return None
            return sum(vals[1:], vals[0])

        return first.replace(
            var1=total("var1"), var2=total("var2"), cov12=total("cov12"), ntk12=total("ntk12")
        )


class Parallel(Layer):
    """Apply branch ``i`` to input branch ``i`` (see :func:`parallel`)."""

    def __init__(self, *layers: Layer):
        if not layers:
            raise ValueError("parallel needs at least one branch.")
        self.layers = tuple(_check_layer(layer) for layer in layers)

    def __repr__(self) -> str:
        return f"parallel({', '.join(map(repr, self.layers))})"

    def output_kind(self, kind):
        if not isinstance(kind, tuple) or len(kind) != len(self.layers):
            got = len(kind) if isinstance(kind, tuple) else 1
            raise ValueError(
                f"parallel has {len(self.layers)} branches but receives {got}; put FanOut"
                f"({len(self.layers)}) before it."
            )
        return tuple(layer.output_kind(k) for layer, k in zip(self.layers, kind))

    def apply(self, states, variances: Variances = None):
        return tuple(layer.apply(s, variances) for layer, s in zip(self.layers, states))

    def parametric_layers(self) -> list[Layer]:
        return [p for layer in self.layers for p in layer.parametric_layers()]


class Serial(Layer):
    r"""Layers applied in sequence; the NNGP and NTK of the composed network.

    Built by :func:`serial`. Composition is checked at construction (a convolution after a
    ``Flatten``, branches that do not match) and the input at the first call.
    """

    def __init__(self, *layers: Layer):
        self.layers = tuple(_check_layer(layer) for layer in layers)
        self.output_kind(None)

    def __repr__(self) -> str:
        return f"serial({', '.join(map(repr, self.layers))})"

    def output_kind(self, kind):
        for layer in self.layers:
            kind = layer.output_kind(kind)
        return kind

    def apply(self, state, variances: Variances = None):
        for layer in self.layers:
            state = layer.apply(state, variances)
        return state

    def parametric_layers(self) -> list[Layer]:
        return [p for layer in self.layers for p in layer.parametric_layers()]

    # -- the kernel ---------------------------------------------------------------------------
    def _check_inputs(self, x1, x2, kind: str, diag: bool):
        if kind not in _KINDS:
            raise ValueError(f"kind must be 'nngp' or 'ntk', got {kind!r}.")
        x1 = _as_tensor("x1", x1)
        x2 = x1 if x2 is None else _as_tensor("x2", x2)
        if x2.dtype != x1.dtype:
            x2 = x2.to(x1.dtype)
        if x1.dim() not in (2, 4):
            raise ValueError(
                f"x1 must be 2-D (n, d) for dense inputs or 4-D (n, C, H, W) for images, got shape "
                f"{tuple(x1.shape)}."
            )
        if x1.shape[1:] != x2.shape[1:]:
            raise ValueError(f"x1 and x2 must agree beyond the first axis, got {tuple(x1.shape)} and {tuple(x2.shape)}.")
        if diag and x1.shape[0] != x2.shape[0]:
            raise ValueError(f"diag=True needs as many rows in x1 as in x2, got {x1.shape[0]} and {x2.shape[0]}.")
        if x1.shape[1:].numel() == 0:
            raise ValueError("inputs have no features.")
        in_kind = "dense" if x1.dim() == 2 else "spatial"
        try:
            out = self.output_kind(in_kind)
        except ValueError as err:
            if in_kind == "dense":
                raise ValueError(
                    f"this architecture has convolution/pooling layers and needs images of shape "
                    f"(n, C, H, W); got 2-D inputs of shape {tuple(x1.shape)}. ({err})"
                ) from err
            raise
        if out != "dense":
            raise ValueError(
                "the architecture's output is spatial (or several branches); end it with Flatten() "
                "or GlobalAvgPool() (and FanInSum() after parallel branches) to get an (n1, n2) kernel."
            )
        return x1, x2

    def kernel(
        self,
        x1,  # (n1, d) or (n1, C, H, W)
        x2=None,  # (n2, d) or (n2, C, H, W)
        kind: str = "nngp",
        diag: bool = False,
        batch_size: int | None = None,
        max_memory: int = DEFAULT_MAX_MEMORY,
        variances: Variances = None,
    ) -> torch.Tensor:  # (n1, n2), or (n,) with diag=True
        r"""The infinite-width NNGP or NTK kernel between ``x1`` and ``x2``.

        The input kernel is :math:`x \cdot x' / d_{\mathrm{in}}` for dense inputs and
        :math:`\Sigma[p, q] = \sum_c x_{cp} x'_{cq} / C` for images (n, C, H, W); each layer
        then maps the kernel state (see the user guide for every layer's formula).

        Parameters
        ----------
        x1 : tensor or ndarray of shape (n1, d) or (n1, C, H, W)
        x2 : tensor or ndarray of shape (n2, d) or (n2, C, H, W), optional
            ``None`` means ``x1``.
        kind : {"nngp", "ntk"}, default="nngp"
            Output covariance of the network at initialisation (NNGP) or its neural tangent
            kernel.
        diag : bool, default=False
            Return only :math:`k(x1_i, x2_i)`, shape (n,).
        batch_size : int, optional
            Rows of ``x1`` and of ``x2`` per block. ``None`` picks the largest block whose
            intermediates fit ``max_memory``.
        max_memory : int, default=2**24
            Approximate bytes per block when ``batch_size`` is None; blocks that stay near
            the CPU caches are faster than big ones.
        variances : dict, optional
            ``{layer: {"W_std": tensor, "b_std": tensor}}`` overriding layers' standard
            deviations (differentiable; :class:`~gpkern.kernels.NNGPKernel` uses it).

        Returns
        -------
        torch.Tensor of shape (n1, n2), or (n,) when ``diag``
            float64 for numpy inputs; the input's dtype for tensors.

        Examples
        --------
        >>> import torch
        >>> from gpkern.kernels.nngp import serial, Dense, Relu
        >>> arch = serial(Dense(1.5, 0.1), Relu(), Dense(1.0))
        >>> arch.kernel(torch.eye(3, dtype=torch.float64), kind="ntk").shape
        torch.Size([3, 3])
        """
        symmetric = x2 is None or x2 is x1
        x1, x2 = self._check_inputs(x1, x2, kind, diag)
        ntk = kind == "ntk"
        n1, n2 = x1.shape[0], x2.shape[0]
        per_pair = _bytes_per_pair(x1)
        if batch_size is not None:
            if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
                raise ValueError(f"batch_size must be a positive integer or None, got {batch_size!r}.")
            b1 = b2 = int(batch_size)
        elif diag:
            b1 = b2 = max(1, int(max_memory // per_pair))
        else:
            b = max(1, int(math.isqrt(max(1, int(max_memory // per_pair)))))
            b1 = b2 = b
            # a whole short side in one block keeps blocks few for tall-and-thin requests
            if min(n1, n2) * min(max(n1, n2), b) * per_pair <= max_memory:
                if n1 <= n2:
                    b1, b2 = n1, max(1, int(max_memory // (per_pair * max(n1, 1))))
                else:
                    b2, b1 = n2, max(1, int(max_memory // (per_pair * max(n2, 1))))

        if diag:
            if b1 >= n1:
                return self._block(x1, x2, ntk, True, variances)
            return torch.cat(
                [self._block(x1[i : i + b1], x2[i : i + b1], ntk, True, variances) for i in range(0, n1, b1)]
            )
        if b1 >= n1 and b2 >= n2:
            return self._block(x1, x2, ntk, False, variances)
        if symmetric:
            # k(x1, x1): compute the upper block triangle only and mirror it
            b = min(b1, b2)
            out = torch.empty(n1, n1, dtype=x1.dtype, device=x1.device)
            for i in range(0, n1, b):
                for j in range(i, n1, b):
                    blk = self._block(x1[i : i + b], x1[j : j + b], ntk, False, variances)
                    out[i : i + b, j : j + b] = blk
                    if j != i:
                        out[j : j + b, i : i + b] = blk.T
            return out
        rows = []
        for i in range(0, n1, b1):
            rows.append(
                torch.cat(
                    [self._block(x1[i : i + b1], x2[j : j + b2], ntk, False, variances) for j in range(0, n2, b2)],
                    dim=1,
                )
            )
        return torch.cat(rows, dim=0)

    def _block(self, x1, x2, ntk: bool, diag: bool, variances: Variances) -> torch.Tensor:
        state = self.apply(input_state(x1, x2, ntk, diag), variances)
        return state.ntk12 if ntk else state.cov12


def input_state(x1: torch.Tensor, x2: torch.Tensor, ntk: bool, diag: bool) -> KernelState:
    r"""The kernel state of the inputs: :math:`x\cdot x'/d` (dense) or channel averages (images)."""
    if x1.dim() == 2:
        d = x1.shape[1]
        var1 = (x1 * x1).sum(-1) / d
        var2 = (x2 * x2).sum(-1) / d
        cov12 = (x1 * x2).sum(-1) / d if diag else x1 @ x2.T / d
        spatial = None
    else:
        C = x1.shape[1]
        var1 = torch.einsum("ichw,icuv->ihwuv", x1, x1) / C
        var2 = torch.einsum("ichw,icuv->ihwuv", x2, x2) / C
        eq = "ichw,icuv->ihwuv" if diag else "ichw,jcuv->ijhwuv"
        cov12 = torch.einsum(eq, x1, x2) / C
        spatial = tuple(x1.shape[2:])
    return KernelState(
        var1=var1,
        var2=var2,
        cov12=cov12,
        ntk12=torch.zeros_like(cov12) if ntk else None,
        spatial=spatial,
        diag=diag,
    )


def _bytes_per_pair(x: torch.Tensor) -> int:
    """Intermediate bytes one (x1_i, x2_j) pair costs in a block (a dozen live tensors)."""
    cells = 1 if x.dim() == 2 else (x.shape[2] * x.shape[3]) ** 2
    return 12 * x.element_size() * cells


def _as_tensor(name: str, x) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        t = x
        if not t.is_floating_point():
            t = t.to(torch.get_default_dtype())
    else:
        try:
            t = torch.as_tensor(np.asarray(x, dtype=np.float64))
        except (TypeError, ValueError) as err:
            raise ValueError(f"{name} must be a numeric array, got {type(x).__name__}: {err}") from err
    if t.dim() == 0 or t.shape[0] == 0:
        raise ValueError(f"{name} must have at least one row, got shape {tuple(t.shape)}.")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or infinite values.")
    return t


def serial(*layers: Layer) -> Serial:
    r"""Compose layers in sequence: the architecture whose :meth:`Serial.kernel` is its NNGP/NTK.

    Parameters
    ----------
    *layers : Layer
        Dense, activations, Conv, pooling, Flatten, LayerNorm, :func:`parallel` blocks,
        :class:`FanOut`, :class:`FanInSum`, or other :func:`serial` blocks. No layers is the
        identity (useful as the skip branch of a residual block).

    Returns
    -------
    Serial

    Examples
    --------
    >>> from gpkern.kernels.nngp import serial, Dense, Relu
    >>> arch = serial(Dense(W_std=1.5, b_std=0.1), Relu(), Dense(W_std=1.0))
    """
    return Serial(*layers)


def parallel(*layers: Layer) -> Parallel:
    r"""Apply one layer per branch (after :class:`FanOut`); merge with :class:`FanInSum`.

    Examples
    --------
    A residual block :math:`x + W_2\,\mathrm{relu}(W_1 x)`:

    >>> from gpkern.kernels.nngp import serial, parallel, FanOut, FanInSum, Dense, Relu
    >>> block = serial(FanOut(2), parallel(serial(Dense(1.0), Relu(), Dense(1.0)), serial()), FanInSum())
    """
    return Parallel(*layers)
