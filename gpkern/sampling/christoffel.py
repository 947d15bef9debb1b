r"""The inverse Christoffel function, the optimal sampling density and exact sampling from it.

For a basis :math:`\phi_1, \dots, \phi_m` orthonormal in :math:`L^2(\mu)`,

.. math::

    k_m(x) = \sum_{j=1}^m \phi_j(x)^2, \qquad \rho_m = \frac{k_m}{m}\, \mu, \qquad
    w = \frac{d\mu}{d\rho_m} = \frac{m}{k_m}.

:math:`\rho_m` is a probability measure (:math:`\int k_m\, d\mu = m`) and the weighted
least-squares fit from i.i.d. points of :math:`\rho_m` is stable with high probability once
:math:`n \gtrsim m \log m` (Cohen & Migliorati 2017). Since
:math:`\rho_m = \frac1m \sum_j \phi_j^2\, \mu` is a uniform mixture, it is sampled exactly by
choosing :math:`j` uniformly and then drawing from :math:`\phi_j^2\, d\mu` (a product density
for product bases, drawn coordinate by coordinate).
"""

from __future__ import annotations

import torch

from gpkern.sampling.bases import Basis
from gpkern.sampling.generator import as_generator

__all__ = ["inverse_christoffel", "optimal_density", "optimal_weights", "sample_optimal"]


def inverse_christoffel(basis: Basis, x) -> torch.Tensor:  # (n, d) -> (n,)
    r""":math:`k_m(x) = \sum_j \phi_j(x)^2 = \|\Phi(x)\|^2` row by row.

    Examples
    --------
    >>> from gpkern.sampling.bases import LegendreBasis
    >>> float(inverse_christoffel(LegendreBasis(3), torch.ones(1, 1, dtype=torch.float64)))
    16.0
    """
    return (basis(x) ** 2).sum(1)


def optimal_density(basis: Basis, x) -> torch.Tensor:  # (n, d) -> (n,)
    r"""Density :math:`k_m(x)/m` of the optimal sampling measure with respect to :math:`\mu`."""
    return inverse_christoffel(basis, x) / basis.m


def optimal_weights(basis: Basis, x) -> torch.Tensor:  # (n, d) -> (n,)
    r"""Least-squares weights :math:`w(x) = m / k_m(x)` of points drawn from :math:`\rho_m`."""
    return basis.m / inverse_christoffel(basis, x)


def sample_optimal(
    basis: Basis, n: int, generator: torch.Generator | int | None = None
) -> torch.Tensor:  # (n, d)
    r"""``n`` i.i.d. points from the optimal density :math:`k_m/m \cdot \mu`, exactly.

    Bases with an exact sampler of :math:`\phi_j^2\, d\mu` (``basis.can_sample_squared``, e.g.
    :class:`~gpkern.sampling.bases.LegendreBasis`) use the mixture: :math:`j` uniform in
    :math:`\{1, \dots, m\}`, then :math:`x \sim \phi_j^2\, d\mu`. Other bases need
    ``basis.christoffel_bound`` :math:`\ge \sup k_m` and are sampled by rejection from
    :math:`\mu`, accepting :math:`x` with probability :math:`k_m(x) / \text{bound}` (on average
    :math:`\text{bound}/m` proposals per point).

    Parameters
    ----------
    basis : Basis
        Orthonormal basis of :math:`L^2(\mu)`.
    n : int
        Number of points.
    generator : torch.Generator or int, optional
        Random source (a seed gives a fresh generator; ``None`` a random one).

    Returns
    -------
    torch.Tensor of shape (n, d)

    Raises
    ------
    ValueError
        If the basis has neither an exact mixture sampler nor a Christoffel bound, or if a
        proposal exceeds the given bound (the bound is wrong, so the draws would not be exact).

    Examples
    --------
    >>> from gpkern.sampling.bases import LegendreBasis
    >>> sample_optimal(LegendreBasis(4, dim=2), 100, generator=0).shape
    torch.Size([100, 2])
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}.")
    gen = as_generator(generator)
    if basis.can_sample_squared:
        j = torch.randint(basis.m, (n,), generator=gen)
        return basis.sample_squared(j, gen)
    bound = basis.christoffel_bound
    if bound is None:
        raise ValueError(
            f"{basis!r} has no exact sampler of phi_j^2 dmu; give it a christoffel_bound >= "
            "sup_x k_m(x) to sample the optimal density by rejection."
        )
    out, have = [], 0
    while have < n:
        x = basis.sample_measure(max(2 * (n - have) * int(bound / basis.m + 1), 16), gen)
        k = inverse_christoffel(basis, x)
        if float(k.max()) > bound * (1 + 1e-12):
            raise ValueError(
                f"k_m(x) = {float(k.max()):.6g} exceeds christoffel_bound = {bound:.6g}; the "
                "bound must hold on the whole support of the measure."
            )
        keep = x[torch.rand(x.shape[0], generator=gen, dtype=torch.float64) * bound < k]
        out.append(keep)
        have += keep.shape[0]
    return torch.cat(out)[:n]
