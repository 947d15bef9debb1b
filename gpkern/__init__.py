"""gpkern: Gaussian processes and kernel methods in PyTorch."""

from gpkern._version import __version__

__all__ = ["__version__"]
