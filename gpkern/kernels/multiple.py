r"""Linear multiple kernels: non-negative combinations :math:`k = \sum_a \theta_a k_a`.

A linear multiple kernel (LMK) fixes a dictionary of basis kernels and learns only their
non-negative weights. Its kernel matrix is linear in the weights,
:math:`K(\theta) = \sum_a \theta_a K_a`, which is what makes sparse learning by successive convex
approximation (:mod:`gpkern.models.multiple_kernel`) possible: every kernel here exposes
:meth:`WeightedKernelSum.basis`, the stack of unit-weight basis matrices :math:`K_a`.

Weights are parameterised as :math:`\theta = r^2` (a GPyTorch ``GreaterThan(0)`` constraint with a
square transform), so that exact zeros are representable: sparse solvers set them, and gradient
based optimisers see a smooth, unconstrained raw parameter.
"""

from __future__ import annotations

from collections.abc import Sequence

import gpytorch
import torch

__all__ = ["WeightedKernelSum", "LinearMultipleKernel", "nonnegative_constraint"]


def nonnegative_constraint() -> gpytorch.constraints.GreaterThan:
    r"""A ``GreaterThan(0)`` constraint with transform :math:`\theta = r^2` (exact zeros allowed)."""
    return gpytorch.constraints.GreaterThan(0.0, transform=torch.square, inv_transform=torch.sqrt)


class WeightedKernelSum(gpytorch.kernels.Kernel):
    r"""Base class of kernels :math:`k(x, x') = \sum_{a=1}^{A} \theta_a k_a(x, x')`, :math:`\theta \ge 0`.

    Subclasses implement :meth:`basis`; the weighted sum, the diagonal and the weight
    parameter live here.

    Parameters
    ----------
    n_basis : int
        Number :math:`A` of basis kernels.
    weights : torch.Tensor of shape (A,) or (\*batch_shape, A), optional
        Initial non-negative weights; ``None`` gives :math:`1/A` each.
    batch_shape : torch.Size, optional
        Batch shape of the kernel (one weight vector per batch member).
    **kwargs
        Passed to :class:`gpytorch.kernels.Kernel` (``active_dims``, ``ard_num_dims``).
    """

    def __init__(
        self,
        n_basis: int,
        weights: torch.Tensor | None = None,
        batch_shape: torch.Size = torch.Size([]),  # noqa: B008 (GPyTorch convention)
        **kwargs,
    ) -> None:
        super().__init__(batch_shape=batch_shape, **kwargs)
        if int(n_basis) < 1:
            raise ValueError(f"A linear multiple kernel needs at least one basis kernel, got {n_basis}.")
        self.n_basis = int(n_basis)
        self.register_parameter(
            "raw_weights", torch.nn.Parameter(torch.zeros(*self.batch_shape, self.n_basis))
        )
        self.register_constraint("raw_weights", nonnegative_constraint())
        self.weights = torch.full((self.n_basis,), 1.0 / self.n_basis) if weights is None else weights

    @property
    def weights(self) -> torch.Tensor:  # (*batch, A)
        r"""The non-negative weights :math:`\theta`."""
        return self.raw_weights_constraint.transform(self.raw_weights)

    @weights.setter
    def weights(self, value) -> None:
        value = torch.as_tensor(value, dtype=self.raw_weights.dtype, device=self.raw_weights.device)
        if value.shape[-1:] != (self.n_basis,):
            raise ValueError(
                f"weights must have {self.n_basis} entries in its last axis (one per basis "
                f"kernel), got shape {tuple(value.shape)}."
            )
        if not torch.isfinite(value).all() or (value < 0).any():
            raise ValueError("weights must be finite and non-negative.")
        raw = self.raw_weights_constraint.inverse_transform(value)
        self.initialize(raw_weights=raw.expand_as(self.raw_weights).clone())

    def basis(
        self,
        x1: torch.Tensor,
        x2: torch.Tensor,
        diag: bool = False,
        last_dim_is_batch: bool = False,
        **params,
    ) -> torch.Tensor:  # (..., n, d), (..., m, d) -> (..., A, n, m) or (..., A, n)
        """Unit-weight basis kernel matrices :math:`K_a` stacked on axis ``-3`` (``-2`` if diag).

        With ``last_dim_is_batch`` each input column is a batch member: ``(..., d, A, n, m)``.
        """
        raise NotImplementedError

    def forward(self, x1, x2, diag: bool = False, last_dim_is_batch: bool = False, **params):
        B = self.basis(x1, x2, diag=diag, last_dim_is_batch=last_dim_is_batch, **params)
        w = self.weights  # (*batch, A)
        if last_dim_is_batch:
            w = w.unsqueeze(-2)  # one weight vector for every column
        if diag:
            return (w.unsqueeze(-1) * B).sum(-2)
        return (w.unsqueeze(-1).unsqueeze(-1) * B).sum(-3)


