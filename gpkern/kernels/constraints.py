"""Constraints on raw kernel parameters."""

from __future__ import annotations

import gpytorch
import torch

__all__ = ["log_positive"]


def log_positive() -> gpytorch.constraints.Positive:
    r"""Positivity through :math:`v = e^{\theta}`: optimisers see log-scale parameters.

    A step in :math:`\theta` changes :math:`v` by the same factor whatever its size, so
    length-scales, output scales of hundreds and small noises are equally well conditioned;
    GPyTorch's default softplus is linear above 1 and needs many more L-BFGS iterations.

    Examples
    --------
    >>> import gpytorch
    >>> from gpkern.kernels.constraints import log_positive
    >>> k = gpytorch.kernels.RBFKernel(lengthscale_constraint=log_positive())
    >>> k.lengthscale = 2.0
    >>> round(float(k.raw_lengthscale), 4)  # log 2
    0.6931
    """
    return gpytorch.constraints.Positive(transform=torch.exp, inv_transform=torch.log)
