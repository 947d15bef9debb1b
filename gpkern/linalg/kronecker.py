r"""Kronecker-structured linear algebra: mode-product matmuls, per-factor eigendecompositions,
solves and log-determinants of :math:`K_1 \otimes \dots \otimes K_d + D`.

A grid of :math:`N = n_1 \cdots n_d` points is flattened in C order (last dimension fastest,
as :meth:`torch.Tensor.reshape` of an ``(n_1, ..., n_d)`` array does). With that ordering the
covariance of a product kernel on the grid is :math:`K = K_1 \otimes \dots \otimes K_d`, and

* :math:`K v` costs :math:`O(N \sum_i n_i)` by mode products (:func:`kron_matmul`), never
  forming the :math:`N \times N` matrix;
* :math:`(K + \sigma^2 I)^{-1} v` and :math:`\log|K + \sigma^2 I|` cost
  :math:`O(\sum_i n_i^3 + N \sum_i n_i)` through per-factor eigendecompositions
  :math:`K_i = Q_i \Lambda_i Q_i^\top` (:func:`kron_solve_logdet`), with analytic gradients
  that never differentiate through eigenvectors (stable under repeated eigenvalues);
* :math:`(K + D)^{-1} v` for a general positive diagonal :math:`D`, possibly infinite on
  missing cells, uses preconditioned conjugate gradients with the Kronecker eigenbasis as
  preconditioner, and :math:`\log|K + D|` a stochastic Lanczos quadrature estimate
  (:func:`kron_diag_solve_logdet`, on :mod:`gpkern.linalg.cg`);
* a Kronecker sum :math:`\sum_j I \otimes \cdots \otimes A_j \otimes \cdots \otimes I`
  (a collocation operator on a grid) is solved exactly through per-matrix eigendecompositions
  (:func:`kron_sum_solve`);
* products of test-point rows :math:`c^{(1)}_j \otimes \dots \otimes c^{(d)}_j` with grid
  values cost :math:`O(mN)` (:func:`rowwise_kron_matmul`).

:class:`KroneckerOperator`, :class:`KroneckerAddedDiagOperator` and
:class:`KroneckerSumOperator` wrap these as :class:`linear_operator.LinearOperator` objects,
so that GPyTorch models can use them directly.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

import torch
from linear_operator import LinearOperator
from linear_operator.utils.memoize import cached

from gpkern.linalg.cg import pcg, stochastic_logdet

__all__ = [
    "kron_matmul",
    "kron_eigh",
    "kron_eigvals",
    "kron_rotate",
    "kron_dense",
    "kron_solve_logdet",
    "kron_diag_solve_logdet",
    "RestrictedKronecker",
    "KroneckerOperator",
    "KroneckerAddedDiagOperator",
    "KroneckerSumOperator",
    "rowwise_kron_matmul",
    "rowwise_kron_columns",
    "apply_along_mode",
    "kron_sum_solve",
    "kron_sum_inverse",
]


# -------------------------------------------------------------------------------------------
# Mode products
# -------------------------------------------------------------------------------------------
def kron_matmul(
    factors: Sequence[torch.Tensor],  # d x (m_i, n_i)
    V: torch.Tensor,  # (N,) or (N, k), N = prod n_i
) -> torch.Tensor:  # (M,) or (M, k), M = prod m_i
    r"""Multiply :math:`(K_1 \otimes \dots \otimes K_d)\, V` by mode products.

    .. math::

        \big[(K_1 \otimes \dots \otimes K_d) v\big]_{(a_1 \dots a_d)}
        = \sum_{b_1, \dots, b_d} K_1[a_1, b_1] \cdots K_d[a_d, b_d]\, v_{(b_1 \dots b_d)}

    Each factor is applied along its own axis of the ``(n_1, ..., n_d, k)`` tensor with one
    matrix product and one transpose, so the cost is :math:`O(k N \sum_i m_i)` time and
    :math:`O(k \max(N, M))` memory.

    Parameters
    ----------
    factors : sequence of torch.Tensor, each of shape (m_i, n_i)
        Kronecker factors; they need not be square (e.g. cross-covariances to new grid points).
    V : torch.Tensor of shape (N,) or (N, k)
        Grid values flattened in C order, :math:`N = \prod_i n_i`.

    Returns
    -------
    torch.Tensor of shape (M,) or (M, k)
        :math:`M = \prod_i m_i`, C order; differentiable in ``factors`` and ``V``.

    Examples
    --------
    >>> import torch
    >>> from gpkern.linalg.kronecker import kron_matmul
    >>> A, B = torch.randn(3, 3), torch.randn(4, 4)
    >>> v = torch.randn(12)
    >>> torch.allclose(kron_matmul([A, B], v), torch.kron(A, B) @ v)
    True
    """
    factors = list(factors)
    if not factors:
        raise ValueError("kron_matmul needs at least one factor.")
    vector = V.ndim == 1
    if vector:
        V = V[:, None]
    if V.ndim != 2:
        raise ValueError(f"V must have shape (N,) or (N, k), got {tuple(V.shape)}.")
    ns = [f.shape[-1] for f in factors]
    N = math.prod(ns)
    if V.shape[0] != N:
        raise ValueError(
            f"V has {V.shape[0]} rows but the factors' column counts {ns} multiply to {N}."
        )
    k = V.shape[1]
    # Mode i of the (n_1, ..., n_d, k) array viewed as (A, n_i, B): a plain GEMM when A or B is
    # 1 (no copies at all for d = 2 and one column), a broadcast batched GEMM otherwise, and a
    # transposed product only when B is too small for batched GEMMs to be efficient.
    dims = list(ns) + [k]
    X = V
    for i, f in enumerate(factors):
        A = math.prod(dims[:i])
        B = math.prod(dims[i + 1 :])
        n, m = dims[i], f.shape[-2]
        if A == 1:
            X = f @ X.reshape(n, B)
        elif B == 1:
            X = X.reshape(A, n) @ f.mT
        elif B >= 32:
            X = torch.matmul(f, X.reshape(A, n, B))
        else:
            X = (X.reshape(A, n, B).mT @ f.mT).mT
        dims[i] = m
    M = math.prod(dims[:-1])
    X = X.reshape(M, k)
    return X[:, 0] if vector else X


def kron_dense(
    factors: Sequence[torch.Tensor],
) -> torch.Tensor:  # d x (*b_i, m_i, n_i) -> (*b, M, N)
    r"""The dense matrix :math:`K_1 \otimes \dots \otimes K_d` (for tests and small grids only).

    Leading batch dimensions of the factors broadcast against each other.
    """
    out = factors[0]
    for f in factors[1:]:
        if out.ndim == 2 and f.ndim == 2:
            out = torch.kron(out, f)
            continue
        batch = torch.broadcast_shapes(out.shape[:-2], f.shape[:-2])
        prod = out[..., :, None, :, None] * f[..., None, :, None, :]
        out = prod.reshape(*batch, out.shape[-2] * f.shape[-2], out.shape[-1] * f.shape[-1])
    return out


# -------------------------------------------------------------------------------------------
# Eigendecompositions
# -------------------------------------------------------------------------------------------
def kron_eigh(
    factors: Sequence[torch.Tensor],  # d x (n_i, n_i)
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:  # d x (n_i,), d x (n_i, n_i)
    r"""Symmetric eigendecompositions :math:`K_i = Q_i \Lambda_i Q_i^\top` of every factor.

    Then :math:`K_1 \otimes \dots \otimes K_d = (\otimes_i Q_i)(\otimes_i \Lambda_i)
    (\otimes_i Q_i)^\top`. Factors of equal size are decomposed in one batched call.

    Parameters
    ----------
    factors : sequence of torch.Tensor, each of shape (n_i, n_i)
        Symmetric factors (symmetrised as :math:`(K + K^\top)/2` first).

    Returns
    -------
    eigvals : list of torch.Tensor of shape (n_i,)
        Ascending eigenvalues of each factor.
    eigvecs : list of torch.Tensor of shape (n_i, n_i)
        Orthonormal eigenvectors (columns).
    """
    factors = [0.5 * (f + f.mT) for f in factors]
    for f in factors:
        if f.ndim != 2 or f.shape[0] != f.shape[1]:
            raise ValueError(f"kron_eigh needs square 2-D factors, got shape {tuple(f.shape)}.")
    eigvals: list[torch.Tensor | None] = [None] * len(factors)
    eigvecs: list[torch.Tensor | None] = [None] * len(factors)
    groups: dict[int, list[int]] = {}
    for i, f in enumerate(factors):
        groups.setdefault(f.shape[0], []).append(i)
    for idx in groups.values():
        if len(idx) == 1:
            lam, Q = torch.linalg.eigh(factors[idx[0]])
            eigvals[idx[0]], eigvecs[idx[0]] = lam, Q
            continue
        lam, Q = torch.linalg.eigh(torch.stack([factors[i] for i in idx]))
        for j, i in enumerate(idx):
            eigvals[i], eigvecs[i] = lam[j], Q[j]
    return eigvals, eigvecs  # type: ignore[return-value]


def kron_eigvals(eigvals: Sequence[torch.Tensor]) -> torch.Tensor:  # d x (*b, n_i) -> (*b, N)
    r"""All products :math:`\lambda^{(1)}_{a_1} \cdots \lambda^{(d)}_{a_d}`, flattened in C order.

    These are the eigenvalues of :math:`K_1 \otimes \dots \otimes K_d`, in the order matching
    the columns of :math:`Q_1 \otimes \dots \otimes Q_d` (not sorted). Leading batch
    dimensions broadcast (the diagonal of a batched Kronecker product is the same product).
    """
    lam = eigvals[0]
    for e in eigvals[1:]:
        lam = (lam[..., :, None] * e[..., None, :]).flatten(-2)
    return lam


def kron_rotate(
    eigvecs: Sequence[torch.Tensor],  # d x (n_i, n_i)
    V: torch.Tensor,  # (N,) or (N, k)
    transpose: bool = False,
) -> torch.Tensor:  # (N,) or (N, k)
    r"""Change to or from the Kronecker eigenbasis: :math:`Q V` or :math:`Q^\top V`.

    With :math:`Q = Q_1 \otimes \dots \otimes Q_d` from :func:`kron_eigh`, a solve with
    :math:`K + \sigma^2 I` is :math:`Q (\Lambda + \sigma^2 I)^{-1} Q^\top V` and a prior draw
    :math:`Q \Lambda^{1/2} \varepsilon`; both rotations are mode products
    (:func:`kron_matmul`), :math:`O(k N \sum_i n_i)`.

    Parameters
    ----------
    eigvecs : sequence of torch.Tensor, each of shape (n_i, n_i)
        Per-factor eigenvectors :math:`Q_i`.
    V : torch.Tensor of shape (N,) or (N, k)
        Grid values, C order.
    transpose : bool, default=False
        Apply :math:`Q^\top` instead of :math:`Q`.

    Returns
    -------
    torch.Tensor of shape (N,) or (N, k)

    Examples
    --------
    >>> import torch
    >>> from gpkern.linalg.kronecker import kron_eigh, kron_rotate
    >>> A, B = torch.randn(3, 3, dtype=torch.float64), torch.randn(4, 4, dtype=torch.float64)
    >>> _, Qs = kron_eigh([A @ A.T, B @ B.T])
    >>> v = torch.randn(12, dtype=torch.float64)
    >>> torch.allclose(kron_rotate(Qs, kron_rotate(Qs, v, transpose=True)), v)
    True
    """
    return kron_matmul([Q.mT if transpose else Q for Q in eigvecs], V)


_kron_rotate = kron_rotate


# -------------------------------------------------------------------------------------------
# Solve + log-determinant of K + sigma^2 I (eigen path)
# -------------------------------------------------------------------------------------------
def _logdet_factor_weights(
    eigvals: Sequence[torch.Tensor],  # d x (n_i,)
    inv_denom: torch.Tensor,  # (N,) = 1 / (lambda + sigma^2)
) -> list[torch.Tensor]:  # d x (n_i,)
    r""":math:`g_i[a] = \sum_{\text{other axes}} \prod_{j \ne i} \lambda^{(j)} / (\lambda + \sigma^2)`."""
    ns = [e.shape[0] for e in eigvals]
    d = len(ns)
    R = inv_denom.reshape(ns)
    out = []
    for i in range(d):
        T = R
        for j in range(d):
            if j != i:
                shape = [1] * d
                shape[j] = ns[j]
                T = T * eigvals[j].reshape(shape)
        out.append(T.sum(dim=[j for j in range(d) if j != i]) if d > 1 else T)
    return out


def _others_product(eigvals: Sequence[torch.Tensor], i: int) -> torch.Tensor:  # -> (N,)
    r""":math:`\prod_{j \ne i} \lambda^{(j)}_{a_j}` over the grid, C order."""
    return kron_eigvals([torch.ones_like(e) if j == i else e for j, e in enumerate(eigvals)])


class _KronEigSolveLogdet(torch.autograd.Function):
    """alpha = (K + s I)^{-1} Y and log|K + s I| with an analytic backward in the eigenbasis.

    In the eigenbasis every Kronecker factor is diagonal, so the factor gradients reduce to one
    elementwise scaling and one unfolding product per factor, and no eigenvector derivative
    (singular at repeated eigenvalues) is ever formed.
    """

    @staticmethod
    def forward(ctx, Y, noise, *factors):  # (N, k), (), d x (n_i, n_i)
        with torch.no_grad():
            eigvals, eigvecs = kron_eigh(factors)
            lam = kron_eigvals(eigvals).clamp_min(0.0)
            denom = lam + noise
            alpha_t = _kron_rotate(eigvecs, Y, True) / denom[:, None]  # Q^T alpha
            alpha = _kron_rotate(eigvecs, alpha_t, False)
            logdet = denom.log().sum()
        ctx.save_for_backward(Y, noise, alpha_t, denom)
        ctx.eig = (eigvals, eigvecs)
        return alpha, logdet

    @staticmethod
    def backward(ctx, g_alpha, g_logdet):
        Y, noise, alpha_t, denom = ctx.saved_tensors
        eigvals, eigvecs = ctx.eig
        d = len(eigvals)
        ns = [e.shape[0] for e in eigvals]
        k = alpha_t.shape[1]
        needs_f = ctx.needs_input_grad[2:]
        inv_denom = denom.reciprocal()
        grad_Y = grad_noise = None
        mids: list[torch.Tensor | None] = [None] * d  # Q_i^T (dl/dK_i) Q_i
        if g_alpha is not None:
            if torch.equal(g_alpha, Y):
                # The quadratic form y^T A^{-1} y: Q^T A^{-1} g is Q^T alpha, already known (saves
                # one grid rotation, a quarter of the grid-size products).
                W_t = alpha_t
            else:
                W_t = _kron_rotate(eigvecs, g_alpha, True) * inv_denom[:, None]  # Q^T A^{-1} g
            if ctx.needs_input_grad[0]:
                grad_Y = _kron_rotate(eigvecs, W_t, False)
            if ctx.needs_input_grad[1]:
                grad_noise = -(W_t * alpha_t).sum()
            At = alpha_t.reshape(*ns, k)
            for i in range(d):
                if needs_f[i]:
                    Wi = (W_t * _others_product(eigvals, i)[:, None]).reshape(*ns, k)
                    axes = [j for j in range(d + 1) if j != i]
                    mids[i] = -torch.tensordot(Wi, At, dims=(axes, axes))
        if g_logdet is not None:
            if ctx.needs_input_grad[1]:
                gn = g_logdet * inv_denom.sum()
                grad_noise = gn if grad_noise is None else grad_noise + gn
            if any(needs_f):
                weights = _logdet_factor_weights(eigvals, inv_denom)
                for i in range(d):
                    if needs_f[i]:
                        gi = torch.diag_embed(g_logdet * weights[i])
                        mids[i] = gi if mids[i] is None else mids[i] + gi
        grads_f = [
            None if m is None else eigvecs[i] @ m @ eigvecs[i].mT for i, m in enumerate(mids)
        ]
        if grad_noise is not None:
            grad_noise = grad_noise.reshape(noise.shape)
        return (grad_Y, grad_noise, *grads_f)


def kron_solve_logdet(
    factors: Sequence[torch.Tensor],  # d x (n_i, n_i)
    noise: torch.Tensor | float,  # ()
    Y: torch.Tensor,  # (N,) or (N, k)
) -> tuple[torch.Tensor, torch.Tensor]:  # (N,) or (N, k), ()
    r"""Solve and log-determinant of :math:`A = K_1 \otimes \dots \otimes K_d + \sigma^2 I`.

    With :math:`K_i = Q_i \Lambda_i Q_i^\top`, :math:`Q = \otimes_i Q_i` and
    :math:`\Lambda = \otimes_i \Lambda_i`:

    .. math::

        A^{-1} Y = Q (\Lambda + \sigma^2 I)^{-1} Q^\top Y, \qquad
        \log |A| = \sum_{a} \log(\lambda_a + \sigma^2).

    The backward pass is analytic: for a loss :math:`\ell`, with :math:`W = A^{-1}
    \partial\ell/\partial\alpha`,

    .. math::

        \frac{\partial \ell}{\partial K_i} = -\big(W \times_{j \ne i} K_j^\top\big)_{(i)}
        \alpha_{(i)}^\top + \frac{\partial \ell}{\partial \log|A|}\,
        Q_i \operatorname{diag}(g_i) Q_i^\top, \qquad
        g_i[a] = \sum_{b:\, b_i = a} \frac{\prod_{j \ne i} \lambda^{(j)}_{b_j}}{\lambda_b + \sigma^2},

    so no eigenvector derivative (singular at repeated eigenvalues) is ever taken. Tiny negative
    eigenvalues from round-off are clamped to zero.

    Parameters
    ----------
    factors : sequence of torch.Tensor, each of shape (n_i, n_i)
        Symmetric positive semi-definite factors.
    noise : torch.Tensor or float
        :math:`\sigma^2 > 0` (a scalar tensor may require grad).
    Y : torch.Tensor of shape (N,) or (N, k)
        Right-hand sides, C order.

    Returns
    -------
    alpha : torch.Tensor of shape (N,) or (N, k)
        :math:`A^{-1} Y`.
    logdet : torch.Tensor, scalar
        :math:`\log|A|`.

    Examples
    --------
    >>> import torch
    >>> from gpkern.linalg.kronecker import kron_solve_logdet
    >>> x = torch.linspace(0, 1, 5, dtype=torch.float64)
    >>> K1 = torch.exp(-(x[:, None] - x) ** 2)
    >>> y = torch.randn(25, dtype=torch.float64)
    >>> alpha, logdet = kron_solve_logdet([K1, K1], 0.1, y)
    >>> A = torch.kron(K1, K1) + 0.1 * torch.eye(25, dtype=torch.float64)
    >>> torch.allclose(alpha, torch.linalg.solve(A, y)), torch.allclose(logdet, torch.logdet(A))
    (True, True)
    """
    factors = list(factors)
    ref = factors[0]
    noise = torch.as_tensor(noise, dtype=ref.dtype, device=ref.device)
    if noise.numel() != 1:
        raise ValueError("noise must be a scalar; use kron_diag_solve_logdet for a diagonal.")
    noise = noise.reshape(())
    if not bool(noise.detach() > 0):
        raise ValueError(f"noise must be > 0 for the eigen path, got {float(noise)}.")
    vector = Y.ndim == 1
    Y2 = Y[:, None] if vector else Y
    N = math.prod(f.shape[0] for f in factors)
    if Y2.shape[0] != N:
        raise ValueError(f"Y has {Y2.shape[0]} rows but the grid has {N} points.")
    alpha, logdet = _KronEigSolveLogdet.apply(Y2, noise, *factors)
    return (alpha[:, 0] if vector else alpha), logdet


# -------------------------------------------------------------------------------------------
# General diagonal: K + D on the cells where D is finite (PCG + stochastic Lanczos logdet)
# -------------------------------------------------------------------------------------------
class RestrictedKronecker:
    r"""The operator :math:`A = S K S^\top + D_S` on the observed index set :math:`S`.

    :math:`K = K_1 \otimes \dots \otimes K_d` on a grid of :math:`N` cells, :math:`S` the
    :math:`n \times N` selection of the observed cells and :math:`D_S` their (finite) noise.
    Infinite noise on a cell is exactly the limit :math:`D_{uu} \to \infty`: the cell drops
    out of the system. Products cost one :func:`kron_matmul` on the grid; the preconditioner
    :math:`S (K + c I)^{-1} S^\top`, :math:`c = \bar d N / n`, two :func:`kron_rotate`.

    Parameters
    ----------
    factors : sequence of torch.Tensor, each of shape (n_i, n_i)
        Symmetric positive semi-definite Kronecker factors.
    diag : torch.Tensor of shape (n,)
        Positive noise on the observed cells.
    obs_index : torch.Tensor of shape (n,), long, or None
        Flat C-order indices of the observed cells; ``None`` for the full grid.
    eig : tuple, optional
        ``(eigvals, eigvecs, lam)`` of the factors (:func:`kron_eigh`, :func:`kron_eigvals`)
        when already known; computed on first use otherwise.

    Examples
    --------
    >>> import torch
    >>> from gpkern.linalg.kronecker import RestrictedKronecker, kron_dense
    >>> K1 = torch.eye(3, dtype=torch.float64) + 0.5
    >>> obs = torch.tensor([0, 2, 4, 7])
    >>> op = RestrictedKronecker([K1, K1], torch.full((4,), 0.1, dtype=torch.float64), obs)
    >>> A = kron_dense([K1, K1])[obs][:, obs] + 0.1 * torch.eye(4, dtype=torch.float64)
    >>> v = torch.randn(4, 2, dtype=torch.float64)
    >>> torch.allclose(op.matmul(v), A @ v)
    True
    """

    def __init__(self, factors, diag, obs_index, eig=None):
        self.factors = list(factors)
        self.N = math.prod(f.shape[0] for f in self.factors)
        self.diag = diag  # (n_obs,)
        self.obs = obs_index  # (n_obs,) long, or None for the full grid
        self.n = self.N if obs_index is None else obs_index.shape[0]
        self._eig = eig

    @property
    def eig(self):
        """``(eigvals, eigvecs, lam)``: per-factor eigenpairs and all grid eigenvalues of K."""
        if self._eig is None:
            with torch.no_grad():
                eigvals, eigvecs = kron_eigh([f.detach() for f in self.factors])
                self._eig = (eigvals, eigvecs, kron_eigvals(eigvals).clamp_min(0.0))
        return self._eig

    def scatter(self, v):  # (n, k) -> (N, k)
        r""":math:`S^\top v`: observed values placed on the grid, zero elsewhere."""
        if self.obs is None:
            return v
        out = v.new_zeros(self.N, v.shape[1])
        return out.index_copy(0, self.obs, v)

    def gather(self, v):  # (N, k) -> (n, k)
        r""":math:`S v`: the observed cells of grid values."""
        return v if self.obs is None else v.index_select(0, self.obs)

    def kmatmul(self, v, factors=None):  # (n, k) -> (n, k)
        r""":math:`S K S^\top v` (with other ``factors`` in place of :math:`K_i` if given)."""
        return self.gather(
            kron_matmul(self.factors if factors is None else factors, self.scatter(v))
        )

    def matmul(self, v):  # (n, k) -> (n, k)
        r""":math:`A v = S K S^\top v + D_S v`."""
        return self.kmatmul(v) + self.diag[:, None] * v

    @property
    def shift(self) -> torch.Tensor:
        r"""The preconditioner's shift :math:`c = \bar d\, N / n`."""
        return self.diag.mean() * (self.N / self.n)

    def precondition(self, r):
        r"""Apply :math:`S (K + c I)^{-1} S^\top`, :math:`c = \bar d\, N / n`."""
        eigvals, eigvecs, lam = self.eig
        c = self.shift
        z = _kron_rotate(eigvecs, self.scatter(r), True) / (lam + c)[:, None]
        return self.gather(_kron_rotate(eigvecs, z, False))


