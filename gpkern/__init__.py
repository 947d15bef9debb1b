"""gpkern: Gaussian processes and kernel methods in PyTorch."""

import os as _os

# pykeops prints a banner (no CUDA found, ...) on import; a library must not print. The
# caller's own setting wins.
_os.environ.setdefault("KEOPS_VERBOSE", "0")
_os.environ.setdefault("PYKEOPS_VERBOSE", "0")

from gpkern._version import __version__  # noqa: E402

__all__ = ["__version__"]
