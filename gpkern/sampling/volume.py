r"""Designs of :math:`n \ge m` points built from projection DPPs: volume-rescaled sampling and
repeated DPPs stopped once the weighted Gram matrix is close to the identity.

*Volume-rescaled sampling* (Dereziński, Warmuth & Hsu 2022) of :math:`n \ge m` points from the
optimal density :math:`\rho_m = k_m/m \cdot \mu` has joint density, with respect to
:math:`\rho_m^{\otimes n}`,

.. math::

    \frac{(n - m)!}{n!} \det\Big(\sum_{i=1}^n w(x_i) \phi(x_i) \phi(x_i)^\top\Big),
    \qquad w = m / k_m;

it is the union of a projection DPP of :math:`m` points and :math:`n - m` i.i.d. points of
:math:`\rho_m`, in uniformly random order, and the weighted least-squares coefficients it gives
are unbiased. *Repeated projection DPPs* (Nouy & Michel 2023) take the union of independent
DPPs of :math:`m` points until the weighted Gram matrix :math:`G` satisfies
:math:`\|G - I\|_2 \le \delta`; every point has marginal :math:`\rho_m`, so :math:`E[G] = I`.
"""

from __future__ import annotations

import warnings

import torch
from sklearn.exceptions import ConvergenceWarning

from gpkern.sampling.bases import Basis
from gpkern.sampling.christoffel import optimal_weights, sample_optimal
from gpkern.sampling.dpp import sample_projection_dpp
from gpkern.sampling.generator import as_generator
from gpkern.sampling.least_squares import gram_deviation, weighted_gram

__all__ = ["sample_volume_rescaled", "sample_repeated_dpp"]


def sample_volume_rescaled(
    basis: Basis, n: int, generator: torch.Generator | int | None = None
) -> torch.Tensor:  # (n, d)
    r"""``n >= m`` points from the volume-rescaled distribution of the optimal density.

    A projection DPP of the basis (:func:`~gpkern.sampling.dpp.sample_projection_dpp`) plus
    ``n - m`` i.i.d. points from :math:`k_m/m \cdot \mu`
    (:func:`~gpkern.sampling.christoffel.sample_optimal`), randomly permuted. Fit with the
    weights :math:`m / k_m`.

    Parameters
    ----------
    basis : Basis
        Orthonormal basis of :math:`L^2(\mu)`.
    n : int
        Number of points, at least ``basis.m``.
    generator : torch.Generator or int, optional
        Random source (a seed gives a fresh generator; ``None`` a random one).

    Returns
    -------
    torch.Tensor of shape (n, d)

    Examples
    --------
    >>> from gpkern.sampling import LegendreBasis
    >>> sample_volume_rescaled(LegendreBasis(4), 10, generator=0).shape
    torch.Size([10, 1])
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < basis.m:
        raise ValueError(f"n must be an int >= m = {basis.m}, got {n!r}.")
    gen = as_generator(generator)
    x = torch.cat([sample_projection_dpp(basis, gen), sample_optimal(basis, n - basis.m, gen)])
    return x[torch.randperm(n, generator=gen)]


def sample_repeated_dpp(
    basis: Basis,
    delta: float = 0.5,
    max_repeats: int = 100,
    generator: torch.Generator | int | None = None,
) -> tuple[torch.Tensor, float]:  # (k m, d), ||G - I||
    r"""Union of independent projection DPPs, stopped at the first :math:`k` with
    :math:`\|G - I\|_2 \le \delta`.

    :math:`G = \frac{1}{km} \sum_i w(x_i) \phi(x_i)\phi(x_i)^\top` with :math:`w = m/k_m`, over the
    :math:`km` points of the first :math:`k` DPPs.

    Parameters
    ----------
    basis : Basis
        Orthonormal basis of :math:`L^2(\mu)`.
    delta : float, default=0.5
        Target :math:`\|G - I\|_2`, in :math:`(0, 1)` for a stable fit.
    max_repeats : int, default=100
        Largest number of DPPs; if the target is still missed, the points are returned with a
        :class:`~sklearn.exceptions.ConvergenceWarning`.
    generator : torch.Generator or int, optional
        Random source (a seed gives a fresh generator; ``None`` a random one).

    Returns
    -------
    points : torch.Tensor of shape (k m, d)
    gram_deviation : float
        :math:`\|G - I\|_2` of the returned points.

    Examples
    --------
    >>> from gpkern.sampling import LegendreBasis
    >>> x, dev = sample_repeated_dpp(LegendreBasis(9), delta=0.5, generator=0)
    >>> dev <= 0.5 and x.shape[0] % 10 == 0
    True
    """
    if not 0 < delta:
        raise ValueError(f"delta must be positive, got {delta!r}.")
    if isinstance(max_repeats, bool) or not isinstance(max_repeats, int) or max_repeats < 1:
        raise ValueError(f"max_repeats must be a positive int, got {max_repeats!r}.")
    gen = as_generator(generator)
    m = basis.m
    points = torch.zeros(0, basis.dim, dtype=torch.float64)
    S = torch.zeros(m, m, dtype=torch.float64)  # sum_i w_i phi_i phi_i^T
    for _ in range(max_repeats):
        x = sample_projection_dpp(basis, gen)
        points = torch.cat([points, x])
        S = S + x.shape[0] * weighted_gram(basis(x), optimal_weights(basis, x))
        deviation = gram_deviation(S / points.shape[0])
        if deviation <= delta:
            return points, deviation
    warnings.warn(
        f"{max_repeats} projection DPPs ({points.shape[0]} points) left ||G - I|| = "
        f"{deviation:.3g} > delta = {delta}; raise max_repeats or delta.",
        ConvergenceWarning,
        stacklevel=2,
    )
    return points, deviation