_RestrictedKronecker = RestrictedKronecker


class _LowRankDiagPreconditioner:
    r""":math:`P = L L^\top + D_S` with :math:`L = S\, Q_{:,R} \Lambda_R^{1/2}` on the observed set.

    :math:`R` indexes the ``rank`` largest eigenvalues of :math:`K = \otimes_i K_i`; a column of
    :math:`Q = \otimes_i Q_i` at the observed cells is a product of gathered factor eigenvector
    entries, so :math:`L` costs :math:`O(n r d)` and the capacitance
    :math:`C = I + L^\top D_S^{-1} L` one :math:`n r^2` GEMM. Because
    :math:`A_S - P = S (K - K_R) S^\top` with :math:`0 \preceq K - K_R \preceq \lambda_{r+1} I`,
    the spectrum of :math:`P^{-1} A_S` lies in :math:`[1, 1 + \lambda_{r+1} / \min D_S]`.
    """

    max_rank = 512

    def __init__(self, op: _RestrictedKronecker, rank: int | None = None) -> None:
        eigvals, eigvecs, lam = op.eig
        D = op.diag
        above = int((lam > D.min()).sum())
        if rank is None:
            rank = min(above, self.max_rank)
        # Every eigenvalue above the smallest noise kept: kappa(P^-1 A_S) <= 2, a few CG steps.
        self.complete = rank >= above
        rank = max(0, min(int(rank), op.n, lam.numel()))
        self.rank, self.D, self.n = rank, D, op.n
        self.Dinv = D.reciprocal()
        ns = [Q.shape[0] for Q in eigvecs]
        obs = op.obs if op.obs is not None else torch.arange(op.N, device=D.device)
        top = lam.topk(rank).indices if rank else lam.new_zeros(0, dtype=torch.long)
        L = lam[top].sqrt().expand(op.n, rank).clone()
        cell, col = obs, top
        for i in reversed(range(len(ns))):  # C order: last axis fastest
            L *= eigvecs[i][cell % ns[i]][:, col % ns[i]]
            cell, col = cell // ns[i], col // ns[i]
        self.L = L
        C = torch.eye(rank, dtype=D.dtype, device=D.device) + (L * self.Dinv[:, None]).mT @ L
        self.chol = torch.linalg.cholesky(C)
        self.logdet = D.log().sum() + 2 * self.chol.diagonal().log().sum()

    def __call__(self, v: torch.Tensor) -> torch.Tensor:  # (n, k): P^{-1} v by Woodbury
        u = self.Dinv[:, None] * v
        if self.rank == 0:
            return u
        return u - self.Dinv[:, None] * (self.L @ torch.cholesky_solve(self.L.mT @ u, self.chol))

    def sample(self, k: int, generator: torch.Generator | None) -> torch.Tensor:
        """``k`` columns ~ N(0, P): L e_1 + D^{1/2} e_2."""
        e = torch.randn(self.n + self.rank, k, generator=generator, dtype=self.D.dtype)
        e = e.to(self.D.device)
        return self.D.sqrt()[:, None] * e[: self.n] + self.L @ e[self.n :]


