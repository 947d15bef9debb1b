r"""Operands: the same formula code runs on pykeops LazyTensors and on broadcast torch tensors.

A formula receives its operands as LazyTensors (or :class:`_Cols` of them) inside a KeOps
reduction, as broadcast torch tensors ``(n, 1, d)`` / ``(1, m, d)`` in the chunked torch path,
or as paired rows ``(n, d)`` / ``(n, d)`` for diagonals and single entries. The helpers here
slice, split and join features the same way for all three.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


class _Cols:
    """A KeOps operand held as separate LazyTensor variables, one per block of columns.

    KeOps evaluates a slice of a variable (``Extract``) by copying it at every pair: slicing the
    scaled inputs out of one wide operand made a scaled RBF reduction 1.4 times slower than
    passing them as a variable of their own. So :func:`keops_matmul` passes the inputs and each
    formula node's per-point columns as separate variables, and the column helpers below
    (:func:`_select`, :func:`_split`, :func:`_join`, :func:`_elem`) pick whole blocks where they
    can; :func:`_whole` gives a node its operand as one LazyTensor.
    """

    def __init__(self, blocks: Sequence[Any], widths: Sequence[int]) -> None:
        self.blocks, self.widths = list(blocks), [int(w) for w in widths]

    @property
    def width(self) -> int:
        return sum(self.widths)

    def _locate(self, d: int) -> tuple[int, int]:
        for b, w in enumerate(self.widths):
            if d < w:
                return b, d
            d -= w
        raise IndexError(f"column {d} out of range")

    def select(self, dims: Sequence[int]) -> _Cols:
        dims, blocks, widths, i = [int(d) for d in dims], [], [], 0
        while i < len(dims):
            b, off = self._locate(dims[i])
            run = 1
            while (
                i + run < len(dims)
                and dims[i + run] == dims[i] + run
                and off + run < self.widths[b]
            ):
                run += 1
            if off == 0 and run == self.widths[b]:
                blocks.append(self.blocks[b])
            else:
                block = self.blocks[b]
                blocks.append(block[off] if run == 1 else block[off : off + run])
            widths.append(run)
            i += run
        return _Cols(blocks, widths)

    def whole(self):
        out = self.blocks[0]
        for block in self.blocks[1:]:
            out = out.concat(block)
        return out


def _is_lazy(t: Any) -> bool:
    return isinstance(t, _Cols) or type(t).__name__ in (
        "LazyTensor",
        "GenericLazyTensor",
        "ComplexLazyTensor",
    )


def _whole(t):
    """The operand as one LazyTensor (or the torch tensor itself)."""
    return t.whole() if isinstance(t, _Cols) else t


def _elem(t, k: int):
    """Entry ``k`` of the feature (last) axis."""
    if isinstance(t, _Cols):
        return t.select([k]).whole()
    return t[k] if _is_lazy(t) else t[..., k]


def _select(t, dims: Sequence[int]):
    """Features ``dims`` of the last axis (``active_dims``)."""
    dims = [int(d) for d in dims]
    if isinstance(t, _Cols):
        return t.select(dims)
    if not _is_lazy(t):
        return t[..., dims]
    if dims == list(range(dims[0], dims[0] + len(dims))):
        return t[dims[0] : dims[0] + len(dims)]
    out = t[dims[0]]
    for d in dims[1:]:
        out = out.concat(t[d])
    return out


def _sqrt(t):
    # KeOps defines d sqrt(0) = 0 (rsqrt(0) = 0); torch needs a floor so that the gradient of a
    # distance at r = 0 (the diagonal) is 0 instead of 0 * inf = nan.
    return t.sqrt() if _is_lazy(t) else t.clamp_min(1e-30).sqrt()


def _clamp(t, low: float, high: float):
    return t.clamp(low, high)



def _dim_vec(t, d: int):
    """Feature ``d`` kept as a length-1 vector (broadcasts against a vector of components)."""
    return t[d] if _is_lazy(t) else t[..., d : d + 1]


def _inner_dim(t) -> int:
    if isinstance(t, _Cols):
        return t.width
    return int(t.ndim) if _is_lazy(t) else int(t.shape[-1])



def _slice(theta, start: int, size: int):
    return theta[start : start + size]


def _split(t, n_extra: int):
    """Operand ``[data, extras]`` -> ``(data, extras)`` (``n_extra`` trailing columns)."""
    width = _inner_dim(t)
    return _select(t, range(width - n_extra)), _select(t, range(width - n_extra, width))


def _join(data, extras):
    if isinstance(data, _Cols):
        return _Cols(data.blocks + extras.blocks, data.widths + extras.widths)
    if _is_lazy(data):
        return data.concat(extras)
    return torch.cat([data, extras], -1)
