r"""Hierarchical convolutional kernels with non-overlapping filters (Cagnetta, Favero, Wyart).

A 1-D signal of length :math:`d = \prod_{l=1}^{L} s_l` is cut into non-overlapping patches of
size :math:`s_1`; each layer of the deep convolutional network combines :math:`s_l`
neighbouring nodes of the layer below without overlap, so the network is a tree. With
normalised ReLU (:math:`\sqrt 2\max(0, \cdot)`) the arc-cosine functions

.. math::

    \kappa_0(t) = \frac{\pi - \arccos t}{\pi}, \qquad
    \kappa_1(t) = \frac{\sqrt{1 - t^2} + (\pi - \arccos t)\, t}{\pi}

give the kernel recursion: start from the cosines :math:`t` of matching input patches and
:math:`\Theta = t`; for :math:`l = 2, \dots, L`, over the :math:`s_l` children of each node,

.. math::

    r = \operatorname{mean}\,\kappa_1(t), \qquad
    \Theta \leftarrow \operatorname{mean}\big(\kappa_0(t)\,\Theta\big) + r, \qquad t \leftarrow r.

The NNGP is the final :math:`t`, the NTK the final :math:`\Theta`. The same network is
:func:`hierarchical_architecture`, an :func:`~gpkern.kernels.nngp.serial` of strided ``valid``
convolutions, which is what the tests compare against.
"""

from __future__ import annotations

import math
import numbers

import gpytorch
import torch

from gpkern.kernels.batch import expand_to_batch, indexed_batch_shape
from gpkern.kernels.nngp.architecture import Serial, serial
from gpkern.kernels.nngp.conv import Conv, Flatten
from gpkern.kernels.nngp.duals import arccos_correlation
from gpkern.kernels.nngp.layers import ABRelu

__all__ = [
    "kappa0",
    "kappa1",
    "hierarchical_kernel",
    "hierarchical_architecture",
    "normalize_patches",
    "HierarchicalCNNKernel",
]


def kappa0(t: torch.Tensor) -> torch.Tensor:
    r""":math:`\kappa_0(t) = (\pi - \arccos t)/\pi`
    (:func:`~gpkern.kernels.nngp.duals.arccos_correlation` of order 0)."""
    return arccos_correlation(t, 0)


def kappa1(t: torch.Tensor) -> torch.Tensor:
    r""":math:`\kappa_1(t) = (\sqrt{1 - t^2} + (\pi - \arccos t)\,t)/\pi`
    (:func:`~gpkern.kernels.nngp.duals.arccos_correlation` of order 1)."""
    return arccos_correlation(t, 1)


def _check_filters(filter_sizes) -> tuple[int, ...]:
    try:
        sizes = tuple(filter_sizes)
    except TypeError:
        raise TypeError(f"filter_sizes must be a sequence of ints, got {filter_sizes!r}.") from None
    if not sizes or any(isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 1 for s in sizes):
        raise ValueError(f"filter_sizes must be a non-empty sequence of positive ints, got {filter_sizes!r}.")
    return tuple(int(s) for s in sizes)


