r"""Deep and infinitely deep NNGP/NTK kernels on the sphere (Radhakrishnan, Belkin, Uhler).

For inputs on the unit sphere, a network whose activation :math:`\phi` is normalised
(:math:`\mathbb{E}\,\phi(z)^2 = 1`) is described by its *dual activation*
:math:`\xi(\rho) = \mathbb{E}[\phi(u)\phi(v)]`, :math:`\xi(1) = 1`, for unit-variance
:math:`u, v` with correlation :math:`\rho`. With :math:`\rho_0 = x^\top z`,

.. math::

    \rho_{l} = \xi(\rho_{l-1}) \ (\text{NNGP}), \qquad
    K_{l} = \xi(\rho_{l-1}) + K_{l-1}\,\xi'(\rho_{l-1}), \quad K_0 = \rho_0 \ (\text{NTK}).

As the depth grows, the classifier :math:`\operatorname{sign}(y^\top K^{-1} k_*)` tends to one
of three rules, set by :math:`\xi'(0)` and :math:`\xi'(1)`:

* :math:`\xi'(0) = 0`: the 1-nearest-neighbour rule;
* :math:`\xi'(1) = 1` (ReLU): majority vote;
* otherwise a singular kernel vote with weights :math:`\|x - z\|^{-\alpha}`,
  :math:`\alpha = 2\ln(1/\xi'(0)) / \ln \xi'(1)`; the "optimal" polynomial duals give
  :math:`\alpha = d - 1` on :math:`S^{d-1}`, which is Bayes consistent.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass

import gpytorch
import torch

from gpkern.kernels.batch import expand_to_batch, indexed_batch_shape
from gpkern.kernels.nngp.duals import (
    arccos_correlation,
    erf_dual,
    erf_dual_dot,
    sine_dual,
    sine_dual_dot,
)

__all__ = [
    "DualActivation",
    "dual_activation",
    "depth_kernel",
    "regime",
    "InfiniteDepthKernel",
    "OPTIMAL_DUALS",
]

#: the "optimal" polynomial duals of the paper, per ambient dimension d (data on S^{d-1})
OPTIMAL_DUALS = {
    2: {1: 0.5, 7: 0.5},
    3: {1: 0.5, 3: 0.5},
    5: {1: 0.25, 2: 0.5, 3: 0.25},
    9: {1: 1 / 16, 2: 7 / 8, 3: 1 / 16},
}


@dataclass(frozen=True)
class DualActivation:
    r"""A normalised dual activation :math:`\xi` and its derivative :math:`\xi'` on [-1, 1]."""

    name: str
    fn: Callable[[torch.Tensor], torch.Tensor]
    derivative: Callable[[torch.Tensor], torch.Tensor]

    def __call__(self, rho: torch.Tensor) -> torch.Tensor:
        return self.fn(rho)

    @property
    def slope_at_zero(self) -> float:
        """:math:`\\xi'(0)`."""
        return float(self.derivative(torch.tensor(0.0, dtype=torch.float64)))

    @property
    def slope_at_one(self) -> float:
        """:math:`\\xi'(1)`."""
        return float(self.derivative(torch.tensor(1.0, dtype=torch.float64)))


def _relu_fn(rho):
    return arccos_correlation(rho, 1)


def _relu_der(rho):
    return arccos_correlation(rho, 0)


def _normalised(dual, dual_dot, **params):
    # (xi, xi') of a unit-variance dual divided by its value at rho = 1, so that xi(1) = 1
    one = torch.tensor(1.0, dtype=torch.float64)
    scale = float(dual(one, one, one, **params))

    def fn(rho):
        ones = torch.ones_like(rho)
        return dual(ones, rho.clamp(-1.0, 1.0), ones, **params) / scale

    def der(rho):
        ones = torch.ones_like(rho)
        return dual_dot(ones, rho.clamp(-1.0, 1.0), ones, **params) / scale

    return fn, der


def _poly(coeffs: dict[int, float]):
    def fn(rho):
        return sum(c * rho**k for k, c in coeffs.items())

    def der(rho):
        return sum(c * k * rho ** (k - 1) for k, c in coeffs.items() if k > 0) + 0 * rho

    return fn, der


def dual_activation(name: str, a: float = 1.0, coeffs: dict[int, float] | None = None) -> DualActivation:
    r"""A normalised dual activation by name.

    Parameters
    ----------
    name : {"relu", "erf", "sine", "poly", "optimal2", "optimal3", "optimal5", "optimal9"}
        ``relu``: the arc-cosine dual :math:`(\sqrt{1-\rho^2} + (\pi - \arccos\rho)\rho)/\pi`;
        ``erf``: :math:`\arcsin(2\rho/3)/\arcsin(2/3)`; ``sine``: :math:`\sinh(a\rho)/\sinh(a)`;
        ``poly``: :math:`\sum_k c_k \rho^k` with non-negative ``coeffs`` summing to one;
        ``optimalD``: the paper's polynomial for data on :math:`S^{D-1}`.
    a : float, default=1.0
        Frequency of ``sine``.
    coeffs : dict of int to float, optional
        ``{power: coefficient}`` for ``poly``.

    Examples
    --------
    >>> from gpkern.kernels.nngp.infinite_depth import dual_activation
    >>> xi = dual_activation("optimal3")
    >>> xi.slope_at_zero, xi.slope_at_one
    (0.5, 2.0)
    """
    if name == "relu":
        return DualActivation("relu", _relu_fn, _relu_der)
    if name == "erf":
        return DualActivation("erf", *_normalised(erf_dual, erf_dual_dot))
    if name == "sine":
        if isinstance(a, bool) or not isinstance(a, numbers.Real) or not (a > 0 and math.isfinite(a)):
            raise ValueError(f"sine dual needs a finite a > 0, got {a!r}.")
        return DualActivation(f"sine_{a:g}", *_normalised(sine_dual, sine_dual_dot, w=math.sqrt(a)))
    if name.startswith("optimal"):
        try:
            d = int(name[len("optimal") :])
            coeffs = OPTIMAL_DUALS[d]
        except (ValueError, KeyError):
            raise ValueError(f"unknown optimal dual {name!r}; choose one of optimal2, optimal3, optimal5, optimal9.") from None
        fn, der = _poly(coeffs)
        return DualActivation(name, fn, der)
    if name == "poly":
        if not coeffs:
            raise ValueError("poly dual needs coeffs={power: coefficient}.")
        for k, c in coeffs.items():
            if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 0:
                raise ValueError(f"poly powers must be non-negative integers, got {k!r}.")
            if not isinstance(c, numbers.Real) or c < 0:
                raise ValueError(f"poly coefficients must be >= 0 (a valid dual), got {c!r} for power {k}.")
        total = sum(coeffs.values())
        if not math.isclose(total, 1.0, rel_tol=1e-12):
            raise ValueError(f"poly coefficients must sum to 1 (so that xi(1) = 1), got {total}.")
        fn, der = _poly(dict(coeffs))
        return DualActivation("poly", fn, der)
    raise ValueError(
        f"unknown dual activation {name!r}; choose relu, erf, sine, poly or optimal2/3/5/9."
    )


def regime(dual: DualActivation) -> tuple[str, float]:
    r"""The infinite-depth limit of the kernel classifier: ``(rule, alpha)``.

    Returns ``("1-NN", inf)`` when :math:`\xi'(0) = 0`, ``("majority vote", 0)`` when
    :math:`\xi'(1) = 1`, else ``("singular kernel", alpha)`` with
    :math:`\alpha = 2\ln(1/\xi'(0))/\ln\xi'(1)`.
    """
    s0, s1 = dual.slope_at_zero, dual.slope_at_one
    if s0 == 0:
        return "1-NN", math.inf
    if math.isclose(s1, 1.0, rel_tol=1e-12):
        return "majority vote", 0.0
    return "singular kernel", 2 * math.log(1 / s0) / math.log(s1)


def depth_kernel(
    rho: torch.Tensor,  # (...) cosines x.z in [-1, 1]
    dual: DualActivation,
    depth: int,
    kind: str = "ntk",
    normalize: bool = True,
) -> torch.Tensor:  # (...)
    r"""The depth-``L`` NNGP or NTK of a normalised network as a function of :math:`\rho_0`.

    With ``normalize=True`` the NTK is divided by its diagonal :math:`K_L(1)` at every layer
    (the recursion becomes :math:`\tilde K_l = (\xi(\rho_{l-1}) + \tilde K_{l-1}\xi'(\rho_{l-1}))
    / (1 + \xi'(1))`), which keeps very deep kernels finite; a kernel classifier is unchanged
    by this scaling. The NNGP is :math:`\rho_L`, already normalised.

    Parameters
    ----------
    rho : tensor
        Cosine similarities :math:`\rho_0`.
    dual : DualActivation
    depth : int
        Number of hidden layers :math:`L \ge 1`.
    kind : {"ntk", "nngp"}
    normalize : bool, default=True
    """
    if isinstance(depth, bool) or not isinstance(depth, numbers.Integral) or depth < 1:
        raise ValueError(f"depth must be a positive integer, got {depth!r}.")
    if kind not in ("nngp", "ntk"):
        raise ValueError(f"kind must be 'nngp' or 'ntk', got {kind!r}.")
    rho = rho.clamp(-1.0, 1.0)
    K = rho
    s1 = dual.slope_at_one
    for _ in range(int(depth)):
        if kind == "ntk":
            K = dual(rho) + K * dual.derivative(rho)
            if normalize:
                K = K / (1 + s1)
        rho = dual(rho).clamp(-1.0, 1.0)
    if kind == "nngp":
        return rho
    return K


class InfiniteDepthKernel(gpytorch.kernels.Kernel):
    r"""Deep normalised NNGP/NTK on the unit sphere, as a GPyTorch kernel.

    Inputs are projected onto the sphere, :math:`\rho_0 = x^\top z / (\|x\|\|z\|)`, and
    :func:`depth_kernel` is applied.

    Parameters
    ----------
    dual : str or DualActivation, default="relu"
        A :func:`dual_activation` name or object.
    depth : int, default=10
    kind : {"ntk", "nngp"}, default="ntk"
    normalize : bool, default=True
    **kwargs
        Passed to :class:`gpytorch.kernels.Kernel`.

    Examples
    --------
    >>> import torch
    >>> from gpkern.kernels.nngp.infinite_depth import InfiniteDepthKernel
    >>> k = InfiniteDepthKernel("optimal3", depth=50)
    >>> x = torch.nn.functional.normalize(torch.randn(4, 3, dtype=torch.float64), dim=-1)
    >>> k(x).to_dense().diagonal()
    tensor([1., 1., 1., 1.], dtype=torch.float64)
    """

    has_lengthscale = False

    def __init__(self, dual="relu", depth: int = 10, kind: str = "ntk", normalize: bool = True, **kwargs):
        dual = dual_activation(dual) if isinstance(dual, str) else dual
        if not isinstance(dual, DualActivation):
            raise TypeError(f"dual must be a name or a DualActivation, got {type(dual).__name__}.")
        depth_kernel(torch.zeros(1, dtype=torch.float64), dual, depth, kind)  # validates depth, kind
        super().__init__(**kwargs)
        self.dual, self.depth, self.kind, self.normalize = dual, int(depth), kind, normalize

    def __getitem__(self, index) -> InfiniteDepthKernel:
        new = super().__getitem__(index)
        if new is not self:  # no parameters: nothing tells GPyTorch the new batch shape
            new.batch_shape = indexed_batch_shape(self.batch_shape, index)
        return new

    def forward(self, x1, x2, diag: bool = False, last_dim_is_batch: bool = False, **params):
        if last_dim_is_batch:
            x1, x2 = x1.mT.unsqueeze(-1), x2.mT.unsqueeze(-1)  # every column an input of width 1
        n1 = torch.nn.functional.normalize(x1, dim=-1)
        n2 = torch.nn.functional.normalize(x2, dim=-1)
        rho = (n1 * n2).sum(-1) if diag else n1 @ n2.transpose(-2, -1)
        out = depth_kernel(rho, self.dual, self.depth, self.kind, self.normalize)
        return expand_to_batch(out, self.batch_shape, diag, last_dim_is_batch)
