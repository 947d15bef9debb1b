r"""Batched preconditioned conjugate gradients, their Lanczos tridiagonals, and the stochastic
log-determinant (with its gradient) built on them.

For a symmetric positive definite :math:`A` known only through products :math:`V \mapsto AV`
and a preconditioner :math:`V \mapsto P^{-1} V`:

* :func:`pcg` solves :math:`A X = B` for every column of :math:`B` at once (one batched
  product per iteration), optionally keeping the first search directions and returning the
  Lanczos tridiagonal of :math:`P^{-1/2} A P^{-1/2}` started at :math:`P^{-1/2} b` for each
  column :math:`b` (Gardner et al., 2018);
* :func:`slq_logdet` turns those tridiagonals into the stochastic Lanczos quadrature estimate
  of a log-determinant;
* :func:`stochastic_logdet` runs the probe solves and the quadrature for probes
  :math:`z \sim \mathcal N(0, P)`, and :meth:`StochasticLogdet.with_gradient` attaches the
  Hutchinson estimate of the gradient computed from the same solves.

Every structured backend (Kronecker grids, KeOps and chunked-torch kernel operators) calls
these; none has a conjugate-gradient loop of its own.  The recursions touch the rows of their
blocks only through column sums, so with the rows split across processes (each holding its row
block of every vector and of :math:`AV`, :math:`P^{-1}V`) the same code runs unchanged given a
``reduce`` that sums those per-column partial sums over the processes (an ``all_reduce``,
:mod:`gpkern.distributed`): every process then computes the same coefficients and tridiagonals.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import NamedTuple

import torch
from tqdm.auto import tqdm

from gpkern.exceptions import CGConvergenceWarning

__all__ = ["CGResult", "pcg", "slq_logdet", "StochasticLogdet", "stochastic_logdet"]

Matmul = Callable[[torch.Tensor], torch.Tensor]
#: Sums per-column partial sums ``(c,)`` over the processes sharing the rows (identity: one
#: process holds them all).
Reduce = Callable[[torch.Tensor], torch.Tensor]

_ADVICE = (
    "Raise max_iter, loosen tol, or use a stronger preconditioner (a slow or stalled CG can "
    "also mean the operator is not symmetric positive definite)."
)


class CGResult(NamedTuple):
    """What :func:`pcg` returns.

    Attributes
    ----------
    solution : torch.Tensor of shape (n, c)
        :math:`X \\approx A^{-1} B`.
    n_iter : int
        Iterations run (the largest over the columns).
    converged : torch.Tensor of shape (c,), bool
        Columns whose relative residual reached the tolerance.
    tridiag : torch.Tensor of shape (c, m, m) or None
        Lanczos tridiagonal of :math:`P^{-1/2} A P^{-1/2}` per column (``tridiag=True`` only),
        :math:`m` = ``n_iter``; columns that stopped earlier are padded with an identity block
        decoupled from :math:`e_1`.
    directions : torch.Tensor of shape (n, k)
        The first ``keep`` search directions of every still-running column (A-conjugate per
        column), in iteration order.
    matmul_directions : torch.Tensor of shape (n, k)
        :math:`A` times ``directions``.
    """

    solution: torch.Tensor
    n_iter: int
    converged: torch.Tensor
    tridiag: torch.Tensor | None
    directions: torch.Tensor
    matmul_directions: torch.Tensor


def pcg(
    matmul: Matmul,
    B: torch.Tensor,  # (n, c)
    precondition: Matmul | None = None,
    *,
    tol: float = 1e-8,
    max_iter: int = 1000,
    keep: int = 0,
    tridiag: bool = False,
    verbose: bool = False,
    warn: bool = True,
    advice: str = _ADVICE,
    reduce: Reduce | None = None,
) -> CGResult:
    r"""Solve :math:`A X = B`, :math:`A` SPD, by batched preconditioned conjugate gradients.

    Every column runs its own recursion (all columns share one product with :math:`A` and one
    with :math:`P^{-1}` per iteration):

    .. math::

        x_{j+1} = x_j + a_j p_j, \quad r_{j+1} = r_j - a_j A p_j, \quad
        p_{j+1} = P^{-1} r_{j+1} + b_j p_j, \qquad
        a_j = \frac{r_j^\top P^{-1} r_j}{p_j^\top A p_j}, \quad
        b_j = \frac{r_{j+1}^\top P^{-1} r_{j+1}}{r_j^\top P^{-1} r_j},

    and stops once :math:`\|r\| \le \mathrm{tol}\,\|b\|`. A column with
    :math:`p^\top A p \le 0` (breakdown) takes no further step. The CG coefficients give the
    Lanczos tridiagonal of :math:`P^{-1/2} A P^{-1/2}` started at :math:`P^{-1/2} b` (Gardner
    et al., 2018):

    .. math::

        T_{jj} = \frac{1}{a_j} + \frac{b_{j-1}}{a_{j-1}}, \qquad
        T_{j, j+1} = \frac{\sqrt{b_j}}{a_j}.

    Parameters
    ----------
    matmul : callable
        :math:`V \mapsto A V` for ``(n, c)`` blocks.
    B : torch.Tensor of shape (n, c)
        Right-hand sides.
    precondition : callable, optional
        :math:`V \mapsto P^{-1} V`, :math:`P` SPD; identity when omitted.
    tol : float, default=1e-8
        Relative residual tolerance per column.
    max_iter : int, default=1000
        Iteration budget.
    keep : int, default=0
        Number of first iterations whose search directions :math:`p_j` (and :math:`A p_j`) are
        returned.
    tridiag : bool, default=False
        Also return the Lanczos tridiagonals.
    verbose : bool, default=False
        Progress bar with the largest relative residual.
    warn : bool, default=True
        Emit a :class:`~gpkern.exceptions.CGConvergenceWarning` when the budget ends before
        every column reached the tolerance.
    advice : str, optional
        What the warning tells the caller to do (callers name their own settings).
    reduce : callable, optional
        Sum of per-column partial sums ``(c,)`` over processes when ``B``, ``matmul`` and
        ``precondition`` act on this process's row block only (see the module docstring);
        ``None``: this process holds every row.

    Returns
    -------
    CGResult
        ``solution``, ``n_iter``, ``converged``, ``tridiag``, ``directions`` and
        ``matmul_directions``.

    Examples
    --------
    >>> import torch
    >>> from gpkern.linalg.cg import pcg
    >>> M = torch.randn(50, 50, dtype=torch.float64)
    >>> A = M @ M.T + 50 * torch.eye(50, dtype=torch.float64)
    >>> B = torch.randn(50, 3, dtype=torch.float64)
    >>> res = pcg(lambda V: A @ V, B, tol=1e-10)
    >>> torch.allclose(res.solution, torch.linalg.solve(A, B)), bool(res.converged.all())
    (True, True)
    """
    if B.ndim != 2:
        raise ValueError(f"B must have shape (n, c), got {tuple(B.shape)}.")
    tiny = torch.finfo(B.dtype).tiny
    dot = _column_dot(reduce)
    X = torch.zeros_like(B)
    R = B.clone()
    rnorm = dot(B, B).sqrt()
    bnorm = rnorm.clamp_min(tiny)
    Z = precondition(R) if precondition is not None else R
    P = Z.clone()
    rz = dot(R, Z)
    done = rnorm <= tol * bnorm
    steps, betas, kept, kept_a = [], [], [], []
    n_iter = 0
    bar = tqdm(total=max_iter, desc="CG solve", disable=not verbose, leave=False)
    while n_iter < max_iter and not bool(done.all()):
        AP = matmul(P)
        pap = dot(P, AP)
        step = torch.where(done | (pap <= 0), torch.zeros_like(rz), rz / pap.clamp_min(tiny))
        if n_iter < keep:
            live = ~done
            kept.append(P[:, live])
            kept_a.append(AP[:, live])
        X = X + step * P
        R = R - step * AP
        n_iter += 1
        Z = precondition(R) if precondition is not None else R
        rz_new = dot(R, Z)
        beta = torch.where(done, torch.zeros_like(rz), rz_new / rz.clamp_min(tiny))
        if tridiag:
            steps.append(step)
            betas.append(beta)
        P = Z + beta * P
        rz = rz_new
        rnorm = dot(R, R).sqrt()
        done = done | (rnorm <= tol * bnorm)
        bar.update(1)
        if verbose:
            bar.set_postfix(residual=f"{float((rnorm / bnorm).max()):.2e}")
    bar.close()
    if warn and not bool(done.all()):
        rel = rnorm / bnorm
        warnings.warn(
            f"Conjugate gradients stopped at its iteration budget (max_iter={max_iter}) before "
            f"reaching the tolerance: {int((~done).sum())} of {B.shape[1]} right-hand sides "
            f"still have relative residual up to {float(rel[~done].max()):.2e} > tol={tol:.1e}, "
            f"so the solution is inaccurate. {advice}",
            CGConvergenceWarning,
            stacklevel=2,
        )
    empty = B.new_zeros(B.shape[0], 0)
    return CGResult(
        solution=X,
        n_iter=n_iter,
        converged=done,
        tridiag=_lanczos_tridiag(steps, betas, B) if tridiag else None,
        directions=torch.cat(kept, 1) if kept else empty,
        matmul_directions=torch.cat(kept_a, 1) if kept_a else empty,
    )


def _column_dot(reduce: Reduce | None) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``(U, V) -> (c,)`` column inner products, summed over processes by ``reduce``."""
    if reduce is None:
        return lambda U, V: (U * V).sum(0)
    return lambda U, V: reduce((U * V).sum(0))


