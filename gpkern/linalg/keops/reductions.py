r"""Reductions: :math:`K V` by a compiled KeOps map-reduce, or by blocked torch (the dense twin)."""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from gpkern.linalg.keops import runtime
from gpkern.linalg.keops.formula import KernelFormula, _Scale
from gpkern.linalg.keops.operands import _Cols
from gpkern.linalg.keops.runtime import KeOpsCompileError, keops_failure

__all__ = ["RHS_WIDTHS", "WIDE_RHS", "keops_matmul", "torch_matmul"]

#: Right-hand sides are padded to one of these widths (then split in blocks of the largest), so
#: a formula compiles a handful of times instead of once per column count.
RHS_WIDTHS = (1, 16)


def _padded_width(c: int) -> int:
    for w in RHS_WIDTHS:
        if c <= w:
            return w
    return RHS_WIDTHS[-1]


def _with_batch(t: torch.Tensor, n_batch: int) -> torch.Tensor:
    """``t`` ``(*b, k, w)`` viewed with leading ones up to ``n_batch`` batch dimensions."""
    return t.reshape((1,) * (n_batch - t.dim() + 2) + tuple(t.shape))


def keops_matmul(
    formula: KernelFormula,
    x1: torch.Tensor,  # (*b1, n, d)
    x2: torch.Tensor,  # (*b2, m, d)
    theta: torch.Tensor,  # (p,)
    rhs: torch.Tensor,  # (*b, m, c)
) -> torch.Tensor:  # (*broadcast(b1, b2, b), n, c)
    """:math:`K(x_1, x_2)\\, V` by a KeOps reduction (differentiable in all its arguments).

    Batch dimensions broadcast as in ``torch.matmul``; they become KeOps batch dimensions (one
    compiled reduction for the whole batch), and ``theta`` is shared by every batch element.

    Raises
    ------
    KeOpsCompileError
        If pykeops is missing or fails to compile or run the reduction (an exception raised
        inside pykeops, see :func:`~gpkern.linalg.keops.runtime.keops_failure`). Any other
        exception, e.g. from a formula's own code, propagates unchanged.
    """
    LazyTensor = runtime.lazy_tensor_class()
    c = rhs.shape[-1]
    block = RHS_WIDTHS[-1]
    nb = len(torch.broadcast_shapes(x1.shape[:-2], x2.shape[:-2], rhs.shape[:-2]))
    try:
        # Per-point columns (layer variances of a network kernel) are computed once per point in
        # torch; the reduction then only evaluates the pair part of the formula.
        # One KeOps variable per block of columns (inputs, then each node's per-point columns):
        # slicing one wide variable costs a copy per pair (see _Cols).
        b1 = formula.operand_blocks(x1, theta)
        b2 = b1 if x2 is x1 else formula.operand_blocks(x2, theta)
        widths = [b.shape[-1] for b in b1]
        xi = _Cols([LazyTensor(_with_batch(b, nb).contiguous()[..., None, :]) for b in b1], widths)
        xj = _Cols(
            [LazyTensor(_with_batch(b, nb).contiguous()[..., None, :, :]) for b in b2], widths
        )
        th = LazyTensor(theta.contiguous()) if theta.numel() else None
        # An outermost ScaleKernel multiplies the reduction's result instead of every pair.
        scale = isinstance(formula, _Scale)
        K = formula.child.evaluate(xi, xj, th, 1) if scale else formula(xi, xj, th, augmented=True)
        outs = []
        for start in range(0, c, block):
            v = _with_batch(rhs[..., start : start + block], nb)
            w = _padded_width(v.shape[-1])
            if w > v.shape[-1]:
                v = torch.cat([v, v.new_zeros(*v.shape[:-1], w - v.shape[-1])], -1)
            # Batch dimensions come first; the reduction runs over j, the axis after i.
            out = (K * LazyTensor(v.contiguous()[..., None, :, :])).sum(dim=nb + 1)
            outs.append(out[..., : min(block, c - start)])
        out = torch.cat(outs, -1)
        return out * theta[0] if scale else out
    except Exception as exc:
        # Only pykeops' own failures mean "KeOps unavailable": a bug in a formula propagates.
        if isinstance(exc, KeOpsCompileError) or not keops_failure(exc):
            raise
        raise KeOpsCompileError(
            f"pykeops could not compile or run the kernel reduction: {exc}"
        ) from exc


def _dense_block(formula, x1b, x2, theta, rhs):
    return formula(x1b[..., :, None, :], x2[..., None, :, :], theta, augmented=True) @ rhs


#: Right-hand sides wider than this are multiplied with tiled torch on the CPU even under
#: ``backend="keops"`` (when no gradient is needed): a KeOps CPU reduction loops over the columns pair by pair in scalar
#: code, while a torch block evaluates each kernel entry once and multiplies at BLAS speed
#: (2-ReLU-layer NNGP, n = 10,000, 256 columns: 4.1 s against 31.7 s for sixteen 16-column
#: reductions; scaled RBF 2.2 s against 20 s).
WIDE_RHS = 16


def torch_matmul(
    formula: KernelFormula,
    x1: torch.Tensor,  # (*b1, n, d)
    x2: torch.Tensor,  # (*b2, m, d)
    theta: torch.Tensor,  # (p,)
    rhs: torch.Tensor,  # (*b, m, c)
    max_block_elements: int = 2**22,
) -> torch.Tensor:  # (*broadcast(b1, b2, b), n, c)
    """:math:`K(x_1, x_2)\\, V` in blocks with plain torch (the KeOps fallback, and wide products).

    Batch dimensions broadcast as in ``torch.matmul``. With gradients, each block of rows (all
    columns, all batch elements) is recomputed in the backward pass (activation
    checkpointing), so memory stays :math:`O(\\text{block} \\cdot m \\cdot d)` per batch element
    instead of :math:`O(n m)`.  Without gradients the matrix is swept in tiles of rows and
    columns, so each tile of :math:`V` is read once per row block, not once per few rows.
    """
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in (x1, x2, theta, rhs))
    x1, x2 = formula.augment(x1, theta), formula.augment(x2, theta)
    batch = torch.broadcast_shapes(x1.shape[:-2], x2.shape[:-2], rhs.shape[:-2])
    n, m, d = x1.shape[-2], x2.shape[-2], max(1, x1.shape[-1]) * max(1, batch.numel())
    if grad:
        rows = max(1, max_block_elements // max(1, m * d))
        outs = []
        for start in range(0, max(n, 1), rows):  # one (empty) block when n = 0
            xb = x1[..., start : start + rows, :]
            outs.append(checkpoint(_dense_block, formula, xb, x2, theta, rhs, use_reentrant=False))
        return torch.cat(outs, -2)
    rows = max(1, min(n, 256))
    cols = max(1, max_block_elements // (rows * d))
    out = rhs.new_zeros(*batch, n, rhs.shape[-1])
    for start in range(0, n, rows):
        xb = x1[..., start : start + rows, :]
        acc = out[..., start : start + rows, :]
        for j in range(0, m, cols):
            acc += _dense_block(
                formula, xb, x2[..., j : j + cols, :], theta, rhs[..., j : j + cols, :]
            )
    return out
