"""Exceptions and warnings raised by gpkern."""

from __future__ import annotations

__all__ = ["NotPSDError", "NumericalWarning", "LowESSWarning", "CGConvergenceWarning"]


class NotPSDError(ValueError):
    """A matrix that must be positive definite is not, even after adding jitter.

    Subclasses :class:`ValueError` so that scikit-learn style callers that catch
    ``ValueError`` for bad input also catch a kernel that is not positive semi-definite.
    """


class NumericalWarning(RuntimeWarning):
    """A numerical safeguard was used (for example jitter was added to a kernel matrix)."""


class LowESSWarning(RuntimeWarning):
    """An importance sampler's effective sample size is low; its estimates may be unreliable."""


class CGConvergenceWarning(RuntimeWarning):
    """Conjugate gradients stopped at its iteration budget before reaching its tolerance.

    The solution (or a log-determinant estimate built on it) is less accurate than requested;
    the message names the setting to change.
    """
