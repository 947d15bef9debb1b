r"""Inducing points and Nyström landmarks: :math:`m` of :math:`n` inputs that summarise a kernel.

A set :math:`Z` of :math:`m` points approximates the kernel matrix by the Nyström matrix
:math:`Q_{nn} = K_{nZ} K_{ZZ}^{-1} K_{Zn} \preceq K_{nn}`; sparse GPs (the collapsed bound of
:mod:`gpkern.models.sparse`) and Nyström features lose
:math:`\operatorname{tr}(K_{nn} - Q_{nn})`, the residual trace. The choices here, from cheapest
to most kernel-aware:

* ``"uniform"``: :math:`m` distinct training points uniformly at random (scikit-learn's
  ``Nystroem``);
* ``"kmeans"``: the :math:`m` k-means centres of the inputs (the usual advice for GPflow and
  GPyTorch); points, not training indices;
* ``"greedy_variance"``: pivoted Cholesky with the largest residual variance as the next pivot
  (greedy variance reduction, Burt et al. 2020; the greedy MAP of the DPP with kernel :math:`K`);
* ``"rpcholesky"``: randomly pivoted Cholesky, pivots drawn proportionally to the residual
  variance (Chen, Epperly, Tropp and Webber 2023), whose expected residual trace is within a
  small factor of the best rank-:math:`m` approximation's;
* ``"kdpp"``: a :math:`k`-DPP with :math:`P(S) \propto \det K_{SS}`, the distribution that the
  two pivoted rules approximate (Nouy and Michel's quasi-optimal designs; Belabbas and Wolfe).

The pivoted rules need only :math:`\operatorname{diag} K` and :math:`m` columns
(:func:`gpkern.linalg.rpcholesky.rp_cholesky`): :math:`O(nm)` kernel evaluations, never the
:math:`n \times n` matrix. The :math:`k`-DPP needs the spectrum of :math:`K`: up to
:data:`KDPP_DENSE_MAX_N` points it is sampled from the dense matrix, above from the rank-
:math:`\min(n, 2m)` RPCholesky factor :math:`F` (:math:`K \approx F F^\top`, thin SVD in
:math:`O(n m^2)`).
"""

from __future__ import annotations

import numbers
import warnings
from typing import NamedTuple

import gpytorch
import numpy as np
import torch

from gpkern.linalg.rpcholesky import rp_cholesky
from gpkern.sampling.dpp import sample_kdpp
from gpkern.sampling.generator import as_generator

__all__ = ["INDUCING_METHODS", "KDPP_DENSE_MAX_N", "InducingPoints", "select_inducing"]

#: The selection rules :func:`select_inducing` knows.
INDUCING_METHODS = ("uniform", "kmeans", "greedy_variance", "rpcholesky", "kdpp")

#: Largest ``n`` whose :math:`k`-DPP is drawn from the dense kernel matrix (an ``eigh`` of
#: :math:`n \times n`); larger inputs use the rank-:math:`\min(n, 2m)` RPCholesky factor.
KDPP_DENSE_MAX_N = 3000

#: Kernel methods that look at the kernel (the others ignore it).
_KERNEL_METHODS = ("greedy_variance", "rpcholesky", "kdpp")


class InducingPoints(NamedTuple):
    """The points :func:`select_inducing` chose.

    Attributes
    ----------
    points : torch.Tensor of shape (m, d)
        The inducing inputs (float64).
    indices : torch.Tensor of shape (m,) or None
        Their rows in ``X`` (``None`` for ``"kmeans"``, whose centres are new points).
    """

    points: torch.Tensor
    indices: torch.Tensor | None


def check_inducing_method(method) -> None:
    """Raise a :class:`ValueError` naming the choices unless ``method`` is one of them."""
    if not isinstance(method, str) or method not in INDUCING_METHODS:
        raise ValueError(f"inducing method must be one of {INDUCING_METHODS}, got {method!r}.")


def _kernel_columns(kernel: gpytorch.kernels.Kernel, X: torch.Tensor):
    """``columns(idx) -> K[:, idx]`` and ``diag K`` without forming the ``n x n`` matrix."""

    def columns(idx: torch.Tensor) -> torch.Tensor:  # (b,) -> (n, b)
        with torch.no_grad():
            return kernel(X, X[idx]).to_dense()

    with torch.no_grad():
        diag = kernel(X, diag=True)
    diag = diag.to_dense() if hasattr(diag, "to_dense") else diag
    return columns, diag.reshape(-1).to(X.dtype)


