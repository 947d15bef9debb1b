r"""Orthonormal bases :math:`\phi = (\phi_1, \dots, \phi_m)` of :math:`L^2(\mu)` on boxes.

Every basis maps points ``x`` of shape ``(n, d)`` to the feature matrix
:math:`\Phi(x) = [\phi_j(x_i)]` of shape ``(n, m)`` and knows its measure :math:`\mu`
(``sample_measure``). The product bases are orthonormal for the uniform *probability* measure
on a box :math:`\prod_c [a_c, b_c]`; each basis function is a product
:math:`\phi_j(x) = \prod_c \psi_{\nu_{jc}}(t_c)` of univariate functions of the rescaled
coordinates :math:`t_c`, indexed by a multi-index :math:`\nu_j` from a total-degree
(:math:`\sum_c \deg \nu_{jc} \le p`) or tensor (:math:`\max_c \deg \nu_{jc} \le p`) set. Their
squares :math:`\phi_j^2 \, d\mu` are product densities, so each coordinate is sampled on its own
(used for exact sampling from the optimal density, :mod:`gpkern.sampling.christoffel`).

- :class:`LegendreBasis`: :math:`\psi_n(t) = \sqrt{2n + 1}\, P_n(t)` on :math:`[-1, 1]`.
- :class:`TrigonometricBasis`: :math:`1, \sqrt2 \cos(2\pi k t), \sqrt2 \sin(2\pi k t)` on
  :math:`[0, 1]`, degree :math:`k`.
- :class:`CallableBasis`: any user feature map.
"""

from __future__ import annotations

import itertools
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

import torch

from gpkern.sampling.generator import as_generator

__all__ = ["Basis", "ProductBasis", "LegendreBasis", "TrigonometricBasis", "CallableBasis"]

_MAX_BASIS_SIZE = 1_000_000


def _as_box(domain, dim: int | None, default: tuple[float, float]) -> torch.Tensor:  # (d, 2)
    """A box as a ``(d, 2)`` float64 tensor of ``[low, high]`` rows from a pair or a list of pairs."""
    if domain is None:
        if dim is None:
            raise ValueError("give the domain (or the dimension) of the basis.")
        box = torch.tensor([default] * dim, dtype=torch.float64)
    else:
        box = torch.as_tensor(domain, dtype=torch.float64).clone()
        if box.dim() == 1 and box.numel() == 2:
            box = box[None].repeat(dim or 1, 1)
        if box.dim() != 2 or box.shape[1] != 2:
            raise ValueError(
                "domain must be a pair (low, high) or a sequence of d pairs, got shape "
                f"{tuple(box.shape)}."
            )
        if dim is not None and box.shape[0] != dim:
            raise ValueError(f"domain has {box.shape[0]} rows but dim = {dim}.")
    if not torch.isfinite(box).all() or not (box[:, 0] < box[:, 1]).all():
        raise ValueError(f"domain must be finite with low < high in every row, got {box.tolist()}.")
    return box


def _as_points(x, dim: int) -> torch.Tensor:  # (n, d)
    x = torch.as_tensor(x)
    x = x.to(torch.float64)
    if x.dim() == 1 and dim == 1:
        x = x[:, None]
    if x.dim() != 2 or x.shape[1] != dim:
        raise ValueError(f"x must have shape (n, {dim}), got {tuple(x.shape)}.")
    return x


class Basis(ABC):
    r"""A feature map :math:`x \mapsto \Phi(x)` of shape ``(n, m)``, orthonormal in :math:`L^2(\mu)`.

    Attributes
    ----------
    m : int
        Number of basis functions.
    dim : int
        Input dimension :math:`d`.
    domain : torch.Tensor of shape (d, 2)
        Bounding box ``[low, high]`` of the support of :math:`\mu`.
    christoffel_bound : float or None
        An upper bound of :math:`k_m(x) = \|\phi(x)\|^2` on the domain, if known (used to sample
        the optimal density by rejection when no exact mixture sampler exists).
    """

    m: int
    dim: int
    domain: torch.Tensor
    christoffel_bound: float | None = None
    #: Whether :meth:`sample_squared` draws from :math:`\phi_j^2\, d\mu` exactly.
    can_sample_squared: bool = False

    @abstractmethod
    def __call__(self, x) -> torch.Tensor:  # (n, d) -> (n, m)
        """The feature matrix :math:`\\Phi(x)`, float64, shape ``(n, m)``."""

    @abstractmethod
    def sample_measure(
        self, n: int, generator: torch.Generator | int | None = None
    ) -> torch.Tensor:
        r"""``n`` i.i.d. points from :math:`\mu`, shape ``(n, d)``."""

    def sample_squared(
        self, j: torch.Tensor, generator: torch.Generator | int | None = None
    ) -> torch.Tensor:  # (n,) -> (n, d)
        r"""One point from :math:`\phi_{j_i}(x)^2 \, d\mu(x)` for each entry of ``j``."""
        raise NotImplementedError(f"{type(self).__name__} has no exact sampler of phi_j^2 dmu.")


