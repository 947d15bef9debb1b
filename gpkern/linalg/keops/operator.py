r"""The kernel matrix as a :class:`linear_operator.LinearOperator` with memory linear in n."""

from __future__ import annotations

import warnings

import gpytorch
import torch
from linear_operator.operators import LinearOperator

from gpkern.linalg.keops.formula import KernelFormula
from gpkern.linalg.keops.reductions import WIDE_RHS, keops_matmul, torch_matmul
from gpkern.linalg.keops.registry import operator_formula
from gpkern.linalg.keops.runtime import KeOpsCompileError, KeOpsRuntime

__all__ = ["KernelOperator", "kernel_operator"]


class KernelOperator(LinearOperator):
    r"""The kernel matrix :math:`K(x_1, x_2)` as a lazy :class:`~linear_operator.LinearOperator`.

    Matrix products are KeOps reductions (``backend="keops"``) or row-blocked torch products
    (``backend="torch"``); the diagonal and single entries are evaluated directly.  Memory is
    :math:`O((n + m)(d + c))` per batch element for :math:`c` right-hand sides.  gpkern's CG and
    Lanczos (:mod:`gpkern.linalg.cg`) and linear_operator's generic algorithms use it unchanged;
    gradients with respect to the hyperparameter vector flow through ``theta`` (one reduction
    for all hyperparameters).

    Batch dimensions follow linear_operator's conventions: inputs of batch shapes ``b1`` and
    ``b2`` give a ``(*broadcast(b1, b2), n, m)`` operator, :math:`K_{b} = K(x_{1,b}, x_{2,b})`
    with one ``theta`` shared by the whole batch.  A product with a right-hand side
    ``(*b, m, c)`` broadcasts as ``torch.matmul``; batch dimensions along which the kernel is
    constant (those only the right-hand side has, or where both inputs have size one) become
    columns of a single reduction.  Under KeOps the kernel's batch dimensions are KeOps batch
    dimensions: one compiled reduction for the whole batch.

    Parameters
    ----------
    x1 : torch.Tensor of shape (\*b1, n, d)
    x2 : torch.Tensor of shape (\*b2, m, d)
        ``b1`` and ``b2`` must broadcast.
    theta : torch.Tensor of shape (p,)
        Flat hyperparameters, usually ``formula.theta()``.
    formula : KernelFormula
    backend : {"keops", "torch"}, default="keops"
        ``"keops"`` falls back to ``"torch"`` with a :class:`KeOpsFallbackWarning` the first time
        pykeops fails to compile or run (errors of the formula's own code propagate).
    grad_formula : KernelFormula, optional
        The same kernel with the same ``theta``, used for KeOps products that must be
        differentiated (default ``formula``). :func:`kernel_operator` passes one whose scales
        stay KeOps parameters: its backward is one reduction for all hyperparameters, while
        ``formula``'s per-point scaled inputs are faster forward but need input gradients.
    runtime : KeOpsRuntime, optional
        Fallback state shared with other operators (a model passes one to all the operators it
        builds); by default the operator has its own, so a failure elsewhere does not affect it.

    Raises
    ------
    ValueError
        If the inputs are not at least 2-D with the same number of features, or their batch
        shapes do not broadcast.

    Examples
    --------
    >>> import torch, gpytorch
    >>> from gpkern.linalg.keops import kernel_operator
    >>> x = torch.randn(100, 2, dtype=torch.float64)
    >>> K = kernel_operator(gpytorch.kernels.RBFKernel(), x, backend="torch")
    >>> (K @ torch.ones(100, 1, dtype=torch.float64)).shape
    torch.Size([100, 1])
    >>> xb = torch.randn(3, 50, 2, dtype=torch.float64)  # three independent kernel matrices
    >>> Kb = kernel_operator(gpytorch.kernels.RBFKernel(), xb, backend="torch")
    >>> (Kb @ torch.ones(50, 4, dtype=torch.float64)).shape
    torch.Size([3, 50, 4])
    """

    def __init__(
        self,
        x1,
        x2,
        theta,
        *,
        formula: KernelFormula,
        backend: str = "keops",
        grad_formula: KernelFormula | None = None,
        runtime: KeOpsRuntime | None = None,
    ) -> None:
        if x1.dim() < 2 or x2.dim() < 2 or x1.shape[-1] != x2.shape[-1]:
            raise ValueError(
                "KernelOperator takes inputs of shapes (*batch, n, d) and (*batch, m, d), got "
                f"{tuple(x1.shape)} and {tuple(x2.shape)}."
            )
        try:
            torch.broadcast_shapes(x1.shape[:-2], x2.shape[:-2])
        except RuntimeError as exc:
            raise ValueError(
                f"the batch shapes {tuple(x1.shape[:-2])} and {tuple(x2.shape[:-2])} of x1 and "
                "x2 do not broadcast."
            ) from exc
        if backend not in ("keops", "torch"):
            raise ValueError(f"backend must be 'keops' or 'torch', got {backend!r}.")
        grad_formula = formula if grad_formula is None else grad_formula
        runtime = KeOpsRuntime() if runtime is None else runtime
        super().__init__(
            x1,
            x2,
            theta,
            formula=formula,
            backend=backend,
            grad_formula=grad_formula,
            runtime=runtime,
        )
        self.x1, self.x2, self.theta_vec = x1, x2, theta
        self.formula, self.backend, self.grad_formula = formula, backend, grad_formula
        self.runtime = runtime

    def _on(
        self, x1: torch.Tensor, x2: torch.Tensor, theta: torch.Tensor | None = None
    ) -> KernelOperator:
        """The same kernel (formula, ``theta``, backend and runtime) on other inputs; ``theta``
        replaces the parameter vector (the same values through another autograd path)."""
        return KernelOperator(
            x1,
            x2,
            self.theta_vec if theta is None else theta,
            formula=self.formula,
            backend=self.backend,
            grad_formula=self.grad_formula,
            runtime=self.runtime,
        )

    def _with_inputs(self, fn) -> KernelOperator:
        """The same kernel on ``fn(x1)`` and ``fn(x2)`` (``fn`` acts on the batch dimensions)."""
        x1 = fn(self.x1)
        return self._on(x1, x1 if self.x2 is self.x1 else fn(self.x2))

    def _full_batch(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``(*b, k, d)`` expanded (a view) to the operator's batch shape."""
        return x.expand(*self.batch_shape, *x.shape[-2:])

    def _size(self) -> torch.Size:
        batch = torch.broadcast_shapes(self.x1.shape[:-2], self.x2.shape[:-2])
        return torch.Size([*batch, self.x1.shape[-2], self.x2.shape[-2]])

    def _transpose_nonbatch(self):
        # Every formula here is a symmetric function k(x, x') = k(x', x).
        return self._on(self.x2, self.x1)

    def _expand_batch(self, batch_shape):
        return self._with_inputs(lambda x: x.expand(*batch_shape, *x.shape[-2:]))

    def _unsqueeze_batch(self, dim: int):
        return self._with_inputs(lambda x: self._full_batch(x).unsqueeze(dim))

    def _permute_batch(self, *dims: int):
        n = len(dims)
        return self._with_inputs(lambda x: self._full_batch(x).permute(*dims, n, n + 1))

    def _getitem(self, row_index, col_index, *batch_indices):
        if torch.is_tensor(row_index) or torch.is_tensor(col_index):
            return super()._getitem(row_index, col_index, *batch_indices)
        # Slices of rows and columns are slices of the inputs: the result stays a kernel operator.
        x1 = self._full_batch(self.x1)[(*batch_indices, row_index)]
        x2 = self._full_batch(self.x2)[(*batch_indices, col_index)]
        return self._on(x1, x1 if self.x2 is self.x1 and row_index == col_index else x2)

    def _get_indices(self, row_index, col_index, *batch_indices):
        x1 = self._full_batch(self.x1)[(*batch_indices, row_index)]
        x2 = self._full_batch(self.x2)[(*batch_indices, col_index)]
        return self.formula(x1, x2, self.theta_vec)

    def _matmul(self, rhs: torch.Tensor) -> torch.Tensor:
        vector = rhs.dim() == 1
        rhs = (rhs.unsqueeze(-1) if vector else rhs).to(self.x1.dtype)
        # Batch dimensions along which the kernel is constant (those of the right-hand side
        # only, or of size one here) become columns: one product for all of them.
        batch = torch.broadcast_shapes(self.batch_shape, rhs.shape[:-2])
        nb = len(batch)
        own = (1,) * (nb - len(self.batch_shape)) + tuple(self.batch_shape)
        keep = [i for i in range(nb) if own[i] != 1]
        fold = [i for i in range(nb) if own[i] == 1]
        order = [*keep, nb, *fold, nb + 1]
        kept = [batch[i] for i in keep]
        cols = rhs.expand(*batch, *rhs.shape[-2:]).permute(*order).reshape(*kept, rhs.shape[-2], -1)

        def drop_folded(x):  # (*b, k, d) -> (*b restricted to keep, k, d), a view
            full = (1,) * (nb - x.dim() + 2) + tuple(x.shape)
            return x.reshape(*[full[i] for i in keep], *x.shape[-2:])

        x1 = drop_folded(self.x1)
        x2 = x1 if self.x2 is self.x1 else drop_folded(self.x2)
        out = self._product(x1, x2, cols)  # (*kept, n, folded * c)
        out = out.reshape(*kept, out.shape[-2], *[batch[i] for i in fold], rhs.shape[-1])
        out = out.permute(*sorted(range(nb + 2), key=order.__getitem__))
        return out.squeeze(-1) if vector else out

    def _product(self, x1, x2, rhs):
        """``K V`` for inputs and right-hand side of the same batch dimensions."""
        out = None
        grad = torch.is_grad_enabled() and any(
            t.requires_grad for t in (rhs, self.theta_vec, x1, x2)
        )
        wide = rhs.shape[-1] > WIDE_RHS and x1.device.type == "cpu" and not grad
        if self.backend == "keops" and self.runtime.active and not wide:
            formula = self.grad_formula if grad else self.formula
            try:
                out = keops_matmul(formula, x1, x2, self.theta_vec, rhs)
            except KeOpsCompileError as exc:
                self.runtime.fail(exc)
        if out is None:
            out = torch_matmul(self.formula, x1, x2, self.theta_vec, rhs)
        return out

    def _diagonal(self) -> torch.Tensor:
        if self.x1.shape[-2] != self.x2.shape[-2]:
            raise RuntimeError("The diagonal of a non-square kernel operator is not defined.")
        diag = self.formula(self.x1, self.x2, self.theta_vec)
        return diag.expand(*self.batch_shape, self.x1.shape[-2])

    def columns(self, index: torch.Tensor, max_block_elements: int = 2**22) -> torch.Tensor:
        """The columns :math:`K_{:, \\mathrm{index}}` as a dense ``(*batch, n, b)`` tensor.

        Evaluated with torch in blocks of rows.
        """
        x2 = self.x2[..., index, :]
        n = self.x1.shape[-2]
        d = max(1, self.x1.shape[-1] + self.formula.n_extra) * max(1, self.batch_shape.numel())
        rows = max(1, max_block_elements // max(1, x2.shape[-2] * d))
        out = None  # filled in place: a list of blocks and its concatenation would hold it twice
        for s in range(0, max(n, 1), rows):  # one (empty) block when n = 0
            x1 = self.x1[..., s : s + rows, None, :]
            block = self.formula(x1, x2[..., None, :, :], self.theta_vec)
            if out is None:
                out = block.new_empty(*self.batch_shape, n, x2.shape[-2])
            out[..., s : s + rows, :] = block
        return out

    def pivoted_cholesky(
        self, rank: int, error_tol: float | None = None, return_pivots: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:  # (n, k), (k,)
        """Partial Cholesky factor with random pivots in blocks (:func:`~gpkern.linalg.rpcholesky.rp_cholesky`).

        Replaces ``linear_operator``'s greedy one-pivot-at-a-time factorisation (a Python loop of
        matrix-vector products: rank 2,048 on 10,000 points took 278 s against 3 s here).  It is
        used as a preconditioner only, so it is not differentiated: the stochastic log-determinant
        estimator stays unbiased for any fixed preconditioner.  The pivots are drawn from a
        generator with a fixed seed, so repeated calls at the same hyperparameters agree.
        """
        if self.batch_shape:
            return super().pivoted_cholesky(rank, error_tol, return_pivots)
        if self.x1 is not self.x2 and not torch.equal(self.x1, self.x2):
            raise RuntimeError("pivoted_cholesky needs a square (symmetric) kernel operator.")
        from gpkern.linalg.rpcholesky import rp_cholesky

        with torch.no_grad():
            F, pivots = rp_cholesky(
                self.columns,
                self._diagonal(),
                int(rank),
                tol=0.0 if error_tol is None else float(error_tol),
                generator=torch.Generator().manual_seed(0),
            )
        return (F, pivots) if return_pivots else F

    def to_dense(self) -> torch.Tensor:
        """The dense matrix (only for small sizes: :math:`O(nm)` memory per batch element)."""
        x1, x2 = self.x1[..., :, None, :], self.x2[..., None, :, :]
        return self.formula(x1, x2, self.theta_vec).expand(self.shape)


def kernel_operator(
    kernel: gpytorch.kernels.Kernel,
    x1: torch.Tensor,  # (*b1, n, d)
    x2: torch.Tensor | None = None,  # (*b2, m, d)
    *,
    backend: str = "keops",
    runtime: KeOpsRuntime | None = None,
) -> KernelOperator:  # (*broadcast(b1, b2), n, m)
    r"""The lazy kernel matrix of a GPyTorch kernel, see :class:`KernelOperator`.

    Parameters
    ----------
    kernel : gpytorch.kernels.Kernel
        Any kernel :func:`kernel_formula` supports, or a ``FeatureMapKernel`` over one
        (:func:`operator_formula`).
    x1 : torch.Tensor of shape (\*b1, n, d)
    x2 : torch.Tensor of shape (\*b2, m, d), optional
        Defaults to ``x1``. The batch shapes must broadcast (see :class:`KernelOperator`).
    backend : {"keops", "torch"}, default="keops"
    runtime : KeOpsRuntime, optional
        Fallback state shared with other operators (see :class:`KernelOperator`).

    Returns
    -------
    KernelOperator
    """
    input_map, formula = operator_formula(kernel, x1.shape[-1])
    grad_formula = operator_formula(kernel)[1] if input_map is None else formula
    same = x2 is None or x2 is x1
    x2 = x1 if x2 is None else x2
    if x1.shape[-1] != x2.shape[-1]:
        raise ValueError(f"x1 has {x1.shape[-1]} features but x2 has {x2.shape[-1]}.")
    if input_map is not None:
        x1 = input_map(x1)
        x2 = x1 if same else input_map(x2)
    theta = formula.theta() if formula.size else x1.new_zeros(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return KernelOperator(
            x1,
            x2,
            theta.to(x1.dtype),
            formula=formula,
            backend=backend,
            grad_formula=grad_formula,
            runtime=runtime,
        )
