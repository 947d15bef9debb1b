r"""Exact GP regression with the training rows split across ``torch.distributed`` processes.

:class:`DistributedGP` is :class:`gpkern.models.iterative.IterativeGP` (same model, same
estimates, same code) on a row-split kernel operator
(:class:`~gpkern.distributed.operator.DistributedKernelOperator`): every process holds the
whole :math:`X` and :math:`Y` and rows :math:`r` (:func:`~gpkern.distributed.partition.row_partition`)
of every :math:`n`-long vector: targets, probes, solves, the preconditioner's factor.  The
library's one CG, Lanczos quadrature and randomly pivoted Cholesky run on those rows, their
column sums summed over the processes (``all_reduce``), so every process computes the same CG
coefficients, tridiagonals, pivots and log marginal likelihood as one process would with the
same seed; only the rounding of the sums differs.  The probes are the single-process probes:
each process draws all :math:`n` rows from the seeded generator and keeps its own.

Communication per CG iteration with :math:`b` right-hand sides (targets plus probes), a
preconditioner of rank :math:`k` and :math:`P > 1` processes, in payload numbers per process:
:math:`n b` for the kernel product (broadcast source blocks), :math:`k b` for the
preconditioner's :math:`F^\top V`, and :math:`3 b` for the CG inner products and residual
norms, that is :math:`8 b (n + k + 3)` bytes in float64.  Each block of :math:`q` pivots of the
factorisation exchanges :math:`n + q(k + q)` numbers, and the preconditioner's Gram matrix
:math:`k^2` once per evaluation.  Memory per process is that of the operator,
:math:`O(n d + (n/P) b)`, plus the factor's rows (:math:`(n/P) k`) and :math:`O(n)` for the
residual diagonal; drawing the probes briefly holds all :math:`n \times c` standard normal
draws, so that every process keeps exactly the single-process probes' rows.

Gradients: the marginal likelihood's surrogates sum this process's rows, and the
hyperparameters enter them through
:meth:`~gpkern.distributed.operator.Collectives.sum_gradients`, so after ``backward`` every
process holds the gradient of the whole log marginal likelihood, and any optimiser (the shared
training loop included) takes identical steps everywhere.
"""

from __future__ import annotations

import gpytorch
import torch
import torch.distributed as dist

from gpkern.distributed.operator import Collectives, DistributedKernelOperator, _check_exchange
from gpkern.distributed.partition import row_partition
from gpkern.models.iterative import IterativeGP, IterativeSettings

__all__ = ["DistributedGP"]


class DistributedGP(IterativeGP):
    r"""Exact GP regression trained by CG with the training rows split across processes.

    Same parameters and methods as :class:`gpkern.models.iterative.IterativeGP`; every method
    is collective: all processes of ``group`` call it with the same (whole) arguments.

    * ``log_marginal_likelihood(X, Y)`` returns the whole estimate on every process, and
      ``backward`` leaves the whole gradient in every process's parameters;
    * ``posterior(X, Y).predict(Xs)`` splits the test points across the processes and returns
      every mean and variance to every process.

    Parameters
    ----------
    kernel, noise, learn_noise, noise_lower_bound, settings, backend, verbose
        As in :class:`~gpkern.models.iterative.IterativeGP`.
    group : torch.distributed.ProcessGroup, optional
        The processes sharing the rows (default: the whole world).
    exchange : {"broadcast", "all_gather"}, default="broadcast"
        How kernel products move the blocks of their right-hand sides
        (:class:`~gpkern.distributed.operator.DistributedKernelOperator`).

    Attributes
    ----------
    comm : Collectives
        The group's collectives; ``comm.bytes_communicated`` counts their payload.

    Raises
    ------
    RuntimeError
        When ``torch.distributed`` is not initialised.

    Examples
    --------
    >>> import gpytorch, torch, torch.distributed as dist
    >>> from gpkern.distributed.model import DistributedGP
    >>> if dist.is_initialized():  # every process, inside torchrun
    ...     X = torch.linspace(0, 1, 500, dtype=torch.float64)[:, None]
    ...     Y = torch.sin(6 * X)
    ...     gp = DistributedGP(gpytorch.kernels.RBFKernel()).double()
    ...     gp.log_marginal_likelihood(X, Y).backward()  # the whole gradient, every process
    ...     mean, var = gp.posterior(X, Y).predict(X[:5])
    """

    def __init__(
        self,
        kernel: gpytorch.kernels.Kernel,
        noise: float = 0.1,
        learn_noise: bool = True,
        noise_lower_bound: float = 1e-6,
        settings: IterativeSettings | None = None,
        backend: str = "keops",
        verbose: bool = False,
        group: dist.ProcessGroup | None = None,
        exchange: str = "broadcast",
    ) -> None:
        comm = Collectives(group)  # refuses before anything is built
        _check_exchange(exchange)
        super().__init__(
            kernel,
            noise=noise,
            learn_noise=learn_noise,
            noise_lower_bound=noise_lower_bound,
            settings=settings,
            backend=backend,
            verbose=verbose,
        )
        self.comm, self.exchange = comm, exchange

    def operator(
        self, X: torch.Tensor, X2: torch.Tensor | None = None
    ) -> DistributedKernelOperator:
        """This process's rows of :math:`K(X, X)`, or the test-point-split :math:`K(X, X_2)`."""
        return DistributedKernelOperator(
            self.kernel,
            X,
            X2,
            comm=self.comm,
            backend=self.backend,
            runtime=self.keops_runtime,
            exchange=self.exchange,
        )

    def _rows(self, n: int) -> slice:
        if n < self.comm.world_size:
            raise ValueError(
                f"{n} training points cannot be split across {self.comm.world_size} processes: "
                "use at most as many processes as points."
            )
        return row_partition(n, self.comm.world_size)[self.comm.rank]

    def _reduce(self, value: torch.Tensor) -> torch.Tensor:
        return self.comm.sum(value)

    def _shared(self, value: torch.Tensor) -> torch.Tensor:
        return self.comm.sum_gradients(value)
