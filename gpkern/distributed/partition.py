r"""Contiguous, balanced row partitions: which training rows each process holds.

Rank :math:`r` of :math:`P` holds rows :math:`[s_r, s_{r+1})` with
:math:`s_r = r \lfloor n / P \rfloor + \min(r, n \bmod P)`: the first :math:`n \bmod P` ranks
hold one row more than the others, so block sizes differ by at most one.
"""

from __future__ import annotations

__all__ = ["row_partition"]


def row_partition(n: int, world_size: int) -> list[slice]:
    r"""Split the rows ``range(n)`` into ``world_size`` contiguous blocks of balanced sizes.

    Parameters
    ----------
    n : int
        Number of rows (non-negative).
    world_size : int
        Number of processes (positive).

    Returns
    -------
    list of slice
        ``world_size`` slices with ``step=None``, in rank order, covering ``range(n)``
        exactly once; sizes :math:`\lceil n/P \rceil` for the first :math:`n \bmod P` ranks and
        :math:`\lfloor n/P \rfloor` for the others (empty when :math:`n < P`).

    Examples
    --------
    >>> from gpkern.distributed.partition import row_partition
    >>> row_partition(10, 3)
    [slice(0, 4, None), slice(4, 7, None), slice(7, 10, None)]
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}.")
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be a positive int, got {world_size!r}.")
    size, extra = divmod(n, world_size)
    starts = [r * size + min(r, extra) for r in range(world_size + 1)]
    return [slice(starts[r], starts[r + 1]) for r in range(world_size)]