def _patches(x: torch.Tensor, s1: int, d: int) -> torch.Tensor:  # (n, d) or (n, C, d) -> (n, d/s1, C s1)
    if x.dim() == 2:
        x = x[:, None, :]
    if x.dim() != 3:
        raise ValueError(f"inputs must be (n, d) or (n, C, d) signals, got shape {tuple(x.shape)}.")
    if x.shape[-1] != d:
        raise ValueError(
            f"signal length {x.shape[-1]} does not match the product of filter_sizes ({d}); "
            "the filters must tile the input exactly."
        )
    n, C = x.shape[:2]
    return x.reshape(n, C, d // s1, s1).permute(0, 2, 1, 3).reshape(n, d // s1, C * s1)


def normalize_patches(x: torch.Tensor, s1: int) -> torch.Tensor:  # (n, [C,] d) -> same
    r"""Rescale every first-layer patch to norm :math:`\sqrt{C s_1}` (unit variance per entry).

    This is the input normalisation under which the tree network's first pre-activations have
    unit variance; :func:`hierarchical_kernel` uses cosines, so it is invariant to it.
    """
    squeeze = x.dim() == 2
    xx = x[:, None, :] if squeeze else x
    n, C, d = xx.shape
    p = xx.reshape(n, C, d // s1, s1)
    norm = p.pow(2).sum((1, 3), keepdim=True).sqrt().clamp_min(torch.finfo(x.dtype).tiny)
    out = (p / norm * math.sqrt(C * s1)).reshape(n, C, d)
    return out[:, 0] if squeeze else out


def hierarchical_kernel(
    x1: torch.Tensor,  # (n1, d) or (n1, C, d)
    x2: torch.Tensor | None,  # (n2, d) or (n2, C, d)
    filter_sizes,
    kind: str = "ntk",
    diag: bool = False,
) -> torch.Tensor:  # (n1, n2) or (n,)
    r"""NNGP or NTK of the hierarchical (tree) CNN with filters ``filter_sizes``.

    Parameters
    ----------
    x1, x2 : tensor of shape (n, d) or (n, C, d)
        Signals of length :math:`d = \prod_l s_l`; ``x2=None`` means ``x1``.
    filter_sizes : sequence of int
        :math:`(s_1, \dots, s_L)`; :math:`s_1` is the input patch size.
    kind : {"ntk", "nngp"}
    diag : bool, default=False
        Only :math:`k(x1_i, x2_i)`.

    Examples
    --------
    >>> import torch
    >>> from gpkern.kernels.nngp.hierarchical import hierarchical_kernel
    >>> x = torch.randn(5, 8, dtype=torch.float64)
    >>> hierarchical_kernel(x, None, (2, 2, 2), kind="ntk").shape
    torch.Size([5, 5])
    """
    sizes = _check_filters(filter_sizes)
    if kind not in ("nngp", "ntk"):
        raise ValueError(f"kind must be 'nngp' or 'ntk', got {kind!r}.")
    d = math.prod(sizes)
    p1 = torch.nn.functional.normalize(_patches(x1, sizes[0], d), dim=-1)
    p2 = p1 if x2 is None else torch.nn.functional.normalize(_patches(x2, sizes[0], d), dim=-1)
    if diag:
        if p1.shape[0] != p2.shape[0]:
            raise ValueError("diag=True needs x1 and x2 with the same number of rows.")
        t = (p1 * p2).sum(-1)  # (n, m)
    else:
        t = torch.einsum("imk,jmk->ijm", p1, p2)  # (n1, n2, m)
    t = t.clamp(-1.0, 1.0)
    theta = t
    for s in sizes[1:]:
        groups = t.reshape(*t.shape[:-1], t.shape[-1] // s, s)
        r = kappa1(groups).mean(-1)
        if kind == "ntk":
            theta = (kappa0(groups) * theta.reshape(groups.shape)).mean(-1) + r
        t = r
    out = theta if kind == "ntk" else t
    return out.mean(-1)  # the top layer has one node when prod(sizes) == d


def hierarchical_architecture(filter_sizes) -> Serial:
    r"""The tree CNN as a gpkern architecture on inputs (n, C, 1, d) with normalised patches.

    ``serial(Conv((1, s_1), stride=(1, s_1), padding="valid"), ABRelu(0, sqrt 2), ...,
    Conv((1, s_L), stride=(1, s_L), padding="valid"), Flatten())`` with unit weight variance
    and no biases. On inputs whose first-layer patches have norm :math:`\sqrt{C s_1}` (see
    :func:`normalize_patches`) its kernels equal :func:`hierarchical_kernel`.
    """
    sizes = _check_filters(filter_sizes)
    layers = []
    for i, s in enumerate(sizes):
        if i > 0:
            layers.append(ABRelu(0.0, math.sqrt(2.0)))
        layers.append(Conv((1, s), stride=(1, s), padding="valid", W_std=1.0, b_std=0.0))
    layers.append(Flatten())
    return serial(*layers)


class HierarchicalCNNKernel(gpytorch.kernels.Kernel):
    r"""The hierarchical CNN kernel (:func:`hierarchical_kernel`) as a GPyTorch kernel.

    Parameters
    ----------
    filter_sizes : sequence of int
    kind : {"ntk", "nngp"}, default="ntk"
    n_channels : int, default=1
        Inputs of shape (n, C·d) are read as (n, C, d).
    **kwargs
        Passed to :class:`gpytorch.kernels.Kernel`.
    """

    has_lengthscale = False

    def __init__(self, filter_sizes, kind: str = "ntk", n_channels: int = 1, **kwargs):
        self.filter_sizes = _check_filters(filter_sizes)
        if kind not in ("nngp", "ntk"):
            raise ValueError(f"kind must be 'nngp' or 'ntk', got {kind!r}.")
        if isinstance(n_channels, bool) or not isinstance(n_channels, numbers.Integral) or n_channels < 1:
            raise ValueError(f"n_channels must be a positive int, got {n_channels!r}.")
        super().__init__(**kwargs)
        self.kind, self.n_channels = kind, int(n_channels)

    def __getitem__(self, index) -> HierarchicalCNNKernel:
        new = super().__getitem__(index)
        if new is not self:  # no parameters: nothing tells GPyTorch the new batch shape
            new.batch_shape = indexed_batch_shape(self.batch_shape, index)
        return new

    def forward(self, x1, x2, diag: bool = False, last_dim_is_batch: bool = False, **params):
        if last_dim_is_batch:
            raise ValueError(
                "HierarchicalCNNKernel does not support last_dim_is_batch=True: it is defined on "
                "signals of length prod(filter_sizes), and a single column is not one."
            )
        batch = torch.broadcast_shapes(x1.shape[:-2], x2.shape[:-2])
        a = x1.expand(*batch, *x1.shape[-2:]).reshape(-1, *x1.shape[-2:])
        b = x2.expand(*batch, *x2.shape[-2:]).reshape(-1, *x2.shape[-2:])
        C = self.n_channels
        outs = [
            hierarchical_kernel(
                a[i].reshape(a.shape[1], C, -1), b[i].reshape(b.shape[1], C, -1), self.filter_sizes, self.kind, diag
            )
            for i in range(a.shape[0])
        ]
        out = torch.stack(outs)
        return expand_to_batch(out.reshape(*batch, *out.shape[1:]), self.batch_shape, diag)
