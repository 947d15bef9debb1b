r"""Which linear-algebra backend solves a GP: one rule, overridable by the caller.

For scattered points, :func:`choose_backend` resolves ``backend="auto"`` to

* ``"dense"`` (Cholesky of the :math:`n \times n` matrix, :mod:`gpkern.models.exact`) when
  :math:`n \le` :data:`DENSE_MAX_N`, or when the kernel has no KeOps formula (above
  :data:`DENSE_MAX_N` with a :class:`NoKeOpsFormulaWarning`: register one with
  :func:`gpkern.linalg.keops.registry.register_formula`);
* ``"keops"`` (preconditioned CG and stochastic Lanczos on a KeOps kernel operator,
  :mod:`gpkern.models.iterative`) above it, when pykeops imports and compiles;
* ``"torch"`` (the same iterative solver on a row-blocked torch operator, also linear in memory)
  when pykeops cannot compile, with a :class:`KeOpsFallbackWarning`.

``backend="dense"`` and ``backend="keops"`` force a choice (``"keops"`` still falls back to
``"torch"`` with a warning when pykeops fails).

For points on (part of) a Cartesian grid with a product kernel, :func:`choose_grid_backend`
picks ``"kronecker"`` (every cell observed), ``"kronecker-partial"`` (a large enough fraction
of a small enough grid) or ``"dense"``; the grid itself is detected by the estimator.

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

from gpkern.linalg.keops import (
    KeOpsCompileError,
    KeOpsFallbackWarning,
    keops_matmul,
    kernel_formula,
    operator_formula,
    warn_fallback,
)

__all__ = [
    "DENSE_MAX_N",
    "KeOpsFallbackWarning",
    "NoKeOpsFormulaWarning",
    "choose_backend",
    "choose_grid_backend",
    "keops_available",
    "warn_fallback",
]

#: Largest training set solved densely under ``backend="auto"``.
DENSE_MAX_N = 5000

_STATUS: dict[str, object] = {}


class NoKeOpsFormulaWarning(RuntimeWarning):
    """A large problem is solved densely because its kernel has no KeOps formula."""


def keops_available(dtype: torch.dtype = torch.float64) -> tuple[bool, str]:
    """Whether pykeops imports, compiles and runs a small reduction (cached per dtype).

    This probes the installation (compiler, cache folder), which is the same for the whole
    process; whether a given operator has fallen back is its own
    :class:`~gpkern.linalg.keops.runtime.KeOpsRuntime`.

    Returns
    -------
    ok : bool
    reason : str
        The error message when ``ok`` is False, else ``""``.
    """
    key = str(dtype)
    if key not in _STATUS:
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

    Warns
    -----
    NoKeOpsFormulaWarning
        ``backend="auto"``, ``n > DENSE_MAX_N`` and a kernel without a KeOps formula: the dense
        path is used (:math:`O(n^2)` memory).
    KeOpsFallbackWarning
        pykeops cannot compile here: the chunked torch operator is used.

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
        if n > DENSE_MAX_N:
            warnings.warn(
                f"{n} training points exceed DENSE_MAX_N = {DENSE_MAX_N}, but the kernel has no "
                f"KeOps formula ({reason}); solving densely, with O(n^2) memory and O(n^3) time. "
                "Register a formula with gpkern.linalg.keops.register_formula, or pass "
                "backend='dense' to choose this explicitly.",
                NoKeOpsFormulaWarning,
                stacklevel=2,
            )
        return "dense"
    if backend == "auto" and n <= DENSE_MAX_N:
        return "dense"
    available, why = keops_available(dtype)
    if not available:
        warn_fallback(RuntimeError(why))
        return "torch"
    return "keops"


def choose_grid_backend(
    n_observed: int,
    n_cells: int | None,
    *,
    distinct: bool = True,
    max_cells: int | None = None,
    min_fill: float = 0.0,
) -> str:
    """Resolve the backend of a product-kernel GP whose points may lie on a Cartesian grid.

    Parameters
    ----------
    n_observed : int
        Number of observed grid cells (training points).
    n_cells : int or None
        Number of cells :math:`N = \\prod_i n_i` of the smallest grid holding the points, or None
        when there is no grid.
    distinct : bool, default=True
        Whether every point falls in its own cell (repeated points need the dense path).
    max_cells : int, optional
        Largest grid the Kronecker backend builds (no limit when None).
    min_fill : float, default=0.0
        Smallest fraction of observed cells for the Kronecker backend.

    Returns
    -------
    str
        ``"kronecker"`` (every cell observed: exact eigendecomposition solves),
        ``"kronecker-partial"`` (missing cells: CG with Kronecker products) or ``"dense"``.

    Examples
    --------
    >>> choose_grid_backend(12, 12), choose_grid_backend(10, 12), choose_grid_backend(2, 1000, min_fill=0.1)
    ('kronecker', 'kronecker-partial', 'dense')
    """
    if n_cells is None or not distinct or n_observed > n_cells:
        return "dense"
    if max_cells is not None and n_cells > max_cells:
        return "dense"
    if n_observed < min_fill * n_cells:
        return "dense"
    return "kronecker" if n_observed == n_cells else "kronecker-partial"