class ProductBasis(Basis):
    r"""Products of univariate orthonormal functions over a multi-index set, on a box.

    Subclasses give the reference interval, the degree of each univariate index, the univariate
    functions and an exact sampler of :math:`\psi_\nu^2` on the reference interval.

    Parameters
    ----------
    degree : int
        Largest total (``"total"``) or per-coordinate (``"tensor"``) degree :math:`p`.
    dim : int, default=1
        Input dimension :math:`d`.
    index_set : {"total", "tensor"}, default="total"
        Multi-index set.
    domain : pair or sequence of d pairs, optional
        The box; defaults to the reference box.

    Attributes
    ----------
    indices : torch.Tensor of shape (m, d), dtype long
        Univariate index :math:`\nu_{jc}` of each basis function and coordinate, ordered by
        total degree.
    """

    reference: tuple[float, float]
    can_sample_squared = True

    def __init__(self, degree: int, dim: int = 1, index_set: str = "total", domain=None) -> None:
        if isinstance(degree, bool) or not isinstance(degree, int) or degree < 0:
            raise ValueError(f"degree must be a non-negative int, got {degree!r}.")
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}.")
        if index_set not in ("total", "tensor"):
            raise ValueError(f"index_set must be 'total' or 'tensor', got {index_set!r}.")
        self.degree, self.dim, self.index_set = degree, dim, index_set
        self.domain = _as_box(domain, dim, self.reference)
        self.indices = self._multi_indices()
        self.m = self.indices.shape[0]

    @abstractmethod
    def _univariate_degree(self, nu: int) -> int:
        """Degree of the univariate index ``nu``."""

    @abstractmethod
    def _univariate(self, t: torch.Tensor, count: int) -> torch.Tensor:  # (n,) -> (n, count)
        """The first ``count`` univariate functions at reference points ``t``."""

    @abstractmethod
    def _sample_univariate(self, nu: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        r"""One reference point from :math:`\psi_{\nu_i}^2\, d\mu_{\mathrm{ref}}` for each ``nu``."""

    def _multi_indices(self) -> torch.Tensor:
        count = 0
        while self._univariate_degree(count) <= self.degree:
            count += 1
        degrees = [self._univariate_degree(nu) for nu in range(count)]
        size = (
            count**self.dim if self.index_set == "tensor" else math.comb(count + self.dim, self.dim)
        )
        if size > _MAX_BASIS_SIZE:  # an upper bound for "total"
            raise ValueError(
                f"the {self.index_set} index set of degree {self.degree} in dimension {self.dim} "
                f"is too large (up to {size} functions); lower the degree or use 'total'."
            )
        if self.index_set == "tensor":
            rows = list(itertools.product(range(count), repeat=self.dim))
        else:
            rows = []

            def grow(prefix: tuple[int, ...], budget: int) -> None:
                if len(prefix) == self.dim:
                    rows.append(prefix)
                    return
                for nu in range(count):
                    if degrees[nu] <= budget:
                        grow(prefix + (nu,), budget - degrees[nu])

            grow((), self.degree)
        rows.sort(key=lambda r: (sum(degrees[nu] for nu in r), [-nu for nu in r]))
        return torch.tensor(rows, dtype=torch.long).reshape(len(rows), self.dim)

    def _to_reference(self, x: torch.Tensor) -> torch.Tensor:
        lo, hi = self.reference
        a, b = self.domain[:, 0], self.domain[:, 1]
        return lo + (hi - lo) * (x - a) / (b - a)

    def _from_reference(self, t: torch.Tensor) -> torch.Tensor:
        lo, hi = self.reference
        a, b = self.domain[:, 0], self.domain[:, 1]
        return a + (b - a) * (t - lo) / (hi - lo)

    def __call__(self, x) -> torch.Tensor:
        x = _as_points(x, self.dim)
        t = self._to_reference(x.to(self.domain.device))
        count = int(self.indices.max()) + 1
        Phi = torch.ones(x.shape[0], self.m, dtype=torch.float64)
        for c in range(self.dim):
            Phi = Phi * self._univariate(t[:, c], count)[:, self.indices[:, c]]
        return Phi

    def sample_measure(self, n: int, generator=None) -> torch.Tensor:
        gen = as_generator(generator)
        u = torch.rand(n, self.dim, generator=gen, dtype=torch.float64)
        return self.domain[:, 0] + (self.domain[:, 1] - self.domain[:, 0]) * u

    def sample_squared(self, j: torch.Tensor, generator=None) -> torch.Tensor:
        gen = as_generator(generator)
        nu = self.indices[torch.as_tensor(j, dtype=torch.long)]
        t = torch.stack([self._sample_univariate(nu[:, c], gen) for c in range(self.dim)], 1)
        return self._from_reference(t.reshape(-1, self.dim))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(degree={self.degree}, dim={self.dim}, "
            f"index_set={self.index_set!r}, m={self.m})"
        )


def _rejection(
    propose: Callable[[int], torch.Tensor],
    accept: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    nu: torch.Tensor,
    gen: torch.Generator,
    tries: int = 4,
) -> torch.Tensor:
    """Rejection sampling, one draw per entry of ``nu``: each entry's proposals are kept with
    probability ``accept(t, nu)`` (in [0, 1]) and its first kept one is returned.

    ``tries`` proposals per pending entry are made at once, so that a few rounds suffice.
    """
    out = torch.empty(nu.numel(), dtype=torch.float64)
    todo = torch.arange(nu.numel())
    while todo.numel():
        k = todo.numel()
        t = propose(k * tries)
        prob = accept(t, nu[todo].repeat_interleave(tries))
        keep = (torch.rand(k * tries, generator=gen, dtype=torch.float64) < prob).reshape(k, tries)
        t = t.reshape(k, tries)
        first = keep.to(torch.int8).argmax(1)  # first kept proposal (0 if none)
        done = keep.any(1)
        out[todo[done]] = t[done, first[done]]
        todo = todo[~done]
    return out


class LegendreBasis(ProductBasis):
    r"""Orthonormal Legendre polynomials for the uniform probability measure on a box.

    .. math::

        \phi_\nu(x) = \prod_{c=1}^d \sqrt{2\nu_c + 1}\, P_{\nu_c}(t_c), \qquad
        t_c = 2\frac{x_c - a_c}{b_c - a_c} - 1 \in [-1, 1],

    with :math:`P_n` the Legendre polynomials (:math:`P_n(1) = 1`). The total-degree set has
    :math:`m = \binom{p + d}{d}` functions, the tensor set :math:`(p + 1)^d`.

    :math:`\psi_n^2` is sampled exactly by rejection from the arcsine density
    :math:`1/(\pi\sqrt{1 - t^2})`: by the sharp Bernstein inequality
    :math:`\sqrt{1 - t^2}\, P_n(t)^2 \le 2 / (\pi (n + 1/2))` (Antonov & Holševnikov),
    :math:`\tfrac{2n + 1}{2} P_n^2 \le 2 \times` the arcsine density, so half the proposals
    are accepted on average whatever the degree.

    Parameters
    ----------
    degree : int
        Polynomial degree :math:`p` (total or per coordinate).
    dim : int, default=1
        Input dimension :math:`d`.
    index_set : {"total", "tensor"}, default="total"
    domain : pair or sequence of d pairs, default=[-1, 1]^d

    Examples
    --------
    >>> basis = LegendreBasis(degree=2, dim=2)
    >>> basis.m, basis(torch.zeros(4, 2, dtype=torch.float64)).shape
    (6, torch.Size([4, 6]))
    """

    reference = (-1.0, 1.0)

    def _univariate_degree(self, nu: int) -> int:
        return nu

    def _univariate(self, t: torch.Tensor, count: int) -> torch.Tensor:
        P = torch.empty(t.shape[0], count, dtype=torch.float64)
        P[:, 0] = 1.0
        if count > 1:
            P[:, 1] = t
        for n in range(1, count - 1):  # (n + 1) P_{n+1} = (2n + 1) t P_n - n P_{n-1}
            P[:, n + 1] = ((2 * n + 1) * t * P[:, n] - n * P[:, n - 1]) / (n + 1)
        return P * torch.sqrt(2.0 * torch.arange(count, dtype=torch.float64) + 1.0)

    def _sample_univariate(self, nu: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        count = int(nu.max()) + 1 if nu.numel() else 1

        def propose(k: int) -> torch.Tensor:  # arcsine on [-1, 1]
            return torch.cos(math.pi * torch.rand(k, generator=gen, dtype=torch.float64))

        def accept(t: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
            psi2 = self._univariate(t, count).gather(1, n[:, None])[:, 0] ** 2  # (2n+1) P_n^2
            return (math.pi / 4) * psi2 * torch.sqrt((1 - t**2).clamp_min(0.0))

        return _rejection(propose, accept, nu, gen)


class TrigonometricBasis(ProductBasis):
    r"""The real Fourier basis for the uniform probability measure on a box.

    Univariate functions on :math:`t \in [0, 1]` (rescaled coordinates), in the order
    :math:`\psi_0 = 1, \psi_{2k-1} = \sqrt2 \cos(2\pi k t), \psi_{2k} = \sqrt2 \sin(2\pi k t)`,
    with degree :math:`k`; in one dimension :math:`m = 2p + 1`. Because the index sets contain
    both the cosine and the sine of every frequency, :math:`k_m \equiv m`: the optimal density
    is :math:`\mu` itself. :math:`\psi_\nu^2 \le 2` is sampled exactly by rejection from the
    uniform density.

    Parameters
    ----------
    degree : int
        Largest frequency :math:`p` (total or per coordinate).
    dim : int, default=1
    index_set : {"total", "tensor"}, default="total"
    domain : pair or sequence of d pairs, default=[0, 1]^d

    Examples
    --------
    >>> basis = TrigonometricBasis(degree=3)
    >>> basis.m
    7
    """

    reference = (0.0, 1.0)

    def _univariate_degree(self, nu: int) -> int:
        return (nu + 1) // 2

    def _univariate(self, t: torch.Tensor, count: int) -> torch.Tensor:
        nu = torch.arange(count)
        k = ((nu + 1) // 2).to(torch.float64)
        angle = 2 * math.pi * t[:, None] * k
        out = torch.where(nu % 2 == 1, torch.cos(angle), torch.sin(angle)) * math.sqrt(2.0)
        out[:, 0] = 1.0
        return out

    def _sample_univariate(self, nu: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        def propose(k: int) -> torch.Tensor:
            return torch.rand(k, generator=gen, dtype=torch.float64)

        def accept(t: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
            k = ((n + 1) // 2).to(torch.float64)
            angle = 2 * math.pi * k * t
            value = torch.where(n % 2 == 1, torch.cos(angle) ** 2, torch.sin(angle) ** 2)
            return torch.where(n == 0, torch.ones_like(t), value)

        return _rejection(propose, accept, nu, gen)


class CallableBasis(Basis):
    r"""A user feature map ``fn(x) -> (n, m)``, assumed orthonormal in :math:`L^2(\mu)`.

    Parameters
    ----------
    fn : callable
        Maps a float64 tensor of shape ``(n, d)`` to the features, shape ``(n, m)``.
    m : int
        Number of features.
    domain : pair or sequence of d pairs
        Box containing the support of :math:`\mu`.
    sample_measure : callable, optional
        ``sample_measure(n, generator) -> (n, d)``: i.i.d. draws from :math:`\mu`; defaults to
        the uniform distribution on ``domain``.
    christoffel_bound : float, optional
        An upper bound of :math:`k_m(x) = \|\phi(x)\|^2` on the support of :math:`\mu`; needed
        to sample the optimal density (by rejection from :math:`\mu`, accepting with
        probability :math:`k_m(x) / \text{bound}`; a bound too small is detected and raises).

    Examples
    --------
    >>> import math
    >>> basis = CallableBasis(lambda x: torch.cat([torch.ones_like(x), math.sqrt(3) * x], 1),
    ...                       m=2, domain=(-1.0, 1.0), christoffel_bound=4.0)
    >>> basis(torch.zeros(5, 1, dtype=torch.float64)).shape
    torch.Size([5, 2])
    """

    def __init__(
        self,
        fn: Callable[[torch.Tensor], torch.Tensor],
        m: int,
        domain: Sequence,
        sample_measure: Callable[[int, torch.Generator], torch.Tensor] | None = None,
        christoffel_bound: float | None = None,
    ) -> None:
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {type(fn).__name__}.")
        if isinstance(m, bool) or not isinstance(m, int) or m < 1:
            raise ValueError(f"m must be a positive int, got {m!r}.")
        if christoffel_bound is not None and not christoffel_bound > 0:
            raise ValueError(f"christoffel_bound must be positive, got {christoffel_bound!r}.")
        self.fn, self.m = fn, m
        self.domain = _as_box(domain, None, (0.0, 1.0))
        self.dim = self.domain.shape[0]
        self._sample_measure = sample_measure
        self.christoffel_bound = None if christoffel_bound is None else float(christoffel_bound)

    def __call__(self, x) -> torch.Tensor:
        x = _as_points(x, self.dim)
        Phi = torch.as_tensor(self.fn(x), dtype=torch.float64)
        if Phi.shape != (x.shape[0], self.m):
            raise ValueError(
                f"the basis callable returned shape {tuple(Phi.shape)}, expected "
                f"({x.shape[0]}, {self.m})."
            )
        return Phi

    def sample_measure(self, n: int, generator=None) -> torch.Tensor:
        gen = as_generator(generator)
        if self._sample_measure is not None:
            return _as_points(self._sample_measure(n, gen), self.dim)
        u = torch.rand(n, self.dim, generator=gen, dtype=torch.float64)
        return self.domain[:, 0] + (self.domain[:, 1] - self.domain[:, 0]) * u

    def __repr__(self) -> str:
        return f"CallableBasis(m={self.m}, dim={self.dim})"
