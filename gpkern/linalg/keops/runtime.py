r"""The pykeops runtime: its lazy import, what counts as its failure, and the fallback state.

pykeops is imported on first use only (:func:`lazy_tensor_class`), so registering formulas and
building operators never needs it. A reduction that pykeops cannot compile or run is a
:class:`KeOpsCompileError`; :func:`keops_failure` tells such failures apart from errors of
gpkern's own formula code, which must propagate. Whether KeOps is still tried is the state of a
:class:`KeOpsRuntime`, shared by the operators that one model builds, never a process-wide flag.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

__all__ = [
    "KeOpsCompileError",
    "KeOpsFallbackWarning",
    "KeOpsRuntime",
    "keops_failure",
    "lazy_tensor_class",
    "warn_fallback",
]

#: Top-level packages of pykeops: an exception raised inside them is a KeOps failure.
_KEOPS_PACKAGES = ("pykeops", "keopscore")


class KeOpsCompileError(RuntimeError):
    """pykeops is missing, or could not compile or run a reduction."""


class KeOpsFallbackWarning(RuntimeWarning):
    """pykeops could not compile or run; a chunked torch operator is used instead."""


def warn_fallback(exc: BaseException, stacklevel: int = 3) -> None:
    """Warn that KeOps failed and the chunked torch operator takes over."""
    warnings.warn(
        f"KeOps is unavailable ({exc}); falling back to the chunked torch kernel operator "
        "(same results and linear memory, several times slower). Check that a C++ compiler (g++) "
        "is installed and that KEOPS_CACHE_FOLDER is writable, or pass backend='dense'.",
        KeOpsFallbackWarning,
        stacklevel=stacklevel,
    )


def lazy_tensor_class():
    """pykeops' torch ``LazyTensor`` class, imported on first use.

    Raises
    ------
    KeOpsCompileError
        If pykeops cannot be imported.
    """
    try:
        import pykeops

        pykeops.set_verbose(False)
        from pykeops.torch import LazyTensor
    except Exception as exc:  # pragma: no cover - depends on the installation
        raise KeOpsCompileError(f"pykeops cannot be imported: {exc}") from exc
    return LazyTensor


def _package_dirs() -> list[str]:
    dirs = []
    for name in _KEOPS_PACKAGES:
        module = sys.modules.get(name)
        path = getattr(module, "__file__", None)
        if path:
            dirs.append(os.path.dirname(os.path.abspath(path)) + os.sep)
    return dirs


def keops_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is a failure of pykeops itself (compiler, build, its own checks).

    True for :class:`KeOpsCompileError`, for a failed compiler subprocess, and for any exception
    raised inside pykeops' or keopscore's modules; False for everything else, e.g. a
    ``TypeError`` in a formula's own code, which is a bug to report, not a reason to fall back.

    Examples
    --------
    >>> keops_failure(KeOpsCompileError("no compiler")), keops_failure(TypeError("bug"))
    (True, False)
    """
    if isinstance(exc, (KeOpsCompileError, subprocess.CalledProcessError)):
        return True
    dirs = _package_dirs()
    if not dirs:
        return False
    tb = exc.__traceback__
    while tb is not None:
        filename = os.path.abspath(tb.tb_frame.f_code.co_filename)
        if any(filename.startswith(d) for d in dirs):
            return True
        tb = tb.tb_next
    return False


class KeOpsRuntime:
    """Whether the operators sharing this object still try KeOps.

    A :class:`~gpkern.linalg.keops.operator.KernelOperator` creates its own by default; a model passes one
    object to all the operators it builds, so that after a compile failure they go straight to
    torch with a single warning. Other operators in the process are not affected.

    Attributes
    ----------
    failure : str or None
        The message of the failure that switched these operators to torch, or None.

    Examples
    --------
    >>> runtime = KeOpsRuntime()
    >>> runtime.active
    True
    """

    def __init__(self) -> None:
        self.failure: str | None = None

    @property
    def active(self) -> bool:
        """True while KeOps has not failed for these operators."""
        return self.failure is None

    def fail(self, exc: BaseException) -> None:
        """Record a KeOps failure and warn (once per runtime) that torch takes over."""
        if self.failure is None:
            self.failure = str(exc)
            warn_fallback(exc, stacklevel=4)

    def __repr__(self) -> str:
        state = "active" if self.active else f"fallen back: {self.failure}"
        return f"KeOpsRuntime({state})"