def _lanczos_tridiag(steps: list, betas: list, B: torch.Tensor) -> torch.Tensor:  # (c, m, m)
    if not steps:
        return B.new_zeros(B.shape[1], 0, 0)
    A_ = torch.stack(steps).mT  # (c, m)
    B_ = torch.stack(betas).mT
    # Columns that converged early are padded with an identity block decoupled from e_1, which
    # leaves e_1^T f(T) e_1 unchanged.
    live = A_ != 0
    safe = torch.where(live, A_, torch.ones_like(A_))
    inv_a = torch.where(live, 1.0 / safe, torch.zeros_like(A_))
    diag = inv_a.clone()
    diag[:, 1:] += B_[:, :-1] * inv_a[:, :-1]
    diag = torch.where(live, diag, torch.ones_like(diag))
    off = B_[:, :-1].clamp_min(0).sqrt() * inv_a[:, :-1] * live[:, 1:]
    return torch.diag_embed(diag) + torch.diag_embed(off, 1) + torch.diag_embed(off, -1)


def slq_logdet(
    T: torch.Tensor,  # (c, m, m)
    norms2: torch.Tensor,  # (c,)
) -> torch.Tensor:  # ()
    r"""Stochastic Lanczos quadrature of :math:`\operatorname{tr}\log(P^{-1} A)`.

    For probes :math:`z_j` with :math:`\mathbb E[z z^\top] = P` and :math:`T_j` the Lanczos
    tridiagonal of :math:`P^{-1/2} A P^{-1/2}` started at :math:`P^{-1/2} z_j` (from :func:`pcg`
    with ``tridiag=True``),

    .. math::

        \operatorname{tr}\log(P^{-1} A) \approx \frac1c \sum_{j=1}^c
        \|z_j\|_{P^{-1}}^2\, e_1^\top \log(T_j)\, e_1
        = \frac1c \sum_j \|z_j\|_{P^{-1}}^2 \sum_i U_{j,1i}^2 \log\theta_{ji},

    with :math:`T_j = U_j \operatorname{diag}(\theta_j) U_j^\top` (Ubaru, Chen and Saad, 2017).

    Parameters
    ----------
    T : torch.Tensor of shape (c, m, m)
        Lanczos tridiagonals, one per probe.
    norms2 : torch.Tensor of shape (c,)
        :math:`z_j^\top P^{-1} z_j`.

    Returns
    -------
    torch.Tensor, scalar
        The estimate (add :math:`\log|P|` for :math:`\log|A|`).

    Examples
    --------
    >>> import torch
    >>> from gpkern.linalg.cg import pcg, slq_logdet
    >>> A = torch.diag(torch.arange(1.0, 6.0, dtype=torch.float64))
    >>> Z = torch.eye(5, dtype=torch.float64)  # exact with the identity columns as probes
    >>> T = pcg(lambda V: A @ V, Z, tol=1e-12, tridiag=True).tridiag
    >>> torch.allclose(5 * slq_logdet(T, (Z * Z).sum(0)), torch.logdet(A))
    True
    """
    theta, U = torch.linalg.eigh(T)
    tiny = torch.finfo(T.dtype).tiny
    return (norms2 * (U[:, 0, :] ** 2 * theta.clamp_min(tiny).log()).sum(-1)).mean()


