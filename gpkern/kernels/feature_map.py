r"""Neural-network feature maps as kernels: deep kernel learning with any ``torch.nn.Module``.

:class:`FeatureMapKernel` composes a feature map :math:`h_w` (an MLP, a CNN, a pretrained model)
with a base kernel :math:`k_\theta`:

.. math::

    k(x, y) = k_\theta\big(h_w(x), h_w(y)\big), \qquad
    k(x, y) = h_w(x)^\top h_w(y) \quad \text{(no base kernel)}.

The network is a submodule of the kernel, so any model that optimises its kernel's parameters
(:class:`gpkern.estimators.GPRegressor`, GPyTorch models) learns :math:`w` and :math:`\theta`
jointly by the marginal likelihood (Wilson et al., "Deep Kernel Learning", AISTATS 2016).
"""

from __future__ import annotations

import copy
import math
import numbers

import gpytorch
import torch
from linear_operator.operators import LowRankRootLinearOperator

from gpkern.kernels.batch import indexed_batch_shape
from gpkern.linalg.keops.registry import register_input_map

__all__ = ["FeatureMapKernel"]


class FeatureMapKernel(gpytorch.kernels.Kernel):
    r"""Kernel on the outputs of a feature map: :math:`k(x, y) = k_{\mathrm{base}}(h(x), h(y))`.

    Parameters
    ----------
    feature_map : torch.nn.Module
        Maps a batch of ``N`` inputs of shape ``(N, *input_shape)`` (or ``(N, d)``) to an
        ``(N, p)`` feature tensor. Its parameters are trained with the kernel's.
    base_kernel : gpytorch.kernels.Kernel, optional
        Kernel applied to the features (RBF, Matérn, an NNGP kernel, a
        :class:`~gpytorch.kernels.ScaleKernel`, ...). ``None`` uses the linear kernel
        :math:`h(x)^\top h(y)`, whose Gram matrix :math:`\Phi\Phi^\top` is low rank: see
        :meth:`features` and :mod:`gpkern.linalg.low_rank` (with fewer features than points
        it is returned as a ``LowRankRootLinearOperator``, which GPyTorch solves by Woodbury when
        kernels are evaluated eagerly).
    input_shape : tuple of int, optional
        Shape of one input as the feature map expects it, e.g. ``(1, 8, 8)`` for 8×8
        one-channel images passed to a CNN. scikit-learn estimators see flattened rows of
        length ``prod(input_shape)``; the kernel reshapes each row before the feature map.
        ``None`` passes rows of shape ``(d,)`` unchanged.
    check_finite : bool, default=True
        Raise if the feature map returns NaN or infinite values.
    **kwargs
        Passed to :class:`gpytorch.kernels.Kernel` (``active_dims``, ``batch_shape``).

    Raises
    ------
    TypeError
        If ``feature_map`` is not a module or ``base_kernel`` not a GPyTorch kernel.
    ValueError
        On a bad ``input_shape``; when called, on inputs whose width does not match
        ``input_shape``, on a feature map that returns a tensor of the wrong rank or number of
        rows, non-finite features, or parameters on another device or dtype than the inputs.

    Examples
    --------
    >>> import torch, gpytorch
    >>> from gpkern.kernels import FeatureMapKernel
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))
    >>> kern = FeatureMapKernel(net, gpytorch.kernels.RBFKernel()).double()
    >>> x = torch.randn(10, 3, dtype=torch.float64)
    >>> kern(x).to_dense().shape, kern.features(x).shape
    (torch.Size([10, 10]), torch.Size([10, 2]))

    Deep kernel regression with scikit-learn inputs (network and RBF trained jointly):

    >>> import numpy as np
    >>> from gpkern.estimators import GPRegressor
    >>> X = np.random.default_rng(0).normal(size=(30, 3)); y = np.sin(X.sum(1))
    >>> gp = GPRegressor(kernel=kern, max_iter=5).fit(X, y)
    >>> gp.predict(X[:2]).shape
    (2,)
    """

    def __init__(
        self,
        feature_map: torch.nn.Module,
        base_kernel: gpytorch.kernels.Kernel | None = None,
        input_shape: tuple[int, ...] | None = None,
        check_finite: bool = True,
        **kwargs,
    ) -> None:
        if not isinstance(feature_map, torch.nn.Module):
            raise TypeError(
                f"feature_map must be a torch.nn.Module, got {type(feature_map).__name__}; wrap a "
                "function in a Module subclass whose forward maps (N, ...) inputs to (N, p) features."
            )
        if base_kernel is not None and not isinstance(base_kernel, gpytorch.kernels.Kernel):
            raise TypeError(
                f"base_kernel must be a gpytorch.kernels.Kernel or None (linear), got {type(base_kernel).__name__}."
            )
        if input_shape is not None:
            if isinstance(input_shape, numbers.Integral):
                input_shape = (int(input_shape),)
            input_shape = tuple(input_shape)
            if not input_shape or not all(
                isinstance(s, numbers.Integral) and not isinstance(s, bool) and s > 0 for s in input_shape
            ):
                raise ValueError(f"input_shape must be a non-empty tuple of positive ints, got {input_shape!r}.")
            input_shape = tuple(int(s) for s in input_shape)
        super().__init__(**kwargs)
        self.feature_map = feature_map
        self.base_kernel = base_kernel
        self.input_shape = input_shape
        self.check_finite = bool(check_finite)

    @property
    def is_stationary(self) -> bool:
        return False

    def __getitem__(self, index) -> FeatureMapKernel:
        if len(self.batch_shape) == 0:
            return self
        new = copy.deepcopy(self)
        if self.base_kernel is not None:
            new.base_kernel = self.base_kernel[index]
        new.batch_shape = indexed_batch_shape(self.batch_shape, index)
        return new

    def _check_placement(self, x: torch.Tensor) -> None:
        for name, t in list(self.feature_map.named_parameters()) + list(self.feature_map.named_buffers()):
            if t.device != x.device:
                raise ValueError(
                    f"feature_map tensor {name!r} is on device {t.device} but the inputs are on "
                    f"{x.device}; move the kernel (or the estimator's device) so they match, e.g. "
                    f"kernel.to({str(x.device)!r})."
                )
            if t.is_floating_point() and t.dtype != x.dtype:
                raise ValueError(
                    f"feature_map tensor {name!r} has dtype {t.dtype} but the inputs are {x.dtype}; "
                    f"convert the kernel with kernel.to({x.dtype})."
                )

    def features(self, x: torch.Tensor) -> torch.Tensor:  # (..., n, d) -> (..., n, p)
        r"""Apply the feature map to every row of ``x``: :math:`\Phi = h(x)`.

        Leading batch dimensions are flattened into one batch of ``N`` rows, each row reshaped
        to ``input_shape``, and the result brought back to ``(..., n, p)``.
        """
        self._check_placement(x)
        lead = x.shape[:-1]
        N = math.prod(lead)
        if self.input_shape is not None:
            width = math.prod(self.input_shape)
            if x.shape[-1] != width:
                raise ValueError(
                    f"inputs have {x.shape[-1]} columns but input_shape={self.input_shape} needs "
                    f"{width}; pass each sample flattened to {width} values."
                )
            inp = x.reshape(N, *self.input_shape)
        else:
            inp = x.reshape(N, x.shape[-1])
        z = self.feature_map(inp)
        if not isinstance(z, torch.Tensor) or z.dim() != 2 or z.shape[0] != N:
            shape = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise ValueError(
                f"feature_map must return an (N, p) tensor for N={N} inputs but returned {shape}; "
                "add a torch.nn.Flatten() at the end of the network or fix its output."
            )
        if self.check_finite and not bool(torch.isfinite(z).all()):
            raise ValueError(
                "feature_map returned NaN or infinite features; check the network's weights and "
                "input scaling (or pass check_finite=False to skip this check)."
            )
        return z.reshape(*lead, z.shape[-1])

    def forward(self, x1, x2, diag: bool = False, last_dim_is_batch: bool = False, **params):
        if last_dim_is_batch:
            raise ValueError("FeatureMapKernel does not support last_dim_is_batch=True.")
        z1 = self.features(x1)
        z2 = z1 if (x2 is x1 or (x1.shape == x2.shape and torch.equal(x1, x2))) else self.features(x2)
        if self.base_kernel is None:
            if diag:
                return (z1 * z2).sum(-1)
            if z2 is z1 and z1.shape[-1] < z1.shape[-2]:
                # Low rank: GPyTorch models then solve with the noise by Woodbury.
                return LowRankRootLinearOperator(z1)
            return z1 @ z2.mT
        return self.base_kernel(z1, z2, diag=diag, **params)


# KeOps: the network runs in torch, the reduction on its features with the base kernel's formula.
register_input_map(FeatureMapKernel, lambda kernel: (kernel.features, kernel.base_kernel))
