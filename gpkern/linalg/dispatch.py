r"""Which linear-algebra backend solves a GP: one rule, overridable by the caller.

``backend="auto"`` picks

* ``"dense"`` (Cholesky of the :math:`n \times n` matrix, :mod:`gpkern.models.exact`) when
  :math:`n \le` :data:`DENSE_MAX_N` or when the kernel has no KeOps formula;
* ``"keops"`` (preconditioned CG and stochastic Lanczos on a KeOps kernel operator,
  :mod:`gpkern.models.iterative`) above it, when pykeops imports and compiles;
* ``"torch"`` (the same iterative solver on a row-blocked torch operator, also linear in memory)
  when pykeops cannot compile, with a :class:`KeOpsFallbackWarning`.

``backend="dense"`` and ``backend="keops"`` force a choice (``"keops"`` still falls back to
``"torch"`` with a warning when pykeops fails).

Why :data:`DENSE_MAX_N` = 5000: the dense path stores several :math:`n \times n` float64
matrices during a gradient step (kernel, Cholesky factor, their gradients: about
:math:`4 \cdot 8 n^2` bytes, 800 MB at :math:`n = 5000`) and its :math:`O(n^3)` Cholesky is
still faster than tens of CG iterations of :math:`O(n^2)` reductions up to a few thousand points
on a CPU; beyond it memory, not time, decides.
"""

from __future__ import annotations

import warnings

import gpytorch
import torch

__all__ = [
    "DENSE_MAX_N",
    "KeOpsFallbackWarning",
    "choose_backend",
    "keops_available",
    "warn_fallback",
]

#: Largest training set solved densely under ``backend="auto"``.
DENSE_MAX_N = 5000

_STATUS: dict[str, object] = {}


class KeOpsFallbackWarning(RuntimeWarning):
    """pykeops could not compile or run; a chunked torch operator is used instead."""


def warn_fallback(exc: BaseException) -> None:
    """Warn once per call site that KeOps failed and the chunked torch operator takes over."""
    warnings.warn(
        f"KeOps is unavailable ({exc}); falling back to the chunked torch kernel operator "
        "(same results and linear memory, several times slower). Check that a C++ compiler (g++) "
        "is installed and that KEOPS_CACHE_FOLDER is writable, or pass backend='dense'.",
        KeOpsFallbackWarning,
        stacklevel=3,
    )


def keops_available(dtype: torch.dtype = torch.float64) -> tuple[bool, str]:
    """Whether pykeops imports, compiles and runs a small reduction (cached per dtype).

    Returns
    -------
    ok : bool
    reason : str
        The error message when ``ok`` is False, else ``""``.
    """
    key = str(dtype)
    if key not in _STATUS:
        from gpkern.linalg.keops import KeOpsCompileError, keops_matmul, kernel_formula

        x = torch.zeros(2, 1, dtype=dtype)
        formula = kernel_formula(gpytorch.kernels.RBFKernel())
        try:
            with torch.no_grad():
                theta = formula.theta().to(dtype)
                keops_matmul(formula, x, x, theta, torch.ones(2, 1, dtype=dtype))
            _STATUS[key] = (True, "")
        except KeOpsCompileError as exc:
            _STATUS[key] = (False, str(exc))
    return _STATUS[key]  # type: ignore[return-value]


def _has_formula(kernel: gpytorch.kernels.Kernel) -> tuple[bool, str]:
    from gpkern.linalg.keops import operator_formula

    try:
        operator_formula(kernel)
    except TypeError as exc:
        return False, str(exc)
    return True, ""


def choose_backend(
    n: int,
    kernel: gpytorch.kernels.Kernel,
    backend: str = "auto",
    dtype: torch.dtype = torch.float64,
) -> str:
    """Resolve ``backend`` to ``"dense"``, ``"keops"`` or ``"torch"`` for ``n`` training points.

    Parameters
    ----------
    n : int
        Number of training points.
    kernel : gpytorch.kernels.Kernel
        The covariance function (KeOps needs a formula for every part of it).
    backend : {"auto", "dense", "keops"}, default="auto"
    dtype : torch.dtype, default=torch.float64

    Returns
    -------
    str
        ``"dense"``, ``"keops"`` or ``"torch"`` (the chunked fallback, after a
        :class:`KeOpsFallbackWarning`).

    Raises
    ------
    ValueError
        For an unknown ``backend``, or ``backend="keops"`` with a kernel that has no KeOps formula.

    Examples
    --------
    >>> import gpytorch
    >>> from gpkern.linalg.dispatch import choose_backend
    >>> choose_backend(100, gpytorch.kernels.RBFKernel())
    'dense'
    """
    if backend not in ("auto", "dense", "keops"):
        raise ValueError(f"backend must be 'auto', 'dense' or 'keops', got {backend!r}.")
    if backend == "dense":
        return "dense"
    ok, reason = _has_formula(kernel)
    if not ok:
        if backend == "keops":
            raise ValueError(f"backend='keops' needs a kernel with a KeOps formula: {reason}")
        return "dense"
    if backend == "auto" and n <= DENSE_MAX_N:
        return "dense"
    available, why = keops_available(dtype)
    if not available:
        from gpkern.linalg.keops import FALLBACK

        warn_fallback(RuntimeError(why))
        FALLBACK["active"] = True  # later KeOps operators go straight to torch, silently
        return "torch"
    return "keops"