def select_inducing(
    X,  # (n, d)
    kernel: gpytorch.kernels.Kernel | None,
    m: int,
    method: str = "rpcholesky",
    random_state: torch.Generator | int | np.random.RandomState | None = None,
) -> InducingPoints:
    r"""Choose :math:`m` inducing points (Nyström landmarks) among the rows of ``X``.

    Parameters
    ----------
    X : torch.Tensor or array-like of shape (n, d)
        Candidate inputs (converted to float64).
    kernel : gpytorch.kernels.Kernel or None
        The kernel :math:`k` whose matrix :math:`K_{nn}` the points should summarise; used by
        ``"greedy_variance"``, ``"rpcholesky"`` and ``"kdpp"`` (evaluated without gradients, at
        its current hyperparameters), ignored by ``"uniform"`` and ``"kmeans"``.
    m : int
        Number of points, :math:`1 \le m \le n`.
    method : {"uniform", "kmeans", "greedy_variance", "rpcholesky", "kdpp"}, default="rpcholesky"
        The selection rule (see :mod:`gpkern.sampling.inducing`).
    random_state : torch.Generator, int, RandomState or None
        Random source (``"greedy_variance"`` is deterministic). A generator is advanced.

    Returns
    -------
    InducingPoints
        ``points`` of shape (m', d) and ``indices`` of shape (m',) (``None`` for ``"kmeans"``).
        :math:`m' = m` except for the kernel rules when :math:`K_{nn}` has numerical rank
        :math:`r < m` (e.g. repeated inputs): then :math:`m' = r` and a warning says so, since
        more points would only repeat the same directions.

    Raises
    ------
    ValueError
        Unknown method, ``m`` outside :math:`[1, n]`, non-finite ``X``, or a kernel rule
        without a kernel.

    Examples
    --------
    >>> import torch, gpytorch
    >>> X = torch.linspace(0, 1, 200, dtype=torch.float64)[:, None]
    >>> k = gpytorch.kernels.RBFKernel().double()
    >>> Z, idx = select_inducing(X, k, 10, method="greedy_variance")
    >>> Z.shape, idx.shape
    (torch.Size([10, 1]), torch.Size([10]))
    """
    check_inducing_method(method)
    X = torch.as_tensor(X, dtype=torch.float64)
    if X.dim() != 2:
        raise ValueError(f"X must be 2-D (n, d), got shape {tuple(X.shape)}.")
    n = X.shape[0]
    if not isinstance(m, numbers.Integral) or isinstance(m, bool) or not 1 <= m <= n:
        raise ValueError(f"m must be an integer in [1, n = {n}], got {m!r}.")
    m = int(m)
    if not torch.isfinite(X).all():
        raise ValueError("X contains NaN or inf.")
    if method in _KERNEL_METHODS and not isinstance(kernel, gpytorch.kernels.Kernel):
        raise ValueError(
            f"method={method!r} needs a gpytorch.kernels.Kernel, got {type(kernel).__name__}; "
            "pass a kernel or use 'uniform' / 'kmeans'."
        )
    gen = as_generator(random_state)
    if method == "uniform":
        idx = torch.randperm(n, generator=gen)[:m].to(X.device)
        return InducingPoints(X[idx], idx)
    if method == "kmeans":
        from sklearn.cluster import KMeans

        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
        km = KMeans(n_clusters=m, random_state=seed, n_init=1).fit(X.cpu().numpy())
        centres = torch.as_tensor(km.cluster_centers_, dtype=torch.float64, device=X.device)
        return InducingPoints(centres, None)
    columns, diag = _kernel_columns(kernel, X)
    if method == "kdpp":
        idx = _kdpp(columns, diag, m, gen)
    else:
        pivoting = "greedy" if method == "greedy_variance" else "random"
        _, idx = rp_cholesky(columns, diag, m, generator=gen, pivoting=pivoting)
    if idx.numel() < m:
        warnings.warn(
            f"The kernel matrix of the {n} inputs has numerical rank {idx.numel()} < m = {m} "
            f"(repeated inputs or a very long length-scale); {method!r} returns "
            f"{idx.numel()} points.",
            UserWarning,
            stacklevel=2,
        )
    idx = idx.to(X.device)
    return InducingPoints(X[idx], idx)


def _kdpp(columns, diag: torch.Tensor, m: int, gen: torch.Generator) -> torch.Tensor:
    """``m`` indices of a :math:`k`-DPP of :math:`K` (dense, or a rank-``2m`` factor)."""
    n = diag.shape[0]
    if n <= KDPP_DENSE_MAX_N:
        K, factor = columns(torch.arange(n, device=diag.device)), False
    else:
        K, _ = rp_cholesky(columns, diag, min(n, 2 * m), generator=gen)
        factor = True
    try:
        return sample_kdpp(K, m, generator=gen, factor=factor)
    except ValueError as err:
        if "rank" not in str(err):
            raise
    # Numerical rank below m: the k-DPP of the largest size the spectrum supports.
    vals = torch.linalg.svdvals(K) ** (2 if factor else 1)
    rank = int((vals > n * torch.finfo(vals.dtype).eps * vals.max()).sum())
    return sample_kdpp(K, rank, generator=gen, factor=factor)