class StochasticLogdet(NamedTuple):
    r"""A stochastic log-determinant estimate with the solves its gradient needs.

    Attributes
    ----------
    value : torch.Tensor, scalar
        :math:`\log|P| + ` the Lanczos quadrature estimate of :math:`\operatorname{tr}\log(P^{-1}A)`
        (no autograd graph).
    solves : torch.Tensor of shape (n, c)
        :math:`A^{-1} Z`.
    preconditioned_probes : torch.Tensor of shape (n, c)
        :math:`P^{-1} Z`.
    n_iter : int
        CG (= Lanczos) steps of the probe solves.
    """

    value: torch.Tensor
    solves: torch.Tensor
    preconditioned_probes: torch.Tensor
    n_iter: int

    def with_gradient(self, matmul: Matmul) -> torch.Tensor:
        r"""The estimate with the Hutchinson gradient attached (same probes, no new solve).

        Since :math:`\partial \log|A| = \operatorname{tr}(A^{-1} \partial A)` and
        :math:`\operatorname{Cov}(z) = P`,

        .. math::

            \operatorname{tr}(A^{-1} \partial A) \approx \frac1c \sum_j
            (A^{-1} z_j)^\top\, \partial A\, (P^{-1} z_j),

        unbiased. The returned tensor equals ``value``; its gradient is that of
        :math:`\frac1c \sum_j (A^{-1} z_j)^\top A(\theta) (P^{-1} z_j)` with both solves held
        constant.  With rows split across processes the sum runs over this process's rows: the
        gradients of the processes add up to the whole one (:mod:`gpkern.distributed.model`).

        Parameters
        ----------
        matmul : callable
            Differentiable :math:`V \mapsto A(\theta) V`.

        Returns
        -------
        torch.Tensor, scalar
        """
        W = self.solves
        surrogate = (W * matmul(self.preconditioned_probes)).sum() / W.shape[1]
        return self.value + (surrogate - surrogate.detach())


