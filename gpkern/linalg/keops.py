r"""KeOps kernel formulas, and kernel matrices as linear operators with memory linear in n.

A kernel matrix :math:`K_{ij} = k(x_i, x'_j)` is never stored: a *formula* describes
:math:`k` symbolically and a reduction computes :math:`K V` (many right-hand sides at once),
the diagonal, or single rows on demand.  The same formula code runs on three kinds of operands:

* pykeops ``LazyTensor`` pairs :math:`(x_i, x'_j)` — compiled map-reduce, :math:`O(n + m)` memory;
* broadcast torch tensors of shape ``(n, 1, d)`` and ``(1, m, d)`` — the dense twin, used by the
  chunked torch fallback (row blocks, recomputed in the backward pass) and by the tests;
* paired torch rows of shape ``(n, d)`` and ``(n, d)`` — the diagonal and individual entries.

All hyperparameters of a formula live in ONE flat vector :math:`\theta` (a KeOps parameter), so
the backward pass of a reduction is a single extra reduction however many hyperparameters there
are.  Formulas exist for GPyTorch's RBF, Matérn (:math:`\nu = 1/2, 3/2, 5/2`), periodic,
rational-quadratic and spectral-mixture kernels (ARD length-scales, ``active_dims``),
``ScaleKernel``, sums and products of kernels, and for the NNGP / NTK of dense networks
(:class:`DenseNetworkKernel`), which are functions of :math:`x \cdot x'`, :math:`|x|^2` and
:math:`|x'|^2` through the layer recursion.

:class:`KernelOperator` wraps a formula as a :class:`linear_operator.LinearOperator`, so
GPyTorch's preconditioned CG, stochastic Lanczos quadrature and pivoted Cholesky work on it
unchanged (see :mod:`gpkern.models.iterative`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import gpytorch
import torch
from linear_operator.operators import LinearOperator
from torch.utils.checkpoint import checkpoint

__all__ = [
    "KeOpsCompileError",
    "KernelFormula",
    "KernelOperator",
    "DenseNetworkKernel",
    "kernel_formula",
    "kernel_operator",
    "operator_formula",
    "sq_dist",
    "rbf",
    "matern",
    "rational_quadratic",
    "periodic",
    "spectral_mixture",
    "spectral_mixture_product",
    "spectral_mixture_sum",
    "dense_network",
    "network_point_terms",
    "n_point_terms",
    "layers_from_architecture",
]

#: Right-hand sides are padded to one of these widths (then split in blocks of the largest), so
#: a formula compiles a handful of times instead of once per column count.
RHS_WIDTHS = (1, 16)


#: Set once a KeOps reduction failed in this process: later operators go straight to torch.
FALLBACK = {"active": False}


class KeOpsCompileError(RuntimeError):
    """pykeops is missing, or could not compile or run a reduction."""


# -----------------------------------------------------------------------------------------------
# Operands: the same formula code for pykeops LazyTensors and for broadcast torch tensors.
# -----------------------------------------------------------------------------------------------
class _Cols:
    """A KeOps operand held as separate LazyTensor variables, one per block of columns.

    KeOps evaluates a slice of a variable (``Extract``) by copying it at every pair: slicing the
    scaled inputs out of one wide operand made a scaled RBF reduction 1.4 times slower than
    passing them as a variable of their own. So :func:`keops_matmul` passes the inputs and each
    formula node's per-point columns as separate variables, and the column helpers below
    (:func:`_select`, :func:`_split`, :func:`_join`, :func:`_elem`) pick whole blocks where they
    can; :func:`_whole` gives a node its operand as one LazyTensor.
    """

    def __init__(self, blocks: Sequence[Any], widths: Sequence[int]) -> None:
        self.blocks, self.widths = list(blocks), [int(w) for w in widths]

    @property
    def width(self) -> int:
        return sum(self.widths)

    def _locate(self, d: int) -> tuple[int, int]:
        for b, w in enumerate(self.widths):
            if d < w:
                return b, d
            d -= w
        raise IndexError(f"column {d} out of range")

    def select(self, dims: Sequence[int]) -> _Cols:
        dims, blocks, widths, i = [int(d) for d in dims], [], [], 0
        while i < len(dims):
            b, off = self._locate(dims[i])
            run = 1
            while (
                i + run < len(dims)
                and dims[i + run] == dims[i] + run
                and off + run < self.widths[b]
            ):
                run += 1
            if off == 0 and run == self.widths[b]:
                blocks.append(self.blocks[b])
            else:
                block = self.blocks[b]
                blocks.append(block[off] if run == 1 else block[off : off + run])
            widths.append(run)
            i += run
        return _Cols(blocks, widths)

    def whole(self):
        out = self.blocks[0]
        for block in self.blocks[1:]:
            out = out.concat(block)
        return out


def _is_lazy(t: Any) -> bool:
    return isinstance(t, _Cols) or type(t).__name__ in (
        "LazyTensor",
        "GenericLazyTensor",
        "ComplexLazyTensor",
    )


def _whole(t):
    """The operand as one LazyTensor (or the torch tensor itself)."""
    return t.whole() if isinstance(t, _Cols) else t


def _elem(t, k: int):
    """Entry ``k`` of the feature (last) axis."""
    if isinstance(t, _Cols):
        return t.select([k]).whole()
    return t[k] if _is_lazy(t) else t[..., k]


def _select(t, dims: Sequence[int]):
    """Features ``dims`` of the last axis (``active_dims``)."""
    dims = [int(d) for d in dims]
    if isinstance(t, _Cols):
        return t.select(dims)
    if not _is_lazy(t):
        return t[..., dims]
    if dims == list(range(dims[0], dims[0] + len(dims))):
        return t[dims[0] : dims[0] + len(dims)]
    out = t[dims[0]]
    for d in dims[1:]:
        out = out.concat(t[d])
    return out


def _sqrt(t):
    # KeOps defines d sqrt(0) = 0 (rsqrt(0) = 0); torch needs a floor so that the gradient of a
    # distance at r = 0 (the diagonal) is 0 instead of 0 * inf = nan.
    return t.sqrt() if _is_lazy(t) else t.clamp_min(1e-30).sqrt()


def _clamp(t, low: float, high: float):
    return t.clamp(low, high)


# -----------------------------------------------------------------------------------------------
# Parameter-level formulas (public): functions of operands and hyperparameter slices.
# -----------------------------------------------------------------------------------------------
def sq_dist(xi, xj, inv_lengthscale):
    r"""Scaled squared distance :math:`r^2 = \sum_d (x_d - x'_d)^2 / \ell_d^2`.

    Parameters
    ----------
    xi, xj : LazyTensor or torch.Tensor
        Operands of shape ``(n, 1, d)`` and ``(1, m, d)`` (or paired ``(n, d)``, ``(n, d)``).
    inv_lengthscale : LazyTensor, torch.Tensor or None
        :math:`1/\ell`, of size ``d`` or 1; ``None`` when the inputs are already scaled.

    Returns
    -------
    r2 : LazyTensor or torch.Tensor of shape ``(n, m)`` (or ``(n,)`` when paired)
    """
    diff = _whole(xi) - _whole(xj)
    return ((diff if inv_lengthscale is None else diff * inv_lengthscale) ** 2).sum(-1)


def rbf(r2):
    r"""Squared-exponential kernel :math:`k = \exp(-r^2/2)` of a scaled squared distance."""
    return (r2 * -0.5).exp()


def matern(r2, nu: float):
    r"""Matérn kernel of a scaled squared distance, :math:`\nu \in \{1/2, 3/2, 5/2\}`.

    .. math::

        k_{1/2} = e^{-r}, \quad k_{3/2} = (1 + \sqrt3 r) e^{-\sqrt3 r}, \quad
        k_{5/2} = (1 + \sqrt5 r + \tfrac53 r^2) e^{-\sqrt5 r}
    """
    # Written as GPyTorch's KeOps Matern writes it (constant factors in front, sqrt(r2 + 1e-20)):
    # KeOps compiles this arrangement 1.2 times faster on a CPU than s = sqrt(5) r reused.
    r = _sqrt(r2 + 1e-20)
    if nu == 0.5:
        return (-1.0 * r).exp()
    if nu == 1.5:
        return (math.sqrt(3.0) * r + 1) * (-math.sqrt(3.0) * r).exp()
    if nu == 2.5:
        return (math.sqrt(5.0) * r + (1 + 5.0 / 3.0 * r2)) * (-math.sqrt(5.0) * r).exp()
    raise ValueError(f"nu must be 0.5, 1.5 or 2.5, got {nu!r}.")


def rational_quadratic(r2, alpha):
    r"""Rational-quadratic kernel :math:`k = (1 + r^2 / (2\alpha))^{-\alpha}`.

    Written as :math:`\exp(-\alpha \log(1 + r^2/(2\alpha)))` so that :math:`\alpha` may be a
    KeOps parameter.
    """
    return (((r2 / (alpha * 2.0)) + 1.0).log() * -alpha).exp()


def periodic(xi, xj, pi_over_period, inv_lengthscale):
    r"""GPyTorch's periodic kernel.

    .. math::

        k = \exp\Big(-2 \sum_d \sin^2\big(\pi (x_d - x'_d) / p_d\big) / \ell_d\Big)

    Parameters
    ----------
    xi, xj : LazyTensor or torch.Tensor
        Operands, see :func:`sq_dist`.
    pi_over_period : LazyTensor, torch.Tensor or None
        :math:`\pi / p` (size ``d`` or 1); ``None`` when the inputs are already scaled by it.
    inv_lengthscale : LazyTensor or torch.Tensor
        :math:`1 / \ell` (size ``d`` or 1; GPyTorch divides by :math:`\ell`, not :math:`\ell^2`).
    """
    diff = _whole(xi) - _whole(xj)
    s = (diff if pi_over_period is None else diff * pi_over_period).sin()
    return ((s * s * inv_lengthscale).sum(-1) * -2.0).exp()


def _dim_vec(t, d: int):
    """Feature ``d`` kept as a length-1 vector (broadcasts against a vector of components)."""
    return t[d] if _is_lazy(t) else t[..., d : d + 1]


def _inner_dim(t) -> int:
    if isinstance(t, _Cols):
        return t.width
    return int(t.ndim) if _is_lazy(t) else int(t.shape[-1])


def _envelope(tau_d, rate, kind: str):
    if kind == "gaussian":  # exp(-rate tau^2)
        return (tau_d * tau_d * rate * -1.0).exp()
    if kind == "matern52":  # (1 + a + a^2/3) exp(-a), a = sqrt5 |tau| rate
        a = tau_d.abs() * rate * math.sqrt(5.0)
        return (a + a * a * (1.0 / 3.0) + 1.0) * (-a).exp()
    raise ValueError(f"envelope must be 'gaussian' or 'matern52', got {kind!r}.")


def spectral_mixture_product(
    xi, xj, weights: Sequence, rates: Sequence, freqs: Sequence, envelope: str = "gaussian"
):
    r"""Product over dimensions of one-dimensional spectral mixtures.

    .. math::

        k(x, x') = \prod_{d=1}^{D} \sum_{q=1}^{Q} w_{dq}\, e(\tau_d; \ell_{dq})
            \cos(2\pi \mu_{dq} \tau_d), \qquad \tau = x - x',

    with the Gaussian envelope :math:`e = \exp(-\ell \tau^2)` (Gaussian spectral density) or the
    Matérn-5/2 envelope :math:`e = (1 + \sqrt5|\tau|\ell + \tfrac53 \tau^2\ell^2)
    e^{-\sqrt5|\tau|\ell}` (Student-t spectral density).  The :math:`Q` components of each
    dimension are one KeOps vector, so the formula grows with :math:`D`, not with :math:`QD`.
    GPyTorch's ``SpectralMixtureKernel`` is the Gaussian case with :math:`w_{dq} = w_q`,
    :math:`\ell_{dq} = 2\pi^2 s_{qd}^2`; gpkern's ``GaussianSpectralMixtureKernel`` and
    ``StudentTSpectralMixtureKernel`` (issue 4) are the two envelopes with their own parameters.

    Parameters
    ----------
    xi, xj : LazyTensor or torch.Tensor
        Operands, see :func:`sq_dist`.
    weights, rates, freqs : sequences of length D (or 1: shared by every dimension)
        Per dimension, the Q-vectors :math:`w_{d\cdot}`, :math:`\ell_{d\cdot}`, :math:`\mu_{d\cdot}`.
    envelope : {"gaussian", "matern52"}, default="gaussian"
    """
    tau = _whole(xi) - _whole(xj)
    total = None
    for d in range(_inner_dim(tau)):
        j = d if len(weights) > 1 else 0
        t = _dim_vec(tau, d)
        comp = (
            _envelope(t, rates[j], envelope) * (t * freqs[j] * (2.0 * math.pi)).cos() * weights[j]
        )
        term = comp.sum(-1)
        total = term if total is None else total * term
    return total


def spectral_mixture_sum(xi, xj, weights, rates: Sequence, freqs: Sequence):
    r"""Sum over components of products over dimensions (Wilson & Adams; the GSMP kernel).

    .. math::

        k(x, x') = \sum_{a=1}^{A} \theta_a \prod_{p=1}^{P}
            \exp(-\ell_{ap} \tau_p^2) \cos(2\pi \mu_{ap} \tau_p), \qquad \tau = x - x'.

    The GSMP kernel of Suwandi et al. (gpkern's ``GSMPKernel``, issue 8) has
    :math:`\ell_{ap} = 2\pi^2\sigma_{ap}^2` and learns only :math:`\theta \ge 0`.

    Parameters
    ----------
    xi, xj : LazyTensor or torch.Tensor
        Operands, see :func:`sq_dist`.
    weights : LazyTensor or torch.Tensor
        :math:`\theta`, an A-vector.
    rates, freqs : sequences of length P
        Per dimension, the A-vectors :math:`\ell_{\cdot p}` and :math:`\mu_{\cdot p}`.
    """
    tau = _whole(xi) - _whole(xj)
    prod = None
    for p in range(len(rates)):
        t = _dim_vec(tau, p)
        f = _envelope(t, rates[p], "gaussian") * (t * freqs[p] * (2.0 * math.pi)).cos()
        prod = f if prod is None else prod * f
    return (prod * weights).sum(-1)


def spectral_mixture(xi, xj, weights: Sequence, scales: Sequence, means: Sequence, n_dims: int):
    r"""GPyTorch's spectral mixture kernel (Wilson & Adams, 2013), as GPyTorch computes it.

    GPyTorch sums the mixture in each dimension and multiplies over dimensions:

    .. math::

        k(\tau) = \prod_{d=1}^D \sum_{q=1}^Q w_q \exp(-2\pi^2 \tau_d^2 s_{qd}^2)
            \cos(2\pi \tau_d \mu_{qd}), \qquad \tau = x - x'

    (for :math:`D = 1` this is the original spectral mixture).  A thin wrapper of
    :func:`spectral_mixture_product`.

    Parameters
    ----------
    xi, xj : LazyTensor or torch.Tensor
        Operands, see :func:`sq_dist`.
    weights : LazyTensor or torch.Tensor
        The Q-vector :math:`w`.
    scales, means : sequences of length ``n_dims``
        Per dimension, the Q-vectors :math:`2\pi^2 s_{\cdot d}^2` (rates) and :math:`\mu_{\cdot d}`.
    n_dims : int
    """
    return spectral_mixture_product(
        xi, xj, [weights] * n_dims, list(scales), list(means), "gaussian"
    )


_ACTIVATIONS = ("relu", "abrelu", "leaky_relu", "erf")


def _share(expr, sub):
    """``expr`` with its repeated subformula ``sub`` evaluated once (KeOps ``Factorize``).

    A LazyTensor formula is a tree: a layer's correlation appears several times in the next
    layer's expression and would be recomputed (with all earlier layers) at every occurrence,
    which grows exponentially with depth. Torch tensors are already shared.
    """
    return expr.factorize(sub) if _is_lazy(expr) and _is_lazy(sub) else expr


def _one_minus_square(c):
    # (1 - c)(1 + c) is accurate near |c| = 1, where 1 - c * c cancels.
    return (1.0 - c) * (c + 1.0)


def _sin_arccos(c):
    r""":math:`(\sin\vartheta, \vartheta)` for :math:`\vartheta = \arccos c`, :math:`|c| < 1`.

    :math:`\sin\vartheta = \sqrt{(1 - c)(1 + c)}` (accurate near :math:`|c| = 1`). ``c`` must
    already lie in :math:`(-1, 1)` (no clamp; see :func:`network_point_terms`).
    """
    return _sqrt(_one_minus_square(c)), c.acos()


def _arcsin(z):
    r""":math:`\arcsin z = \arctan(z / \sqrt{1 - z^2})` for :math:`|z| < 1` (see :func:`_sin_arccos`)."""
    return (z * _one_minus_square(z).rsqrt()).atan()


def _arccos_terms(k12, k11, k22, eps: float):
    norm = _sqrt(k11 * k22)
    cos = _clamp(k12 / norm, -1.0 + eps, 1.0 - eps)
    theta = cos.acos()
    return norm, cos, theta


def _layer_params(layer: tuple) -> tuple:
    kind = layer[0]
    if kind == "relu":
        return 0.0, 1.0
    if kind == "leaky_relu":
        return float(layer[1]), 1.0
    if kind == "abrelu":
        return float(layer[1]), float(layer[2])
    if kind == "erf":
        return tuple(float(v) for v in layer[1:4]) if len(layer) == 4 else (1.0, 1.0, 0.0)
    raise ValueError(f"Unknown layer {layer!r}: use 'dense', {', '.join(map(repr, _ACTIVATIONS))}.")


def _squared(v):
    return float(v) ** 2 if isinstance(v, (int, float)) else v * v


def n_point_terms(layers: Sequence[tuple]) -> int:
    """Number of per-point columns :func:`network_point_terms` returns: two per activation."""
    return 2 * sum(layer[0] in _ACTIVATIONS for layer in layers)


def network_point_terms(
    x: torch.Tensor, layers: Sequence[tuple], n_features: int | None = None, eps: float = 1e-12
) -> torch.Tensor:  # (..., d) -> (..., 2 * n_activations)
    r"""Per-point quantities of the layer recursion of :func:`dense_network`.

    Before each activation the pre-activation variance :math:`\Sigma_{11}(x)` depends on
    :math:`x` alone. For an (ab)ReLU the columns are :math:`\sqrt{\Sigma_{11}}` and
    :math:`\sqrt{1 - \epsilon} / \sqrt{\Sigma_{11}}`; for ``erf`` they are :math:`1/\sqrt{D}`
    and :math:`D` with :math:`D = 1 + 2b^2\Sigma_{11}`.

    The factor :math:`\sqrt{1 - \epsilon}` keeps :math:`\cos\vartheta = \Sigma_{12} r r'` inside
    :math:`(-1, 1)` despite rounding without a per-pair clamp (a clamp costs as much as the rest
    of a layer in KeOps). Because :math:`\tfrac{d}{dc}\big(\sqrt{1-c^2} + (\pi - \arccos c)c\big)
    = \pi - \arccos c \le \pi`, the NNGP value moves by at most :math:`\epsilon/2` relative to
    :math:`\sqrt{\Sigma_{11}\Sigma_{22}}`.

    Parameters
    ----------
    x : torch.Tensor of shape (..., d)
    layers : sequence of tuples
        As :func:`dense_network` (dense standard deviations may be tensors).
    n_features : int, optional
        Input dimension (default ``x.shape[-1]``).
    eps : float, default=1e-12
        Shrinkage of :math:`\cos\vartheta`; at least 16 machine epsilons of ``x.dtype``.

    Returns
    -------
    terms : torch.Tensor of shape (..., 2 * n_activations)
    """
    n_features = x.shape[-1] if n_features is None else n_features
    tiny = torch.finfo(x.dtype).tiny
    shrink = math.sqrt(1.0 - max(eps, 16 * torch.finfo(x.dtype).eps))
    k11 = (x * x).sum(-1) * (1.0 / n_features)
    cols = []
    for layer in layers:
        kind = layer[0]
        if kind == "dense":
            k11 = k11 * _squared(layer[1]) + _squared(layer[2])
        elif kind == "erf":
            ea, eb, ec = _layer_params(layer)
            b2 = eb * eb
            d11 = k11 * (2.0 * b2) + 1.0
            cols += [d11.rsqrt(), d11]
            k11 = ((k11 * (2.0 * b2)) / d11).asin() * (ea * ea * (2.0 / math.pi)) + ec * ec
        else:
            a, b = _layer_params(layer)
            s = k11.clamp_min(tiny).sqrt()
            cols += [s, shrink / s]
            k11 = k11 * (0.5 * (a * a + b * b))
    if not cols:
        return x[..., :0]
    return torch.stack([c.expand(x.shape[:-1]) for c in cols], -1)


def dense_network(
    xi,
    xj,
    layers: Sequence[tuple],
    n_features: int | None = None,
    ntk: bool = False,
    eps: float = 1e-12,
    point_terms: tuple | None = None,
):
    r"""NNGP (or NTK) of a fully connected network through the layer recursion.

    The state is the covariance of pre-activations at :math:`x`, :math:`x'`:
    :math:`\Sigma_{12}` (a pair quantity) and :math:`\Sigma_{11}, \Sigma_{22}` (per point), starting
    from :math:`\Sigma_{12} = x \cdot x' / d`, :math:`\Sigma_{11} = |x|^2/d`,
    :math:`\Sigma_{22} = |x'|^2/d`.  A dense layer maps
    :math:`\Sigma \mapsto \sigma_w^2 \Sigma + \sigma_b^2` and
    :math:`\Theta \mapsto \sigma_w^2 \Theta + \Sigma_{\text{new}}`; an activation :math:`\phi`
    maps :math:`\Sigma \mapsto E[\phi(u)\phi(v)]`,
    :math:`\Theta \mapsto \Theta\, E[\phi'(u)\phi'(v)]` for
    :math:`(u, v) \sim \mathcal N(0, [[\Sigma_{11}, \Sigma_{12}], [\Sigma_{12}, \Sigma_{22}]])`.
    With :math:`\cos\vartheta = \Sigma_{12}/\sqrt{\Sigma_{11}\Sigma_{22}}` and
    :math:`\phi(z) = b\max(z, 0) + a\min(z, 0)` (ReLU: :math:`a=0, b=1`; leaky ReLU: :math:`b=1`):

    .. math::

        E[\phi\phi] = (a^2 + b^2) \tfrac{\sqrt{\Sigma_{11}\Sigma_{22}}}{2\pi}
            \big(\sin\vartheta + (\pi - \vartheta)\cos\vartheta\big)
            - 2ab \tfrac{\sqrt{\Sigma_{11}\Sigma_{22}}}{2\pi}(\sin\vartheta - \vartheta\cos\vartheta),
        \quad E[\phi'\phi'] = \frac{(a^2 + b^2)(\pi - \vartheta) + 2ab\,\vartheta}{2\pi}

    and for :math:`\phi = a \operatorname{erf}(b z) + c`, with :math:`D_i = 1 + 2b^2\Sigma_{ii}`:

    .. math::

        E[\phi\phi] = a^2 \tfrac{2}{\pi}\arcsin\frac{2b^2\Sigma_{12}}{\sqrt{D_1 D_2}} + c^2,
        \quad E[\phi'\phi'] = \frac{4 a^2 b^2}{\pi\sqrt{D_1 D_2 - 4b^4\Sigma_{12}^2}}.

    Parameters
    ----------
    xi, xj : LazyTensor or torch.Tensor
        Operands, see :func:`sq_dist`.
    layers : sequence of tuples
        ``("dense", weight_std, bias_std)``, ``("relu",)``, ``("abrelu", a, b)``,
        ``("leaky_relu", slope)``, ``("erf",)`` or ``("erf", a, b, c)``, applied in order
        (neural-tangents conventions). Dense standard deviations may be floats or
        hyperparameter slices (tensors, LazyTensors).
    n_features : int, optional
        Input dimension :math:`d` (default: the operands' feature count).
    ntk : bool, default=False
        Return the NTK instead of the NNGP kernel.
    eps : float, default=1e-12
        :math:`\cos\vartheta` is clamped to :math:`[-1 + \epsilon, 1 - \epsilon]` so that
        :math:`\arccos` stays differentiable on the diagonal.
    point_terms : pair of LazyTensor or torch.Tensor, optional
        ``(p_i, p_j)`` from :func:`network_point_terms` at ``xi`` and ``xj`` (same layers). The
        variances :math:`\Sigma_{11}, \Sigma_{22}` depend on one point each; given here, they are
        computed once per point (:math:`O(nL)`) instead of once per pair, and the per-pair work is
        only the :math:`\Sigma_{12}` recursion (the KeOps path uses this).

    Returns
    -------
    k : LazyTensor or torch.Tensor of shape ``(n, m)`` (or ``(n,)`` when paired)
    """
    xi, xj = _whole(xi), _whole(xj)
    n_features = _inner_dim(xi) if n_features is None else n_features
    k12 = (xi * xj).sum(-1) * (1.0 / n_features)
    if point_terms is None:
        k11 = (xi * xi).sum(-1) * (1.0 / n_features)
        k22 = (xj * xj).sum(-1) * (1.0 / n_features)
    else:
        pi, pj = point_terms
        col = 0
    theta_ntk = None
    for layer in layers:
        kind = layer[0]
        if kind == "dense":
            w2, b2 = _squared(layer[1]), _squared(layer[2])
            k12 = k12 * w2 + b2
            if point_terms is None:
                k11, k22 = k11 * w2 + b2, k22 * w2 + b2
            if ntk:
                theta_ntk = k12 if theta_ntk is None else theta_ntk * w2 + k12
        elif kind in ("relu", "abrelu", "leaky_relu"):
            a, b = _layer_params(layer)
            if point_terms is None:
                norm, cos, theta = _arccos_terms(k12, k11, k22, eps)
                sin = _sqrt(1.0 - cos * cos)
            else:
                # sqrt(S11 S22) and cos = (1 - eps) S12 / sqrt(S11 S22) from per-point columns:
                # no per-pair square root, division or clamp (see network_point_terms).
                norm = _elem(pi, col) * _elem(pj, col)
                cos = k12 * _elem(pi, col + 1) * _elem(pj, col + 1)
                col += 2
                sin, theta = _sin_arccos(cos)
            pos = (sin + (math.pi - theta) * cos) * norm * ((a * a + b * b) / (2 * math.pi))
            new12 = pos
            if a * b != 0.0:
                new12 = new12 - (sin - theta * cos) * norm * ((2 * a * b) / (2 * math.pi))
            if ntk and theta_ntk is not None:
                dot = ((math.pi - theta) * (a * a + b * b) + theta * (2 * a * b)) * (
                    1.0 / (2 * math.pi)
                )
                theta_ntk = theta_ntk * dot
            k12 = _share(new12, cos)
            if ntk and theta_ntk is not None:
                theta_ntk = _share(theta_ntk, cos)
            if point_terms is None:
                scale = 0.5 * (a * a + b * b)
                k11, k22 = k11 * scale, k22 * scale
        elif kind == "erf":
            ea, eb, ec = _layer_params(layer)
            b2, a2 = eb * eb, ea * ea * (2.0 / math.pi)
            if point_terms is None:
                d11, d22 = k11 * (2.0 * b2) + 1.0, k22 * (2.0 * b2) + 1.0
                arg = k12 * (2.0 * b2) / _sqrt(d11 * d22)
                new12 = _clamp(arg, -1.0 + eps, 1.0 - eps).asin() * a2 + ec * ec
            else:
                d11, d22 = _elem(pi, col + 1), _elem(pj, col + 1)
                arg = _clamp(
                    k12 * _elem(pi, col) * _elem(pj, col) * (2.0 * b2), -1.0 + eps, 1.0 - eps
                )
                col += 2
                new12 = _arcsin(arg) * a2 + ec * ec
            if ntk and theta_ntk is not None:
                det = d11 * d22 - k12 * k12 * (4.0 * b2 * b2)
                inv = det.rsqrt() if _is_lazy(det) else det.clamp_min(1e-30).rsqrt()
                theta_ntk = theta_ntk * inv * (ea * ea * b2 * 4.0 / math.pi)
            if point_terms is None:
                k11 = ((k11 * (2.0 * b2)) / d11).asin() * a2 + ec * ec
                k22 = ((k22 * (2.0 * b2)) / d22).asin() * a2 + ec * ec
            k12 = _share(new12, arg)
            if ntk and theta_ntk is not None:
                theta_ntk = _share(theta_ntk, arg)
        else:
            raise ValueError(
                f"Unknown layer {layer!r}: use 'dense', {', '.join(map(repr, _ACTIVATIONS))}."
            )
    if ntk:
        return k12 if theta_ntk is None else theta_ntk
    return k12


# -----------------------------------------------------------------------------------------------
# Formula trees built from GPyTorch kernels.
# -----------------------------------------------------------------------------------------------
class KernelFormula:
    r"""A kernel :math:`k(x, x')` as a formula of the operands and one flat parameter vector.

    Build one with :func:`kernel_formula`.  ``theta()`` returns the current (constrained,
    differentiable) hyperparameters flattened into a vector; ``evaluate(xi, xj, theta)``
    builds :math:`k` on LazyTensor or torch operands.

    A formula may need ``n_extra`` per-point columns (quantities of one point that the pair
    formula would otherwise recompute for every pair, e.g. the layer variances of
    :func:`dense_network`): ``augment(x, theta)`` appends them to the inputs in torch
    (:math:`O(n)`), and ``evaluate`` then receives the augmented operands.  Calling the formula
    on plain torch operands augments them itself; LazyTensor operands must be built from
    ``augment``'s output (as :func:`keops_matmul` does).
    """

    size: int = 0  # length of this node's slice of theta
    n_extra: int = 0  # per-point columns appended to the operands (see augment)

    def extras(self, x: torch.Tensor, theta: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Per-point columns ``(..., n_extra)`` of this node, from its inputs ``x`` ``(..., d)``."""
        return x[..., :0]

    def augment(self, x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """``x`` ``(..., d)`` with this formula's per-point columns appended: ``(..., d + n_extra)``."""
        if not self.n_extra:
            return x
        return torch.cat([x, self.extras(x, theta.to(x.dtype), 0)], -1)

    def extra_widths(self) -> list[int]:
        """Widths of the blocks the per-point columns come in (one KeOps variable each)."""
        return [self.n_extra] if self.n_extra else []

    def operand_blocks(self, x: torch.Tensor, theta: torch.Tensor) -> list[torch.Tensor]:
        """``[x, extras block 1, ...]``: :meth:`augment`'s columns, split as KeOps variables."""
        if not self.n_extra:
            return [x]
        return [x, *torch.split(self.extras(x, theta.to(x.dtype), 0), self.extra_widths(), -1)]

    def theta_parts(self) -> list[torch.Tensor]:
        raise NotImplementedError

    def evaluate(self, xi, xj, theta, start: int = 0):  # pragma: no cover - abstract
        raise NotImplementedError

    def theta(self) -> torch.Tensor:
        """Flat vector of the current hyperparameter values (differentiable)."""
        return torch.cat([p.reshape(-1) for p in self.theta_parts()])

    def __call__(self, xi, xj, theta, *, augmented: bool = False):
        if self.n_extra and not augmented:
            if _is_lazy(xi) or _is_lazy(xj):
                raise ValueError(
                    "this formula needs per-point columns: build the LazyTensors from "
                    "formula.augment(x, theta) and pass augmented=True."
                )
            xi, xj = self.augment(xi, theta), self.augment(xj, theta)
        return self.evaluate(xi, xj, theta, 0)


def _slice(theta, start: int, size: int):
    return theta[start : start + size]


def _split(t, n_extra: int):
    """Operand ``[data, extras]`` -> ``(data, extras)`` (``n_extra`` trailing columns)."""
    width = _inner_dim(t)
    return _select(t, range(width - n_extra)), _select(t, range(width - n_extra, width))


def _join(data, extras):
    if isinstance(data, _Cols):
        return _Cols(data.blocks + extras.blocks, data.widths + extras.widths)
    if _is_lazy(data):
        return data.concat(extras)
    return torch.cat([data, extras], -1)


class _ActiveDims(KernelFormula):
    def __init__(self, child: KernelFormula, dims: Sequence[int] | None) -> None:
        self.child, self.dims = child, None if dims is None else [int(d) for d in dims]
        self.size, self.n_extra = child.size, child.n_extra

    def theta_parts(self):
        return self.child.theta_parts()

    def extras(self, x, theta, start=0):
        return self.child.extras(x if self.dims is None else x[..., self.dims], theta, start)

    def extra_widths(self):
        return self.child.extra_widths()

    def evaluate(self, xi, xj, theta, start=0):
        if self.dims is not None:
            if self.n_extra:
                (xi, ei), (xj, ej) = _split(xi, self.n_extra), _split(xj, self.n_extra)
                xi, xj = _join(_select(xi, self.dims), ei), _join(_select(xj, self.dims), ej)
            else:
                xi, xj = _select(xi, self.dims), _select(xj, self.dims)
        return self.child.evaluate(xi, xj, theta, start)


class _Stationary(KernelFormula):
    """RBF, Matérn and RQ kernels of the scaled distance.

    With the input dimension ``d`` known, the inputs scaled by :math:`1/\\ell` are per-point
    columns (computed in torch, differentiable in :math:`\\ell`) and the pair formula is a plain
    squared distance: scaling inside the reduction cost 1.4 times the whole scaled-RBF
    reduction on a CPU. Without ``d`` the scale stays a KeOps parameter.
    """

    def __init__(self, kernel: gpytorch.kernels.Kernel, kind: str, d: int | None = None) -> None:
        self.kernel, self.kind = kernel, kind
        self.n_ls = kernel.lengthscale.numel()
        self.size = self.n_ls + (1 if kind == "rq" else 0)
        self.n_extra = int(d or 0) if self.n_ls in (1, int(d or 0)) else 0

    def theta_parts(self):
        parts = [1.0 / self.kernel.lengthscale.reshape(-1)]
        if self.kind == "rq":
            parts.append(self.kernel.alpha.reshape(-1))
        return parts

    def extras(self, x, theta, start=0):
        return x * _slice(theta, start, self.n_ls) if self.n_extra else x[..., :0]

    def evaluate(self, xi, xj, theta, start=0):
        if self.n_extra:
            r2 = sq_dist(_split(xi, self.n_extra)[1], _split(xj, self.n_extra)[1], None)
        else:
            r2 = sq_dist(xi, xj, _slice(theta, start, self.n_ls))
        if self.kind == "rbf":
            return rbf(r2)
        if self.kind == "rq":
            return rational_quadratic(r2, _slice(theta, start + self.n_ls, 1))
        return matern(r2, float(self.kernel.nu))


class _Periodic(KernelFormula):
    r"""GPyTorch's periodic kernel; with ``d`` known the inputs scaled by :math:`\pi / p` are
    per-point columns, as for :class:`_Stationary` (GPyTorch's KeOps kernel scales them before
    the reduction too: scaling per pair cost 2.5% of the reduction on a CPU)."""

    def __init__(self, kernel: gpytorch.kernels.PeriodicKernel, d: int | None = None) -> None:
        self.kernel = kernel
        self.n_p, self.n_ls = kernel.period_length.numel(), kernel.lengthscale.numel()
        self.size = self.n_p + self.n_ls
        self.n_extra = int(d or 0) if self.n_p in (1, int(d or 0)) else 0

    def extras(self, x, theta, start=0):
        return x * _slice(theta, start, self.n_p) if self.n_extra else x[..., :0]

    def theta_parts(self):
        return [
            math.pi / self.kernel.period_length.reshape(-1),
            1.0 / self.kernel.lengthscale.reshape(-1),
        ]

    def evaluate(self, xi, xj, theta, start=0):
        inv_ls = _slice(theta, start + self.n_p, self.n_ls)
        if self.n_extra:
            return periodic(_split(xi, self.n_extra)[1], _split(xj, self.n_extra)[1], None, inv_ls)
        return periodic(xi, xj, _slice(theta, start, self.n_p), inv_ls)


class _SpectralMixture(KernelFormula):
    """GPyTorch's SpectralMixtureKernel: theta = [w (Q), rates (D x Q), means (D x Q)]."""

    def __init__(self, kernel: gpytorch.kernels.SpectralMixtureKernel) -> None:
        self.kernel = kernel
        self.q, self.d = kernel.num_mixtures, kernel.ard_num_dims
        self.size = self.q * (1 + 2 * self.d)

    def theta_parts(self):
        k = self.kernel
        scales = k.mixture_scales.reshape(self.q, self.d)
        means = k.mixture_means.reshape(self.q, self.d)
        rates = 2.0 * math.pi**2 * scales**2
        return [k.mixture_weights.reshape(-1), rates.T.reshape(-1), means.T.reshape(-1)]

    def evaluate(self, xi, xj, theta, start=0):
        q, d = self.q, self.d
        weights = _slice(theta, start, q)
        rates = [_slice(theta, start + q + i * q, q) for i in range(d)]
        means = [_slice(theta, start + q + d * q + i * q, q) for i in range(d)]
        return spectral_mixture(xi, xj, weights, rates, means, d)


class _SpectralProduct(KernelFormula):
    """gpkern's Gaussian / Student-t spectral mixture product kernels (weights, frequencies, scales)."""

    def __init__(self, kernel, envelope: str) -> None:
        self.kernel, self.envelope = kernel, envelope
        self.dims, self.q = kernel.weights.shape[-2], kernel.weights.shape[-1]
        self.size = 3 * self.dims * self.q

    def theta_parts(self):
        k = self.kernel
        return [k.weights.reshape(-1), k.scales.reshape(-1), k.frequencies.reshape(-1)]

    def evaluate(self, xi, xj, theta, start=0):
        dq, q = self.dims * self.q, self.q
        w = [_slice(theta, start + i * q, q) for i in range(self.dims)]
        r = [_slice(theta, start + dq + i * q, q) for i in range(self.dims)]
        mu = [_slice(theta, start + 2 * dq + i * q, q) for i in range(self.dims)]
        return spectral_mixture_product(xi, xj, w, r, mu, self.envelope)


class _SpectralSum(KernelFormula):
    """gpkern's GSMP kernel: learned weights (A), fixed means and bandwidths (A x P)."""

    def __init__(self, kernel) -> None:
        self.kernel = kernel
        self.a, self.p = kernel.means.shape[-2], kernel.means.shape[-1]
        self.size = self.a * (1 + 2 * self.p)

    def theta_parts(self):
        k = self.kernel
        rates = 2.0 * math.pi**2 * k.bandwidths**2
        return [k.weights.reshape(-1), rates.T.reshape(-1), k.means.T.reshape(-1)]

    def evaluate(self, xi, xj, theta, start=0):
        a, p = self.a, self.p
        w = _slice(theta, start, a)
        r = [_slice(theta, start + a + i * a, a) for i in range(p)]
        mu = [_slice(theta, start + a + p * a + i * a, a) for i in range(p)]
        return spectral_mixture_sum(xi, xj, w, r, mu)


class _Scale(KernelFormula):
    def __init__(self, kernel: gpytorch.kernels.ScaleKernel, child: KernelFormula) -> None:
        self.kernel, self.child = kernel, child
        self.size, self.n_extra = 1 + child.size, child.n_extra

    def theta_parts(self):
        return [self.kernel.outputscale.reshape(-1)] + self.child.theta_parts()

    def extras(self, x, theta, start=0):
        return self.child.extras(x, theta, start + 1)

    def extra_widths(self):
        return self.child.extra_widths()

    def evaluate(self, xi, xj, theta, start=0):
        return self.child.evaluate(xi, xj, theta, start + 1) * _slice(theta, start, 1)


class _Linear(KernelFormula):
    r""":math:`v\, x^\top x'` (GPyTorch ``LinearKernel``), or the dot product when ``kernel`` is None."""

    def __init__(self, kernel: gpytorch.kernels.LinearKernel | None) -> None:
        self.kernel = kernel
        self.size = 0 if kernel is None else 1

    def theta_parts(self):
        return [] if self.kernel is None else [self.kernel.variance.reshape(-1)]

    def evaluate(self, xi, xj, theta, start=0):
        dot = (_whole(xi) * _whole(xj)).sum(-1)
        return dot if self.kernel is None else dot * _slice(theta, start, 1)


class _Combine(KernelFormula):
    def __init__(self, children: list[KernelFormula], op: str) -> None:
        self.children, self.op = children, op
        self.size = sum(c.size for c in children)
        self.n_extra = sum(c.n_extra for c in children)

    def theta_parts(self):
        return [p for c in self.children for p in c.theta_parts()]

    def extras(self, x, theta, start=0):
        parts = []
        for child in self.children:
            parts.append(child.extras(x, theta, start))
            start += child.size
        return torch.cat(parts, -1)

    def extra_widths(self):
        return [w for child in self.children for w in child.extra_widths()]

    def evaluate(self, xi, xj, theta, start=0):
        if self.n_extra:
            (di, ei), (dj, ej) = _split(xi, self.n_extra), _split(xj, self.n_extra)
        out, col = None, 0
        for child in self.children:
            if self.n_extra and child.n_extra:
                cols = range(col, col + child.n_extra)
                ci, cj = _join(di, _select(ei, cols)), _join(dj, _select(ej, cols))
                col += child.n_extra
            elif self.n_extra:
                ci, cj = di, dj
            else:
                ci, cj = xi, xj
            value = child.evaluate(ci, cj, theta, start)
            start += child.size
            out = value if out is None else (out + value if self.op == "sum" else out * value)
        return out


class _DenseNetwork(KernelFormula):
    def __init__(self, kernel: DenseNetworkKernel) -> None:
        self.kernel = kernel
        self.size = 0
        self.n_extra = n_point_terms(kernel.layers)

    def theta_parts(self):
        return []

    def extras(self, x, theta, start=0):
        return network_point_terms(x, self.kernel.layers, self.kernel.n_features)

    def extra_widths(self):
        return [1] * self.n_extra

    def evaluate(self, xi, xj, theta, start=0):
        k = self.kernel
        (xi, pi), (xj, pj) = _split(xi, self.n_extra), _split(xj, self.n_extra)
        return dense_network(xi, xj, k.layers, k.n_features, ntk=k.ntk, point_terms=(pi, pj))


_ARCH_ACTIVATIONS = ("Relu", "LeakyRelu", "ABRelu", "Erf")


def layers_from_architecture(arch, stds: Sequence[dict] | None = None) -> list[tuple]:
    r"""Layer tuples for :func:`dense_network` from a ``gpkern.kernels.nngp`` architecture.

    Accepts ``serial(...)`` of ``Dense``, ``Relu``, ``LeakyRelu``, ``ABRelu`` and ``Erf`` (the
    dense architectures whose kernels are functions of :math:`x\cdot x'`, :math:`|x|^2`,
    :math:`|x'|^2`); ``stds`` (one ``{"W_std", "b_std"}`` per Dense layer) overrides the floats.

    Raises
    ------
    TypeError
        For any other layer (convolutions, pooling, LayerNorm, ...): use ``backend="dense"``.
    """
    out, dense_index = [], 0
    for layer in getattr(arch, "layers", (arch,)):
        name = type(layer).__name__
        if name == "Dense":
            sd = stds[dense_index] if stds is not None else {}
            out.append(("dense", sd.get("W_std", layer.W_std), sd.get("b_std", layer.b_std)))
            dense_index += 1
        elif name in ("Relu", "LeakyRelu", "ABRelu"):
            out.append(("abrelu", float(layer.a), float(layer.b)))
        elif name == "Erf":
            out.append(("erf", float(layer.a), float(layer.b), float(layer.c)))
        else:
            raise TypeError(
                f"NNGP layer {name} has no KeOps formula (supported: Dense, "
                f"{', '.join(_ARCH_ACTIVATIONS)}); use backend='dense'."
            )
    return out


class _NNGPArchitecture(KernelFormula):
    """``gpkern.kernels.nngp.NNGPKernel`` of a dense architecture; theta = (W_std, b_std) per Dense."""

    def __init__(self, kernel) -> None:
        if getattr(kernel, "input_shape", None) is not None:
            raise TypeError(
                "NNGPKernel with image inputs has no KeOps formula; use backend='dense'."
            )
        layers_from_architecture(kernel.arch)  # raises TypeError for unsupported layers
        self.kernel = kernel
        self.n_dense = sum(type(layer).__name__ == "Dense" for layer in kernel.arch.layers)
        self.size = 2 * self.n_dense
        self.n_extra = n_point_terms(layers_from_architecture(kernel.arch))

    def theta_parts(self):
        parts = []
        for sd in self.kernel.stds():
            parts += [
                torch.as_tensor(sd["W_std"]).reshape(1),
                torch.as_tensor(sd["b_std"]).reshape(1),
            ]
        return parts

    def _layers(self, theta, start):
        stds = [
            {"W_std": _slice(theta, start + 2 * i, 1), "b_std": _slice(theta, start + 2 * i + 1, 1)}
            for i in range(self.n_dense)
        ]
        return layers_from_architecture(self.kernel.arch, stds)

    def extras(self, x, theta, start=0):
        return network_point_terms(x, self._layers(theta, start))

    def extra_widths(self):
        return [1] * self.n_extra

    def evaluate(self, xi, xj, theta, start=0):
        (xi, pi), (xj, pj) = _split(xi, self.n_extra), _split(xj, self.n_extra)
        layers = self._layers(theta, start)
        return dense_network(xi, xj, layers, ntk=self.kernel.kind == "ntk", point_terms=(pi, pj))


class DenseNetworkKernel(gpytorch.kernels.Kernel):
    r"""NNGP or NTK of a fully connected network, as a GPyTorch kernel (fixed architecture).

    The kernel is the closed-form infinite-width limit of :func:`dense_network`; wrap it in a
    ``ScaleKernel`` to learn an output scale.  Its KeOps formula makes NNGP regression on
    hundreds of thousands of points possible with :class:`gpkern.estimators.GPRegressor`
    (``backend="keops"``).

    Parameters
    ----------
    layers : sequence of tuples
        See :func:`dense_network`, e.g.
        ``[("dense", 1.5, 0.1), ("relu",), ("dense", 1.5, 0.1)]``.
    n_features : int
        Input dimension.
    ntk : bool, default=False
        Neural tangent kernel instead of the NNGP kernel.

    Examples
    --------
    >>> import torch
    >>> from gpkern.linalg.keops import DenseNetworkKernel
    >>> k = DenseNetworkKernel([("dense", 1.0, 0.0), ("relu",), ("dense", 1.0, 0.0)], n_features=2)
    >>> x = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    >>> k(x).to_dense()  # doctest: +SKIP
    """

    has_lengthscale = False

    def __init__(
        self, layers: Sequence[tuple], n_features: int, ntk: bool = False, **kwargs
    ) -> None:
        super().__init__(**kwargs)
        for layer in layers:
            if not isinstance(layer, tuple) or layer[0] not in ("dense",) + _ACTIVATIONS:
                raise ValueError(
                    f"Unknown layer {layer!r}: layers are tuples ('dense', w_std, b_std), ('relu',), "
                    "('abrelu', a, b), ('leaky_relu', slope) or ('erf',)."
                )
        self.layers = [tuple(layer) for layer in layers]
        self.n_features = int(n_features)
        self.ntk = bool(ntk)

    def forward(
        self, x1, x2, diag=False, last_dim_is_batch=False, **params
    ):  # (..., n, d), (..., m, d)
        if last_dim_is_batch:
            raise ValueError("DenseNetworkKernel does not support last_dim_is_batch.")
        if diag:
            return dense_network(x1, x2, self.layers, self.n_features, ntk=self.ntk)
        return dense_network(
            x1.unsqueeze(-2), x2.unsqueeze(-3), self.layers, self.n_features, ntk=self.ntk
        )


_STATIONARY = (
    (gpytorch.kernels.RBFKernel, "rbf"),
    (gpytorch.kernels.MaternKernel, "matern"),
    (gpytorch.kernels.RQKernel, "rq"),
)


def kernel_formula(kernel: gpytorch.kernels.Kernel, n_features: int | None = None) -> KernelFormula:
    """Translate a GPyTorch kernel into a :class:`KernelFormula`.

    Supported: ``RBFKernel``, ``MaternKernel`` (nu 1/2, 3/2, 5/2), ``RQKernel``,
    ``PeriodicKernel``, ``SpectralMixtureKernel``, ``ScaleKernel``, sums and products
    (``AdditiveKernel``, ``ProductKernel``, ``k1 + k2``, ``k1 * k2``) and
    :class:`DenseNetworkKernel`, with ``active_dims`` and non-batched hyperparameters.

    Parameters
    ----------
    kernel : gpytorch.kernels.Kernel
    n_features : int, optional
        Input dimension. When given, stationary kernels scale the inputs once per point instead
        of once per pair (faster reductions); the formula then expects inputs of this width.

    Raises
    ------
    TypeError
        If a part of the kernel has no KeOps formula (use ``backend="dense"``) or has batched
        hyperparameters.
    """
    d = n_features if kernel.active_dims is None else len(kernel.active_dims)
    formula = _node(kernel, d)
    return (
        formula if kernel.active_dims is None else _ActiveDims(formula, kernel.active_dims.tolist())
    )


def _node(kernel: gpytorch.kernels.Kernel, d: int | None = None) -> KernelFormula:
    if len(kernel.batch_shape) > 0:
        raise TypeError(
            f"{type(kernel).__name__} has batch_shape {tuple(kernel.batch_shape)}; the KeOps backend "
            "supports non-batched kernels only (use backend='dense')."
        )

    def child(k):
        f = _node(k, d if k.active_dims is None else len(k.active_dims))
        return f if k.active_dims is None else _ActiveDims(f, k.active_dims.tolist())

    if isinstance(kernel, gpytorch.kernels.ScaleKernel):
        return _Scale(kernel, child(kernel.base_kernel))
    if isinstance(kernel, gpytorch.kernels.AdditiveKernel):
        return _Combine([child(k) for k in kernel.kernels], "sum")
    if isinstance(kernel, gpytorch.kernels.ProductKernel):
        return _Combine([child(k) for k in kernel.kernels], "product")
    if isinstance(kernel, gpytorch.kernels.LinearKernel):
        return _Linear(kernel)
    if isinstance(kernel, gpytorch.kernels.PeriodicKernel):
        return _Periodic(kernel, d)
    if isinstance(kernel, gpytorch.kernels.SpectralMixtureKernel):
        return _SpectralMixture(kernel)
    if isinstance(kernel, DenseNetworkKernel):
        return _DenseNetwork(kernel)
    # gpkern's spectral kernels (gpkern.kernels.spectral / gsmp, other issues), by duck typing so
    # that this module does not import them.
    name = type(kernel).__name__
    if name == "GaussianSpectralMixtureKernel":
        return _SpectralProduct(kernel, "gaussian")
    if name == "StudentTSpectralMixtureKernel":
        return _SpectralProduct(kernel, "matern52")
    if name == "GSMPKernel":
        return _SpectralSum(kernel)
    if name == "NNGPKernel":
        return _NNGPArchitecture(kernel)
    if name == "FeatureMapKernel":
        raise TypeError(
            "a FeatureMapKernel has a KeOps path only as the outermost kernel (its network runs "
            "before the reduction): put ScaleKernel, sums and products into its base_kernel."
        )
    for cls, kind in _STATIONARY:
        if type(kernel) is cls:
            if kind == "matern" and float(kernel.nu) not in (0.5, 1.5, 2.5):
                raise TypeError(f"MaternKernel nu={kernel.nu} has no KeOps formula.")
            return _Stationary(kernel, kind, d)
    raise TypeError(
        f"{type(kernel).__name__} has no KeOps formula in gpkern.linalg.keops; supported: RBF, Matern, "
        "RQ, Periodic, SpectralMixture, Linear, Scale, sums, products, DenseNetworkKernel, NNGPKernel, "
        "gpkern's spectral and GSMP kernels, and FeatureMapKernel over any of them. Use backend='dense'."
    )


def operator_formula(
    kernel: gpytorch.kernels.Kernel, n_features: int | None = None
) -> tuple[Callable[[torch.Tensor], torch.Tensor] | None, KernelFormula]:
    r"""The input map and the formula that :func:`kernel_operator` uses for ``kernel``.

    A :class:`gpkern.kernels.FeatureMapKernel` :math:`k(x, x') = k_0(h(x), h(x'))` cannot be a
    KeOps formula (its network is arbitrary torch code), but its base kernel :math:`k_0` can: the
    network maps the :math:`n` inputs to features once (:math:`O(np)` memory) and the reduction
    runs on the features, with gradients flowing back into the network through the operands. A
    base kernel of None is the dot product :math:`h(x)^\top h(x')`.

    Parameters
    ----------
    kernel : gpytorch.kernels.Kernel
    n_features : int, optional
        Input dimension, passed to :func:`kernel_formula` (not to a feature map's base kernel,
        whose input is the network's output).

    Returns
    -------
    input_map : callable or None
        ``(n, d) -> (n, p)``, None when the formula acts on the inputs themselves.
    formula : KernelFormula

    Raises
    ------
    TypeError
        As :func:`kernel_formula`.
    """
    if type(kernel).__name__ != "FeatureMapKernel" or not hasattr(kernel, "features"):
        return None, kernel_formula(kernel, n_features)
    base = kernel.base_kernel
    formula = _Linear(None) if base is None else kernel_formula(base)
    dims = kernel.active_dims

    def input_map(x: torch.Tensor) -> torch.Tensor:  # (n, d) -> (n, p)
        return kernel.features(x if dims is None else x[..., dims])

    return input_map, formula


# -----------------------------------------------------------------------------------------------
# Reductions.
# -----------------------------------------------------------------------------------------------
def _lazy_tensor_class():
    try:
        import pykeops

        pykeops.set_verbose(False)
        from pykeops.torch import LazyTensor
    except Exception as exc:  # pragma: no cover - depends on the installation
        raise KeOpsCompileError(f"pykeops cannot be imported: {exc}") from exc
    return LazyTensor


def _padded_width(c: int) -> int:
    for w in RHS_WIDTHS:
        if c <= w:
            return w
    return RHS_WIDTHS[-1]


def keops_matmul(
    formula: KernelFormula,
    x1: torch.Tensor,  # (n, d)
    x2: torch.Tensor,  # (m, d)
    theta: torch.Tensor,  # (p,)
    rhs: torch.Tensor,  # (m, c)
) -> torch.Tensor:  # (n, c)
    """:math:`K(x_1, x_2)\\, V` by a KeOps reduction (differentiable in ``theta`` and ``rhs``).

    Raises
    ------
    KeOpsCompileError
        If pykeops is missing or fails to compile or run the reduction.
    """
    LazyTensor = _lazy_tensor_class()
    c = rhs.shape[-1]
    block = RHS_WIDTHS[-1]
    try:
        # Per-point columns (layer variances of a network kernel) are computed once per point in
        # torch; the reduction then only evaluates the pair part of the formula.
        # One KeOps variable per block of columns (inputs, then each node's per-point columns):
        # slicing one wide variable costs a copy per pair (see _Cols).
        b1 = formula.operand_blocks(x1, theta)
        b2 = b1 if x2 is x1 else formula.operand_blocks(x2, theta)
        widths = [b.shape[-1] for b in b1]
        xi = _Cols([LazyTensor(b.contiguous()[:, None, :]) for b in b1], widths)
        xj = _Cols([LazyTensor(b.contiguous()[None, :, :]) for b in b2], widths)
        th = LazyTensor(theta.contiguous()) if theta.numel() else None
        # An outermost ScaleKernel multiplies the reduction's result instead of every pair.
        scale = isinstance(formula, _Scale)
        K = formula.child.evaluate(xi, xj, th, 1) if scale else formula(xi, xj, th, augmented=True)
        outs = []
        for start in range(0, c, block):
            v = rhs[:, start : start + block]
            w = _padded_width(v.shape[-1])
            if w > v.shape[-1]:
                v = torch.cat([v, v.new_zeros(v.shape[0], w - v.shape[-1])], -1)
            out = (K * LazyTensor(v.contiguous()[None, :, :])).sum(dim=1)
            outs.append(out[:, : min(block, c - start)])
        out = torch.cat(outs, -1)
        return out * theta[0] if scale else out
    except KeOpsCompileError:
        raise
    except Exception as exc:
        raise KeOpsCompileError(
            f"pykeops could not compile or run the kernel reduction: {exc}"
        ) from exc


def _dense_block(formula, x1b, x2, theta, rhs):
    return formula(x1b[:, None, :], x2[None, :, :], theta, augmented=True) @ rhs


#: Right-hand sides wider than this are multiplied with tiled torch on the CPU even under
#: ``backend="keops"`` (when no gradient is needed): a KeOps CPU reduction loops over the columns pair by pair in scalar
#: code, while a torch block evaluates each kernel entry once and multiplies at BLAS speed
#: (2-ReLU-layer NNGP, n = 10,000, 256 columns: 4.1 s against 31.7 s for sixteen 16-column
#: reductions; scaled RBF 2.2 s against 20 s).
WIDE_RHS = 16


def torch_matmul(
    formula: KernelFormula,
    x1: torch.Tensor,  # (n, d)
    x2: torch.Tensor,  # (m, d)
    theta: torch.Tensor,  # (p,)
    rhs: torch.Tensor,  # (m, c)
    max_block_elements: int = 2**22,
) -> torch.Tensor:  # (n, c)
    """:math:`K(x_1, x_2)\\, V` in blocks with plain torch (the KeOps fallback, and wide products).

    With gradients, each block of rows (all columns) is recomputed in the backward pass
    (activation checkpointing), so memory stays :math:`O(\\text{block} \\cdot m \\cdot d)`
    instead of :math:`O(n m)`.  Without gradients the matrix is swept in tiles of rows and
    columns, so each tile of :math:`V` is read once per row block, not once per few rows.
    """
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in (x1, x2, theta, rhs))
    x1, x2 = formula.augment(x1, theta), formula.augment(x2, theta)
    d = max(1, x1.shape[-1])
    if grad:
        rows = max(1, max_block_elements // max(1, x2.shape[0] * d))
        outs = []
        for start in range(0, x1.shape[0], rows):
            xb = x1[start : start + rows]
            outs.append(checkpoint(_dense_block, formula, xb, x2, theta, rhs, use_reentrant=False))
        return torch.cat(outs, 0)
    rows = min(x1.shape[0], 256)
    cols = max(1, max_block_elements // (rows * d))
    out = rhs.new_zeros(x1.shape[0], rhs.shape[-1])
    for start in range(0, x1.shape[0], rows):
        xb = x1[start : start + rows]
        acc = out[start : start + rows]
        for j in range(0, x2.shape[0], cols):
            acc += _dense_block(formula, xb, x2[j : j + cols], theta, rhs[j : j + cols])
    return out


class KernelOperator(LinearOperator):
    r"""The kernel matrix :math:`K(x_1, x_2)` as a lazy :class:`~linear_operator.LinearOperator`.

    Matrix products are KeOps reductions (``backend="keops"``) or row-blocked torch products
    (``backend="torch"``); the diagonal and single entries are evaluated directly.  Memory is
    :math:`O((n + m)(d + c))` for :math:`c` right-hand sides.  GPyTorch's CG, Lanczos and pivoted
    Cholesky use it unchanged; gradients with respect to the hyperparameter vector flow through
    ``theta`` (one reduction for all hyperparameters).

    Parameters
    ----------
    x1 : torch.Tensor of shape (n, d)
    x2 : torch.Tensor of shape (m, d)
    theta : torch.Tensor of shape (p,)
        Flat hyperparameters, usually ``formula.theta()``.
    formula : KernelFormula
    backend : {"keops", "torch"}, default="keops"
        ``"keops"`` falls back to ``"torch"`` with a warning the first time pykeops fails.
    grad_formula : KernelFormula, optional
        The same kernel with the same ``theta``, used for KeOps products that must be
        differentiated (default ``formula``). :func:`kernel_operator` passes one whose scales
        stay KeOps parameters: its backward is one reduction for all hyperparameters, while
        ``formula``'s per-point scaled inputs are faster forward but need input gradients.

    Examples
    --------
    >>> import torch, gpytorch
    >>> from gpkern.linalg.keops import kernel_operator
    >>> x = torch.randn(100, 2, dtype=torch.float64)
    >>> K = kernel_operator(gpytorch.kernels.RBFKernel(), x, backend="torch")
    >>> (K @ torch.ones(100, 1, dtype=torch.float64)).shape
    torch.Size([100, 1])
    """

    def __init__(
        self,
        x1,
        x2,
        theta,
        *,
        formula: KernelFormula,
        backend: str = "keops",
        grad_formula: KernelFormula | None = None,
    ) -> None:
        if x1.dim() != 2 or x2.dim() != 2:
            raise ValueError(
                "KernelOperator takes 2-D inputs (n, d) and (m, d); batch dimensions are not supported."
            )
        if backend not in ("keops", "torch"):
            raise ValueError(f"backend must be 'keops' or 'torch', got {backend!r}.")
        grad_formula = formula if grad_formula is None else grad_formula
        super().__init__(x1, x2, theta, formula=formula, backend=backend, grad_formula=grad_formula)
        self.x1, self.x2, self.theta_vec = x1, x2, theta
        self.formula, self.backend, self.grad_formula = formula, backend, grad_formula

    def _size(self) -> torch.Size:
        return torch.Size([self.x1.shape[0], self.x2.shape[0]])

    def _transpose_nonbatch(self):
        # Every formula here is a symmetric function k(x, x') = k(x', x).
        return KernelOperator(
            self.x2,
            self.x1,
            self.theta_vec,
            formula=self.formula,
            backend=self.backend,
            grad_formula=self.grad_formula,
        )

    def _matmul(self, rhs: torch.Tensor) -> torch.Tensor:
        vector = rhs.dim() == 1
        rhs2 = rhs.unsqueeze(-1) if vector else rhs
        if rhs2.dim() > 2:
            cols = rhs2.movedim(-2, 0).reshape(rhs2.shape[-2], -1)
            out = self._matmul(cols)
            return out.reshape(out.shape[0], *rhs2.shape[:-2], rhs2.shape[-1]).movedim(0, -2)
        rhs2 = rhs2.to(self.x1.dtype)
        out = None
        grad = torch.is_grad_enabled() and any(
            t.requires_grad for t in (rhs2, self.theta_vec, self.x1, self.x2)
        )
        wide = rhs2.shape[-1] > WIDE_RHS and self.x1.device.type == "cpu" and not grad
        if self.backend == "keops" and not FALLBACK["active"] and not wide:
            formula = self.grad_formula if grad else self.formula
            try:
                out = keops_matmul(formula, self.x1, self.x2, self.theta_vec, rhs2)
            except KeOpsCompileError as exc:
                from gpkern.linalg.dispatch import warn_fallback

                warn_fallback(exc)
                FALLBACK["active"] = True
        if out is None:
            out = torch_matmul(self.formula, self.x1, self.x2, self.theta_vec, rhs2)
        return out.squeeze(-1) if vector else out

    def _diagonal(self) -> torch.Tensor:
        if self.x1.shape[0] != self.x2.shape[0]:
            raise RuntimeError("The diagonal of a non-square kernel operator is not defined.")
        return self.formula(self.x1, self.x2, self.theta_vec)

    def columns(self, index: torch.Tensor, max_block_elements: int = 2**22) -> torch.Tensor:
        """The columns :math:`K_{:, \\mathrm{index}}` as a dense ``(n, b)`` tensor (torch, row blocks)."""
        x2 = self.x2[index]
        d = max(1, self.x1.shape[-1] + self.formula.n_extra)
        rows = max(1, max_block_elements // max(1, x2.shape[0] * d))
        out = None  # filled in place: a list of blocks and its concatenation would hold it twice
        for s in range(0, max(self.x1.shape[0], 1), rows):  # one (empty) block when n = 0
            block = self.formula(self.x1[s : s + rows, None, :], x2[None, :, :], self.theta_vec)
            if out is None:
                out = block.new_empty(self.x1.shape[0], x2.shape[0])
            out[s : s + rows] = block
        return out

    def pivoted_cholesky(
        self, rank: int, error_tol: float | None = None, return_pivots: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:  # (n, k), (k,)
        """Partial Cholesky factor with random pivots in blocks (:func:`~gpkern.linalg.rpcholesky.rp_cholesky`).

        Replaces ``linear_operator``'s greedy one-pivot-at-a-time factorisation (a Python loop of
        matrix-vector products: rank 2,048 on 10,000 points took 278 s against 3 s here).  It is
        used as a preconditioner only, so it is not differentiated: GPyTorch's log-determinant
        estimator stays unbiased for any fixed preconditioner.  The pivots are drawn from a
        generator with a fixed seed, so repeated calls at the same hyperparameters agree.
        """
        if self.x1 is not self.x2 and not torch.equal(self.x1, self.x2):
            raise RuntimeError("pivoted_cholesky needs a square (symmetric) kernel operator.")
        from gpkern.linalg.rpcholesky import rp_cholesky

        with torch.no_grad():
            F, pivots = rp_cholesky(
                self.columns,
                self._diagonal(),
                int(rank),
                tol=0.0 if error_tol is None else float(error_tol),
                generator=torch.Generator().manual_seed(0),
            )
        return (F, pivots) if return_pivots else F

    def _get_indices(self, row_index, col_index, *batch_indices):
        return self.formula(self.x1[row_index], self.x2[col_index], self.theta_vec)

    def _expand_batch(self, batch_shape):
        raise RuntimeError("KernelOperator does not support batch dimensions.")

    def to_dense(self) -> torch.Tensor:
        """The dense matrix (only for small sizes: :math:`O(nm)` memory)."""
        return self.formula(self.x1[:, None, :], self.x2[None, :, :], self.theta_vec)


def kernel_operator(
    kernel: gpytorch.kernels.Kernel,
    x1: torch.Tensor,  # (n, d)
    x2: torch.Tensor | None = None,  # (m, d)
    *,
    backend: str = "keops",
) -> KernelOperator:  # (n, m)
    """The lazy kernel matrix of a GPyTorch kernel, see :class:`KernelOperator`.

    Parameters
    ----------
    kernel : gpytorch.kernels.Kernel
        Any kernel :func:`kernel_formula` supports, or a ``FeatureMapKernel`` over one
        (:func:`operator_formula`).
    x1 : torch.Tensor of shape (n, d)
    x2 : torch.Tensor of shape (m, d), optional
        Defaults to ``x1``.
    backend : {"keops", "torch"}, default="keops"

    Returns
    -------
    KernelOperator
    """
    input_map, formula = operator_formula(kernel, x1.shape[-1])
    grad_formula = operator_formula(kernel)[1] if input_map is None else formula
    same = x2 is None or x2 is x1
    x2 = x1 if x2 is None else x2
    if x1.shape[-1] != x2.shape[-1]:
        raise ValueError(f"x1 has {x1.shape[-1]} features but x2 has {x2.shape[-1]}.")
    if input_map is not None:
        x1 = input_map(x1)
        x2 = x1 if same else input_map(x2)
    theta = formula.theta() if formula.size else x1.new_zeros(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return KernelOperator(
            x1,
            x2,
            theta.to(x1.dtype),
            formula=formula,
            backend=backend,
            grad_formula=grad_formula,
        )