def kron_diag_solve_logdet(
    factors: Sequence[torch.Tensor],  # d x (n_i, n_i)
    diag: torch.Tensor,  # (N,)
    Y: torch.Tensor,  # (N,) or (N, k)
    *,
    num_probes: int = 16,
    tol: float = 1e-8,
    probe_tol: float = 1e-3,
    max_iter: int = 1000,
    generator: torch.Generator | None = None,
    compute_logdet: bool = True,
    precond_rank: int | None = None,
    info: dict | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    r"""Solve and stochastic log-determinant of :math:`A = K_1 \otimes \dots \otimes K_d + D`.

    :math:`D` is a positive diagonal on the grid; entries equal to ``inf`` mark cells with no
    observation, and the system is the exact limit :math:`D_{uu} \to \infty`: only the set
    :math:`S` of finite cells enters,

    .. math::

        A_S = S K S^\top + D_S, \qquad \alpha = A_S^{-1} Y_S, \qquad \log|A_S|,

    which is the dense GP on the observed cells alone. Solves use batched preconditioned
    conjugate gradients with the Kronecker eigenbasis as preconditioner,
    :math:`P^{-1} = S Q (\Lambda + c I)^{-1} Q^\top S^\top` with :math:`c = \bar d N / |S|`,
    or, with missing cells, the low-rank-plus-diagonal :math:`P` below whenever it keeps every
    eigenvalue of :math:`K` above :math:`\min D_S` (then :math:`\kappa(P^{-1} A_S) \le 2`).
    The log-determinant is estimated by preconditioned stochastic Lanczos quadrature: with a
    preconditioner :math:`P` whose log-determinant is exact and probes
    :math:`z_j \sim \mathcal N(0, P)`,

    .. math::

        \log|A_S| = \log|P| + \mathbb E\big[\|z\|_{P^{-1}}^2\,
        e_1^\top \log(T_z)\, e_1\big],

    :math:`T_z` the Lanczos tridiagonal of :math:`P^{-1} A_S` started at :math:`z`. On a full
    grid :math:`P = K + cI` (Kronecker eigenbasis); with missing cells
    :math:`P = L L^\top + D_S`, :math:`L = S\, Q_{:,R} \Lambda_R^{1/2}` the ``precond_rank``
    leading eigenpairs of :math:`K` restricted to the observed cells, so that
    :math:`\log|P| = \log|D_S| + \log|I_r + L^\top D_S^{-1} L|` (determinant lemma) and
    :math:`P \preceq A_S \preceq P + \lambda_{r+1} I`. The gradient is the Hutchinson estimator
    :math:`\operatorname{tr}(A_S^{-1}\,\partial A_S) \approx \tfrac1t \sum_j
    (A_S^{-1} z_j)^\top \partial A_S\, (P^{-1} z_j)`, unbiased because
    :math:`\operatorname{Cov}(z) = P`, with the same probes.

    Gradients with respect to the factors, ``diag`` (finite entries) and ``Y`` are returned by
    autograd through a surrogate whose derivative is the exact solve derivative plus the
    Hutchinson logdet derivative.

    Parameters
    ----------
    factors : sequence of torch.Tensor, each of shape (n_i, n_i)
        Symmetric positive semi-definite factors.
    diag : torch.Tensor of shape (N,)
        Positive diagonal; ``inf`` on cells that are missing.
    Y : torch.Tensor of shape (N,) or (N, k)
        Right-hand sides on the grid (values on missing cells are ignored and may be NaN).
    num_probes : int, default=16
        Probe vectors of the stochastic log-determinant.
    tol : float, default=1e-8
        Relative residual tolerance of the CG solve for ``Y``.
    probe_tol : float, default=1e-3
        Relative residual tolerance of the probe solves (Lanczos quadrature converges long
        before the residual: at 1e-3 the estimate agrees with 1e-8 to ~1e-6 relative, far
        below the Monte Carlo error).
    max_iter : int, default=1000
        CG iteration cap.
    generator : torch.Generator, optional
        Draws the probes (fix it for a deterministic objective).
    compute_logdet : bool, default=True
        Skip the probes when only the solve is needed.
    precond_rank : int, optional
        Rank :math:`r` of the missing-cell preconditioner. By default every Kronecker
        eigenvalue above the smallest noise :math:`\min D_S` is kept (then
        :math:`\kappa(P^{-1}A_S) \le 2`), at most 512; 0 gives :math:`P = D_S`.
    info : dict, optional
        Filled with ``probe_iterations`` (Lanczos steps of the probe solves) and
        ``precond_rank``.

    Returns
    -------
    alpha : torch.Tensor of shape (N,) or (N, k)
        :math:`A_S^{-1} Y_S` scattered back to the grid (zero on missing cells).
    logdet : torch.Tensor or None
        Estimate of :math:`\log|A_S|`.
    """
    factors = list(factors)
    N = math.prod(f.shape[0] for f in factors)
    if diag.shape != (N,):
        raise ValueError(f"diag must have shape ({N},), got {tuple(diag.shape)}.")
    finite = torch.isfinite(diag.detach())
    if not bool((diag.detach()[finite] > 0).all()):
        raise ValueError("diag must be positive (use inf for missing cells).")
    if not bool(finite.any()):
        raise ValueError("diag is infinite everywhere: there is no observed cell.")
    obs = None if bool(finite.all()) else finite.nonzero().squeeze(1)
    vector = Y.ndim == 1
    Y2 = Y[:, None] if vector else Y
    if Y2.shape[0] != N:
        raise ValueError(f"Y has {Y2.shape[0]} rows but the grid has {N} points.")
    D_s = diag if obs is None else diag.index_select(0, obs)
    Y_s = Y2 if obs is None else Y2.index_select(0, obs)
    op = _RestrictedKronecker([f.detach() for f in factors], D_s.detach(), obs)
    with torch.no_grad():
        # Missing cells: the low-rank-plus-diagonal P when it holds every eigenvalue above the
        # noise (kappa <= 2; ~300 -> ~8 CG steps at 128^2), else the Kronecker-shift one.
        pre = None if obs is None else _LowRankDiagPreconditioner(op, precond_rank)
        solve_pre = pre if pre is not None and pre.complete else op.precondition
        alpha_s = pcg(
            op.matmul, Y_s.detach(), solve_pre, tol=tol, max_iter=max_iter, advice=_SOLVE_ADVICE
        ).solution
        est = None
        if compute_logdet:
            # In exact arithmetic CG ends within n steps; past that, Lanczos only loses
            # orthogonality.
            probe_iter = min(max_iter, op.n)
            if obs is None:
                # Full grid: precondition with M = K + c I, whose log-determinant is exact, and
                # draw z ~ N(0, M) so that log|A| = log|M| + E[r^T log(M^-1/2 A M^-1/2) r].
                eigvals, eigvecs, lam = op.eig
                c = op.shift
                eps = torch.randn(op.n, num_probes, generator=generator, dtype=Y2.dtype).to(
                    Y2.device
                )
                Z = _kron_rotate(eigvecs, (lam + c).sqrt()[:, None] * eps, False)
                pre_probe, pre_logdet = op.precondition, (lam + c).log().sum()
            else:
                # Missing cells: P = L L^T + D_S from the top Kronecker eigenpairs (exact
                # log-determinant by the determinant lemma), z ~ N(0, P), same identity.
                Z = pre.sample(num_probes, generator)
                pre_probe, pre_logdet = pre, pre.logdet
            est = stochastic_logdet(
                op.matmul,
                Z,
                pre_probe,
                precond_logdet=pre_logdet,
                tol=probe_tol,
                max_iter=probe_iter,
                advice=_PROBE_ADVICE,
            )
            if info is not None:
                info["probe_iterations"] = est.n_iter
                info["precond_rank"] = None if obs is None else pre.rank

    grad_needed = torch.is_grad_enabled() and (
        any(f.requires_grad for f in factors) or diag.requires_grad or Y.requires_grad
    )
    if not grad_needed:
        alpha = op.scatter(alpha_s)
        return (alpha[:, 0] if vector else alpha), None if est is None else est.value

    # Surrogates: d(alpha)/d(theta) = -A^{-1} dA alpha + A^{-1} dY, written as one solve-free
    # expression whose value equals alpha and whose gradient is exact given converged solves.
    def amat(v, D):
        return op.gather(kron_matmul(factors, op.scatter(v))) + D[:, None] * v

    alpha_s_c = alpha_s
    alpha_expr = alpha_s_c + _SolveGrad.apply(Y_s - amat(alpha_s_c, D_s), op, solve_pre)
    alpha = op.scatter(alpha_expr)
    # Hutchinson: E[(A^-1 z)^T dA (M^-1 z)] = tr(A^-1 dA) when Cov(z) = M.
    logdet = None if est is None else est.with_gradient(lambda v: amat(v, D_s))
    return (alpha[:, 0] if vector else alpha), logdet


_SOLVE_ADVICE = (
    "Raise max_iter or loosen tol; a grid with very small noise or many missing cells needs "
    "more iterations."
)
_PROBE_ADVICE = (
    "The stochastic log-determinant may be biased: loosen probe_tol or raise max_iter, or "
    "increase the noise."
)
_GRAD_ADVICE = (
    "The gradient of the solve is inaccurate: work in float64, or increase the noise (a "
    "near-singular restricted kernel matrix needs more CG iterations)."
)


class _SolveGrad(torch.autograd.Function):
    """Identity-valued zero (the residual) whose backward applies A^{-1}: d alpha = A^{-1} dr."""

    @staticmethod
    def forward(ctx, residual, op, precondition):
        ctx.op, ctx.precondition = op, precondition
        return torch.zeros_like(residual)

    @staticmethod
    def backward(ctx, g):
        op = ctx.op
        with torch.no_grad():
            res = pcg(op.matmul, g, ctx.precondition, tol=1e-10, max_iter=2000, advice=_GRAD_ADVICE)
            return res.solution, None, None


# -------------------------------------------------------------------------------------------
# LinearOperator wrappers
# -------------------------------------------------------------------------------------------
def _batch_kron_matmul(
    factors: Sequence[torch.Tensor],  # d x (*b, m_i, n_i)
    rhs: torch.Tensor,  # (N,) or (*b_r, N, k)
) -> torch.Tensor:  # (M,) or (*broadcast(b, b_r), M, k)
    r""":func:`kron_matmul` with broadcast batch dimensions on the factors and the right side."""
    if rhs.ndim == 1:
        return _batch_kron_matmul(factors, rhs[:, None])[..., 0]
    if rhs.ndim == 2 and all(f.ndim == 2 for f in factors):
        return kron_matmul(factors, rhs)
    k = rhs.shape[-1]
    dims = [f.shape[-1] for f in factors]
    X = rhs
    for i, f in enumerate(factors):
        # (*b, N, k) viewed as (*b, A, n_i, B k): one broadcast batched GEMM per factor.
        A, B = math.prod(dims[:i]), math.prod(dims[i + 1 :]) * k
        X = f.unsqueeze(-3) @ X.reshape(*X.shape[:-2], A, dims[i], B)
        dims[i] = f.shape[-2]
        X = X.reshape(*X.shape[:-3], -1, k)
    return X


def _is_symmetric(f: torch.Tensor) -> bool:
    """Symmetric up to round-off: kernel matrices computed from differences of large inputs
    (e.g. periodic ones) can be asymmetric by far more than a few ulps; a truly non-symmetric
    factor differs from its transpose at the scale of its entries."""
    if f.shape[-1] != f.shape[-2]:
        return False
    f = f.detach()
    info = torch.finfo(f.dtype)
    tol = math.sqrt(info.eps) * f.abs().amax().clamp_min(info.tiny)
    return bool(((f - f.mT).abs() <= tol).all())


def _symmetrised(f: torch.Tensor) -> torch.Tensor:
    # Same value for a symmetric factor; its gradient is the symmetric part, as for a dense
    # symmetric matrix (linear_operator's convention for solves and log-determinants).
    return 0.5 * (f + f.mT)


class KroneckerOperator(LinearOperator):
    r""":math:`K_1 \otimes \dots \otimes K_d` as a :class:`linear_operator.LinearOperator`.

    Matrix products use mode products (:func:`kron_matmul`); :meth:`add_diagonal` returns a
    :class:`KroneckerAddedDiagOperator` whose ``solve``, ``logdet`` and ``inv_quad_logdet``
    use the eigen path (constant diagonal) or PCG (general diagonal).

    Factors may carry leading batch dimensions, which broadcast against each other as in
    :class:`linear_operator.operators.KroneckerProductLinearOperator`: factors of shapes
    ``(*b_i, m_i, n_i)`` give an operator of shape ``(*b, M, N)``, ``b`` the broadcast of the
    ``b_i``, :math:`M = \prod_i m_i`, :math:`N = \prod_i n_i`.

    Parameters
    ----------
    *factors : torch.Tensor of shape ``(*b_i, m_i, n_i)``
        Kronecker factors: square and invertible for :meth:`solve`; symmetric positive
        semi-definite for the fast solves after :meth:`add_diagonal`.

    Examples
    --------
    >>> import torch
    >>> from gpkern.linalg.kronecker import KroneckerOperator
    >>> A, B = torch.eye(2), 2 * torch.eye(3)
    >>> K = KroneckerOperator(A, B)
    >>> K.shape, bool(torch.allclose(K.to_dense(), torch.kron(A, B)))
    (torch.Size([6, 6]), True)
    >>> KroneckerOperator(torch.eye(2).expand(4, 2, 2), B).shape
    torch.Size([4, 6, 6])
    """

    def __init__(self, *factors: torch.Tensor) -> None:
        if not factors:
            raise ValueError("KroneckerOperator needs at least one factor.")
        for f in factors:
            if not torch.is_tensor(f) or f.ndim < 2:
                raise ValueError(
                    "Every Kronecker factor must be a torch.Tensor of shape (*batch, m, n)."
                )
        try:
            batch = torch.broadcast_shapes(*(f.shape[:-2] for f in factors))
        except RuntimeError as exc:
            shapes = [tuple(f.shape) for f in factors]
            raise ValueError(f"The factors' batch shapes do not broadcast: {shapes}.") from exc
        # Every factor carries the full batch shape (a view), so that linear_operator's generic
        # batch indexing, permuting and unsqueezing of the arguments apply unchanged.
        factors = tuple(
            f if f.shape[:-2] == batch else f.expand(*batch, *f.shape[-2:]) for f in factors
        )
        super().__init__(*factors)
        self.factors = list(factors)

    def _matmul(self, rhs: torch.Tensor) -> torch.Tensor:
        return _batch_kron_matmul(self.factors, rhs)

    def _size(self) -> torch.Size:
        return torch.Size(
            (
                *self.factors[0].shape[:-2],
                math.prod(f.shape[-2] for f in self.factors),
                math.prod(f.shape[-1] for f in self.factors),
            )
        )

    def _transpose_nonbatch(self) -> KroneckerOperator:
        return KroneckerOperator(*[f.mT for f in self.factors])

    def _diagonal(self) -> torch.Tensor:
        return kron_eigvals([f.diagonal(dim1=-2, dim2=-1) for f in self.factors])

    def _expand_batch(self, batch_shape) -> KroneckerOperator:
        return KroneckerOperator(*[f.expand(*batch_shape, *f.shape[-2:]) for f in self.factors])

    def _get_indices(self, row_index, col_index, *batch_indices) -> torch.Tensor:
        # Entry ((a_1..a_d), (b_1..b_d)) is prod_i K_i[a_i, b_i]; C order: last factor fastest.
        out = None
        for f in reversed(self.factors):
            m, n = f.shape[-2:]
            v = f[(*batch_indices, row_index % m, col_index % n)]
            row_index, col_index = row_index // m, col_index // n
            out = v if out is None else out * v
        return out

    def to_dense(self) -> torch.Tensor:
        return kron_dense(self.factors)

    def solve(
        self, right_tensor: torch.Tensor, left_tensor: torch.Tensor | None = None
    ) -> torch.Tensor:
        r""":math:`(\otimes_i K_i)^{-1} = \otimes_i K_i^{-1}` (mode products, inverse factors)."""
        if any(f.shape[-1] != f.shape[-2] for f in self.factors):
            return super().solve(right_tensor, left_tensor)
        inverses = [
            torch.linalg.inv(_symmetrised(f) if _is_symmetric(f) else f) for f in self.factors
        ]
        x = _batch_kron_matmul(inverses, right_tensor)
        return x if left_tensor is None else left_tensor @ x

    def inv_quad_logdet(self, inv_quad_rhs=None, logdet=False, reduce_inv_quad=True):
        r""":math:`\log|\otimes_i K_i| = \sum_i (N / n_i) \log|K_i|`; the rest by :meth:`solve`."""
        if any(f.shape[-1] != f.shape[-2] for f in self.factors):
            return super().inv_quad_logdet(inv_quad_rhs, logdet, reduce_inv_quad)
        quad = ld = None
        if inv_quad_rhs is not None:
            vector = inv_quad_rhs.ndim == 1
            rhs = inv_quad_rhs[:, None] if vector else inv_quad_rhs
            quad = (rhs * self.solve(rhs)).sum(-2)
            quad = quad.sum(-1) if reduce_inv_quad or vector else quad
        if logdet:
            N = self.shape[-1]
            ld = sum(
                (N // f.shape[-1]) * torch.logdet(_symmetrised(f) if _is_symmetric(f) else f)
                for f in self.factors
            )
        return quad, ld

    def add_diagonal(self, diag: torch.Tensor) -> KroneckerAddedDiagOperator:
        if not self.is_square:
            raise RuntimeError("add_diagonal is only defined for square operators.")
        return KroneckerAddedDiagOperator(
            self, torch.as_tensor(diag, dtype=self.dtype, device=self.device)
        )

    def __add__(self, other):
        # GPyTorch's GaussianLikelihood adds its noise as a DiagLinearOperator: keep the fast path.
        from linear_operator.operators import ConstantDiagLinearOperator, DiagLinearOperator

        if isinstance(other, ConstantDiagLinearOperator) and other.shape == self.shape:
            return KroneckerAddedDiagOperator(self, other.diag_values)
        if isinstance(other, DiagLinearOperator) and other.shape == self.shape:
            return KroneckerAddedDiagOperator(self, other._diag)
        return super().__add__(other)


_DENSE_FALLBACK = "a dense O(N^3) LU factorisation"


class KroneckerAddedDiagOperator(LinearOperator):
    r""":math:`K_1 \otimes \dots \otimes K_d + D` with fast solves and log-determinants.

    A constant diagonal :math:`\sigma^2` uses the exact eigen path (:func:`kron_solve_logdet`;
    eigendecompositions, roots and inverse roots come from the factors' eigendecompositions
    too); a full diagonal uses PCG and stochastic Lanczos quadrature
    (:func:`kron_diag_solve_logdet`), or a dense Cholesky for the log-determinant when
    :math:`N` is at most ``linear_operator.settings.max_cholesky_size``. Both need symmetric
    positive semi-definite factors and a positive diagonal; otherwise linear_operator's generic
    algorithms are used, with a warning. Batched operators are solved one batch element at a
    time.

    Parameters
    ----------
    kron : KroneckerOperator
        The Kronecker part, shape ``(*b, N, N)``.
    diag : torch.Tensor of shape ``()``, ``(*b, 1)`` or ``(*b, N)``
        The added diagonal (one value, or one per cell); batch dimensions broadcast with ``kron``.
    num_probes : int, default=16
        Probes of the stochastic log-determinant (full diagonal only).

    Examples
    --------
    >>> import torch
    >>> from gpkern.linalg.kronecker import KroneckerOperator
    >>> A = torch.tensor([[2.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
    >>> Kd = KroneckerOperator(A, A).add_diagonal(torch.tensor(0.5, dtype=torch.float64))
    >>> dense = torch.kron(A, A) + 0.5 * torch.eye(4, dtype=torch.float64)
    >>> bool(torch.allclose(Kd.logdet(), torch.logdet(dense)))
    True
    """

    def __init__(self, kron: KroneckerOperator, diag: torch.Tensor, num_probes: int = 16) -> None:
        if not isinstance(kron, KroneckerOperator):
            raise TypeError(f"kron must be a KroneckerOperator, got {type(kron).__name__}.")
        N = kron.shape[-1]
        if kron.shape[-2] != N:
            raise ValueError(f"The Kronecker part must be square, got shape {tuple(kron.shape)}.")
        diag = torch.as_tensor(diag, dtype=kron.dtype, device=kron.device)
        if diag.ndim == 0:
            diag = diag.reshape(1)
        if diag.shape[-1] not in (1, N):
            raise ValueError(
                f"diag must have shape (), (*b, 1) or (*b, {N}); got {tuple(diag.shape)}."
            )
        batch = torch.broadcast_shapes(kron.batch_shape, diag.shape[:-1])
        if kron.batch_shape != batch:
            kron = kron._expand_batch(batch)
        if diag.shape[:-1] != batch:
            diag = diag.expand(*batch, diag.shape[-1])
        super().__init__(kron, diag, num_probes=num_probes)
        self.kron = kron
        self.diag_values = diag
        self.num_probes = num_probes

    @property
    def _constant(self) -> bool:
        return self.diag_values.shape[-1] == 1

    def _matmul(self, rhs: torch.Tensor) -> torch.Tensor:
        d = self.diag_values if rhs.ndim == 1 else self.diag_values.unsqueeze(-1)
        return self.kron._matmul(rhs) + d * rhs

    def _size(self) -> torch.Size:
        return self.kron._size()

    def _transpose_nonbatch(self) -> KroneckerAddedDiagOperator:
        return KroneckerAddedDiagOperator(
            self.kron._transpose_nonbatch(), self.diag_values, num_probes=self.num_probes
        )

    def _diagonal(self) -> torch.Tensor:
        return self.kron._diagonal() + self.diag_values

    def _expand_batch(self, batch_shape) -> KroneckerAddedDiagOperator:
        return KroneckerAddedDiagOperator(
            self.kron._expand_batch(batch_shape),
            self.diag_values.expand(*batch_shape, self.diag_values.shape[-1]),
            num_probes=self.num_probes,
        )

    def _get_indices(self, row_index, col_index, *batch_indices) -> torch.Tensor:
        cell = torch.zeros_like(row_index) if self._constant else row_index
        d = self.diag_values[(*batch_indices, cell)]
        on_diag = row_index == col_index
        return self.kron._get_indices(row_index, col_index, *batch_indices) + d * on_diag

    def to_dense(self) -> torch.Tensor:
        d = self.diag_values.expand(*self.shape[:-1])
        return self.kron.to_dense() + torch.diag_embed(d)

    def add_diagonal(self, diag: torch.Tensor) -> KroneckerAddedDiagOperator:
        diag = torch.as_tensor(diag, dtype=self.dtype, device=self.device)
        return KroneckerAddedDiagOperator(
            self.kron,
            self.diag_values + diag.reshape(*diag.shape[:-1], -1),
            num_probes=self.num_probes,
        )

    def __add__(self, other):
        # A second diagonal (e.g. fixed plus learned noise) merges into this one.
        from linear_operator.operators import ConstantDiagLinearOperator, DiagLinearOperator

        if isinstance(other, ConstantDiagLinearOperator) and other.shape == self.shape:
            return self.add_diagonal(other.diag_values)
        if isinstance(other, DiagLinearOperator) and other.shape == self.shape:
            return self.add_diagonal(other._diag)
        return super().__add__(other)

    # -- structured algebra ----------------------------------------------------------------
    def _structured(self, what: str, fallback: str = "linear_operator's generic algorithm") -> bool:
        """Whether the fast paths hold (symmetric factors, positive diagonal); warn if not."""
        ok = all(_is_symmetric(f) for f in self.kron.factors) and bool(
            (self.diag_values.detach() > 0).all()
        )
        if not ok:
            warnings.warn(
                f"KroneckerAddedDiagOperator.{what}: the Kronecker factors are not symmetric or "
                f"the diagonal is not positive, so the eigen/PCG fast path does not apply; using "
                f"{fallback}, which is much slower for large grids.",
                stacklevel=3,
            )
        return ok

    def _solve_logdet_2d(self, factors, diag, rhs, logdet: bool):
        # One batch element: (N, k) right sides, factors (n_i, n_i), diag (1,) or (N,).
        factors = [_symmetrised(f) for f in factors]
        if diag.shape[-1] == 1:
            return kron_solve_logdet(factors, diag.reshape(()), rhs)
        return kron_diag_solve_logdet(
            factors, diag, rhs, num_probes=self.num_probes, compute_logdet=logdet
        )

    def _solve_logdet(self, rhs: torch.Tensor, logdet: bool):
        """(*b_r, N, k) -> A^{-1} rhs of shape (*b, N, k) and log|A| of shape (*b,) or None."""
        N, k = rhs.shape[-2:]
        if not self.batch_shape:
            # Batch dimensions of the right side only: one solve with them as extra columns.
            cols = rhs.movedim(-2, 0).reshape(N, -1)
            x, ld = self._solve_logdet_2d(self.kron.factors, self.diag_values, cols, logdet)
            return x.reshape(N, *rhs.shape[:-2], k).movedim(0, -2), (ld if logdet else None)
        batch = torch.broadcast_shapes(self.batch_shape, rhs.shape[:-2])
        B = batch.numel()
        factors = [
            f.expand(*batch, *f.shape[-2:]).reshape(B, *f.shape[-2:]) for f in self.kron.factors
        ]
        diag = self.diag_values.expand(*batch, self.diag_values.shape[-1]).reshape(B, -1)
        rhs = rhs.expand(*batch, N, k).reshape(B, N, k)
        outs = [
            self._solve_logdet_2d([f[j] for f in factors], diag[j], rhs[j], logdet)
            for j in range(B)
        ]
        x = torch.stack([o[0] for o in outs]).reshape(*batch, N, k)
        ld = torch.stack([o[1] for o in outs]).reshape(batch) if logdet else None
        return x, ld

    def solve(
        self, right_tensor: torch.Tensor, left_tensor: torch.Tensor | None = None
    ) -> torch.Tensor:
        if not self._structured("solve", _DENSE_FALLBACK):
            # linear_operator's own solve (Cholesky or CG) assumes a symmetric positive definite
            # operator too; a dense LU solve is right for any invertible one.
            rhs = right_tensor[:, None] if right_tensor.ndim == 1 else right_tensor
            x = torch.linalg.solve(self.to_dense(), rhs)
            x = x[..., 0] if right_tensor.ndim == 1 else x
            return x if left_tensor is None else left_tensor @ x
        vector = right_tensor.ndim == 1
        x, _ = self._solve_logdet(right_tensor[:, None] if vector else right_tensor, False)
        x = x[..., 0] if vector else x
        return x if left_tensor is None else left_tensor @ x

    def logdet(self) -> torch.Tensor:
        return self.inv_quad_logdet(logdet=True)[1]

    def inv_quad_logdet(self, inv_quad_rhs=None, logdet=False, reduce_inv_quad=True):
        from linear_operator import settings

        if not self._structured("inv_quad_logdet", _DENSE_FALLBACK):
            dense = self.to_dense()
            quad = None
            if inv_quad_rhs is not None:
                vector = inv_quad_rhs.ndim == 1
                rhs = inv_quad_rhs[:, None] if vector else inv_quad_rhs
                quad = (rhs * torch.linalg.solve(dense, rhs)).sum(-2)
                quad = quad.sum(-1) if reduce_inv_quad or vector else quad
            return quad, (torch.logdet(dense) if logdet else None)
        # A full diagonal's log-determinant is a stochastic estimate: below linear_operator's
        # max_cholesky_size the dense Cholesky is cheap and exact, as for every linear_operator.
        small = logdet and not self._constant
        if small and self.shape[-1] <= settings.max_cholesky_size.value():
            return super().inv_quad_logdet(inv_quad_rhs, logdet, reduce_inv_quad)
        rhs = inv_quad_rhs
        if rhs is None:
            rhs = torch.zeros(self.shape[-1], 1, dtype=self.dtype, device=self.device)
        vector = rhs.ndim == 1
        rhs2 = rhs[:, None] if vector else rhs
        x, ld = self._solve_logdet(rhs2, bool(logdet))
        quad = None
        if inv_quad_rhs is not None:
            quad = (rhs2 * x).sum(-2)
            quad = quad.sum(-1) if reduce_inv_quad or vector else quad
        return quad, (ld if logdet else None)

    def _factor_eigh(self):
        """Per-factor eigendecompositions -> eigenvalues of A (*b, N) and its eigenvectors."""
        eig = [torch.linalg.eigh(_symmetrised(f)) for f in self.kron.factors]
        evals = kron_eigvals([e for e, _ in eig]).clamp_min(0.0) + self.diag_values
        return evals, KroneckerOperator(*[Q for _, Q in eig])

    def _eigen_path(self, what: str) -> bool:
        return self._constant and self._structured(what)

    def _symeig(self, eigenvectors: bool = False, return_evals_as_lazy: bool | None = False):
        if not self._eigen_path("eigh"):
            return super()._symeig(eigenvectors, return_evals_as_lazy)
        evals, evecs = self._factor_eigh()
        if return_evals_as_lazy:
            from linear_operator.operators import DiagLinearOperator

            evals = DiagLinearOperator(evals)
        return evals, (evecs if eigenvectors else None)

    @cached(name="diagonalization")
    def diagonalization(self, method: str | None = None):
        if method not in (None, "symeig") or not self._eigen_path("diagonalization"):
            return super().diagonalization(method)
        return self._factor_eigh()

    @cached(name="root_decomposition")
    def root_decomposition(self, method: str | None = None):
        if method not in (None, "symeig", "diagonalization") or not self._eigen_path(
            "root_decomposition"
        ):
            return super().root_decomposition(method)
        from linear_operator.operators import DiagLinearOperator, RootLinearOperator

        evals, Q = self._factor_eigh()
        return RootLinearOperator(Q @ DiagLinearOperator(evals.sqrt()))

    @cached(name="root_inv_decomposition")
    def root_inv_decomposition(self, initial_vectors=None, test_vectors=None, method=None):
        if method not in (None, "symeig", "diagonalization") or not self._eigen_path(
            "root_inv_decomposition"
        ):
            return super().root_inv_decomposition(initial_vectors, test_vectors, method)
        from linear_operator.operators import DiagLinearOperator, RootLinearOperator

        evals, Q = self._factor_eigh()
        return RootLinearOperator(Q @ DiagLinearOperator(evals.rsqrt()))


class KroneckerSumOperator(LinearOperator):
    r"""A sum of Kronecker products :math:`\sum_t K^{(t)}_1 \otimes \dots \otimes K^{(t)}_d`.

    E.g. the Laplacian block of a grid kernel, :math:`K_1'' \otimes K_2 + K_1 \otimes K_2''`.
    Each term is multiplied by mode products; the sum is never formed. Batch shapes of the terms
    broadcast.

    Parameters
    ----------
    *terms : KroneckerOperator
        Terms of equal matrix shape.

    Examples
    --------
    >>> import torch
    >>> from gpkern.linalg.kronecker import KroneckerOperator, KroneckerSumOperator
    >>> A, B, C, E = (torch.randn(3, 3) for _ in range(4))
    >>> S = KroneckerSumOperator(KroneckerOperator(A, B), KroneckerOperator(C, E))
    >>> v = torch.randn(9)
    >>> bool(torch.allclose(S @ v, (torch.kron(A, B) + torch.kron(C, E)) @ v, atol=1e-5))
    True
    """

    def __init__(self, *terms: KroneckerOperator) -> None:
        if not terms:
            raise ValueError("KroneckerSumOperator needs at least one term.")
        terms = tuple(
            t if isinstance(t, KroneckerOperator) else KroneckerOperator(*t) for t in terms
        )
        shape = terms[0].matrix_shape
        for t in terms:
            if t.matrix_shape != shape:
                raise ValueError(
                    f"All terms must have the same shape; got {t.matrix_shape} and {shape}."
                )
        batch = torch.broadcast_shapes(*(t.batch_shape for t in terms))
        terms = tuple(t if t.batch_shape == batch else t._expand_batch(batch) for t in terms)
        super().__init__(*terms)
        self.terms = list(terms)

    def _matmul(self, rhs: torch.Tensor) -> torch.Tensor:
        out = self.terms[0]._matmul(rhs)
        for t in self.terms[1:]:
            out = out + t._matmul(rhs)
        return out

    def _size(self) -> torch.Size:
        return self.terms[0]._size()

    def _transpose_nonbatch(self) -> KroneckerSumOperator:
        return KroneckerSumOperator(*[t._transpose_nonbatch() for t in self.terms])

    def _diagonal(self) -> torch.Tensor:
        out = self.terms[0]._diagonal()
        for t in self.terms[1:]:
            out = out + t._diagonal()
        return out

    def _expand_batch(self, batch_shape) -> KroneckerSumOperator:
        return KroneckerSumOperator(*[t._expand_batch(batch_shape) for t in self.terms])

    def _get_indices(self, row_index, col_index, *batch_indices) -> torch.Tensor:
        out = self.terms[0]._get_indices(row_index, col_index, *batch_indices)
        for t in self.terms[1:]:
            out = out + t._get_indices(row_index, col_index, *batch_indices)
        return out

    def to_dense(self) -> torch.Tensor:
        out = self.terms[0].to_dense()
        for t in self.terms[1:]:
            out = out + t.to_dense()
        return out


# -------------------------------------------------------------------------------------------
# Rows of Kronecker products (test points against a grid)
# -------------------------------------------------------------------------------------------
def rowwise_kron_matmul(
    rows: Sequence[torch.Tensor],  # d x (m, n_i)
    V: torch.Tensor,  # (N, k)
) -> torch.Tensor:  # (m, k)
    r"""Products :math:`(c^{(1)}_j \otimes \dots \otimes c^{(d)}_j)^\top V` for every row j.

    The cross-covariance between an arbitrary test point and a grid is a Kronecker product of
    per-dimension vectors, so :math:`K_{*X} V` costs :math:`O(m N k)` without forming
    :math:`K_{*X}`.

    Parameters
    ----------
    rows : sequence of torch.Tensor, each of shape (m, n_i)
        Row :math:`j` of ``rows[i]`` is :math:`c^{(i)}_j`.
    V : torch.Tensor of shape (N, k)
        Grid values, C order, :math:`N = \prod_i n_i`.

    Returns
    -------
    torch.Tensor of shape (m, k)

    Examples
    --------
    >>> import torch
    >>> from gpkern.linalg.kronecker import rowwise_kron_matmul
    >>> a, b = torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64)
    >>> V = torch.randn(12, 1, dtype=torch.float64)
    >>> ref = torch.stack([torch.kron(a[j], b[j]) @ V for j in range(2)])
    >>> torch.allclose(rowwise_kron_matmul([a, b], V), ref)
    True
    """
    ns = [r.shape[1] for r in rows]
    m, k = rows[0].shape[0], V.shape[1]
    X = rows[0] @ V.reshape(ns[0], -1)  # (m, n_2 ... n_d k)
    for r, n in zip(rows[1:], ns[1:]):
        X = torch.einsum("mar,ma->mr", X.reshape(m, n, -1), r)
    return X.reshape(m, k)


def rowwise_kron_columns(
    rows: Sequence[torch.Tensor],  # d x (m, n_i)
) -> torch.Tensor:  # (N, m)
    r"""The dense columns :math:`c^{(1)}_j \otimes \dots \otimes c^{(d)}_j`, one per row j.

    For blocks of test points whose columns are needed explicitly (e.g. a solve with each);
    :math:`O(mN)` memory, so keep :math:`m` small. ``rowwise_kron_columns(rows).T @ V`` equals
    :func:`rowwise_kron_matmul`.

    Parameters
    ----------
    rows : sequence of torch.Tensor, each of shape (m, n_i)

    Returns
    -------
    torch.Tensor of shape (N, m)
    """
    out = rows[0].mT
    for r in rows[1:]:
        out = (out[:, None, :] * r.mT[None, :, :]).reshape(-1, out.shape[-1])
    return out


# -------------------------------------------------------------------------------------------
# Kronecker sums: (sum_j I x ... x A_j x ... x I) X = R on a grid tensor
# -------------------------------------------------------------------------------------------
def apply_along_mode(
    fn: Callable[[torch.Tensor], torch.Tensor],
    X: torch.Tensor,  # (n_1, ..., n_j, ..., n_d)
    dim: int,
) -> torch.Tensor:  # (n_1, ..., p, ..., n_d)
    r"""Mode-``dim`` product with a linear map given as a function.

    :math:`(I \otimes \cdots \otimes F \otimes \cdots \otimes I)\, X`: ``fn`` receives the
    mode-``dim`` unfolding of ``X`` (shape ``(n_dim, rest)``, one column per fibre), returns
    ``(p, rest)``, and the result is folded back. For a matrix :math:`F` use
    :func:`kron_matmul` (all modes at once); this form serves maps that are not stored as
    matrices (structured solves, custom autograd functions).

    Parameters
    ----------
    fn : callable
        ``(n_dim, r) -> (p, r)``, linear in its columns.
    X : torch.Tensor of shape (n_1, ..., n_d)
        A grid tensor.
    dim : int
        The mode.

    Returns
    -------
    torch.Tensor of shape (n_1, ..., p, ..., n_d)

    Examples
    --------
    >>> import torch
    >>> from gpkern.linalg.kronecker import apply_along_mode, kron_matmul
    >>> M, X = torch.randn(5, 4), torch.randn(3, 4)
    >>> out = apply_along_mode(lambda Y: M @ Y, X, 1)
    >>> ref = kron_matmul([torch.eye(3), M], X.reshape(-1)).reshape(3, 5)
    >>> out.shape, bool(torch.allclose(out, ref, atol=1e-6))
    (torch.Size([3, 5]), True)
    """
    Xj = torch.movedim(X, dim, 0)
    shape = Xj.shape
    out = fn(Xj.reshape(shape[0], -1))
    return torch.movedim(out.reshape(out.shape[0], *shape[1:]), 0, dim)


def _kron_sum_eig(mats: Sequence[torch.Tensor]):
    vals, vecs = zip(*(torch.linalg.eig(A) for A in mats))
    vinvs = [torch.linalg.inv(V) for V in vecs]
    denom = vals[0].reshape(-1, *([1] * (len(mats) - 1)))
    for j in range(1, len(mats)):
        shape = [1] * len(mats)
        shape[j] = -1
        denom = denom + vals[j].reshape(shape)
    return vecs, vinvs, denom


def _kron_sum_apply_inverse(vecs, vinvs, denom, R):
    Z = kron_matmul(vinvs, R.to(vecs[0].dtype).reshape(-1)).reshape(R.shape)
    return kron_matmul(vecs, (Z / denom).reshape(-1)).reshape(R.shape).real


class _KronSumSolve(torch.autograd.Function):
    @staticmethod
    def forward(ctx, R, *mats):
        vecs, vinvs, denom = _kron_sum_eig(mats)
        X = _kron_sum_apply_inverse(vecs, vinvs, denom, R)
        ctx.save_for_backward(X, denom, *vecs, *vinvs)
        ctx.d = len(mats)
        return X

    @staticmethod
    def backward(ctx, G):
        X, denom, *rest = ctx.saved_tensors
        d = ctx.d
        vecs, vinvs = rest[:d], rest[d:]
        # Adjoint system: sum_j A_j^T along mode j, eigenvectors V_j^{-T} and V_j^T.
        Y = _kron_sum_apply_inverse([Vi.T for Vi in vinvs], [V.T for V in vecs], denom, G)
        grads = []
        for j in range(d):
            if ctx.needs_input_grad[j + 1]:
                others = [i for i in range(d) if i != j]
                grads.append(-torch.tensordot(Y, X, dims=(others, others)))
            else:
                grads.append(None)
        return (Y, *grads)


def kron_sum_solve(
    mats: Sequence[torch.Tensor],  # d x (n_j, n_j)
    R: torch.Tensor,  # (n_1, ..., n_d)
) -> torch.Tensor:  # (n_1, ..., n_d)
    r"""Solve :math:`\big(\sum_j I \otimes \cdots \otimes A_j \otimes \cdots \otimes I\big) X = R`.

    With eigendecompositions :math:`A_j = V_j \Lambda_j V_j^{-1}` (complex in general),

    .. math::

        X = (V_1 \otimes \dots \otimes V_d)\,
            \frac{(V_1^{-1} \otimes \dots \otimes V_d^{-1}) R}{\lambda_{1 a_1} + \dots +
            \lambda_{d a_d}},

    a Sylvester solve in 2-D, in :math:`O(\sum_j n_j^3 + N \sum_j n_j)` (both rotations are
    :func:`kron_matmul`). Differentiable in ``R`` and every :math:`A_j`: the backward pass
    solves the adjoint system :math:`\sum_j A_j^\top` with the same eigenvectors and returns
    :math:`\partial / \partial A_j = -Y_{(j)} X_{(j)}^\top` (mode-:math:`j` unfoldings).
    In one dimension this is :func:`torch.linalg.solve`. The sum must be nonsingular (no
    :math:`\lambda_{1 a_1} + \dots + \lambda_{d a_d} = 0`).

    Parameters
    ----------
    mats : sequence of torch.Tensor, each of shape (n_j, n_j)
        The (not necessarily symmetric) matrices :math:`A_j`.
    R : torch.Tensor of shape (n_1, ..., n_d)
        Right-hand side as a grid tensor.

    Returns
    -------
    torch.Tensor of shape (n_1, ..., n_d)

    Examples
    --------
    >>> import torch
    >>> from gpkern.linalg.kronecker import kron_sum_solve
    >>> A = torch.randn(3, 3, dtype=torch.float64) + 4 * torch.eye(3, dtype=torch.float64)
    >>> B = torch.randn(4, 4, dtype=torch.float64) + 4 * torch.eye(4, dtype=torch.float64)
    >>> R = torch.randn(3, 4, dtype=torch.float64)
    >>> X = kron_sum_solve([A, B], R)
    >>> torch.allclose(A @ X + X @ B.T, R)
    True
    """
    if len(mats) == 1:
        return torch.linalg.solve(mats[0], R)
    return _KronSumSolve.apply(R, *mats)


def kron_sum_inverse(
    mats: Sequence[torch.Tensor],  # d x (n_j, n_j)
) -> Callable[[torch.Tensor], torch.Tensor]:  # (n_1, ..., n_d) -> (n_1, ..., n_d)
    r"""Factor a Kronecker sum once for repeated solves (no gradients).

    Returns :math:`R \mapsto \big(\sum_j I \otimes \cdots \otimes A_j \otimes \cdots \otimes
    I\big)^{-1} R` as in :func:`kron_sum_solve` (an LU factorisation in one dimension), with
    the eigendecompositions computed here once, e.g. for fixed-point iterations.

    Parameters
    ----------
    mats : sequence of torch.Tensor, each of shape (n_j, n_j)

    Returns
    -------
    callable
        ``R -> X`` on grid tensors of shape ``(n_1, ..., n_d)``.
    """
    if len(mats) == 1:
        lu = torch.linalg.lu_factor(mats[0])
        return lambda R: torch.linalg.lu_solve(*lu, R.unsqueeze(-1)).squeeze(-1)
    vecs, vinvs, denom = _kron_sum_eig(mats)
    return lambda R: _kron_sum_apply_inverse(vecs, vinvs, denom, R)
