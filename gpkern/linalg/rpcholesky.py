r"""Randomly pivoted partial Cholesky of a kernel matrix, in blocks (BLAS-3, few entry evaluations).

A rank-:math:`k` partial Cholesky factor :math:`F \in \mathbb{R}^{n \times k}` of a positive
semi-definite :math:`K` satisfies :math:`K - F F^\top \succeq 0`; its columns are the Schur
complements of :math:`K` at :math:`k` pivot columns.  It is the preconditioner
:math:`P = F F^\top + \sigma^2 I` of conjugate gradients on :math:`A = K + \sigma^2 I`: the
spectrum of :math:`P^{-1} A` lies in :math:`[1, 1 + \lambda_{\max}(K - F F^\top)/\sigma^2]`.

Greedy pivoting (``linear_operator``'s ``pivoted_cholesky``) takes one pivot at a time: each
step is a matrix-vector product with the factor, so rank 2,000 on 100,000 points is slow
(memory-bound, a Python loop of :math:`k` steps).  Here pivots come in blocks of ``block_size``
drawn with probability proportional to the residual diagonal, and a rejection step keeps only
what randomly pivoted Cholesky would have accepted one at a time (*accelerated RPCholesky*,
Epperly, Tropp and Webber, 2024; RPCholesky: Chen, Epperly, Tropp and Webber, 2023).  The work
is one kernel-column block and one matrix-matrix product per block,

.. math::

    G = K_{:,S} - F F_{S,:}^\top \quad (n \times b), \qquad
    F \leftarrow \big[\,F,\; G_{:,\mathrm{acc}}\, T^{-\top}\big],
    \quad T T^\top = G_{\mathrm{acc},\mathrm{acc}},

so :math:`O(n k^2)` flops at matrix-multiply speed and :math:`n k` kernel evaluations in all.
RPCholesky's expected trace error is within a small factor of the best rank-:math:`k`
approximation's, and unlike greedy pivoting it does not pile pivots into outliers.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["factor_gram", "factor_matmul", "factor_t_matmul", "rp_cholesky"]

#: Elements of a factor's row block upcast at a time (32 MB in float64).
_BLOCK_ELEMENTS = 2**22


def _row_blocks(F: torch.Tensor):  # (n, k) -> slices of rows
    rows = max(1, _BLOCK_ELEMENTS // max(1, F.shape[1]))
    return (slice(s, s + rows) for s in range(0, F.shape[0], rows))


def factor_matmul(
    F: torch.Tensor,  # (n, k)
    B: torch.Tensor,  # (k, c)
    *,
    subtract_from: torch.Tensor | None = None,  # (n, c)
) -> torch.Tensor:  # (n, c)
    r""":math:`F B` in ``B``'s (working) precision, upcasting a narrower ``F`` by row blocks.

    With ``subtract_from`` (a tensor :math:`G` in ``B``'s dtype), :math:`G \leftarrow G - F B`
    in place, by row blocks, and :math:`G` is returned: no ``(n, c)`` temporary is made.

    Examples
    --------
    >>> import torch
    >>> F, B = torch.randn(5, 2), torch.randn(2, 3, dtype=torch.float64)
    >>> torch.allclose(factor_matmul(F, B), F.double() @ B)
    True
    >>> G = torch.ones(5, 3, dtype=torch.float64)
    >>> torch.allclose(factor_matmul(F, B, subtract_from=G.clone()), G - F.double() @ B)
    True
    """
    if subtract_from is not None:
        for rows in _row_blocks(F):
            subtract_from[rows] -= F[rows].to(B.dtype) @ B
        return subtract_from
    if F.dtype == B.dtype:
        return F @ B
    out = torch.empty(F.shape[0], B.shape[1], dtype=B.dtype, device=B.device)
    for rows in _row_blocks(F):
        out[rows] = F[rows].to(B.dtype) @ B
    return out


def factor_t_matmul(F: torch.Tensor, V: torch.Tensor) -> torch.Tensor:  # (n, k), (n, c) -> (k, c)
    """:math:`F^\top V` in ``V``'s (working) precision, upcasting a narrower ``F`` by row blocks.

    Examples
    --------
    >>> import torch
    >>> F, V = torch.randn(5, 2), torch.randn(5, 3, dtype=torch.float64)
    >>> torch.allclose(factor_t_matmul(F, V), F.double().T @ V)
    True
    """
    if F.dtype == V.dtype:
        return F.T @ V
    out = torch.zeros(F.shape[1], V.shape[1], dtype=V.dtype, device=V.device)
    for rows in _row_blocks(F):
        out += F[rows].to(V.dtype).T @ V[rows]
    return out


def factor_gram(F: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:  # (n, k) -> (k, k)
    """:math:`F^\top F` accumulated in ``dtype``, upcasting a narrower ``F`` by row blocks.

    Examples
    --------
    >>> import torch
    >>> F = torch.randn(5, 2)
    >>> torch.allclose(factor_gram(F, torch.float64), F.double().T @ F.double())
    True
    """
    if F.dtype == dtype:
        return F.T @ F
    out = torch.zeros(F.shape[1], F.shape[1], dtype=dtype, device=F.device)
    for rows in _row_blocks(F):
        block = F[rows].to(dtype)
        out += block.T @ block
    return out


def _take_rows(
    M: torch.Tensor,  # (n_own, m): rows own of a row-split matrix
    index: torch.Tensor,  # (b,) global row indices
    own: slice,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None,
) -> torch.Tensor:  # (b, m)
    if reduce is None:
        return M[index]
    # Each row lives on one process; the others contribute exact zeros to the sum.
    local = (index >= own.start) & (index < own.stop)
    out = M.new_zeros(index.numel(), M.shape[1])
    out[local] = M[index[local] - own.start]
    return reduce(out)


def rp_cholesky(
    columns: Callable[[torch.Tensor], torch.Tensor],  # (b,) int -> (n, b)
    diagonal: torch.Tensor,  # (n,)
    rank: int,
    *,
    block_size: int = 128,
    tol: float = 0.0,
    generator: torch.Generator | None = None,
    factor_dtype: torch.dtype | None = None,
    pivoting: str = "random",
    rows: slice | None = None,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:  # (n, k), (k,)
    r"""Partial Cholesky factor :math:`F` of a PSD matrix with random pivots, block by block.

    With ``pivoting="greedy"`` each pivot is instead the largest residual diagonal entry,
    :math:`i_{k+1} = \arg\max_i (K - F F^\top)_{ii}`, one column at a time: the classical
    pivoted Cholesky (greedy variance reduction; the greedy MAP of a DPP with kernel :math:`K`).

    Parameters
    ----------
    columns : callable
        ``columns(idx)`` returns the columns :math:`K_{:, \mathrm{idx}}` as an ``(n, b)`` tensor.
    diagonal : torch.Tensor of shape (n,)
        :math:`\operatorname{diag} K` (non-negative).
    rank : int
        Largest number of pivots :math:`k`.
    block_size : int, default=128
        Candidate pivots drawn per block.
    tol : float, default=0.0
        Stop once the residual trace :math:`\operatorname{tr}(K - F F^\top)` is at most
        ``tol`` times :math:`\operatorname{tr} K`.
    generator : torch.Generator, optional
        Source of the pivot draws (results are reproducible with a seeded generator).
    factor_dtype : torch.dtype, optional
        Storage type of :math:`F` (default: the diagonal's).  ``torch.float32`` with a float64
        diagonal halves the largest array (1.2 GB for rank 1,536 on 100,000 points in float64)
        while every product with :math:`F` still runs in float64 on row blocks: the stored
        entries are rounded once, so :math:`F F^\top` is a slightly different but exactly
        represented matrix, which is all a preconditioner needs.
    pivoting : {"random", "greedy"}, default="random"
        ``"random"``: pivots drawn proportionally to the residual diagonal (RPCholesky);
        ``"greedy"``: the largest residual diagonal entry, one pivot per step (deterministic,
        ``block_size`` and ``generator`` unused).
    rows : slice, optional
        The rows of :math:`F` this process computes, when the rows are split across processes:
        ``columns`` then returns those rows only, ``diagonal`` is still the whole diagonal, and
        ``reduce`` sums over the processes.  Each block then exchanges the pivots' rows of
        :math:`F` and of the new columns (:math:`b(k + b)` numbers) and the residual diagonal's
        update (:math:`n`); every process draws the same pivots from the same ``generator`` as
        a single process would, so the factor's rows are the single-process factor's.
    reduce : callable, optional
        Sum of a tensor over the processes (``all_reduce``); required with ``rows``.

    Returns
    -------
    F : torch.Tensor of shape (n, k), or (rows, k) with ``rows``
        :math:`k \le` ``rank`` columns with :math:`F F^\top \preceq K` (up to the storage
        rounding), exact on the pivots' rows and columns.
    pivots : torch.Tensor of shape (k,)
        Pivot indices, in the order of :math:`F`'s columns.

    Examples
    --------
    >>> import torch
    >>> x = torch.linspace(0, 1, 200, dtype=torch.float64)
    >>> K = torch.exp(-(x[:, None] - x[None]) ** 2 / 0.1)
    >>> F, piv = rp_cholesky(lambda i: K[:, i], K.diagonal(), 30,
    ...                      generator=torch.Generator().manual_seed(0))
    >>> bool((K - F @ F.T).diagonal().sum() < 1e-6)
    True
    """
    if diagonal.dim() != 1:
        raise ValueError(f"diagonal must be 1-D, got shape {tuple(diagonal.shape)}.")
    if not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank must be a positive int, got {rank!r}.")
    if not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be a positive int, got {block_size!r}.")
    if pivoting not in ("random", "greedy"):
        raise ValueError(f"pivoting must be 'random' or 'greedy', got {pivoting!r}.")
    if (rows is None) != (reduce is None):
        raise ValueError("rows and reduce go together: pass both or neither.")
    n = diagonal.shape[0]
    rank = min(rank, n)
    dtype, device = diagonal.dtype, diagonal.device
    own = slice(0, n) if rows is None else slice(*rows.indices(n))
    n_own = own.stop - own.start
    residual = diagonal.detach().clone().clamp_min(0.0)
    stop = tol * float(residual.sum())
    # Residuals this far below the largest diagonal entry are rounding noise: the Schur
    # complement computed from them can come out <= 0, so they count as exhausted.
    floor = 64 * torch.finfo(dtype).eps * float(residual.max()) if n else 0.0
    F = torch.zeros(n_own, rank, dtype=factor_dtype or dtype, device=device)
    pivots = torch.zeros(rank, dtype=torch.long, device=device)
    k = 0
    while k < rank:
        total = float(residual.sum())
        if not total > max(stop, 0.0) or not residual.max() > 0:
            break
        if pivoting == "greedy":
            S = residual.argmax().view(1)
        else:
            draws = torch.multinomial(
                (residual / total).cpu(),
                min(block_size, rank - k),
                replacement=True,
                generator=generator,
            ).to(device)
            S = torch.unique(draws)  # sampling with replacement; repeats carry no new information
            S = S[torch.randperm(S.numel(), generator=generator).to(device)]
        G = columns(S).to(dtype)  # (n, b)
        if k:  # Schur complement columns, in place (no second (n, b) array)
            F_S = _take_rows(F[:, :k], S, own, reduce)
            factor_matmul(F[:, :k], F_S.T.to(dtype), subtract_from=G)
        H = _take_rows(G, S, own, reduce)  # (b, b)
        if pivoting == "greedy":  # u = 0: the rejection step accepts every non-degenerate pivot
            u = torch.zeros(1, dtype=dtype, device=device)
        else:
            u = torch.rand(S.numel(), generator=generator, dtype=dtype).to(device)
        # Rejection: candidate j survives with probability (its residual given the candidates
        # accepted before it in this block) / (its residual when it was drawn).
        T = torch.zeros_like(H)  # (b, b): Cholesky columns of the accepted candidates
        accepted: list[int] = []
        for j in range(S.numel()):
            a = len(accepted)
            cond = H[j, j] - T[j, :a] @ T[j, :a]
            if not cond > floor:
                if a == 0:  # its residual is rounding noise, not a pivot to wait for
                    residual[S[j]] = 0.0
                continue
            if float(u[j] * residual[S[j]]) >= float(cond):
                continue
            T[:, a] = (H[:, j] - T[:, :a] @ T[j, :a]) / cond.sqrt()
            accepted.append(j)
        if not accepted:
            continue
        acc = torch.tensor(accepted, device=device)
        T_acc = T[acc][:, : len(accepted)]  # (a, a) lower triangular
        a = len(accepted)
        # New columns G_acc T^-T, by row blocks straight into F: at n = 100,000 every (n, b)
        # float64 temporary is 100 MB, and this is the largest step of the factorisation.
        update = torch.zeros(n_own, dtype=dtype, device=device)
        for block in _row_blocks(G):
            new = torch.linalg.solve_triangular(T_acc, G[block][:, acc].T, upper=False).T
            F[block, k : k + a] = new  # rounded to the storage type when it is narrower
            update[block] = (new * new).sum(1)
        del G
        if reduce is None:
            residual -= update
        else:  # adding exact zeros: every process holds the single-process residual
            whole = torch.zeros(n, dtype=dtype, device=device)
            whole[own] = update
            residual -= reduce(whole)
        pivots[k : k + a] = S[acc]
        k += a
        residual[residual <= floor] = 0.0
        residual[S[acc]] = 0.0
    if k < rank:
        # A view when most of F is used: a compact copy would briefly hold F twice.
        F = F[:, :k] if 2 * k > rank else F[:, :k].contiguous()
        pivots = pivots[:k].clone()
    return F, pivots
