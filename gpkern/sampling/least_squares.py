r"""Weighted least squares on an orthonormal basis, with its stability diagnostics.

From points :math:`x_1, \dots, x_n`, weights :math:`w_i` and values :math:`y_i`, the weighted
least-squares projection onto :math:`V_m = \operatorname{span}\{\phi_j\}` is

.. math::

    \hat c = \arg\min_c \frac1n \sum_{i=1}^n w_i \big(y_i - \phi(x_i)^\top c\big)^2,
    \qquad G = \frac1n \sum_{i=1}^n w_i\, \phi(x_i) \phi(x_i)^\top.

With :math:`w = d\mu/d\rho` for points drawn from :math:`\rho`, :math:`E[G] = I`; the fit is
quasi-optimal in :math:`L^2(\mu)` when :math:`\|G - I\|_2 \le \delta < 1` (Cohen & Migliorati
2017), so :math:`\|G - I\|_2` and :math:`\operatorname{cond}(G)` are the stability diagnostics.
The solve uses the thin QR factorisation of :math:`A = \operatorname{diag}(\sqrt{w/n})\Phi`
(:math:`G = A^\top A = R^\top R`; the singular values of :math:`R` give both diagnostics), never
the normal equations.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gpkern.sampling.bases import Basis
from gpkern.sampling.christoffel import optimal_weights

__all__ = [
    "WeightedLeastSquaresResult",
    "weighted_least_squares",
    "weighted_gram",
    "gram_deviation",
]


@dataclass(frozen=True)
class WeightedLeastSquaresResult:
    r"""Coefficients of a weighted least-squares fit and the stability of its Gram matrix.

    Attributes
    ----------
    coef : torch.Tensor of shape (m,) or (m, t)
        Coefficients :math:`\hat c` in the basis (one column per output).
    gram_deviation : float
        :math:`\|G - I\|_2`.
    condition_number : float
        :math:`\operatorname{cond}_2(G) = \sigma_{\max}(G) / \sigma_{\min}(G)`.
    """

    coef: torch.Tensor
    gram_deviation: float
    condition_number: float


def weighted_gram(
    Phi: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:  # (n, m), (n,) -> (m, m)
    r"""The weighted empirical Gram matrix :math:`G = \frac1n \Phi^\top \operatorname{diag}(w) \Phi`."""
    return (Phi * (weights / Phi.shape[0])[:, None]).T @ Phi


def gram_deviation(G: torch.Tensor) -> float:
    r""":math:`\|G - I\|_2` of a symmetric Gram matrix (largest :math:`|\lambda_i(G) - 1|`)."""
    if G.numel() == 0:
        return 0.0
    return float((torch.linalg.eigvalsh(G) - 1.0).abs().max())


def weighted_least_squares(
    x,
    y,
    basis: Basis,
    weights=None,
) -> WeightedLeastSquaresResult:
    r"""Weighted least-squares coefficients of ``y`` in ``basis`` at points ``x``, by QR.

    Parameters
    ----------
    x : array-like of shape (n, d)
        Points (``n >= m``).
    y : array-like of shape (n,) or (n, t)
        Values at the points.
    basis : Basis
        Orthonormal basis :math:`\phi` of :math:`V_m`.
    weights : array-like of shape (n,), optional
        Positive weights :math:`w_i`; defaults to the optimal-density weights
        :math:`m / k_m(x_i)` (:func:`~gpkern.sampling.christoffel.optimal_weights`). Use ones for
        points drawn from :math:`\mu` itself.

    Returns
    -------
    WeightedLeastSquaresResult
        Coefficients and the diagnostics :math:`\|G - I\|_2` and :math:`\operatorname{cond}(G)`.

    Raises
    ------
    ValueError
        For mismatched shapes, non-positive or non-finite weights, fewer points than basis
        functions, or a singular system (e.g. repeated points).

    Examples
    --------
    >>> from gpkern.sampling import LegendreBasis, sample_optimal
    >>> basis = LegendreBasis(3)
    >>> x = sample_optimal(basis, 40, generator=0)
    >>> fit = weighted_least_squares(x, x[:, 0] ** 3, basis)
    >>> torch.allclose(basis(torch.tensor([[0.5]], dtype=torch.float64)) @ fit.coef,
    ...                torch.tensor([0.125], dtype=torch.float64))
    True
    """
    Phi = basis(x)
    n, m = Phi.shape
    Y = torch.as_tensor(y, dtype=torch.float64)
    if Y.dim() not in (1, 2) or Y.shape[0] != n:
        raise ValueError(f"y must have shape ({n},) or ({n}, t), got {tuple(Y.shape)}.")
    w = (
        optimal_weights(basis, x)
        if weights is None
        else torch.as_tensor(weights, dtype=torch.float64)
    )
    if w.shape != (n,):
        raise ValueError(f"weights must have shape ({n},), got {tuple(w.shape)}.")
    if not (torch.isfinite(w).all() and (w > 0).all()):
        raise ValueError("weights must be positive and finite.")
    if not (torch.isfinite(Phi).all() and torch.isfinite(Y).all()):
        raise ValueError("the features or the values contain NaN or inf.")
    if n < m:
        raise ValueError(
            f"weighted least squares in a basis of m = {m} functions needs at least m points, "
            f"got n_samples = {n}."
        )
    scale = torch.sqrt(w / n)
    Q, R = torch.linalg.qr(Phi * scale[:, None])
    s = torch.linalg.svdvals(R)
    if m and not s[-1] > s[0] * max(n, m) * torch.finfo(torch.float64).eps:
        raise ValueError(
            f"the weighted least-squares system is singular (smallest singular value "
            f"{float(s[-1]):.3g}); the points do not determine the m = {m} coefficients "
            "(repeated or too few distinct points)."
        )
    rhs = Q.T @ (Y * (scale if Y.dim() == 1 else scale[:, None]))
    coef = torch.linalg.solve_triangular(R, rhs[:, None] if Y.dim() == 1 else rhs, upper=True)
    eig = s**2  # eigenvalues of G = R^T R
    return WeightedLeastSquaresResult(
        coef=coef[:, 0] if Y.dim() == 1 else coef,
        gram_deviation=float((eig - 1.0).abs().max()) if m else 0.0,
        condition_number=float(eig[0] / eig[-1]) if m else 1.0,
    )
