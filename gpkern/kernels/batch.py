r"""GPyTorch's batch convention for kernels whose parameters do not carry the batch shape.

A GPyTorch kernel with ``batch_shape=B`` is a batch of independent kernels: on inputs of batch
shape ``b`` it returns matrices of batch shape ``broadcast(b, B)``, and ``kernel[i]`` is the
kernel of batch member ``i``. GPyTorch reads the new batch shape after indexing off the
kernel's parameters and buffers, so a kernel with none (a fixed architecture's NNGP, a
parameter-free dual kernel) or with parameters shared by the batch (a feature map's network)
keeps its old batch shape under ``kernel[i]`` and then disagrees with its own outputs. These
two functions give such kernels the convention.

>>> import torch
>>> from gpkern.kernels.batch import expand_to_batch, indexed_batch_shape
>>> indexed_batch_shape(torch.Size([3, 2]), (0, 1)), indexed_batch_shape(torch.Size([2]), 0)
(torch.Size([]), torch.Size([]))
>>> expand_to_batch(torch.ones(4, 5), torch.Size([2]), diag=False).shape
torch.Size([2, 4, 5])
"""

from __future__ import annotations

import torch

__all__ = ["indexed_batch_shape", "expand_to_batch"]


def indexed_batch_shape(batch_shape: torch.Size, index) -> torch.Size:
    """Batch shape of ``kernel[index]`` for a kernel of batch shape ``batch_shape``.

    ``index`` is anything that indexes a tensor (ints, slices, broadcasting index tensors),
    applied to the batch dimensions only.
    """
    index = index if isinstance(index, tuple) else (index,)
    index = tuple(i.to("meta") if isinstance(i, torch.Tensor) else i for i in index)
    return torch.empty(batch_shape, device="meta")[index].shape


def expand_to_batch(
    out: torch.Tensor,  # (*b, n, m), (*b, n), or with last_dim_is_batch (*b, d, n, m), (*b, d, n)
    batch_shape: torch.Size,
    diag: bool,
    last_dim_is_batch: bool = False,
) -> torch.Tensor:  # (*broadcast(b, batch_shape), [d,] n[, m])
    """Broadcast a kernel value that does not depend on the batch member to the kernel's batch.

    The kernel's batch dimensions line up with the inputs' trailing batch dimensions, in front
    of the column dimension that ``last_dim_is_batch`` adds (as GPyTorch's own kernels do).
    """
    core = (1 if diag else 2) + int(last_dim_is_batch)
    lead = out.shape[: out.dim() - core]
    return out.expand(*torch.broadcast_shapes(lead, batch_shape), *out.shape[out.dim() - core :])
