r"""PDE problems on boxes: Poisson, Allen-Cahn, advection and user-defined operators.

Every problem lives on a box :math:`\Omega = \prod_j [a_j, b_j]` with Dirichlet data
:math:`u = g` on :math:`\partial\Omega`. Callables take points of shape ``(m, d)`` (a torch
tensor, float64) and return values of shape ``(m,)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

__all__ = ["PDEProblem", "Poisson", "AllenCahn", "Advection"]

PointFunction = Callable[[torch.Tensor], torch.Tensor]


def _validate_domain(domain) -> list[tuple[float, float]]:
    try:
        box = [tuple(float(v) for v in side) for side in domain]
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"domain must be a sequence of (low, high) pairs, one per dimension, e.g. "
            f"[(0.0, 1.0)] or [(0.0, 1.0), (0.0, 1.0)]; got {domain!r}."
        ) from exc
    if len(box) == 0:
        raise ValueError("domain is empty: give one (low, high) pair per dimension, e.g. [(0.0, 1.0)].")
    for j, side in enumerate(box):
        if len(side) != 2:
            raise ValueError(f"domain[{j}] must be a (low, high) pair, got {side!r}.")
        lo, hi = side
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError(f"domain[{j}] = {side} must have finite end points.")
        if not hi > lo:
            raise ValueError(
                f"domain[{j}] = {side} is empty or inverted: the high end must exceed the low "
                f"end (swap them if they were given in the wrong order)."
            )
    return box


def _as_point_function(name: str, value, allow_none: bool) -> PointFunction | None:
    if value is None:
        if allow_none:
            return None
        raise ValueError(f"{name} is required.")
    if callable(value):
        return value
    if isinstance(value, (int, float)) and math.isfinite(value):
        const = float(value)
        return lambda X: torch.full((X.shape[0],), const, dtype=X.dtype)
    raise TypeError(f"{name} must be a callable f(X) -> (m,) or a finite number, got {type(value).__name__}.")


def evaluate_point_function(name: str, fn: PointFunction, X: torch.Tensor) -> torch.Tensor:  # (m, d) -> (m,)
    """Evaluate a user callable on points and check its output (shape ``(m,)``, finite)."""
    with torch.no_grad():
        out = fn(X)
    out = torch.as_tensor(out, dtype=X.dtype)
    if out.dim() == 2 and out.shape[1] == 1:
        out = out[:, 0]
    if out.shape != (X.shape[0],):
        raise ValueError(
            f"{name} returned shape {tuple(out.shape)} for {X.shape[0]} points of shape "
            f"{tuple(X.shape)}; it must return one value per point, shape ({X.shape[0]},)."
        )
    if not torch.isfinite(out).all():
        bad = int((~torch.isfinite(out)).sum())
        raise ValueError(f"{name} returned {bad} NaN or infinite value(s); it must be finite on the whole domain.")
    return out


def _derivatives_by_autograd(solution: PointFunction, X: torch.Tensor, indices) -> dict:
    """Derivatives of a torch-callable solution at points by nested autograd."""
    with torch.enable_grad():
        return _derivatives(solution, X.detach().clone().requires_grad_(True), indices)


def _derivatives(solution: PointFunction, X: torch.Tensor, indices) -> dict:
    u = solution(X)
    cache = {(0,) * X.shape[1]: u}
    out = {}
    for alpha in sorted(indices, key=sum):
        current = (0,) * X.shape[1]
        val = u
        for j, m in enumerate(alpha):
            for _ in range(m):
                nxt = list(current)
                nxt[j] += 1
                nxt = tuple(nxt)
                if nxt not in cache:
                    (g,) = torch.autograd.grad(val.sum(), X, create_graph=True)
                    cache[nxt] = g[:, j]
                val, current = cache[nxt], nxt
        out[alpha] = val.detach()
    return out


class PDEProblem:
    r"""A PDE :math:`\mathcal N[u](x) = f(x)` in a box with Dirichlet boundary data.

    Parameters
    ----------
    domain : sequence of (float, float)
        The box :math:`\prod_j [a_j, b_j]`, one pair per dimension.
    residual : callable
        ``residual(X, u, derivs) -> (m,)``: the operator :math:`\mathcal N[u]` at interior
        points ``X`` of shape ``(m, d)``, given the solution values ``u`` ``(m,)`` and
        ``derivs``, a dict mapping multi-indices (tuples such as ``(2, 0)`` for
        :math:`\partial^2 u / \partial x_1^2`) of total order ``<= order`` to ``(m,)``
        tensors. It must be built from torch operations (it is differentiated).
    boundary : callable or float
        Dirichlet data :math:`g`; a callable ``g(X) -> (m,)`` or a constant.
    order : int, default=2
        Highest derivative order in the operator (at most 4).
    source : callable or float, optional
        Right-hand side :math:`f` (default 0).
    solution : callable, optional
        The exact solution, if known: reported as the relative L2 error during fitting.

    Examples
    --------
    >>> import torch
    >>> from gpkern.pde import PDEProblem
    >>> helmholtz = PDEProblem(
    ...     domain=[(0.0, 1.0)],
    ...     residual=lambda X, u, d: d[(2,)] + 25.0 * u,
    ...     boundary=0.0,
    ...     source=lambda X: torch.sin(5.0 * X[:, 0]) * 0.0,
    ... )
    >>> helmholtz.dim
    1
    """

    #: separable linear part [(dim, order, coefficient)], or None for a generic operator
    linear_terms: list[tuple[int, int, float]] | None = None
    name = "PDEProblem"

    def __init__(
        self,
        domain: Sequence[tuple[float, float]],
        residual: Callable | None = None,
        boundary: PointFunction | float = 0.0,
        order: int = 2,
        source: PointFunction | float | None = None,
        solution: PointFunction | None = None,
    ) -> None:
        self.domain = _validate_domain(domain)
        if type(self) is PDEProblem and not callable(residual):
            raise TypeError(
                f"residual must be a callable residual(X, u, derivs) -> (m,), got "
                f"{type(residual).__name__}; use Poisson / AllenCahn / Advection for the built-in operators."
            )
        if not isinstance(order, int) or not 1 <= order <= 4:
            raise ValueError(f"order must be an integer in 1..4, got {order!r}.")
        self.residual_fn = residual
        self.order = order
        self.boundary = _as_point_function("boundary", boundary, allow_none=False)
        self.source = _as_point_function("source", 0.0 if source is None else source, allow_none=False)
        if solution is not None and not callable(solution):
            raise TypeError(f"solution must be a callable u(X) -> (m,), got {type(solution).__name__}.")
        self.solution = solution

    @property
    def dim(self) -> int:
        """Number of spatial dimensions."""
        return len(self.domain)

    def dirichlet_sides(self) -> list[tuple[bool, bool]]:
        """Per dimension, whether the (low, high) side carries Dirichlet data in the exact solve."""
        return [(True, True)] * self.dim

    def nonlinearity(self, u: torch.Tensor) -> torch.Tensor | None:
        """Pointwise nonlinear term added to the linear part (``None`` for linear operators)."""
        return None

    @property
    def is_linear(self) -> bool:
        """Whether the operator is linear (its profile solve is a single linear solve)."""
        return type(self).nonlinearity is PDEProblem.nonlinearity and self.linear_terms is not None

    def residual(self, X: torch.Tensor, u: torch.Tensor, derivs: dict) -> torch.Tensor:
        """The operator :math:`\\mathcal N[u]` at points (built-in operators use their terms)."""
        if self.linear_terms is None:
            return self.residual_fn(X, u, derivs)
        out = torch.zeros_like(u)
        for j, m, c in self.linear_terms:
            alpha = [0] * self.dim
            alpha[j] = m
            out = out + c * derivs[tuple(alpha)]
        n = self.nonlinearity(u)
        return out if n is None else out + n

    @classmethod
    def _source_from_solution(cls, solution: PointFunction, dim: int, make) -> PointFunction:
        def source(X: torch.Tensor) -> torch.Tensor:
            probe = make(lambda X: torch.zeros(X.shape[0], dtype=X.dtype))
            indices = _all_indices(dim, probe.order)
            derivs = _derivatives_by_autograd(solution, X, indices)
            return probe.residual(X, derivs[(0,) * dim], derivs)

        return source

    def __repr__(self) -> str:
        return f"{self.name}(domain={self.domain})"


def _all_indices(d: int, order: int) -> list[tuple[int, ...]]:
    out = [()]
    for _ in range(d):
        out = [a + (m,) for a in out for m in range(order + 1)]
    return [a for a in out if sum(a) <= order]


class Poisson(PDEProblem):
    r"""Poisson equation :math:`\Delta u = f` in :math:`\Omega`, :math:`u = g` on :math:`\partial\Omega`.

    Parameters
    ----------
    domain : sequence of (float, float)
        The box, one ``(low, high)`` pair per dimension.
    source : callable or float
        :math:`f(X) -> (m,)`.
    boundary : callable or float
        :math:`g(X) -> (m,)`.
    solution : callable, optional
        Exact solution, for error reporting.

    Examples
    --------
    >>> import torch
    >>> from gpkern.pde import Poisson
    >>> p = Poisson.from_solution(lambda X: torch.sin(6.0 * X[:, 0]), domain=[(0.0, 1.0)])
    >>> X = torch.tensor([[0.5]], dtype=torch.float64)
    >>> round(float(p.source(X)[0]), 4) == round(-36.0 * float(torch.sin(torch.tensor(3.0))), 4)
    True
    """

    name = "Poisson"

    def __init__(self, domain, source, boundary=0.0, solution=None) -> None:
        super().__init__(domain, boundary=boundary, order=2, source=source, solution=solution)
        self.linear_terms = [(j, 2, 1.0) for j in range(self.dim)]

    @classmethod
    def from_solution(cls, solution: PointFunction, domain) -> Poisson:
        """Manufactured problem: source :math:`\\Delta u` and boundary data from a torch-callable solution."""
        dim = len(_validate_domain(domain))
        src = cls._source_from_solution(solution, dim, lambda s: cls(domain, source=s))
        return cls(domain, source=src, boundary=solution, solution=solution)


class AllenCahn(PDEProblem):
    r"""Stationary Allen-Cahn equation :math:`\Delta u + u(u^2 - 1) = f` (the form of Fang et al.).

    Parameters
    ----------
    domain : sequence of (float, float)
        The box.
    source : callable or float
        :math:`f(X) -> (m,)`.
    boundary : callable or float
        :math:`g(X) -> (m,)`.
    solution : callable, optional
        Exact solution, for error reporting.
    """

    name = "AllenCahn"

    def __init__(self, domain, source, boundary=0.0, solution=None) -> None:
        super().__init__(domain, boundary=boundary, order=2, source=source, solution=solution)
        self.linear_terms = [(j, 2, 1.0) for j in range(self.dim)]

    def nonlinearity(self, u: torch.Tensor) -> torch.Tensor:
        """:math:`u^3 - u`."""
        return u * (u * u - 1.0)

    @classmethod
    def from_solution(cls, solution: PointFunction, domain) -> AllenCahn:
        """Manufactured problem from a torch-callable solution."""
        dim = len(_validate_domain(domain))
        src = cls._source_from_solution(solution, dim, lambda s: cls(domain, source=s))
        return cls(domain, source=src, boundary=solution, solution=solution)


class Advection(PDEProblem):
    r"""Stationary 2-D advection :math:`\beta\, u_x + u_y = f` with Dirichlet data on the whole boundary.

    With :math:`y` read as time this is the transport equation; the benchmark case is
    :math:`u = \sin(x - \beta y)` with :math:`\beta = 200` on :math:`[0, 2\pi] \times [0, 1]`.

    Parameters
    ----------
    domain : sequence of two (float, float)
        The rectangle.
    source : callable or float, default=0.0
        :math:`f(X) -> (m,)`.
    boundary : callable or float
        :math:`g(X) -> (m,)`.
    beta : float, default=200.0
        Advection speed :math:`\beta`.
    solution : callable, optional
        Exact solution, for error reporting.
    """

    name = "Advection"

    def __init__(self, domain, source=0.0, boundary=0.0, beta: float = 200.0, solution=None) -> None:
        super().__init__(domain, boundary=boundary, order=1, source=source, solution=solution)
        if self.dim != 2:
            raise ValueError(f"Advection is defined in 2-D (x, y); the domain has {self.dim} dimension(s).")
        if not math.isfinite(float(beta)):
            raise ValueError(f"beta must be finite, got {beta!r}.")
        self.beta = float(beta)
        self.linear_terms = [(0, 1, self.beta), (1, 1, 1.0)]

    def dirichlet_sides(self) -> list[tuple[bool, bool]]:
        """Inflow sides only: data where the characteristics enter (a first-order operator with
        data on both sides of a dimension is over-determined)."""
        x_side = (True, False) if self.beta > 0 else (False, True) if self.beta < 0 else (False, False)
        return [x_side, (True, False)]

    @classmethod
    def from_solution(cls, solution: PointFunction, domain, beta: float = 200.0) -> Advection:
        """Manufactured problem from a torch-callable solution."""
        dim = len(_validate_domain(domain))
        src = cls._source_from_solution(solution, dim, lambda s: cls(domain, source=s, beta=beta))
        return cls(domain, source=src, boundary=solution, beta=beta, solution=solution)
