r"""The NNGP / NTK of a fully connected network given as layer tuples, with a KeOps formula.

The closed-form recursion itself lives in :func:`gpkern.linalg.keops.network.dense_network`
(it is the KeOps formula); this module makes it a GPyTorch kernel.
"""

from __future__ import annotations

from collections.abc import Sequence

import gpytorch

from gpkern.kernels.batch import expand_to_batch, indexed_batch_shape
from gpkern.linalg.keops.network import ACTIVATIONS, DenseNetworkFormula, dense_network
from gpkern.linalg.keops.registry import register_formula

__all__ = ["DenseNetworkKernel"]


class DenseNetworkKernel(gpytorch.kernels.Kernel):
    r"""NNGP or NTK of a fully connected network, as a GPyTorch kernel (fixed architecture).

    The kernel is the closed-form infinite-width limit of
    :func:`~gpkern.linalg.keops.network.dense_network`; wrap it in a ``ScaleKernel`` to learn an
    output scale.  Its KeOps formula makes NNGP regression on
    hundreds of thousands of points possible with :class:`gpkern.estimators.GPRegressor`
    (``backend="keops"``).

    Parameters
    ----------
    layers : sequence of tuples
        See :func:`~gpkern.linalg.keops.network.dense_network`, e.g.
        ``[("dense", 1.5, 0.1), ("relu",), ("dense", 1.5, 0.1)]``.
    n_features : int
        Input dimension.
    ntk : bool, default=False
        Neural tangent kernel instead of the NNGP kernel.

    Examples
    --------
    >>> import torch

    >>> from gpkern.kernels.nngp.dense_network import DenseNetworkKernel
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
            if not isinstance(layer, tuple) or layer[0] not in ("dense",) + ACTIVATIONS:
                raise ValueError(
                    f"Unknown layer {layer!r}: layers are tuples ('dense', w_std, b_std), ('relu',), "
                    "('abrelu', a, b), ('leaky_relu', slope) or ('erf',)."
                )
        self.layers = [tuple(layer) for layer in layers]
        self.n_features = int(n_features)
        self.ntk = bool(ntk)

    def __getitem__(self, index) -> DenseNetworkKernel:
        new = super().__getitem__(index)
        if new is not self:  # no parameters: nothing tells GPyTorch the new batch shape
            new.batch_shape = indexed_batch_shape(self.batch_shape, index)
        return new

    def forward(
        self, x1, x2, diag=False, last_dim_is_batch=False, **params
    ):  # (..., n, d), (..., m, d)
        if last_dim_is_batch:
            raise ValueError("DenseNetworkKernel does not support last_dim_is_batch.")
        if diag:
            out = dense_network(x1, x2, self.layers, self.n_features, ntk=self.ntk)
        else:
            out = dense_network(
                x1.unsqueeze(-2), x2.unsqueeze(-3), self.layers, self.n_features, ntk=self.ntk
            )
        return expand_to_batch(out, self.batch_shape, diag)


register_formula(DenseNetworkKernel, lambda kernel, d: DenseNetworkFormula(kernel))