class LinearMultipleKernel(WeightedKernelSum):
    r"""Non-negative combination of arbitrary GPyTorch kernels.

    .. math::

        k(x, x') = \sum_{a=1}^{A} \theta_a\, k_a(x, x'), \qquad \theta_a \ge 0,

    where the basis kernels :math:`k_a` keep their own hyperparameters (fixed when learning
    :math:`\theta` by :func:`~gpkern.models.multiple_kernel.sca_fit`, trainable by
    ordinary gradient descent otherwise). A non-negative combination of PSD kernels is PSD.

    Parameters
    ----------
    kernels : sequence of gpytorch.kernels.Kernel
        The :math:`A` basis kernels; they must share a batch shape.
    weights : torch.Tensor of shape (A,), optional
        Initial weights (non-negative); ``None`` gives :math:`1/A` each.
    **kwargs
        Passed to :class:`gpytorch.kernels.Kernel` (e.g. ``active_dims`` applied before the
        basis kernels see the inputs).

    Examples
    --------
    >>> import torch, gpytorch
    >>> from gpkern.kernels import LinearMultipleKernel
    >>> k = LinearMultipleKernel(
    ...     [gpytorch.kernels.RBFKernel(), gpytorch.kernels.PeriodicKernel()],
    ...     weights=torch.tensor([1.0, 0.0]),
    ... )
    >>> x = torch.linspace(0, 1, 5)[:, None]
    >>> torch.allclose(k(x).to_dense(), gpytorch.kernels.RBFKernel()(x).to_dense())
    True
    """

    def __init__(
        self,
        kernels: Sequence[gpytorch.kernels.Kernel],
        weights: torch.Tensor | None = None,
        **kwargs,
    ) -> None:
        kernels = list(kernels)
        if not kernels:
            raise ValueError("kernels must be a non-empty list of gpytorch.kernels.Kernel.")
        for i, k in enumerate(kernels):
            if not isinstance(k, gpytorch.kernels.Kernel):
                raise TypeError(
                    f"kernels[{i}] is a {type(k).__name__}, not a gpytorch.kernels.Kernel."
                )
        shapes = {tuple(k.batch_shape) for k in kernels}
        if len(shapes) > 1:
            raise ValueError(f"All basis kernels must share one batch shape, got {sorted(shapes)}.")
        kwargs.setdefault("batch_shape", kernels[0].batch_shape)
        super().__init__(len(kernels), weights=weights, **kwargs)
        self.kernels = torch.nn.ModuleList(kernels)

    def basis(self, x1, x2, diag: bool = False, last_dim_is_batch: bool = False, **params):
        if last_dim_is_batch:
            params["last_dim_is_batch"] = True
        mats = []
        for k in self.kernels:
            K = k(x1, x2, diag=diag, **params)
            mats.append(K if diag else K.to_dense())
        return torch.stack(torch.broadcast_tensors(*mats), dim=-2 if diag else -3)

    # GPyTorch's batch indexing and expansion recurse into sub-kernels by attribute name, which
    # cannot reach the members of a ModuleList: the basis kernels are handled explicitly here.
    def named_sub_kernels(self):
        return iter(())

    def __getitem__(self, index) -> LinearMultipleKernel:
        if len(self.batch_shape) == 0:
            return self
        new = super().__getitem__(index)
        new.kernels = torch.nn.ModuleList([k[index] for k in self.kernels])
        return new

    def expand_batch(self, *sizes) -> LinearMultipleKernel:
        new = super().expand_batch(*sizes)
        if new is not self:
            new.kernels = torch.nn.ModuleList([k.expand_batch(new.batch_shape) for k in self.kernels])
        return new

    def num_outputs_per_input(self, x1, x2) -> int:
        return 1
