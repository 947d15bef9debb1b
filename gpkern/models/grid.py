r"""Gaussian process regression on full or partial Cartesian grids (Kronecker structure).

The prior is a product kernel :math:`k(x, x') = s \prod_{i=1}^d k_i(x_i, x_i')`, one 1-D
kernel per dimension and one shared output scale :math:`s`. On a grid
:math:`x_1 \times \dots \times x_d` with :math:`N = \prod_i n_i` cells (C order) the kernel matrix
is :math:`K = s K_1 \otimes \dots \otimes K_d`, which :mod:`gpkern.linalg.kronecker` solves in
:math:`O(\sum_i n_i^3 + N \sum_i n_i)`:

* a full grid uses the exact eigen path (:func:`~gpkern.linalg.kronecker.kron_solve_logdet`);
* a partial grid (missing cells) uses the exact limit of infinite noise on the missing cells:
  PCG solves on the observed cells and a stochastic log-determinant
  (:func:`~gpkern.linalg.kronecker.kron_diag_solve_logdet`). This is the dense GP on the
  observed points alone, computed through the grid.

Tensors only: validation and numpy live in :mod:`gpkern.estimators.grid_gp`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass

import gpytorch
import torch

from gpkern.kernels.batch import expand_to_batch, indexed_batch_shape
from gpkern.kernels.constraints import log_positive
from gpkern.linalg.cg import pcg
from gpkern.linalg.cholesky import mvn_log_likelihood
from gpkern.linalg.kronecker import (
    RestrictedKronecker,
    kron_diag_solve_logdet,
    kron_eigh,
    kron_eigvals,
    kron_matmul,
    kron_rotate,
    kron_solve_logdet,
    rowwise_kron_columns,
    rowwise_kron_matmul,
)
from gpkern.models.exact import GaussianNoise

__all__ = [
    "AxisSplit",
    "GridGP",
    "GridPosterior",
    "ProductAxisKernel",
    "split_axis_kernels",
]

_LOG_2PI = math.log(2 * math.pi)


#: Kernels :math:`k(x, x') = \prod_j k^{(1)}((x_j - x'_j) / \ell_j)` over their input
#: dimensions (ARD or one shared length-scale): they split exactly into 1-D factors. Exact
#: classes only, since a subclass may change ``forward``. Matérn and rational quadratic kernels
#: are functions of the whole distance and do not factorise.
_SEPARABLE_ACROSS_DIMS = (gpytorch.kernels.RBFKernel,)

_SPLIT_HELP = (
    "pass a list of one 1-D kernel per axis (kernel=[k_1, ..., k_d]), an RBFKernel (ARD or "
    "not), a ScaleKernel of one, or a ProductKernel of kernels that each see one axis "
    "(active_dims=[i])"
)


@dataclass
class AxisSplit:
    r"""A kernel written as :math:`s \prod_i k_i(x_i, x_i')` (see :func:`split_axis_kernels`).

    Attributes
    ----------
    kernels : list of gpytorch.kernels.Kernel
        One kernel per axis, each evaluated on inputs of shape ``(n_i, 1)``; one module may
        appear on several axes (a length-scale shared by the dimensions stays shared).
    outputscale : float
        The product of the output scales taken out of ``ScaleKernel`` s (1 without one).
    learn_outputscale : bool
        Whether any of them was trainable (always True without one).
    """

    kernels: list
    outputscale: float = 1.0
    learn_outputscale: bool = True


def _dims(kernel: gpytorch.kernels.Kernel, d: int) -> list[int]:
    active = getattr(kernel, "active_dims", None)
    dims = list(range(d)) if active is None else [int(i) for i in active.tolist()]
    if any(not 0 <= i < d for i in dims):
        raise ValueError(f"{type(kernel).__name__} has active_dims={dims}, outside the {d} axes.")
    return dims


def _factors(kernel: gpytorch.kernels.Kernel, d: int) -> tuple[dict, list]:
    """Per-axis factors ``{axis: [1-D kernels]}`` and the output scales taken out."""
    if isinstance(kernel, gpytorch.kernels.ScaleKernel):
        if getattr(kernel, "active_dims", None) is not None:
            raise ValueError(f"Put active_dims on the ScaleKernel's base kernel; {_SPLIT_HELP}.")
        factors, scales = _factors(kernel.base_kernel, d)
        return factors, [*scales, kernel]
    if isinstance(kernel, gpytorch.kernels.ProductKernel):
        factors, scales = {}, []
        for sub in kernel.kernels:
            f, s = _factors(sub, d)
            for axis, ks in f.items():
                factors.setdefault(axis, []).extend(ks)
            scales.extend(s)
        return factors, scales
    dims = _dims(kernel, d)
    if len(dims) == 1:
        one = copy.deepcopy(kernel)
        one.active_dims = None
        return {dims[0]: [one]}, []
    if type(kernel) not in _SEPARABLE_ACROSS_DIMS:
        raise ValueError(
            f"GridGPRegressor cannot split {type(kernel).__name__} on {len(dims)} dimensions into "
            f"per-axis factors (it is not a product over dimensions); {_SPLIT_HELP}."
        )
    ard = kernel.raw_lengthscale.shape[-1]
    if ard == 1:  # one length-scale for all dimensions: one module shared by the axes
        one = copy.deepcopy(kernel)
        one.active_dims = None
        return {i: [one] for i in dims}, []
    if ard != len(dims):
        raise ValueError(
            f"{type(kernel).__name__} has {ard} length-scales but sees {len(dims)} dimensions."
        )
    factors = {}
    for j, axis in enumerate(dims):
        one = copy.deepcopy(kernel)
        one.active_dims = None
        one.ard_num_dims = 1
        raw = kernel.raw_lengthscale[..., j : j + 1].detach().clone()
        one.raw_lengthscale = torch.nn.Parameter(
            raw, requires_grad=kernel.raw_lengthscale.requires_grad
        )
        factors[axis] = [one]
    return factors, []


def split_axis_kernels(kernel: gpytorch.kernels.Kernel, d: int) -> AxisSplit:
    r"""Write ``kernel`` on :math:`d`-dimensional inputs exactly as :math:`s \prod_i k_i(x_i, x_i')`.

    What splits: an ``RBFKernel`` (one 1-D RBF per dimension, ARD length-scales distributed by
    axis, a shared length-scale kept shared); a ``ScaleKernel`` (its output scale becomes
    :math:`s`); a ``ProductKernel`` of such kernels or of kernels restricted to one axis by
    ``active_dims`` (factors on the same axis are multiplied); any kernel on one dimension.
    The input kernel is not modified; the factors are copies.

    Raises
    ------
    ValueError
        For a kernel that does not factorise over the axes (e.g. a Matérn kernel on several
        dimensions, a sum of kernels) or that ignores an axis; the message says what to pass.

    Examples
    --------
    >>> import gpytorch, torch
    >>> from gpkern.models.grid import split_axis_kernels
    >>> k = gpytorch.kernels.ScaleKernel(gpytorch.kernels.RBFKernel(ard_num_dims=2))
    >>> k.base_kernel.lengthscale = torch.tensor([[0.3, 0.2]])
    >>> split = split_axis_kernels(k, 2)
    >>> [round(float(f.lengthscale), 3) for f in split.kernels]
    [0.3, 0.2]
    """
    factors, scales = _factors(kernel, d)
    missing = [i for i in range(d) if i not in factors]
    if missing:
        raise ValueError(
            f"The kernel does not depend on axis {missing}: a grid over it is degenerate. Drop "
            f"those features, or {_SPLIT_HELP}."
        )
    kernels = []
    for i in range(d):
        fs = factors[i]
        kernels.append(fs[0] if len(fs) == 1 else gpytorch.kernels.ProductKernel(*fs))
    outputscale = math.prod(float(k.outputscale.detach()) for k in scales)
    learn = not scales or any(k.raw_outputscale.requires_grad for k in scales)
    return AxisSplit(kernels, outputscale, learn)


class GridGP(GaussianNoise, torch.nn.Module):
    r"""Product-kernel GP with Gaussian noise, computed through Kronecker structure on a grid.

    .. math::

        f \sim \mathcal{GP}\Big(0,\; s \prod_{i=1}^d k_i(x_i, x_i')\Big), \qquad
        y = f(x) + \varepsilon, \quad \varepsilon \sim \mathcal{N}(0, \sigma^2)

    Parameters
    ----------
    kernels : sequence of gpytorch.kernels.Kernel
        One kernel per dimension, each evaluated on 1-D inputs of shape ``(n_i, 1)``.
    outputscale : float, default=1.0
        Initial shared output scale :math:`s`.
    noise : float, default=0.1
        Initial (or fixed) noise variance :math:`\sigma^2`; a fixed one is used exactly.
    learn_noise : bool, default=True
        Whether :math:`\sigma^2` is trainable.
    noise_lower_bound : float, default=1e-6
        Lower bound of a learned noise.

    Examples
    --------
    >>> import torch, gpytorch
    >>> from gpkern.models.grid import GridGP
    >>> grid = [torch.linspace(0, 1, 20, dtype=torch.float64)] * 2
    >>> Y = torch.sin(6 * grid[0])[:, None] * torch.cos(4 * grid[1])[None, :]
    >>> gp = GridGP([gpytorch.kernels.RBFKernel(), gpytorch.kernels.RBFKernel()]).double()
    >>> float(gp.log_marginal_likelihood(grid, Y.reshape(-1, 1))) < 0
    True
    """

    def __init__(
        self,
        kernels: Sequence[gpytorch.kernels.Kernel],
        outputscale: float = 1.0,
        noise: float = 0.1,
        learn_noise: bool = True,
        noise_lower_bound: float = 1e-6,
    ) -> None:
        super().__init__()
        if not noise > 0 or not outputscale > 0:
            raise ValueError(f"noise and outputscale must be > 0, got {noise!r}, {outputscale!r}.")
        self.kernels = torch.nn.ModuleList(kernels)
        self.outputscale_constraint = log_positive()
        raw = self.outputscale_constraint.inverse_transform(
            torch.tensor(float(outputscale), dtype=torch.float64)
        )
        self.raw_outputscale = torch.nn.Parameter(raw)  # float64: the value is not rounded
        self._init_noise(noise, learn_noise, noise_lower_bound)

    @property
    def outputscale(self) -> torch.Tensor:
        """Shared output scale :math:`s` (scalar tensor)."""
        return self.outputscale_constraint.transform(self.raw_outputscale)

    # -- kernel pieces ------------------------------------------------------------------------
    def _k(self, i: int, a: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
        K = self.kernels[i](a[:, None], None if b is None else b[:, None])
        return K.to_dense()

    def factors(
        self, grid: Sequence[torch.Tensor], grid2: Sequence[torch.Tensor] | None = None
    ) -> list[torch.Tensor]:  # d x (n_i,) -> d x (n_i, n2_i)
        """Kronecker factors :math:`K_i = k_i(x_i, x_i')`, the output scale folded into the first."""
        if len(grid) != len(self.kernels):
            raise ValueError(
                f"The grid has {len(grid)} axes but the model has {len(self.kernels)} kernels."
            )
        out = [self._k(i, g, None if grid2 is None else grid2[i]) for i, g in enumerate(grid)]
        out[0] = self.outputscale * out[0]
        return out

    def cross(self, Xs: torch.Tensor, grid: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Per-dimension cross-covariances :math:`k_i(x_{*i}, x_i)`, shapes (m, n_i)."""
        out = [self._k(i, Xs[:, i], g) for i, g in enumerate(grid)]
        out[0] = self.outputscale * out[0]
        return out

    def prior_diag(self, Xs: torch.Tensor) -> torch.Tensor:  # (m, d) -> (m,)
        v = self.outputscale * torch.ones(Xs.shape[0], dtype=Xs.dtype, device=Xs.device)
        for i, kern in enumerate(self.kernels):
            d = kern(Xs[:, i : i + 1], diag=True)
            v = v * (d.to_dense() if hasattr(d, "to_dense") else d)
        return v

    def dense_covariance(self, X: torch.Tensor, X2: torch.Tensor | None = None) -> torch.Tensor:
        """The product kernel matrix at arbitrary points (the dense twin), shape (n, n2)."""
        X2 = X if X2 is None else X2
        K = self.outputscale * self._k(0, X[:, 0], X2[:, 0])
        for i in range(1, len(self.kernels)):
            K = K * self._k(i, X[:, i], X2[:, i])
        return K

    # -- likelihood ---------------------------------------------------------------------------
    def log_marginal_likelihood(
        self,
        grid: Sequence[torch.Tensor],  # d x (n_i,)
        Y: torch.Tensor,  # (N, t), any value on missing cells
        observed: torch.Tensor | None = None,  # (N,) bool
        *,
        num_probes: int = 16,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:  # ()
        r"""Log marginal likelihood of the observed cells, summed over outputs.

        .. math::

            \log p(Y_S) = -\tfrac12 \operatorname{tr}(Y_S^\top A_S^{-1} Y_S)
                - \tfrac{t}{2}\log|A_S| - \tfrac{|S| t}{2}\log 2\pi, \qquad
            A_S = (K + \sigma^2 I)_{SS}

        Exact on a full grid (``observed`` is None or all True); with missing cells the
        log-determinant is a stochastic estimate (fix ``generator`` for a deterministic value).
        """
        factors = self.factors(grid)
        N, t = Y.shape
        if observed is None or bool(observed.all()):
            alpha, logdet = kron_solve_logdet(factors, self.noise, Y)
            n = N
        else:
            inf = torch.full((N,), math.inf, dtype=Y.dtype, device=Y.device)
            D = torch.where(observed, self.noise.expand(N), inf)
            Y = torch.where(observed[:, None], Y, torch.zeros_like(Y))
            alpha, logdet = kron_diag_solve_logdet(
                factors, D, Y, num_probes=num_probes, generator=generator
            )
            n = int(observed.sum())
        return -0.5 * (Y * alpha).sum() - 0.5 * t * logdet - 0.5 * n * t * _LOG_2PI

    def dense_log_marginal_likelihood(self, X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
        """Exact log marginal likelihood at arbitrary points by a dense Cholesky (the twin)."""
        K = self.dense_covariance(X) + self.noise * torch.eye(
            X.shape[0], dtype=X.dtype, device=X.device
        )
        return mvn_log_likelihood(K, Y)

    def posterior(
        self,
        grid: Sequence[torch.Tensor],
        Y: torch.Tensor,  # (N, t)
        observed: torch.Tensor | None = None,
        *,
        num_probes: int = 16,
        generator: torch.Generator | None = None,
    ) -> GridPosterior:
        """Condition on grid data; the result predicts without refactorising."""
        with torch.no_grad():
            lml = float(
                self.log_marginal_likelihood(
                    grid, Y, observed, num_probes=num_probes, generator=generator
                )
            )
            factors = self.factors(grid)
            return GridPosterior(self, list(grid), factors, Y, observed, float(self.noise), lml)


class GridPosterior:
    r"""GP posterior given grid data, with Kronecker-structured predictions.

    .. math::

        \mu(x_*) = k_{*S} A_S^{-1} Y_S, \qquad
        \sigma^2(x_*) = k_{**} - k_{*S} A_S^{-1} k_{S*}, \qquad A_S = (K + \sigma^2 I)_{SS}

    On a full grid the variance is exact through the eigenbasis: since
    :math:`k_{X*} = \otimes_i k_i(x_i, x_{*i})`, :math:`Q^\top k_{X*} = \otimes_i Q_i^\top
    k_i(x_i, x_{*i})` and :math:`k_{*X} A^{-1} k_{X*} = \sum_a \prod_i u_{i, a_i}^2 /
    (\lambda_a + \sigma^2)` in :math:`O(N)` per test point. On a partial grid it is exact by
    batched PCG, or on a test grid a Monte Carlo estimate from pathwise posterior draws
    (:meth:`pathwise_deviations`): unbiased, with relative standard error :math:`\sqrt{2/s}`
    for ``s`` draws.

    Attributes
    ----------
    alpha : torch.Tensor of shape (N, t)
        :math:`A_S^{-1} Y_S` on the grid (zero on missing cells).
    log_marginal_likelihood : float
        Log marginal likelihood of the conditioning data.
    """

    def __init__(self, model: GridGP, grid, factors, Y, observed, noise: float, lml: float) -> None:
        self.model = model
        self.grid = grid
        self.factors = [f.detach() for f in factors]
        self.noise = noise
        self.log_marginal_likelihood = lml
        N = Y.shape[0]
        self.full = observed is None or bool(observed.all())
        self.observed = None if self.full else observed
        self.N = N
        eigvals, eigvecs = kron_eigh(self.factors)
        self.eigvecs = eigvecs
        self.lam = kron_eigvals(eigvals).clamp_min(0.0)
        if self.full:
            self._op = None
        else:
            D = torch.full((int(observed.sum()),), noise, dtype=Y.dtype, device=Y.device)
            obs_idx = observed.nonzero().squeeze(1)
            self._op = RestrictedKronecker(
                self.factors, D, obs_idx, eig=(eigvals, eigvecs, self.lam)
            )
        Y0 = Y if self.full else torch.where(observed[:, None], Y, torch.zeros_like(Y))
        self.alpha = self.solve(Y0)

    @torch.no_grad()
    def solve(self, V: torch.Tensor) -> torch.Tensor:  # (N, k) -> (N, k)
        """:math:`A_S^{-1} V_S` scattered to the grid (zero on missing cells)."""
        if self.full:
            Vt = kron_rotate(self.eigvecs, V, transpose=True) / (self.lam + self.noise)[:, None]
            return kron_rotate(self.eigvecs, Vt)
        op = self._op
        X = pcg(op.matmul, op.gather(V), op.precondition, tol=1e-10, max_iter=2000).solution
        return op.scatter(X)

    @torch.no_grad()
    def _reduction_exact(self, rows: list[torch.Tensor]) -> torch.Tensor:  # -> (m,)
        if self.full:
            u2 = [(r @ Q) ** 2 for r, Q in zip(rows, self.eigvecs)]
            return rowwise_kron_matmul(u2, (1.0 / (self.lam + self.noise))[:, None])[:, 0]
        out = []
        m = rows[0].shape[0]
        for start in range(0, m, 256):
            cols = rowwise_kron_columns([r[start : start + 256] for r in rows])  # (N, b)
            out.append((cols * self.solve(cols)).sum(0))
        return torch.cat(out)

    @torch.no_grad()
    def pathwise_deviations(
        self,
        grid: Sequence[torch.Tensor],  # d x (m_i,)
        n_samples: int,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:  # (M, s)
        r"""Zero-mean posterior draws :math:`f_* - \mu_*` on a test grid (pathwise conditioning).

        A joint prior draw :math:`(f_X, f_*)` is taken on the union of the training and test
        axes (a grid again, so exact through its Kronecker eigenbasis), and updated as
        :math:`f_* - k_{*S} A_S^{-1} (f_S + \varepsilon_S)`, :math:`\varepsilon \sim
        \mathcal{N}(0, \sigma^2 I)`, which has exactly the posterior covariance.
        """
        model = self.model
        union = [torch.unique(torch.cat([a, b])) for a, b in zip(self.grid, grid)]
        tr_idx = [torch.searchsorted(u, a) for u, a in zip(union, self.grid)]
        te_idx = [torch.searchsorted(u, b) for u, b in zip(union, grid)]
        eigvals, eigvecs = kron_eigh([f.detach() for f in model.factors(union)])
        lam = kron_eigvals(eigvals).clamp_min(0.0)
        dtype, device = self.alpha.dtype, self.alpha.device
        eps = torch.randn(lam.shape[0], n_samples, generator=generator, dtype=dtype).to(device)
        F = kron_rotate(eigvecs, lam.sqrt()[:, None] * eps)
        F = F.reshape(*[u.shape[0] for u in union], n_samples)

        def take(idx):
            T = F
            for axis, ix in enumerate(idx):
                T = T.index_select(axis, ix)
            return T.reshape(-1, n_samples)

        f_train, f_test = take(tr_idx), take(te_idx)
        noise = math.sqrt(self.noise) * torch.randn(
            self.N, n_samples, generator=generator, dtype=dtype
        ).to(device)
        W = self.solve(f_train + noise)
        Ks = [f.detach() for f in model.factors(grid, self.grid)]
        return f_test - kron_matmul(Ks, W)

    @torch.no_grad()
    def predict(
        self,
        Xs: torch.Tensor,  # (m, d)
        *,
        full_cov: bool = False,
        batch_size: int = 2048,
    ) -> tuple[torch.Tensor, torch.Tensor]:  # (m, t), (m,) or (m, m)
        """Exact posterior mean of ``f`` and its variance (or full covariance) at arbitrary points.

        Full grids: :math:`O(N)` per point through the eigenbasis; partial grids: one PCG
        solve per point (batched), so prefer :meth:`predict_grid` for many grid points.
        """
        model = self.model
        if full_cov:
            rows = model.cross(Xs, self.grid)
            cols = rowwise_kron_columns(rows)  # (N, m)
            mean = cols.mT @ self.alpha
            cov = model.dense_covariance(Xs) - cols.mT @ self.solve(cols)
            return mean, cov
        means, variances = [], []
        for start in range(0, Xs.shape[0], batch_size):
            xb = Xs[start : start + batch_size]
            rows = model.cross(xb, self.grid)
            means.append(rowwise_kron_matmul(rows, self.alpha))
            red = self._reduction_exact(rows)
            variances.append((model.prior_diag(xb) - red).clamp_min(0.0))
        return torch.cat(means), torch.cat(variances)

    @torch.no_grad()
    def predict_grid(
        self,
        grid: Sequence[torch.Tensor],  # d x (m_i,)
        *,
        variance: str = "auto",
        n_samples: int = 128,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:  # (M, t), (M,)
        r"""Mean and variance on a test grid, by non-square Kronecker products (C order).

        ``variance="auto"``: exact on a full training grid; on a partial one, the Monte Carlo
        variance of ``n_samples`` pathwise posterior draws (:meth:`pathwise_deviations`;
        unbiased, relative standard error :math:`\sqrt{2/s}`). ``"exact"``: one PCG solve per
        test cell; ``"sample"``: always Monte Carlo.
        """
        if variance not in ("auto", "exact", "sample"):
            raise ValueError(f"variance must be 'auto', 'exact' or 'sample', got {variance!r}.")
        Ks = [f.detach() for f in self.model.factors(grid, self.grid)]  # (m_i, n_i)
        mean = kron_matmul(Ks, self.alpha)
        prior = kron_eigvals([f.diagonal() for f in self.model.factors(grid)])
        if self.full and variance in ("auto", "exact"):
            U2 = [(K @ Q) ** 2 for K, Q in zip(Ks, self.eigvecs)]
            red = kron_matmul(U2, (1.0 / (self.lam + self.noise))[:, None])[:, 0]
        elif variance == "exact":
            mesh = torch.cartesian_prod(*grid) if len(grid) > 1 else grid[0][:, None]
            return mean, self.predict(mesh)[1]
        else:
            dev = self.pathwise_deviations(grid, n_samples, generator)
            return mean, (dev**2).mean(1)
        return mean, (prior - red).clamp_min(0.0)


class ProductAxisKernel(gpytorch.kernels.Kernel):
    r"""A :class:`GridGP`'s covariance as a plain GPyTorch kernel on points of shape (n, d).

    :math:`k(x, x') = s \prod_i k_i(x_i, x_i')`, sharing the model's parameters: the dense twin
    used when data do not lie on a grid, and a way to reuse a fitted grid kernel elsewhere.

    Parameters
    ----------
    model : GridGP
        The model whose axis kernels and output scale are used (not copied).
    **kwargs
        Passed to :class:`gpytorch.kernels.Kernel` (``active_dims``, ``batch_shape``: a batch
        of copies of the same kernel).
    """

    def __init__(self, model: GridGP, **kwargs) -> None:
        super().__init__(**kwargs)
        self._model = [model]  # a plain list: the parameters stay registered on the model only

    # GPyTorch's batch indexing and expansion deep-copy the kernel, which would copy the model:
    # the copies here share it, and only the batch shape changes.
    def __getitem__(self, index) -> ProductAxisKernel:
        if len(self.batch_shape) == 0:
            return self
        new = copy.copy(self)
        new.batch_shape = indexed_batch_shape(self.batch_shape, index)
        return new

    def expand_batch(self, *sizes) -> ProductAxisKernel:
        shape = torch.Size(sizes[0] if len(sizes) == 1 and not isinstance(sizes[0], int) else sizes)
        new = copy.copy(self)
        new.batch_shape = torch.broadcast_shapes(shape, self.batch_shape)
        return new

    def forward(self, x1, x2, diag=False, last_dim_is_batch=False, **params):
        model = self._model[0]
        if last_dim_is_batch:
            raise ValueError(
                "ProductAxisKernel does not support last_dim_is_batch=True: it is a product over "
                "all of the grid's axes, and a single column is not a point."
            )
        if x1.shape[-1] != len(model.kernels):
            raise ValueError(
                f"ProductAxisKernel has {len(model.kernels)} axes but the inputs have "
                f"{x1.shape[-1]} columns."
            )
        out = None
        for i, kern in enumerate(model.kernels):
            Ki = kern(x1[..., i : i + 1], x2[..., i : i + 1], diag=diag)
            Ki = Ki.to_dense() if hasattr(Ki, "to_dense") else Ki
            out = Ki if out is None else out * Ki
        return expand_to_batch(model.outputscale * out, self.batch_shape, diag)
