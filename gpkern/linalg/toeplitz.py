r"""Toeplitz matrices from their lag vectors: products, solves and log-determinants with
closed-form gradients in the lags.

A stationary kernel on a uniform 1-D grid of :math:`n` points gives a Toeplitz matrix, fixed by
its :math:`2n - 1` lags

.. math::

    T(v)_{ab} = v_{a - b + n - 1}, \qquad a, b = 0, \dots, n - 1,

(:math:`v_{n-1}` on the diagonal, :math:`v_{n-1+l}` on the :math:`l`-th subdiagonal; a
symmetric matrix has :math:`v_{n-1+l} = v_{n-1-l}`). In ``scipy.linalg.toeplitz(c, r)``
terms, :math:`c = v_{n-1:}` and :math:`r = v_{n-1::-1}`. The kernel is then evaluated at
:math:`O(n)` lags instead of :math:`n^2` pairs, and every gradient here is returned to the lag
vector directly: a gradient :math:`G` in :math:`T` becomes the sums of :math:`G` along its
diagonals, which for a low-rank :math:`G = A B^\top` is a cross-correlation
(:func:`toeplitz_lag_grad`), never a dense :math:`n \times n` matrix. The log-determinant's
gradient uses the Gohberg-Semencul formula, :math:`O(n^2)` instead of the :math:`O(n^3)`
explicit inverse. Solves and log-determinants take a Cholesky factor computed once by the
caller (who may have needed jitter for it).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from gpkern.exceptions import NotPSDError
from gpkern.linalg.cholesky import cholesky_solve

__all__ = [
    "toeplitz_dense",
    "toeplitz_matmul",
    "toeplitz_solve",
    "toeplitz_logdet",
    "toeplitz_lag_grad",
]


def _unfold(v: torch.Tensor) -> torch.Tensor:  # (2n - 1,) -> (n, n)
    n = (v.shape[0] + 1) // 2
    # M[a, b] = v[a - b + n - 1]: the reversed lags unfolded (a strided view), rows flipped.
    return v.flip(0).unfold(0, n, 1).flip(0)


def _diagonal_sums(M: torch.Tensor) -> torch.Tensor:  # (p, m) -> (p + m - 1,)
    """``out[a - b + m - 1] = sum of M[a, b]`` over each diagonal, by a skewed reshape."""
    p, m = M.shape
    Z = M.new_zeros(p, m + p)
    Z[:, :m] = M.flip(1)
    # In rows of length m + p - 1 the entry (a, m - 1 - b) lands in column a + m - 1 - b.
    return Z.reshape(-1)[: p * (m + p - 1)].reshape(p, m + p - 1).sum(0)


def _correlate(u: torch.Tensor, w: torch.Tensor) -> torch.Tensor:  # (p,), (n,) -> (p + n - 1,)
    """Full cross-correlation ``out[t] = sum_k u[t + k - n + 1] w[k]`` (direct sums, no FFT)."""
    if u.device.type == "cpu":
        # numpy's direct loop is ~4x faster than a one-channel conv1d at n = 400
        return torch.from_numpy(np.correlate(u.detach().numpy(), w.detach().numpy(), "full"))
    n = w.shape[0]
    return F.conv1d(F.pad(u, (n - 1, n - 1)).view(1, 1, -1), w.reshape(1, 1, -1)).reshape(-1)


def toeplitz_lag_grad(
    A: torch.Tensor,  # (p, k)
    B: torch.Tensor,  # (n, k)
    offset: int = 0,
) -> torch.Tensor:  # (2n - 1,)
    r"""Gradient in the lags :math:`v` of :math:`\langle A B^\top, T(v)_{[o:o+p], :}\rangle`.

    For :math:`\ell = \operatorname{tr}(A^\top T(v)_{[o:o+p],:} B)` (rows :math:`o, \dots,
    o + p - 1` of the :math:`n \times n` Toeplitz matrix),

    .. math::

        \frac{\partial \ell}{\partial v_t} = \sum_{a, b:\; o + a - b + n - 1 = t}
        (A B^\top)_{ab},

    the diagonal sums of :math:`A B^\top`: a cross-correlation for one column, :math:`O(pn)`,
    and one :math:`p \times n` product otherwise. This is the backward of every function in
    this module; custom autograd functions built on Toeplitz blocks use it too.

    Parameters
    ----------
    A : torch.Tensor of shape (p, k)
    B : torch.Tensor of shape (n, k)
    offset : int, default=0
        First row :math:`o` of the block, :math:`o + p \le n`.

    Returns
    -------
    torch.Tensor of shape (2n - 1,)

    Examples
    --------
    >>> import torch
    >>> from gpkern.linalg.toeplitz import toeplitz_dense, toeplitz_lag_grad
    >>> v = torch.randn(9, dtype=torch.float64, requires_grad=True)
    >>> A, B = torch.randn(3, 2, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    >>> (g,) = torch.autograd.grad((A * (toeplitz_dense(v)[1:4] @ B)).sum(), v)
    >>> torch.allclose(toeplitz_lag_grad(A, B, offset=1), g)
    True
    """
    p, n = A.shape[0], B.shape[0]
    if A.shape[1] == 1:
        s = _correlate(A[:, 0], B[:, 0])
    else:
        s = _diagonal_sums(A @ B.T)
    out = A.new_zeros(2 * n - 1)
    out[offset : offset + p + n - 1] = s
    return out


class _ToeplitzMatrix(torch.autograd.Function):
    """Dense Toeplitz matrix from its lag vector; backward = diagonal sums."""

    @staticmethod
    def forward(ctx, v):
        return _unfold(v)

    @staticmethod
    def backward(ctx, G):
        return _diagonal_sums(G)


class _ToeplitzMatmul(torch.autograd.Function):
    """``T(v)[rows] @ Y`` with the dense ``T(v)`` precomputed; backward to ``v`` by correlation."""

    @staticmethod
    def forward(ctx, v, Y, K, start, stop):
        Kr = K[start:stop]
        ctx.save_for_backward(Y, Kr)
        ctx.start = start
        return Kr @ Y

    @staticmethod
    def backward(ctx, G):
        Y, Kr = ctx.saved_tensors
        gv = toeplitz_lag_grad(G, Y, ctx.start) if ctx.needs_input_grad[0] else None
        gY = Kr.T @ G if ctx.needs_input_grad[1] else None
        return gv, gY, None, None, None


class _ToeplitzSolve(torch.autograd.Function):
    r"""X = T(v)^{-1} B from a precomputed Cholesky factor L of T(v); closed-form backward
    grad_B = T^{-1} G, grad_v = diagonal sums of :math:`-T^{-1} G X^\top` (a correlation)."""

    @staticmethod
    def forward(ctx, v, B, L):
        X = cholesky_solve(B, L)
        ctx.save_for_backward(X, L)
        return X

    @staticmethod
    def backward(ctx, G):
        X, L = ctx.saved_tensors
        Gs = cholesky_solve(G, L)
        gv = -toeplitz_lag_grad(Gs, X) if ctx.needs_input_grad[0] else None
        return gv, Gs, None


class _ToeplitzLogdet(torch.autograd.Function):
    """log|T(v)| from a Cholesky factor; Gohberg-Semencul backward (see toeplitz_logdet)."""

    @staticmethod
    def forward(ctx, v, L):
        ctx.save_for_backward(L)
        return 2.0 * L.diagonal().log().sum()

    @staticmethod
    def backward(ctx, g):
        (L,) = ctx.saved_tensors
        n = L.shape[0]
        e0 = L.new_zeros(n, 1)
        e0[0] = 1.0
        x = cholesky_solve(e0, L)[:, 0]
        c = torch.cat([x.new_zeros(1), x[1:].flip(0)])
        j = torch.arange(n, dtype=x.dtype, device=x.device)
        # R_l = sum_j c_{j+l} c_j and S_l = sum_j c_{j+l} j c_j: the non-negative lags of a
        # correlation
        R = [_correlate(u, w)[n - 1 :] for u, w in ((x, x), (x, j * x), (c, c), (c, j * c))]
        D = ((n - j) * (R[0] - R[2]) - (R[1] - R[3])) / x[0]
        return g * torch.cat([D[1:].flip(0), D]), None


def _check_lags(v: torch.Tensor) -> int:
    if v.ndim != 1 or v.shape[0] % 2 != 1:
        raise ValueError(
            f"v must be a lag vector of odd length 2n - 1, got shape {tuple(v.shape)}."
        )
    return (v.shape[0] + 1) // 2


def _cholesky(v: torch.Tensor) -> torch.Tensor:
    L, info = torch.linalg.cholesky_ex(_unfold(v.detach()))
    if bool(info):
        raise NotPSDError(
            "The Toeplitz matrix is not positive definite; add jitter to the zero lag "
            "v[n - 1] and pass the Cholesky factor as chol."
        )
    return L


def toeplitz_dense(v: torch.Tensor) -> torch.Tensor:  # (2n - 1,) -> (n, n)
    r"""The dense Toeplitz matrix :math:`T(v)_{ab} = v_{a - b + n - 1}`.

    Differentiable in :math:`v`; the backward sums the incoming gradient along its diagonals
    (:math:`O(n^2)`, no scatter).

    Parameters
    ----------
    v : torch.Tensor of shape (2n - 1,)
        Lags, from :math:`-(n-1)` to :math:`n-1` (the zero lag at index :math:`n-1`).

    Returns
    -------
    torch.Tensor of shape (n, n)

    Examples
    --------
    >>> import torch
    >>> from gpkern.linalg.toeplitz import toeplitz_dense
    >>> toeplitz_dense(torch.tensor([3.0, 2.0, 1.0, 0.5, 0.25]))
    tensor([[1.0000, 2.0000, 3.0000],
            [0.5000, 1.0000, 2.0000],
            [0.2500, 0.5000, 1.0000]])
    """
    _check_lags(v)
    return _ToeplitzMatrix.apply(v)


def toeplitz_matmul(
    v: torch.Tensor,  # (2n - 1,)
    Y: torch.Tensor,  # (n, k)
    *,
    rows: slice | None = None,
    dense: torch.Tensor | None = None,  # (n, n)
) -> torch.Tensor:  # (p, k)
    r"""The product :math:`T(v)_{[\text{rows}], :}\, Y` of a block of rows with a matrix.

    Differentiable in :math:`v` and :math:`Y`; the gradient in :math:`v` of
    :math:`\langle G, T(v)_{R,:} Y\rangle` is :func:`toeplitz_lag_grad` of :math:`(G, Y)`, a
    correlation (no dense gradient matrix).

    Parameters
    ----------
    v : torch.Tensor of shape (2n - 1,)
        Lags.
    Y : torch.Tensor of shape (n, k)
    rows : slice, optional
        Contiguous rows of :math:`T(v)` to multiply (all by default).
    dense : torch.Tensor of shape (n, n), optional
        :math:`T(v)` already formed (a constant); formed here otherwise.

    Returns
    -------
    torch.Tensor of shape (p, k)
        ``p`` the number of rows selected.

    Examples
    --------
    >>> import torch
    >>> from gpkern.linalg.toeplitz import toeplitz_dense, toeplitz_matmul
    >>> v, Y = torch.randn(7, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64)
    >>> torch.allclose(toeplitz_matmul(v, Y, rows=slice(1, 3)), toeplitz_dense(v)[1:3] @ Y)
    True
    """
    n = _check_lags(v)
    K = _unfold(v.detach()) if dense is None else dense
    start, stop, step = (rows or slice(None)).indices(n)
    if step != 1:
        raise ValueError("rows must be a contiguous slice (step 1).")
    return _ToeplitzMatmul.apply(v, Y, K, start, stop)


def toeplitz_solve(
    v: torch.Tensor,  # (2n - 1,)
    B: torch.Tensor,  # (n, k)
    *,
    chol: torch.Tensor | None = None,  # (n, n)
) -> torch.Tensor:  # (n, k)
    r"""Solve :math:`T(v) X = B` for a symmetric positive definite Toeplitz matrix.

    The forward pass uses the Cholesky factor :math:`T = L L^\top`; the backward pass is closed
    form,

    .. math::

        \bar B = T^{-1} \bar X, \qquad
        \bar v_t = -\sum_{a - b + n - 1 = t} (T^{-1} \bar X\, X^\top)_{ab},

    the second a correlation (:func:`toeplitz_lag_grad`), :math:`O(n^2 k)`.

    Parameters
    ----------
    v : torch.Tensor of shape (2n - 1,)
        Symmetric lags.
    B : torch.Tensor of shape (n, k)
        Right-hand sides.
    chol : torch.Tensor of shape (n, n), optional
        Lower Cholesky factor of :math:`T(v)` (e.g. computed once with jitter on the zero lag);
        computed here otherwise.

    Returns
    -------
    torch.Tensor of shape (n, k)

    Raises
    ------
    NotPSDError
        If ``chol`` is not given and :math:`T(v)` is not positive definite.

    Examples
    --------
    >>> import torch
    >>> from gpkern.linalg.toeplitz import toeplitz_dense, toeplitz_solve
    >>> lags = torch.exp(-0.5 * torch.arange(-4.0, 5.0, dtype=torch.float64) ** 2)
    >>> v = lags + 0.1 * (torch.arange(9) == 4)  # jitter on the zero lag
    >>> B = torch.randn(5, 2, dtype=torch.float64)
    >>> torch.allclose(toeplitz_solve(v, B), torch.linalg.solve(toeplitz_dense(v), B))
    True
    """
    _check_lags(v)
    L = _cholesky(v) if chol is None else chol
    return _ToeplitzSolve.apply(v, B, L)


def toeplitz_logdet(
    v: torch.Tensor,  # (2n - 1,)
    *,
    chol: torch.Tensor | None = None,  # (n, n)
) -> torch.Tensor:  # ()
    r"""The log-determinant :math:`\log|T(v)|` of a symmetric positive definite Toeplitz matrix.

    :math:`\log|T| = 2 \sum_i \log L_{ii}`. The gradient :math:`\partial \log|T| /
    \partial v_t` is the sum of the :math:`t`-th diagonal of :math:`T^{-1}`, which the
    Gohberg-Semencul formula

    .. math::

        T^{-1} = x_0^{-1}\big(\mathcal L(x)\mathcal L(x)^\top
        - \mathcal L(c)\mathcal L(c)^\top\big), \qquad x = T^{-1} e_0, \quad
        c = (0, x_{n-1}, \dots, x_1),

    (:math:`\mathcal L(\cdot)` the lower-triangular Toeplitz matrix with that first column)
    reduces to one solve and four correlations: :math:`O(n^2)` instead of the
    :math:`O(n^3)` explicit inverse.

    Parameters
    ----------
    v : torch.Tensor of shape (2n - 1,)
        Symmetric lags.
    chol : torch.Tensor of shape (n, n), optional
        Lower Cholesky factor of :math:`T(v)`; computed here otherwise.

    Returns
    -------
    torch.Tensor, scalar

    Raises
    ------
    NotPSDError
        If ``chol`` is not given and :math:`T(v)` is not positive definite.

    Examples
    --------
    >>> import torch
    >>> from gpkern.linalg.toeplitz import toeplitz_dense, toeplitz_logdet
    >>> v = torch.exp(-0.5 * torch.arange(-4.0, 5.0, dtype=torch.float64) ** 2)
    >>> torch.allclose(toeplitz_logdet(v), torch.logdet(toeplitz_dense(v)))
    True
    """
    _check_lags(v)
    L = _cholesky(v) if chol is None else chol
    return _ToeplitzLogdet.apply(v, L)
