r"""A kernel matrix split by rows across the processes of a ``torch.distributed`` group.

Every process holds the whole input matrix :math:`X` (:math:`n \times d`, small) and, for a
block of :math:`b` vectors :math:`V`, only its own rows :math:`V_r` (:math:`n_r \approx n/P`
of them, :func:`~gpkern.distributed.partition.row_partition`).  Process :math:`r` computes its
rows of the product,

.. math::

    (K V)_r = \sum_{s=0}^{P-1} K(X_r, X_s)\, V_s ,

one source block at a time: process :math:`s` broadcasts :math:`V_s` and every process adds
:math:`K(X_r, X_s) V_s` with the single-process kernel operator
(:func:`gpkern.linalg.keops.kernel_operator`, KeOps or row-blocked torch, every kernel it
supports).  Memory per process is :math:`O(n d + (n/P) b)`: :math:`X`, the rows of
:math:`V` and of the result, and one source block; no :math:`n \times n` (or
:math:`n_r \times n`) matrix ever exists.  With ``exchange="all_gather"`` the whole :math:`V` is
gathered first and multiplied in one reduction instead (:math:`O(n b)` memory, one collective
per product instead of :math:`P`).  A product that is differentiated (one per marginal
likelihood evaluation) keeps the blocks it received for its backward pass, :math:`O(n b)`
until ``backward`` (:math:`8 n b` bytes: 128 MB for a million points and 16 columns).

Communication per product is the :math:`P` source blocks, :math:`n b` numbers
(:math:`8 n b` bytes in float64) of broadcast payload per process; :class:`Collectives` counts
the payload of every collective it runs (``bytes_communicated``), and each operator its last
product's (``last_product_bytes``).  Gradients with respect to the hyperparameters: a process
differentiates its own rows only, so the hyperparameter vector passes through
:meth:`Collectives.sum_gradients`, whose backward pass sums the gradients over the processes,
and every process ends with the whole gradient.
"""

from __future__ import annotations

import gpytorch
import torch
import torch.distributed as dist

from gpkern.distributed.partition import row_partition
from gpkern.linalg.keops import KeOpsRuntime, KernelOperator, kernel_operator

__all__ = ["Collectives", "DistributedKernelOperator"]

# How a distributed kernel product moves the blocks of its right-hand side.
_EXCHANGES = ("broadcast", "all_gather")


def _check_exchange(exchange: str) -> None:
    """Raise a ``ValueError`` unless ``exchange`` is one of ``_EXCHANGES``."""
    if exchange not in _EXCHANGES:
        raise ValueError(f"exchange must be 'broadcast' or 'all_gather', got {exchange!r}.")


