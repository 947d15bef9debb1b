r"""The NNGP / NTK of an architecture as a GPyTorch kernel, with learnable variances."""

from __future__ import annotations

import math
import numbers

import gpytorch
import torch
from gpytorch.constraints import Positive

from gpkern.kernels.batch import indexed_batch_shape
from gpkern.kernels.nngp.architecture import DEFAULT_MAX_MEMORY, Serial, serial
from gpkern.kernels.nngp.layers import ABRelu, Dense, Erf, Layer
from gpkern.linalg.keops.network import NNGPFormula
from gpkern.linalg.keops.registry import register_formula, register_layer

__all__ = ["NNGPKernel"]


class NNGPKernel(gpytorch.kernels.Kernel):
    r"""Infinite-width network kernel (NNGP or NTK) of an architecture, as a GPyTorch kernel.

    .. math::

        k(x, x') = \Sigma^{(L)}(x, x') \quad (\text{NNGP}) \qquad\text{or}\qquad
        k(x, x') = \Theta^{(L)}(x, x') \quad (\text{NTK}),

    computed layer by layer by :meth:`~gpkern.kernels.nngp.architecture.Serial.kernel`.
    With ``learn_variances=True`` every ``W_std`` and ``b_std`` of the architecture's
    ``Dense`` and ``Conv`` layers becomes a raw parameter behind a positivity constraint,
    trained by marginal likelihood like any GPyTorch hyperparameter (e.g. inside
    :class:`~gpkern.estimators.GPRegressor`). The last layer's ``W_std`` is the kernel's
    output scale. Biases initialised at exactly 0 stay structural zeros (a positive
    constraint cannot start at 0); start them small (e.g. ``b_std=0.05``) to learn them.

    Parameters
    ----------
    arch : Serial or Layer
        The architecture, built with :func:`~gpkern.kernels.nngp.serial`; a single layer is
        wrapped in ``serial``.
    kind : {"nngp", "ntk"}, default="nngp"
    learn_variances : bool, default=False
        Make the layers' standard deviations learnable parameters.
    input_shape : tuple of int, optional
        Shape ``(C, H, W)`` each row of the (n, C·H·W) feature matrix is reshaped to, for
        convolutional architectures used through 2-D interfaces (GPyTorch, scikit-learn).
    batch_size : int, optional
        Block size for the kernel computation (see ``Serial.kernel``).
    max_memory : int, default=2**24
        Bytes per block when ``batch_size`` is None.
    **kwargs
        Passed to :class:`gpytorch.kernels.Kernel` (``active_dims``, ``batch_shape``).

    Examples
    --------
    >>> import torch
    >>> from gpkern.kernels import NNGPKernel
    >>> from gpkern.kernels.nngp import serial, Dense, Relu
    >>> arch = serial(Dense(1.5, 0.1), Relu(), Dense(1.0, 0.05))
    >>> kern = NNGPKernel(arch, kind="ntk", learn_variances=True).double()
    >>> x = torch.randn(5, 3, dtype=torch.float64)
    >>> kern(x).to_dense().shape
    torch.Size([5, 5])
    >>> [name for name, _ in kern.named_parameters()]
    ['raw_W_std_0', 'raw_b_std_0', 'raw_W_std_1', 'raw_b_std_1']
    """

    has_lengthscale = False

    def __init__(
        self,
        arch,
        kind: str = "nngp",
        learn_variances: bool = False,
        input_shape: tuple[int, ...] | None = None,
        batch_size: int | None = None,
        max_memory: int = DEFAULT_MAX_MEMORY,
        **kwargs,
    ):
        if isinstance(arch, Layer) and not isinstance(arch, Serial):
            arch = serial(arch)
        if not isinstance(arch, Serial):
            raise TypeError(
                f"arch must be an architecture built with gpkern.kernels.nngp.serial(...), got "
                f"{type(arch).__name__}."
            )
        if kind not in ("nngp", "ntk"):
            raise ValueError(f"kind must be 'nngp' or 'ntk', got {kind!r}.")
        if input_shape is not None:
            shape = tuple(input_shape)
            if len(shape) != 3 or any(
                isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 1 for s in shape
            ):
                raise ValueError(f"input_shape must be (C, H, W) positive integers, got {input_shape!r}.")
            input_shape = tuple(int(s) for s in shape)
        if batch_size is not None and (
            isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1
        ):
            raise ValueError(f"batch_size must be a positive integer or None, got {batch_size!r}.")
        super().__init__(**kwargs)
        self.arch = arch
        self.kind = kind
        self.learn_variances = bool(learn_variances)
        self.input_shape = input_shape
        self.batch_size = batch_size
        self.max_memory = max_memory
        self._learned: list[tuple[int, str]] = []
        if self.learn_variances:
            for i, layer in enumerate(arch.parametric_layers()):
                for attr in ("W_std", "b_std"):
                    value = getattr(layer, attr)
                    if value <= 0:
                        continue
                    name = f"raw_{attr}_{i}"
                    constraint = Positive()
                    init = constraint.inverse_transform(torch.tensor(value, dtype=torch.get_default_dtype()))
                    self.register_parameter(
                        name, torch.nn.Parameter(init * torch.ones(*self.batch_shape, 1, dtype=init.dtype))
                    )
                    self.register_constraint(name, constraint)
                    self._learned.append((i, attr))

    def __repr__(self) -> str:
        return f"NNGPKernel({self.arch!r}, kind={self.kind!r}, learn_variances={self.learn_variances})"

    def stds(self) -> list[dict[str, torch.Tensor]]:
        """Current standard deviations of every Dense/Conv layer, in order.

        Returns
        -------
        list of dict
            ``{"W_std": tensor, "b_std": tensor}`` per layer; learned ones have shape
            ``(*batch_shape, 1)``, fixed ones are 0-dim.
        """
        out = []
        for i, layer in enumerate(self.arch.parametric_layers()):
            entry = {}
            for attr in ("W_std", "b_std"):
                name = f"raw_{attr}_{i}"
                if (i, attr) in self._learned:
                    raw = getattr(self, name)
                    entry[attr] = getattr(self, f"{name}_constraint").transform(raw)
                else:
                    entry[attr] = torch.tensor(getattr(layer, attr))
            out.append(entry)
        return out

    def _variances(self, index: int | None):
        if not self._learned:
            return None
        layers = self.arch.parametric_layers()
        stds = self.stds()
        out: dict = {}
        for i, attr in self._learned:
            value = stds[i][attr]
            value = value.reshape(-1, 1)[index if index is not None else 0, 0]
            out.setdefault(layers[i], {})[attr] = value
        return out

    def _reshape(self, x: torch.Tensor) -> torch.Tensor:  # (m, D) -> (m, D) or (m, C, H, W)
        if self.input_shape is None:
            return x
        if x.shape[-1] != math.prod(self.input_shape):
            raise ValueError(
                f"inputs have {x.shape[-1]} features but input_shape={self.input_shape} needs "
                f"{math.prod(self.input_shape)}."
            )
        return x.reshape(x.shape[0], *self.input_shape)

    def __getitem__(self, index) -> NNGPKernel:
        new = super().__getitem__(index)
        if new is not self:  # fixed variances: no parameter tells GPyTorch the new batch shape
            new.batch_shape = indexed_batch_shape(self.batch_shape, index)
        return new

    def forward(self, x1, x2, diag: bool = False, last_dim_is_batch: bool = False, **params):
        # (..., n1, d), (..., n2, d) -> (..., n1, n2) or (..., n1); (..., d, n1[, n2]) if
        # last_dim_is_batch
        param_batch = self.batch_shape
        if last_dim_is_batch:
            if self.input_shape is not None:
                raise ValueError(
                    "NNGPKernel with an input_shape (a convolutional architecture on images) does "
                    "not support last_dim_is_batch=True: a single column is not an image."
                )
            # Every column is an input of width 1; the kernel's batch stays in front of it.
            x1, x2 = x1.mT.unsqueeze(-1), x2.mT.unsqueeze(-1)
            param_batch = torch.Size([*param_batch, 1])
        batch = torch.broadcast_shapes(x1.shape[:-2], x2.shape[:-2], param_batch)
        n1, n2 = x1.shape[-2], x2.shape[-2]
        x1b = x1.expand(*batch, *x1.shape[-2:]).reshape(-1, *x1.shape[-2:])
        x2b = x2.expand(*batch, *x2.shape[-2:]).reshape(-1, *x2.shape[-2:])
        outs = []
        for b in range(x1b.shape[0]):
            index = None
            if self._learned and len(param_batch) > 0:
                # index of this data batch element within the parameters' batch shape
                multi = torch.unravel_index(torch.tensor(b), batch) if len(batch) else ()
                sub = tuple(int(m) for m in multi)[len(batch) - len(param_batch) :]
                sub = tuple(0 if param_batch[k] == 1 else s for k, s in enumerate(sub))
                index = int(torch.tensor(sub) @ torch.tensor(_strides(param_batch))) if sub else 0
            outs.append(
                self.arch.kernel(
                    self._reshape(x1b[b]),
                    self._reshape(x2b[b]),
                    kind=self.kind,
                    diag=diag,
                    batch_size=self.batch_size,
                    max_memory=self.max_memory,
                    variances=self._variances(index),
                )
            )
        out = torch.stack(outs)
        return out.reshape(*batch, n1) if diag else out.reshape(*batch, n1, n2)


def _strides(shape: torch.Size) -> list[int]:
    strides, acc = [], 1
    for s in reversed(shape):
        strides.append(acc)
        acc *= s
    return list(reversed(strides))


register_formula(NNGPKernel, lambda kernel, d: NNGPFormula(kernel))
# Layers of the dense architectures whose KeOps formula is the layer recursion of
# gpkern.linalg.keops.network.dense_network (Relu and LeakyRelu are ABRelu subclasses).
register_layer(
    Dense,
    lambda layer, sd: ("dense", sd.get("W_std", layer.W_std), sd.get("b_std", layer.b_std)),
)
register_layer(ABRelu, lambda layer, sd: ("abrelu", float(layer.a), float(layer.b)))
register_layer(Erf, lambda layer, sd: ("erf", float(layer.a), float(layer.b), float(layer.c)))