def stochastic_logdet(
    matmul: Matmul,
    Z: torch.Tensor,  # (n, c)
    precondition: Matmul | None = None,
    *,
    precond_logdet: torch.Tensor | float = 0.0,
    tol: float = 1e-3,
    max_iter: int = 1000,
    warn: bool = True,
    advice: str = _ADVICE,
    reduce: Reduce | None = None,
) -> StochasticLogdet:
    r"""Preconditioned stochastic Lanczos quadrature of :math:`\log|A|`.

    With probes :math:`z_j \sim \mathcal N(0, P)` (``Z``'s columns; drawing them is the
    caller's, since only the caller can sample from its :math:`P`),

    .. math::

        \log|A| = \log|P| + \operatorname{tr}\log(P^{-1} A) \approx \log|P| +
        \frac1c \sum_j \|z_j\|_{P^{-1}}^2\, e_1^\top \log(T_j)\, e_1,

    :math:`T_j` the Lanczos tridiagonal of one preconditioned CG solve :math:`A^{-1} z_j`
    (:func:`pcg`, :func:`slq_logdet`). A good :math:`P` shortens the solves and shrinks the
    variance, which vanishes for :math:`P = A`. The solves are kept for the gradient
    (:meth:`StochasticLogdet.with_gradient`).

    Parameters
    ----------
    matmul : callable
        :math:`V \mapsto A V`.
    Z : torch.Tensor of shape (n, c)
        Probes with covariance :math:`P` (:math:`P = I`: standard normal or Rademacher).
    precondition : callable, optional
        :math:`V \mapsto P^{-1} V`; identity when omitted.
    precond_logdet : torch.Tensor or float, default=0.0
        :math:`\log|P|`.
    tol : float, default=1e-3
        Relative residual tolerance of the probe solves (the quadrature converges long before
        the residual).
    max_iter : int, default=1000
        Iteration budget of the probe solves (Lanczos steps).
    warn, advice, reduce
        As in :func:`pcg` (with ``reduce``, ``Z`` holds this process's rows and so do the
        returned solves).

    Returns
    -------
    StochasticLogdet
        ``value``, ``solves`` (:math:`A^{-1}Z`), ``preconditioned_probes``
        (:math:`P^{-1}Z`) and ``n_iter``.

    Examples
    --------
    >>> import torch
    >>> from gpkern.linalg.cg import stochastic_logdet
    >>> g = torch.Generator().manual_seed(0)
    >>> M = torch.randn(40, 40, generator=g, dtype=torch.float64)
    >>> A = M @ M.T / 40 + torch.eye(40, dtype=torch.float64)
    >>> Z = torch.randn(40, 2000, generator=g, dtype=torch.float64)
    >>> est = stochastic_logdet(lambda V: A @ V, Z, tol=1e-8)
    >>> bool(abs(est.value - torch.logdet(A)) < 0.05 * torch.logdet(A))
    True
    """
    with torch.no_grad():
        V = precondition(Z) if precondition is not None else Z
        res = pcg(
            matmul, Z, precondition, tol=tol, max_iter=max_iter, tridiag=True, warn=warn,
            advice=advice, reduce=reduce,
        )
        value = precond_logdet + slq_logdet(res.tridiag, _column_dot(reduce)(Z, V))
    return StochasticLogdet(value, res.solution, V, res.n_iter)
