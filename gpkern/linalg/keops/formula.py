r"""The formula tree: a GPyTorch kernel as a :class:`KernelFormula` of operands and one flat
hyperparameter vector.

Leaves wrap the primitive formulas (:mod:`gpkern.linalg.keops.primitives`); inner nodes compose
them (``ScaleKernel``, sums, products, ``active_dims``). Which node a kernel becomes is decided by
the registry (:mod:`gpkern.linalg.keops.registry`), where every kernel module registers its own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import gpytorch
import torch

from gpkern.linalg.keops.operands import _is_lazy, _join, _select, _slice, _split, _whole
from gpkern.linalg.keops.primitives import (
    matern,
    periodic,
    rational_quadratic,
    rbf,
    spectral_mixture,
    spectral_mixture_product,
    spectral_mixture_sum,
    sq_dist,
)

__all__ = ["KernelFormula", "SpectralProductFormula", "SpectralSumFormula"]


class KernelFormula:
    r"""A kernel :math:`k(x, x')` as a formula of the operands and one flat parameter vector.

    Build one with :func:`kernel_formula`.  ``theta()`` returns the current (constrained,
    differentiable) hyperparameters flattened into a vector; ``evaluate(xi, xj, theta)``
    builds :math:`k` on LazyTensor or torch operands.

    A formula may need ``n_extra`` per-point columns (quantities of one point that the pair
    formula would otherwise recompute for every pair, e.g. the layer variances of
    :func:`dense_network`): ``augment(x, theta)`` appends them to the inputs in torch
    (:math:`O(n)`), and ``evaluate`` then receives the augmented operands.  Calling the formula
    on plain torch operands augments them itself; LazyTensor operands must be built from
    ``augment``'s output (as :func:`keops_matmul` does).
    """

    size: int = 0  # length of this node's slice of theta
    n_extra: int = 0  # per-point columns appended to the operands (see augment)

    def extras(self, x: torch.Tensor, theta: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Per-point columns ``(..., n_extra)`` of this node, from its inputs ``x`` ``(..., d)``."""
        return x[..., :0]

    def augment(self, x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """``x`` ``(..., d)`` with this formula's per-point columns appended: ``(..., d + n_extra)``."""
        if not self.n_extra:
            return x
        return torch.cat([x, self.extras(x, theta.to(x.dtype), 0)], -1)

    def extra_widths(self) -> list[int]:
        """Widths of the blocks the per-point columns come in (one KeOps variable each)."""
        return [self.n_extra] if self.n_extra else []

    def operand_blocks(self, x: torch.Tensor, theta: torch.Tensor) -> list[torch.Tensor]:
        """``[x, extras block 1, ...]``: :meth:`augment`'s columns, split as KeOps variables."""
        if not self.n_extra:
            return [x]
        return [x, *torch.split(self.extras(x, theta.to(x.dtype), 0), self.extra_widths(), -1)]

    def theta_parts(self) -> list[torch.Tensor]:
        raise NotImplementedError

    def evaluate(self, xi, xj, theta, start: int = 0):  # pragma: no cover - abstract
        raise NotImplementedError

    def theta(self) -> torch.Tensor:
        """Flat vector of the current hyperparameter values (differentiable)."""
        return torch.cat([p.reshape(-1) for p in self.theta_parts()])

    def __call__(self, xi, xj, theta, *, augmented: bool = False):
        if self.n_extra and not augmented:
            if _is_lazy(xi) or _is_lazy(xj):
                raise ValueError(
                    "this formula needs per-point columns: build the LazyTensors from "
                    "formula.augment(x, theta) and pass augmented=True."
                )
            xi, xj = self.augment(xi, theta), self.augment(xj, theta)
        return self.evaluate(xi, xj, theta, 0)


class _ActiveDims(KernelFormula):
    def __init__(self, child: KernelFormula, dims: Sequence[int] | None) -> None:
        self.child, self.dims = child, None if dims is None else [int(d) for d in dims]
        self.size, self.n_extra = child.size, child.n_extra

    def theta_parts(self):
        return self.child.theta_parts()

    def extras(self, x, theta, start=0):
        return self.child.extras(x if self.dims is None else x[..., self.dims], theta, start)

    def extra_widths(self):
        return self.child.extra_widths()

    def evaluate(self, xi, xj, theta, start=0):
        if self.dims is not None:
            if self.n_extra:
                (xi, ei), (xj, ej) = _split(xi, self.n_extra), _split(xj, self.n_extra)
                xi, xj = _join(_select(xi, self.dims), ei), _join(_select(xj, self.dims), ej)
            else:
                xi, xj = _select(xi, self.dims), _select(xj, self.dims)
        return self.child.evaluate(xi, xj, theta, start)


class _Stationary(KernelFormula):
    """RBF, Matérn and RQ kernels of the scaled distance.

    With the input dimension ``d`` known, the inputs scaled by :math:`1/\\ell` are per-point
    columns (computed in torch, differentiable in :math:`\\ell`) and the pair formula is a plain
    squared distance: scaling inside the reduction cost 1.4 times the whole scaled-RBF
    reduction on a CPU. Without ``d`` the scale stays a KeOps parameter.
    """

    def __init__(self, kernel: gpytorch.kernels.Kernel, kind: str, d: int | None = None) -> None:
        self.kernel, self.kind = kernel, kind
        self.n_ls = kernel.lengthscale.numel()
        self.size = self.n_ls + (1 if kind == "rq" else 0)
        self.n_extra = int(d or 0) if self.n_ls in (1, int(d or 0)) else 0

    def theta_parts(self):
        parts = [1.0 / self.kernel.lengthscale.reshape(-1)]
        if self.kind == "rq":
            parts.append(self.kernel.alpha.reshape(-1))
        return parts

    def extras(self, x, theta, start=0):
        return x * _slice(theta, start, self.n_ls) if self.n_extra else x[..., :0]

    def evaluate(self, xi, xj, theta, start=0):
        if self.n_extra:
            r2 = sq_dist(_split(xi, self.n_extra)[1], _split(xj, self.n_extra)[1], None)
        else:
            r2 = sq_dist(xi, xj, _slice(theta, start, self.n_ls))
        if self.kind == "rbf":
            return rbf(r2)
        if self.kind == "rq":
            return rational_quadratic(r2, _slice(theta, start + self.n_ls, 1))
        return matern(r2, float(self.kernel.nu))


class _Periodic(KernelFormula):
    r"""GPyTorch's periodic kernel; with ``d`` known the inputs scaled by :math:`\pi / p` are
    per-point columns, as for :class:`_Stationary` (GPyTorch's KeOps kernel scales them before
    the reduction too: scaling per pair cost 2.5% of the reduction on a CPU)."""

    def __init__(self, kernel: gpytorch.kernels.PeriodicKernel, d: int | None = None) -> None:
        self.kernel = kernel
        self.n_p, self.n_ls = kernel.period_length.numel(), kernel.lengthscale.numel()
        self.size = self.n_p + self.n_ls
        self.n_extra = int(d or 0) if self.n_p in (1, int(d or 0)) else 0

    def extras(self, x, theta, start=0):
        return x * _slice(theta, start, self.n_p) if self.n_extra else x[..., :0]

    def theta_parts(self):
        return [
            math.pi / self.kernel.period_length.reshape(-1),
            1.0 / self.kernel.lengthscale.reshape(-1),
        ]

    def evaluate(self, xi, xj, theta, start=0):
        inv_ls = _slice(theta, start + self.n_p, self.n_ls)
        if self.n_extra:
            return periodic(_split(xi, self.n_extra)[1], _split(xj, self.n_extra)[1], None, inv_ls)
        return periodic(xi, xj, _slice(theta, start, self.n_p), inv_ls)


class _SpectralMixture(KernelFormula):
    """GPyTorch's SpectralMixtureKernel: theta = [w (Q), rates (D x Q), means (D x Q)]."""

    def __init__(self, kernel: gpytorch.kernels.SpectralMixtureKernel) -> None:
        self.kernel = kernel
        self.q, self.d = kernel.num_mixtures, kernel.ard_num_dims
        self.size = self.q * (1 + 2 * self.d)

    def theta_parts(self):
        k = self.kernel
        scales = k.mixture_scales.reshape(self.q, self.d)
        means = k.mixture_means.reshape(self.q, self.d)
        rates = 2.0 * math.pi**2 * scales**2
        return [k.mixture_weights.reshape(-1), rates.T.reshape(-1), means.T.reshape(-1)]

    def evaluate(self, xi, xj, theta, start=0):
        q, d = self.q, self.d
        weights = _slice(theta, start, q)
        rates = [_slice(theta, start + q + i * q, q) for i in range(d)]
        means = [_slice(theta, start + q + d * q + i * q, q) for i in range(d)]
        return spectral_mixture(xi, xj, weights, rates, means, d)


class SpectralProductFormula(KernelFormula):
    """gpkern's Gaussian / Student-t spectral mixture product kernels (weights, frequencies, scales)."""

    def __init__(self, kernel, envelope: str) -> None:
        self.kernel, self.envelope = kernel, envelope
        self.dims, self.q = kernel.weights.shape[-2], kernel.weights.shape[-1]
        self.size = 3 * self.dims * self.q

    def theta_parts(self):
        k = self.kernel
        return [k.weights.reshape(-1), k.scales.reshape(-1), k.frequencies.reshape(-1)]

    def evaluate(self, xi, xj, theta, start=0):
        dq, q = self.dims * self.q, self.q
        w = [_slice(theta, start + i * q, q) for i in range(self.dims)]
        r = [_slice(theta, start + dq + i * q, q) for i in range(self.dims)]
        mu = [_slice(theta, start + 2 * dq + i * q, q) for i in range(self.dims)]
        return spectral_mixture_product(xi, xj, w, r, mu, self.envelope)


class SpectralSumFormula(KernelFormula):
    """gpkern's GSMP kernel: learned weights (A), fixed means and bandwidths (A x P)."""

    def __init__(self, kernel) -> None:
        self.kernel = kernel
        self.a, self.p = kernel.means.shape[-2], kernel.means.shape[-1]
        self.size = self.a * (1 + 2 * self.p)

    def theta_parts(self):
        k = self.kernel
        rates = 2.0 * math.pi**2 * k.bandwidths**2
        return [k.weights.reshape(-1), rates.T.reshape(-1), k.means.T.reshape(-1)]

    def evaluate(self, xi, xj, theta, start=0):
        a, p = self.a, self.p
        w = _slice(theta, start, a)
        r = [_slice(theta, start + a + i * a, a) for i in range(p)]
        mu = [_slice(theta, start + a + p * a + i * a, a) for i in range(p)]
        return spectral_mixture_sum(xi, xj, w, r, mu)


class _Scale(KernelFormula):
    def __init__(self, kernel: gpytorch.kernels.ScaleKernel, child: KernelFormula) -> None:
        self.kernel, self.child = kernel, child
        self.size, self.n_extra = 1 + child.size, child.n_extra

    def theta_parts(self):
        return [self.kernel.outputscale.reshape(-1)] + self.child.theta_parts()

    def extras(self, x, theta, start=0):
        return self.child.extras(x, theta, start + 1)

    def extra_widths(self):
        return self.child.extra_widths()

    def evaluate(self, xi, xj, theta, start=0):
        return self.child.evaluate(xi, xj, theta, start + 1) * _slice(theta, start, 1)


class _Linear(KernelFormula):
    r""":math:`v\, x^\top x'` (GPyTorch ``LinearKernel``), or the dot product when ``kernel`` is None."""

    def __init__(self, kernel: gpytorch.kernels.LinearKernel | None) -> None:
        self.kernel = kernel
        self.size = 0 if kernel is None else 1

    def theta_parts(self):
        return [] if self.kernel is None else [self.kernel.variance.reshape(-1)]

    def evaluate(self, xi, xj, theta, start=0):
        dot = (_whole(xi) * _whole(xj)).sum(-1)
        return dot if self.kernel is None else dot * _slice(theta, start, 1)


class _Combine(KernelFormula):
    def __init__(self, children: list[KernelFormula], op: str) -> None:
        self.children, self.op = children, op
        self.size = sum(c.size for c in children)
        self.n_extra = sum(c.n_extra for c in children)

    def theta_parts(self):
        return [p for c in self.children for p in c.theta_parts()]

    def extras(self, x, theta, start=0):
        parts = []
        for child in self.children:
            parts.append(child.extras(x, theta, start))
            start += child.size
        return torch.cat(parts, -1)

    def extra_widths(self):
        return [w for child in self.children for w in child.extra_widths()]

    def evaluate(self, xi, xj, theta, start=0):
        if self.n_extra:
            (di, ei), (dj, ej) = _split(xi, self.n_extra), _split(xj, self.n_extra)
        out, col = None, 0
        for child in self.children:
            if self.n_extra and child.n_extra:
                cols = range(col, col + child.n_extra)
                ci, cj = _join(di, _select(ei, cols)), _join(dj, _select(ej, cols))
                col += child.n_extra
            elif self.n_extra:
                ci, cj = di, dj
            else:
                ci, cj = xi, xj
            value = child.evaluate(ci, cj, theta, start)
            start += child.size
            out = value if out is None else (out + value if self.op == "sum" else out * value)
        return out


