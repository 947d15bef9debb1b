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
(:class:`gpkern.kernels.nngp.dense_network.DenseNetworkKernel`), which are functions of :math:`x \cdot x'`, :math:`|x|^2` and
:math:`|x'|^2` through the layer recursion.

:class:`KernelOperator` wraps a formula as a :class:`linear_operator.LinearOperator`, so
GPyTorch's preconditioned CG, stochastic Lanczos quadrature and pivoted Cholesky work on it
unchanged (see :mod:`gpkern.models.iterative`).

The package is split by concern:

* :mod:`~gpkern.linalg.keops.runtime`: the lazy pykeops import, what counts as a pykeops failure,
  and :class:`KeOpsRuntime` (the fallback state, owned by operators, not by the process);
* :mod:`~gpkern.linalg.keops.operands`: the same formula code on LazyTensors and torch tensors;
* :mod:`~gpkern.linalg.keops.primitives`: RBF, Matérn, RQ, periodic and spectral-mixture formulas;
* :mod:`~gpkern.linalg.keops.network`: the NNGP / NTK layer recursion and its formula nodes;
* :mod:`~gpkern.linalg.keops.formula`: the formula tree (:class:`KernelFormula` and its nodes);
* :mod:`~gpkern.linalg.keops.registry`: which formula a kernel becomes; each kernel module
  registers its own with :func:`register_formula`;
* :mod:`~gpkern.linalg.keops.reductions`: :func:`keops_matmul` and its torch twin
  :func:`torch_matmul`;
* :mod:`~gpkern.linalg.keops.operator`: :class:`KernelOperator` and :func:`kernel_operator`.

pykeops itself is imported only when a reduction first runs.
"""

from __future__ import annotations

from gpkern.linalg.keops.formula import KernelFormula, SpectralProductFormula, SpectralSumFormula
from gpkern.linalg.keops.network import (
    ACTIVATIONS,
    DenseNetworkFormula,
    NNGPFormula,
    dense_network,
    layers_from_architecture,
    n_point_terms,
    network_point_terms,
)
from gpkern.linalg.keops.operator import KernelOperator, kernel_operator
from gpkern.linalg.keops.primitives import (
    matern,
    periodic,
    rational_quadratic,
    rbf,
    spectral_mixture,
    spectral_mixture_product,
    spectral_mixture_sum,
    sq_dist,
)
from gpkern.linalg.keops.reductions import RHS_WIDTHS, WIDE_RHS, keops_matmul, torch_matmul
from gpkern.linalg.keops.registry import (
    kernel_formula,
    operator_formula,
    register_formula,
    register_input_map,
    register_layer,
)
from gpkern.linalg.keops.runtime import (
    KeOpsCompileError,
    KeOpsFallbackWarning,
    KeOpsRuntime,
    keops_failure,
    warn_fallback,
)

__all__ = [
    "ACTIVATIONS",
    "DenseNetworkFormula",
    "DenseNetworkKernel",
    "KeOpsCompileError",
    "KeOpsFallbackWarning",
    "KeOpsRuntime",
    "KernelFormula",
    "KernelOperator",
    "NNGPFormula",
    "RHS_WIDTHS",
    "SpectralProductFormula",
    "SpectralSumFormula",
    "WIDE_RHS",
    "dense_network",
    "keops_failure",
    "keops_matmul",
    "kernel_formula",
    "kernel_operator",
    "layers_from_architecture",
    "matern",
    "n_point_terms",
    "network_point_terms",
    "operator_formula",
    "periodic",
    "rational_quadratic",
    "rbf",
    "register_formula",
    "register_input_map",
    "register_layer",
    "spectral_mixture",
    "spectral_mixture_product",
    "spectral_mixture_sum",
    "sq_dist",
    "torch_matmul",
    "warn_fallback",
]


def __getattr__(name: str):
    # The kernel lives with the other network kernels; importing it here eagerly would make
    # linalg import gpkern.kernels (which imports this package to register its formulas).
    if name == "DenseNetworkKernel":
        from gpkern.kernels.nngp.dense_network import DenseNetworkKernel

        return DenseNetworkKernel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
