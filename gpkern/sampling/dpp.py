r"""Projection determinantal point processes and :math:`k`-DPPs, sampled by the chain rule.

A projection DPP of rank :math:`m` with kernel :math:`K(x, y) = \phi(x)^\top \phi(y)`, for
features :math:`\phi = (\phi_1, \dots, \phi_m)` orthonormal in :math:`L^2(\mu)`, draws exactly
:math:`m` points with joint density :math:`\det[\phi_j(x_i)]^2 / m!` with respect to
:math:`\mu^{\otimes m}`. The chain rule draws them one at a time: given
:math:`x_1, \dots, x_{i-1}` and an orthonormal basis :math:`e_1, \dots, e_{i-1}` of
:math:`\operatorname{span}\{\phi(x_1), \dots, \phi(x_{i-1})\}` (incremental Gram--Schmidt),

.. math::

    x_i \sim \frac{\|\phi(x)\|^2 - \sum_{l < i} \langle e_l, \phi(x)\rangle^2}{m - i + 1}\,
    d\mu(x).

On a finite ground set of :math:`N` items (features the rows of an :math:`(N, m)` matrix
:math:`\Phi`) this is a categorical draw; on a continuous domain the :math:`i`-th point is drawn
by rejection from the optimal density :math:`k_m / m \cdot \mu`, which dominates it up to the
factor :math:`m / (m - i + 1)`. A :math:`k`-DPP of a PSD matrix :math:`L` (:math:`P(S) \propto
\det L_S`, :math:`|S| = k`) is a mixture of projection DPPs over :math:`k` of its eigenvectors,
chosen with elementary symmetric polynomials (Kulesza & Taskar 2012, Algorithm 8).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from gpkern.sampling.bases import Basis
from gpkern.sampling.christoffel import sample_optimal
from gpkern.sampling.generator import as_generator

__all__ = ["sample_projection_dpp", "sample_finite_projection_dpp", "sample_kdpp"]


def _orthonormal_residual(E: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:  # (i, m), (m,)
    """Unit vector of ``phi`` minus its projection on the orthonormal rows of ``E``.

    Gram--Schmidt is applied twice ("twice is enough", Giraud et al. 2005) so that the rows stay
    orthonormal to working precision even after many steps.
    """
    r = phi
    for _ in range(2):
        r = r - E.T @ (E @ r)
    return r / torch.linalg.vector_norm(r)


def _orthonormal_columns(Phi: torch.Tensor) -> torch.Tensor:  # (N, m) -> (N, m)
    """An orthonormal basis of the column span of a full-rank ``Phi``."""
    U, S, _ = torch.linalg.svd(Phi, full_matrices=False)
    if S.numel() and not S[-1] > S[0] * max(Phi.shape) * torch.finfo(Phi.dtype).eps:
        raise ValueError(
            f"features of shape {tuple(Phi.shape)} are not of full column rank (smallest singular "
            f"value {float(S[-1]):.3g}, largest {float(S[0]):.3g}); remove dependent columns."
        )
    return U


def _draw_index(weights: torch.Tensor, generator: torch.Generator) -> int:
    """One index drawn with probability proportional to the non-negative ``weights``."""
    return int(torch.multinomial(weights.clamp_min(0.0).cpu(), 1, generator=generator))


def sample_finite_projection_dpp(
    features: torch.Tensor,  # (N, m)
    generator: torch.Generator | int | None = None,
    *,
    orthonormal: bool = False,
) -> torch.Tensor:  # (m,) long
    r"""Projection DPP on a finite ground set: :math:`m` distinct indices out of :math:`N`.

    With :math:`Q` an :math:`(N, m)` matrix with orthonormal columns spanning those of the
    features :math:`\Phi`, the subset :math:`S` (:math:`|S| = m`) has probability

    .. math::

        P(S) = \det(Q_S)^2 = \det(K_S), \qquad K = Q Q^\top,

    and each item :math:`j` is included with probability :math:`K_{jj} = \|Q_j\|^2`. The chain
    rule costs :math:`O(N m^2)`.

    Parameters
    ----------
    features : torch.Tensor of shape (N, m)
        Features of the :math:`N` items, of full column rank :math:`m \le N`.
    generator : torch.Generator or int, optional
        Random source (a seed gives a fresh generator; ``None`` a random one).
    orthonormal : bool, default=False
        Whether the columns of ``features`` are already orthonormal (skips an SVD).

    Returns
    -------
    torch.Tensor of shape (m,), dtype long
        The sampled indices, sorted.

    Examples
    --------
    >>> Phi = torch.randn(10, 3, dtype=torch.float64)
    >>> S = sample_finite_projection_dpp(Phi, generator=0)
    >>> S.shape, len(set(S.tolist()))
    (torch.Size([3]), 3)
    """
    if features.dim() != 2:
        raise ValueError(f"features must be 2-D (N, m), got shape {tuple(features.shape)}.")
    N, m = features.shape
    if m > N:
        raise ValueError(f"a projection DPP of rank m = {m} needs at least m items, got N = {N}.")
    if not torch.isfinite(features).all():
        raise ValueError("features contain NaN or inf.")
    gen = as_generator(generator)
    Q = features.to(torch.float64)
    Q = Q if orthonormal else _orthonormal_columns(Q)
    residual = (Q**2).sum(1)  # K_jj - sum_l <e_l, q_j>^2: the chain rule's unnormalised weights
    E = Q.new_zeros(0, m)
    picked = []
    for _ in range(m):
        j = _draw_index(residual, gen)
        picked.append(j)
        e = _orthonormal_residual(E, Q[j])
        E = torch.cat([E, e[None]])
        residual = residual - (Q @ e) ** 2
        residual[picked] = 0.0  # rounding must not let a picked item come back
    return torch.tensor(sorted(picked), dtype=torch.long, device=features.device)


def sample_projection_dpp(
    basis: Basis, generator: torch.Generator | int | None = None
) -> torch.Tensor:  # (m, d)
    r"""The :math:`m` points of the continuous projection DPP of an orthonormal basis.

    The joint density is :math:`\det[\phi_j(x_i)]^2 / m!` with respect to
    :math:`\mu^{\otimes m}`; each point's marginal is the optimal density
    :math:`k_m/m \cdot \mu`. Points are drawn by the chain rule (module docstring): the
    :math:`i`-th from proposals of :func:`~gpkern.sampling.christoffel.sample_optimal`,
    accepted with probability :math:`\|(I - \Pi_{i-1})\phi(x)\|^2 / \|\phi(x)\|^2`
    (:math:`\Pi_{i-1}` the projection on the features already drawn), i.e. on average
    :math:`m / (m - i + 1)` proposals, :math:`m H_m \approx m \log m` in all.

    Parameters
    ----------
    basis : Basis
        Orthonormal basis of :math:`L^2(\mu)` that :func:`sample_optimal` can sample.
    generator : torch.Generator or int, optional
        Random source (a seed gives a fresh generator; ``None`` a random one).

    Returns
    -------
    torch.Tensor of shape (m, d)
        The points, in the (uniformly random) order they were drawn.

    Examples
    --------
    >>> from gpkern.sampling.bases import LegendreBasis
    >>> sample_projection_dpp(LegendreBasis(5), generator=0).shape
    torch.Size([6, 1])
    """
    gen = as_generator(generator)
    m = basis.m
    E = torch.zeros(0, m, dtype=torch.float64)
    points = []
    # Proposals are i.i.d. trials, each used once: draw them in pools of about twice the
    # expected total m H_m, so that a DPP costs a few basis evaluations, not one per step.
    pool_size = math.ceil(2 * m * sum(1.0 / j for j in range(1, m + 1))) + 8
    x = phi = u = norm2 = residual2 = torch.zeros(0)
    for _ in range(m):
        while True:
            if x.shape[0] == 0:
                x = sample_optimal(basis, pool_size, gen)
                phi = basis(x)
                u = torch.rand(x.shape[0], generator=gen, dtype=torch.float64)
                norm2 = (phi**2).sum(1)
                residual2 = norm2 - ((phi @ E.T) ** 2).sum(1)
            hits = torch.nonzero(u * norm2 < residual2)
            if hits.numel():
                a = int(hits[0])
                break
            x = torch.zeros(0)
        points.append(x[a])
        e = _orthonormal_residual(E, phi[a])
        E = torch.cat([E, e[None]])
        x, phi, u, norm2 = x[a + 1 :], phi[a + 1 :], u[a + 1 :], norm2[a + 1 :]
        residual2 = residual2[a + 1 :] - (phi @ e) ** 2  # ||(I - Pi_i) phi||^2, updated
    return torch.stack(points)


def _elementary_symmetric_log(log_lam: torch.Tensor, k: int) -> np.ndarray:  # (N,) -> (k+1, N+1)
    r"""``E[l, n] = log e_l(lam_1, ..., lam_n)`` for ``l <= k``, in log space (no overflow).

    Uses :math:`e_l(\lambda_{1:n}) = \sum_{n' \le n} \lambda_{n'} e_{l-1}(\lambda_{1:n'-1})`, a
    cumulative sum over :math:`n` for each :math:`l`.
    """
    N = log_lam.numel()
    E = torch.full((k + 1, N + 1), -math.inf, dtype=torch.float64)
    E[0] = 0.0
    for size in range(1, k + 1):
        E[size, 1:] = torch.logcumsumexp(log_lam + E[size - 1, :-1], dim=0)
    return E.numpy()


def _select_eigenvectors(lam: torch.Tensor, k: int, generator: torch.Generator) -> list[int]:
    r"""Indices of :math:`k` eigenvalues drawn with probability :math:`\propto \prod \lambda_i`."""
    log_lam = lam.double().cpu().log()
    E = _elementary_symmetric_log(log_lam, k)
    log_lam = log_lam.numpy()
    u = torch.rand(lam.numel(), generator=generator, dtype=torch.float64).numpy()
    chosen, remaining = [], k
    for n in range(lam.numel(), 0, -1):
        if remaining == 0:
            break
        # P(item n is in | `remaining` still to choose among 1..n) = lam_n e_{l-1}(1:n-1)/e_l(1:n)
        p = (
            1.0
            if remaining >= n
            else math.exp(log_lam[n - 1] + E[remaining - 1, n - 1] - E[remaining, n])
        )
        if u[n - 1] < p:
            chosen.append(n - 1)
            remaining -= 1
    return chosen


def sample_kdpp(
    L: torch.Tensor,  # (N, N) or (N, r) when factor=True
    k: int,
    generator: torch.Generator | int | None = None,
    factor: bool = False,
) -> torch.Tensor:  # (k,) long
    r"""A :math:`k`-DPP of a PSD kernel matrix: :math:`k` distinct indices with
    :math:`P(S) \propto \det L_S`.

    With :math:`L = \sum_n \lambda_n u_n u_n^\top`, a set of :math:`k` eigenvectors is chosen with
    probability :math:`\prod_{n \in J} \lambda_n / e_k(\lambda)` (:math:`e_k` the elementary
    symmetric polynomial, computed in log space) and the indices are then drawn from the
    projection DPP of :math:`U_J` (:func:`sample_finite_projection_dpp`). The eigenvectors come
    from ``torch.linalg.eigh`` (:math:`O(N^3)`) or, with ``factor=True`` and :math:`L = BB^\top`,
    from the thin SVD of :math:`B` (:math:`O(N r^2)`). Eigenvalues below
    :math:`N \epsilon \lambda_{\max}` count as zero.

    Parameters
    ----------
    L : torch.Tensor of shape (N, N), or (N, r) with ``factor=True``
        Symmetric PSD matrix, or a factor :math:`B` of :math:`L = B B^\top`.
    k : int
        Number of indices, :math:`0 \le k \le \operatorname{rank} L`.
    generator : torch.Generator or int, optional
        Random source (a seed gives a fresh generator; ``None`` a random one).
    factor : bool, default=False
        Whether ``L`` is the factor :math:`B`.

    Returns
    -------
    torch.Tensor of shape (k,), dtype long
        The sampled indices, sorted.

    Raises
    ------
    ValueError
        If ``L`` is not square (without ``factor``), not finite, clearly not PSD, or of numerical
        rank below ``k``.

    Examples
    --------
    >>> x = torch.linspace(0, 1, 50, dtype=torch.float64)
    >>> K = torch.exp(-(x[:, None] - x[None]) ** 2 / 0.05)
    >>> sample_kdpp(K, 5, generator=0).shape
    torch.Size([5])
    """
    if L.dim() != 2 or (not factor and L.shape[0] != L.shape[1]):
        what = "a 2-D factor (N, r)" if factor else "a square matrix (N, N)"
        raise ValueError(f"L must be {what}, got shape {tuple(L.shape)}.")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
        raise ValueError(f"k must be a non-negative int, got {k!r}.")
    k = int(k)
    N = L.shape[0]
    if k > N:
        raise ValueError(f"k = {k} exceeds the number of items N = {N}.")
    if not torch.isfinite(L).all():
        raise ValueError("L contains NaN or inf.")
    gen = as_generator(generator)
    A = L.to(torch.float64)
    if factor:
        U, s, _ = torch.linalg.svd(A, full_matrices=False)
        lam = s**2
    else:
        lam, U = torch.linalg.eigh((A + A.T) / 2)
        top = float(lam.abs().max()) if N else 0.0
        if N and float(lam.min()) < -1e-8 * top:
            raise ValueError(
                f"L is not positive semi-definite (eigenvalue {float(lam.min()):.3g}, largest "
                f"{top:.3g}); pass a PSD kernel matrix."
            )
    top = float(lam.max()) if lam.numel() else 0.0
    lam = torch.where(lam > N * torch.finfo(torch.float64).eps * top, lam, torch.zeros_like(lam))
    rank = int((lam > 0).sum())
    if k > rank:
        raise ValueError(
            f"a k-DPP needs k <= rank(L), got k = {k} and numerical rank {rank}; lower k or "
            "use a kernel of higher rank (e.g. more noise or a shorter length-scale)."
        )
    if k == 0:
        return torch.zeros(0, dtype=torch.long, device=L.device)
    J = _select_eigenvectors(lam / top, k, gen)
    return sample_finite_projection_dpp(U[:, J], gen, orthonormal=True).to(L.device)