class Collectives:
    r"""The collectives of row-split linear algebra on one process group, with a byte counter.

    Parameters
    ----------
    group : torch.distributed.ProcessGroup, optional
        The processes that share the rows (default: the whole world).

    Attributes
    ----------
    rank, world_size : int
        This process's rank in ``group`` and the group's size.
    bytes_communicated : int
        Payload bytes of every collective run so far: for a sum (``all_reduce``) or a broadcast
        the size of the tensor, once per process (what the network carries depends on the
        backend's algorithm, about twice that for a ring ``all_reduce``).  Nothing is counted
        with one process, which communicates nothing.
    n_collectives : int
        Collectives run so far.

    Raises
    ------
    RuntimeError
        When ``torch.distributed`` is not initialised.

    Examples
    --------
    >>> import torch.distributed as dist
    >>> from gpkern.distributed.operator import Collectives
    >>> comm = Collectives() if dist.is_initialized() else None  # inside torchrun
    """

    def __init__(self, group: dist.ProcessGroup | None = None) -> None:
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError(
                "torch.distributed is not initialised: launch with torchrun (torchrun "
                "--nproc-per-node P script.py) or call torch.distributed.init_process_group() "
                "in every process first."
            )
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        self.bytes_communicated = 0
        self.n_collectives = 0

    def __deepcopy__(self, memo) -> Collectives:
        # A process group is shared by the processes' models, never copied.
        return self

    def reset(self) -> None:
        """Set the counters to zero."""
        self.bytes_communicated = 0
        self.n_collectives = 0

    def _count(self, t: torch.Tensor) -> None:
        self.bytes_communicated += t.numel() * t.element_size()
        self.n_collectives += 1

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` summed over the processes (a new tensor; ``t`` is left as it is)."""
        if self.world_size == 1:
            return t
        out = t.detach().contiguous().clone()
        dist.all_reduce(out, group=self.group)
        self._count(out)
        return out

    def broadcast(self, t: torch.Tensor, src: int) -> torch.Tensor:
        """``t`` from group rank ``src``, in place on every process."""
        if self.world_size == 1:
            return t
        source = src if self.group is None else dist.get_global_rank(self.group, src)
        dist.broadcast(t, source, group=self.group)
        self._count(t)
        return t

    def all_gather_rows(self, t: torch.Tensor, parts: list[slice]) -> torch.Tensor:
        """The rows of every process, stacked in rank order (blocks per ``parts``)."""
        if self.world_size == 1:
            return t
        size = max(p.stop - p.start for p in parts)
        padded = t.new_zeros(size, *t.shape[1:])
        padded[: t.shape[0]] = t
        blocks = [torch.empty_like(padded) for _ in parts]
        dist.all_gather(blocks, padded, group=self.group)
        self._count(padded)
        return torch.cat([b[: p.stop - p.start] for b, p in zip(blocks, parts)])

    def sum_gradients(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` itself, whose gradient is summed over the processes in the backward pass."""
        if self.world_size == 1 or not (torch.is_grad_enabled() and t.requires_grad):
            return t
        return _SumGradients.apply(t, self)


class _SumGradients(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t: torch.Tensor, comm: Collectives) -> torch.Tensor:
        ctx.comm = comm
        return t.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return ctx.comm.sum(grad), None


class DistributedKernelOperator:
    r"""This process's row block of a kernel matrix whose rows are split across processes.

    ``DistributedKernelOperator(kernel, X)`` is the square :math:`K(X, X)`: ``_matmul`` takes
    and returns this process's rows (:attr:`rows`) of an ``(n, b)`` block.  With ``x2``,
    :math:`K(X_1, X_2)` for test points :math:`X_1`: each process computes the rows
    :attr:`rows` of :math:`X_1`, takes the rows of :math:`V` it holds of the training split of
    :math:`X_2`, and the result is gathered, whole, to every process (``(m, b)``).  See
    :mod:`gpkern.distributed.operator` for the product, its memory and communication.

    Parameters
    ----------
    kernel : gpytorch.kernels.Kernel
        Any kernel :func:`gpkern.linalg.keops.kernel_operator` supports.
    x1 : torch.Tensor of shape (n, d)
        The whole input matrix, the same on every process.
    x2 : torch.Tensor of shape (m2, d), optional
        The whole training inputs of a cross-covariance (default: ``x1``, square).
    comm : Collectives
    backend : {"keops", "torch"}, default="keops"
    runtime : KeOpsRuntime, optional
        Fallback state shared with the caller's other operators.
    exchange : {"broadcast", "all_gather"}, default="broadcast"
        How the blocks of :math:`V` travel: one broadcast per source block (memory
        :math:`O((n/P) b)`), or one ``all_gather`` of the whole :math:`V` (:math:`O(n b)`).

    Attributes
    ----------
    rows : slice
        The rows of ``x1`` this process computes.
    sources : list of slice
        The row split of ``x2`` (the rows of :math:`V` each process holds).
    last_product_bytes : int
        Payload bytes communicated by the last product (see :class:`Collectives`).

    Examples
    --------
    >>> import gpytorch, torch, torch.distributed as dist
    >>> from gpkern.distributed.operator import Collectives, DistributedKernelOperator
    >>> if dist.is_initialized():  # every process, inside torchrun
    ...     X = torch.randn(1000, 3, dtype=torch.float64)
    ...     K = DistributedKernelOperator(gpytorch.kernels.RBFKernel(), X, comm=Collectives())
    ...     V = torch.ones(K.rows.stop - K.rows.start, 2, dtype=torch.float64)
    ...     KV = K._matmul(V)  # this process's rows of K @ ones(1000, 2)
    """

    def __init__(
        self,
        kernel: gpytorch.kernels.Kernel,
        x1: torch.Tensor,
        x2: torch.Tensor | None = None,
        *,
        comm: Collectives,
        backend: str = "keops",
        runtime: KeOpsRuntime | None = None,
        exchange: str = "broadcast",
    ) -> None:
        _check_exchange(exchange)
        base = kernel_operator(kernel, x1, x2, backend=backend, runtime=runtime)
        square = x2 is None or x2 is x1
        z1 = comm.sum_gradients(base.x1)
        z2 = z1 if square else comm.sum_gradients(base.x2)
        theta = comm.sum_gradients(base.theta_vec)
        self._setup(base, z1, z2, theta, square, comm, exchange)

    def _setup(self, base, z1, z2, theta, square, comm, exchange) -> None:
        self._base, self.square, self.comm, self.exchange = base, square, comm, exchange
        self.z1, self.z2, self.theta = z1, z2, theta
        self.rows = row_partition(z1.shape[0], comm.world_size)[comm.rank]
        self.sources = row_partition(z2.shape[0], comm.world_size)
        self.last_product_bytes = 0
        self._local = self._block(z2)  # this process's rows against every column
        self._blocks = [self._block(z2[s]) for s in self.sources]

    def _block(self, x2: torch.Tensor) -> KernelOperator:
        return self._base._on(self.z1[self.rows], x2, theta=self.theta)

    @property
    def shape(self) -> torch.Size:
        return torch.Size([self.z1.shape[0], self.z2.shape[0]])

    def detach(self) -> DistributedKernelOperator:
        """The same operator with no autograd graph (and no gradient reduction)."""
        out = object.__new__(DistributedKernelOperator)
        z1 = self.z1.detach()
        z2 = z1 if self.square else self.z2.detach()
        out._setup(
            self._base, z1, z2, self.theta.detach(), self.square, self.comm, self.exchange
        )
        return out

    def _matmul(self, V: torch.Tensor) -> torch.Tensor:  # (n2_r, b) -> (n1_r, b) or (n1, b)
        """This process's rows of :math:`K V` (all rows for a cross-covariance), given its
        rows of :math:`V`; collective: every process of the group calls it."""
        if V.requires_grad and torch.is_grad_enabled():
            raise ValueError(
                "DistributedKernelOperator products are differentiable in the kernel's "
                "hyperparameters, not in V (its blocks travel between processes)."
            )
        mine = self.sources[self.comm.rank]
        if V.dim() != 2 or V.shape[0] != mine.stop - mine.start:
            raise ValueError(
                f"V must hold this process's {mine.stop - mine.start} rows as (rows, b), got "
                f"{tuple(V.shape)}."
            )
        V = V.to(self.z1.dtype)
        start = self.comm.bytes_communicated
        n_rows = self.rows.stop - self.rows.start
        if self.exchange == "all_gather" or self.comm.world_size == 1:
            whole = self.comm.all_gather_rows(V, self.sources)
            out = self._local._matmul(whole) if n_rows else None
        else:
            out = None
            for src, part in enumerate(self.sources):
                block = V if src == self.comm.rank else V.new_empty(part.stop - part.start, V.shape[1])
                self.comm.broadcast(block, src)
                if n_rows and block.shape[0]:
                    term = self._blocks[src]._matmul(block)
                    out = term if out is None else out + term
        if out is None:
            out = V.new_zeros(n_rows, V.shape[1])
        if not self.square:  # test points: every process gets every row
            whole = V.new_zeros(self.shape[0], V.shape[1])
            whole[self.rows] = out
            out = self.comm.sum(whole)
        self.last_product_bytes = self.comm.bytes_communicated - start
        return out

    def _diagonal(self) -> torch.Tensor:  # (n,)
        """The whole diagonal of the square matrix, on every process (:math:`O(n)` kernel
        evaluations, no communication): pivot choices need all of it."""
        if not self.square:
            raise RuntimeError("The diagonal of a cross-covariance operator is not defined.")
        return self._base.formula(self.z1, self.z1, self.theta)

    def columns(self, index: torch.Tensor) -> torch.Tensor:  # (b,) -> (n1_r, b)
        """This process's rows of the columns :math:`K_{:, \\mathrm{index}}` (no communication)."""
        return self._local.columns(index)
