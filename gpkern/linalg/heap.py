r"""Giving freed heap memory back to the operating system before a large allocation.

Tensors smaller than glibc's dynamic ``mmap`` threshold (it grows to 32 MiB once a block that
size has been freed) live on the C heap, and freeing them does not return the pages to the
operating system while other blocks sit above them.  A dense GP fit on a few thousand points
leaves hundreds of MB of such freed heap resident (a 2,000-point NNGP fit: 1.26 GB resident
after the fit, 0.46 GB after :func:`trim_heap`), and a large tensor allocated next, such as the
:math:`n \times r` preconditioner factor of a KeOps solve, is ``mmap``-ed and cannot reuse it, so
peak memory counts both.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

__all__ = ["trim_heap"]

_malloc_trim = None
_looked_up = False


def trim_heap() -> bool:
    """Return the C allocator's freed heap pages to the operating system (glibc only).

    Returns
    -------
    bool
        True when glibc's ``malloc_trim`` ran and released memory; False when it released nothing
        or the platform has no such call (macOS, Windows, musl), where this is a no-op.

    Examples
    --------
    >>> from gpkern.linalg.heap import trim_heap
    >>> isinstance(trim_heap(), bool)
    True
    """
    global _malloc_trim, _looked_up
    if not _looked_up:
        _looked_up = True
        if sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                _malloc_trim = libc.malloc_trim
                _malloc_trim.argtypes, _malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
            except (OSError, AttributeError):  # not glibc
                _malloc_trim = None
    return bool(_malloc_trim(0)) if _malloc_trim is not None else False
