"""Gaussian process regression on full or partial grids, scikit-learn style (Kronecker backend)."""

from __future__ import annotations

import copy
import math
import numbers

import gpytorch
import numpy as np
import torch
from sklearn.utils.validation import check_is_fitted

from gpkern.estimators.base import resolve_device, torch_generator
from gpkern.estimators.gp_regressor import GPRegressor, default_lengthscale
from gpkern.exceptions import NotPSDError
from gpkern.kernels.constraints import log_positive
from gpkern.linalg.cholesky import gaussian_log_likelihood, robust_cholesky
from gpkern.linalg.dispatch import choose_grid_backend
from gpkern.models.exact import ExactPosterior
from gpkern.models.grid import AxisSplit, GridGP, ProductAxisKernel, split_axis_kernels
from gpkern.models.training import minimize_with_restarts

__all__ = ["GridGPRegressor", "detect_grid"]


def detect_grid(X: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """The smallest Cartesian grid holding the points ``X`` and each point's flat cell index.

    Every distinct value of column ``i`` becomes a coordinate of axis ``i`` (sorted); the cell
    index is in C order (last axis fastest).

    Parameters
    ----------
    X : ndarray of shape (n, d)

    Returns
    -------
    axes : list of ndarray of shape (n_i,)
    index : ndarray of shape (n,), dtype int64
    """
    axes, codes = [], []
    for i in range(X.shape[1]):
        values, inverse = np.unique(X[:, i], return_inverse=True)
        axes.append(values)
        codes.append(inverse.reshape(-1))
    sizes = [a.shape[0] for a in axes]
    index = (
        np.ravel_multi_index(codes, sizes) if math.prod(sizes) < 2**62 else np.full(X.shape[0], -1)
    )
    return axes, np.asarray(index, dtype=np.int64)


class GridGPRegressor(GPRegressor):
    r"""Gaussian process regression on a full or partial Cartesian grid, via Kronecker algebra.

    The prior is a product of one 1-D kernel per dimension with one shared output scale,

    .. math::

        f \sim \mathcal{GP}\Big(0,\; s \prod_{i=1}^d k_i(x_i, x_i')\Big), \qquad
        y = f(x) + \varepsilon, \quad \varepsilon \sim \mathcal{N}(0, \sigma^2),

    so on a grid :math:`x_1 \times \dots \times x_d` of :math:`N = \prod_i n_i` cells the kernel
    matrix is :math:`s K_1 \otimes \dots \otimes K_d` and the exact log marginal likelihood
    costs :math:`O(\sum_i n_i^3 + N \sum_i n_i)` instead of :math:`O(N^3)`. Missing cells are the
    exact limit of infinite noise there (the dense GP on the observed cells alone): solves use
    preconditioned conjugate gradients and the log-determinant a stochastic Lanczos estimate
    (see :func:`gpkern.linalg.kronecker.kron_diag_solve_logdet`).

    Data can be given as a grid, ``fit(grid=[x_1, ..., x_d], y=Y)`` with ``Y`` of shape
    ``(n_1, ..., n_d)`` (or ``(n_1, ..., n_d, n_targets)``) and NaN on missing cells, or as
    points, ``fit(X, y)``: every distinct value of feature ``i`` becomes a coordinate of grid
    axis ``i``, and cells without a point are missing. When the points are far from a grid
    (more than ``max_grid_size`` cells, fewer than ``min_fill`` of them observed, or repeated
    points; the rule is :func:`gpkern.linalg.dispatch.choose_grid_backend`) the same model is
    computed by a dense Cholesky instead (``backend_ == "dense"``), with a
    :class:`~gpkern.linalg.dispatch.GridFallbackWarning` saying why: predictions are those of
    the same GP, only the algorithm differs.

    Parameters
    ----------
    kernel : gpytorch.kernels.Kernel or list of them, optional
        One stationary 1-D kernel per dimension (a list of length ``n_features``), or one kernel
        on all ``n_features`` dimensions that factorises exactly over them
        (:func:`gpkern.models.grid.split_axis_kernels`): an ``RBFKernel`` (ARD length-scales
        go to their axes), a ``ScaleKernel`` of one (its output scale becomes the shared
        :math:`s`), or a ``ProductKernel`` of kernels that each see one axis
        (``active_dims=[i]``). Any other kernel on several dimensions (a Matérn kernel, a sum)
        is refused with a ``ValueError``, since the grid GP would be another model than the
        dense GP with that kernel. ``None`` uses an RBF kernel per dimension, parameterised
        in log space, started as :class:`~gpkern.estimators.GPRegressor`'s default
        (:func:`~gpkern.estimators.gp_regressor.default_kernel`). Kernels are deep-copied.
    noise : float, optional
        Noise variance in the kernel's units (normalised targets when ``normalize_y``);
        ``None`` learns it, starting from 0.1; a float is used exactly.
    normalize_y : bool, default=True
        Standardise each target column before fitting; predictions are transformed back.
    normalize_X : bool or "auto", default="auto"
        Standardise each axis (``X_mean_``, ``X_scale_``) before the kernels see it, as in
        :class:`GPRegressor` (``"auto"``: for the default kernels only). Grid axes stay grids;
        ``grid_`` is kept in the units of ``X``.
    optimizer : {"lbfgs", "adam"} or None, default="lbfgs"
        Optimiser of the log marginal likelihood; ``None`` keeps the hyperparameters.
    max_iter : int, default=100
        Iterations of the optimiser per start.
    n_restarts : int, default=0
        Extra starts from randomly perturbed raw hyperparameters.
    random_state : int, RandomState instance or None, default=None
        Seeds restarts, the stochastic log-determinant's probes and Monte Carlo variances.
    verbose : bool, default=False
        Show a progress bar while optimising.
    device : str or torch.device, optional
        Torch device; ``None`` uses the CPU.
    num_probes : int, default=16
        Probe vectors of the stochastic log-determinant (partial grids only).
    max_grid_size : int, default=4_194_304
        Largest grid (cells) the Kronecker backend builds from points.
    min_fill : float, default=0.25
        Smallest fraction of observed cells for which the Kronecker backend is used with points.

    Attributes
    ----------
    kernel_ : ProductAxisKernel
        The fitted product kernel as a GPyTorch kernel on ``(n, d)`` points.
    kernels_ : list of gpytorch.kernels.Kernel
        The fitted per-dimension kernels.
    outputscale_ : float
        The fitted shared output scale (normalised units).
    noise_ : float
        The fitted noise variance (normalised units).
    grid_ : list of ndarray
        The grid axes (``None`` for the dense backend).
    observed_ : ndarray of bool, shape (n_1, ..., n_d)
        Which cells hold data (``None`` for the dense backend).
    backend_ : {"kronecker", "kronecker-partial", "dense"}
        How the fit was computed.
    X_train_, y_train_ : ndarray
        Observed points and targets.
    log_marginal_likelihood_value_ : float
        Log marginal likelihood in the units of ``y`` (a stochastic estimate on partial grids).
    n_iter_ : int
        Optimiser iterations run, summed over starts.
    n_features_in_ : int
        Number of features (grid dimensions).

    Warns
    -----
    sklearn.exceptions.ConvergenceWarning
        When the optimiser stops at ``max_iter`` or a learned hyperparameter ends at a bound.

    Examples
    --------
    >>> import numpy as np
    >>> from gpkern.estimators import GridGPRegressor
    >>> x1, x2 = np.linspace(0, 1, 30), np.linspace(0, 2, 40)
    >>> Y = np.sin(6 * x1)[:, None] * np.cos(3 * x2)[None, :]
    >>> Y[5:10, 5:15] = np.nan  # missing cells
    >>> gp = GridGPRegressor(random_state=0, max_iter=30).fit(grid=[x1, x2], y=Y)
    >>> gp.backend_, gp.predict_grid().shape
    ('kronecker-partial', (30, 40))
    """

    def __init__(
        self,
        kernel=None,
        noise=None,
        normalize_y=True,
        normalize_X="auto",
        optimizer="lbfgs",
        max_iter=100,
        n_restarts=0,
        random_state=None,
        verbose=False,
        device=None,
        num_probes=16,
        max_grid_size=4_194_304,
        min_fill=0.25,
    ):
        super().__init__(
            kernel=kernel,
            noise=noise,
            normalize_y=normalize_y,
            normalize_X=normalize_X,
            optimizer=optimizer,
            max_iter=max_iter,
            n_restarts=n_restarts,
            random_state=random_state,
            verbose=verbose,
            device=device,
        )
        self.num_probes = num_probes
        self.max_grid_size = max_grid_size
        self.min_fill = min_fill

    # -- parameter checks ---------------------------------------------------------------------
    def _check_params(self) -> torch.device:
        kern = self.kernel
        if kern is not None and not isinstance(kern, gpytorch.kernels.Kernel):
            if not isinstance(kern, list | tuple) or not all(
                isinstance(k, gpytorch.kernels.Kernel) for k in kern
            ):
                raise ValueError(
                    "kernel must be None, a gpytorch.kernels.Kernel, or a list of them (one per "
                    f"dimension), got {type(kern).__name__}."
                )
        if self.noise is not None and (
            not isinstance(self.noise, numbers.Real)
            or not math.isfinite(self.noise)
            or self.noise <= 0
        ):
            raise ValueError(
                f"noise must be a positive float or None (learned), got {self.noise!r}."
            )
        if self.optimizer not in ("lbfgs", "adam", None):
            raise ValueError(f"optimizer must be 'lbfgs', 'adam' or None, got {self.optimizer!r}.")
        self._check_positive_int("max_iter", self.max_iter, minimum=0)
        self._check_positive_int("n_restarts", self.n_restarts, minimum=0)
        self._check_positive_int("num_probes", self.num_probes, minimum=1)
        self._check_positive_int("max_grid_size", self.max_grid_size, minimum=1)
        if not isinstance(self.min_fill, numbers.Real) or not 0 <= self.min_fill <= 1:
            raise ValueError(f"min_fill must be a float in [0, 1], got {self.min_fill!r}.")
        return resolve_device(self.device)

    def _make_kernels(self, d: int, lengthscales: list[float]) -> AxisSplit:
        if self.kernel is None:
            kernels = []
            for s in lengthscales:
                k = gpytorch.kernels.RBFKernel(lengthscale_constraint=log_positive()).double()
                k.lengthscale = torch.tensor(s, dtype=torch.float64)
                kernels.append(k)
            return AxisSplit(kernels)
        if isinstance(self.kernel, gpytorch.kernels.Kernel):
            return split_axis_kernels(self.kernel, d)
        if len(self.kernel) != d:
            raise ValueError(
                f"kernel is a list of {len(self.kernel)} kernels but the data have {d} dimensions; "
                "pass one 1-D kernel per dimension."
            )
        for i, k in enumerate(self.kernel):
            if getattr(k, "ard_num_dims", None) not in (None, 1):
                raise ValueError(
                    f"kernel[{i}] has ard_num_dims={k.ard_num_dims}, but each kernel of the list "
                    "sees one axis; pass 1-D kernels."
                )
        return AxisSplit([copy.deepcopy(k) for k in self.kernel])

    # -- input handling -----------------------------------------------------------------------
    def _grid_input(self, grid, y) -> tuple[np.ndarray, np.ndarray, list[np.ndarray], np.ndarray]:
        if y is None:
            raise ValueError(
                "fit(grid=...) requires y: an array of shape (n_1, ..., n_d[, n_targets])."
            )
        if isinstance(grid, np.ndarray) and grid.ndim == 1:
            grid = [grid]
        axes = [np.asarray(g, dtype=np.float64).reshape(-1) for g in grid]
        if not axes:
            raise ValueError("grid must be a non-empty list of 1-D coordinate arrays.")
        for i, a in enumerate(axes):
            if a.size == 0 or not np.all(np.isfinite(a)) or np.any(np.diff(a) <= 0):
                raise ValueError(
                    f"grid axis {i} must be a non-empty, finite, strictly increasing array."
                )
        sizes = tuple(a.shape[0] for a in axes)
        Y = np.asarray(y, dtype=np.float64)
        d = len(axes)
        if Y.shape[:d] != sizes or Y.ndim not in (d, d + 1):
            raise ValueError(
                f"y has shape {Y.shape} but the grid has shape {sizes}; pass y of shape "
                f"{sizes} or {sizes + ('n_targets',)} with NaN on missing cells."
            )
        if np.isinf(Y).any():
            raise ValueError("y contains infinite values; mark missing cells with NaN.")
        flat = Y.reshape(math.prod(sizes), -1)
        missing = np.isnan(flat)
        if (missing.any(1) != missing.all(1)).any():
            raise ValueError(
                "Every output must be missing on the same cells (NaN pattern differs)."
            )
        observed = ~missing[:, 0]
        mesh = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, d)
        y_obs = flat[observed] if Y.ndim == d + 1 else flat[observed, 0]
        return mesh[observed], y_obs, axes, observed

    # -- fitting ------------------------------------------------------------------------------
    def fit(self, X=None, y=None, *, grid=None):
        """Fit the GP: learn hyperparameters by maximising the log marginal likelihood.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), optional
            Training points (the grid is detected from their distinct coordinates). Leave
            ``None`` when passing ``grid``.
        y : array-like
            Targets: shape (n_samples,) or (n_samples, n_targets) with ``X``; shape
            (n_1, ..., n_d) or (n_1, ..., n_d, n_targets) with NaN on missing cells with ``grid``.
        grid : list of array-like of shape (n_i,), optional
            Strictly increasing coordinates of each grid axis.

        Returns
        -------
        self : GridGPRegressor
            The fitted estimator.

        Raises
        ------
        ValueError
            Bad input or parameters (nothing is changed on the estimator).
        gpkern.exceptions.NotPSDError
            If the kernel matrix is not positive definite even with jitter (dense backend).
        """
        device = self._check_params()
        if grid is not None:
            if X is not None:
                raise ValueError("Pass either X (points) or grid (axes), not both.")
            X_obs, y_obs, axes, observed = self._grid_input(grid, y)
            state = self._validate_train(X_obs, y_obs)
            backend = choose_grid_backend(int(observed.sum()), observed.shape[0])
        else:
            state = self._validate_train(X, y)
            X_obs = state["X_train_"]
            axes, index = detect_grid(X_obs)
            N = math.prod(a.shape[0] for a in axes)
            n = X_obs.shape[0]
            distinct = np.unique(index).shape[0] == n and index[0] >= 0
            backend = choose_grid_backend(
                n,
                N,
                distinct=distinct,
                max_cells=self.max_grid_size,
                min_fill=self.min_fill,
                warn=True,
            )
            if backend != "dense":
                observed = np.zeros(N, dtype=bool)
                observed[index] = True
                state["_order"] = index
            else:
                axes, observed = None, None
        d = state["n_features_in_"]
        Yn = state["Y_norm"]
        raw_axes = axes
        if axes is not None:  # per-axis affine maps keep the grid a grid
            axes = [(a - state["X_mean_"][i]) / state["X_scale_"][i] for i, a in enumerate(axes)]
        lengthscales = default_lengthscale(torch.as_tensor(state["X_norm"])).tolist()
        split = self._make_kernels(d, lengthscales)
        learn = self.noise is None and self.optimizer is not None
        model = GridGP(
            split.kernels,
            outputscale=split.outputscale,
            noise=0.1 if self.noise is None else float(self.noise),
            learn_noise=learn,
        )
        model.raw_outputscale.requires_grad_(split.learn_outputscale)
        model = model.to(dtype=torch.float64, device=device)
        gen = torch_generator(self.random_state)
        probe_seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))

        if backend != "dense":
            grid_t = [self._tensor(a, device) for a in axes]
            obs_t = torch.as_tensor(observed, device=device)
            Yg = torch.zeros(observed.shape[0], Yn.shape[1], dtype=torch.float64, device=device)
            order = state.pop("_order", None)
            if order is None:
                Yg[obs_t] = self._tensor(Yn, device)
            else:
                Yg[torch.as_tensor(order, device=device)] = self._tensor(Yn, device)
            obs_arg = None if backend == "kronecker" else obs_t

            def lml_fn() -> torch.Tensor:
                g = torch.Generator(device=device).manual_seed(probe_seed)
                return model.log_marginal_likelihood(
                    grid_t, Yg, obs_arg, num_probes=self.num_probes, generator=g
                )
        else:
            Xt = self._tensor(state["X_norm"], device)
            Yt = self._tensor(Yn, device)

            def lml_fn() -> torch.Tensor:
                return model.dense_log_marginal_likelihood(Xt, Yt)

        with torch.no_grad():  # fails loudly, before any state changes, on a bad start
            lml_fn()
        n_iter = 0
        if self.optimizer is not None:
            scale = float(Yn.size)

            def loss() -> torch.Tensor:
                try:
                    return -lml_fn() / scale
                except (NotPSDError, ValueError):
                    return torch.tensor(math.inf, dtype=torch.float64, device=device)

            result = minimize_with_restarts(
                loss,
                model,
                n_restarts=self.n_restarts,
                generator=gen,
                optimizer=self.optimizer,
                max_iter=self.max_iter,
                verbose=self.verbose,
                desc="GridGPRegressor fit",
            )
            n_iter = result.n_iter
            self._warn_optimisation(result, model)

        if backend == "dense":
            with torch.no_grad():
                K = model.dense_covariance(Xt)
                K = K + model.noise * torch.eye(K.shape[0], dtype=K.dtype, device=K.device)
                L, jitter = robust_cholesky(K, warn=True)
                lml_n, alpha = gaussian_log_likelihood(L, Yt)
            posterior = ExactPosterior(
                ProductAxisKernel(model), Xt, L, alpha, float(model.noise.detach()), jitter, float(lml_n)
            )
            lml_n = float(lml_n)
        else:
            g = torch.Generator(device=device).manual_seed(probe_seed)
            posterior = model.posterior(
                grid_t, Yg, obs_arg, num_probes=self.num_probes, generator=g
            )
            lml_n = posterior.log_marginal_likelihood
            jitter = 0.0
        n_obs = state["X_train_"].shape[0]
        lml = lml_n - n_obs * float(np.log(state["_y_std"]).sum())
        sizes = None if axes is None else tuple(a.shape[0] for a in axes)
        state.update(
            kernel_=ProductAxisKernel(model),
            kernels_=list(model.kernels),
            outputscale_=float(model.outputscale.detach()),
            noise_=float(model.noise.detach()),
            jitter_=jitter,
            grid_=None if axes is None else [np.asarray(a) for a in raw_axes],
            observed_=None if axes is None else observed.reshape(sizes),
            backend_=backend,
            log_marginal_likelihood_value_=lml,
            n_iter_=n_iter,
            _model=model,
            _posterior=posterior,
            _device=device,
            _generator_seed=int(torch.randint(0, 2**31 - 1, (1,), generator=gen)),
        )
        self._store(state)
        return self

    # -- prediction ---------------------------------------------------------------------------
    def predict_grid(self, grid=None, return_std=False, random_state=0):
        r"""Posterior mean (and std) of the latent function on a grid, shaped like the grid.

        Parameters
        ----------
        grid : list of array-like of shape (m_i,), optional
            Test axes (strictly increasing); default: the training grid.
        return_std : bool, default=False
            Also return the posterior standard deviation of :math:`f`. Exact on a full training
            grid; on a partial one the Monte Carlo estimate from 128 pathwise posterior draws
            (relative standard error of the variance :math:`\sqrt{2/128} \approx 12.5\%`).
        random_state : int, RandomState instance or None, default=0
            Seeds the Monte Carlo draws.

        Returns
        -------
        y_mean : ndarray of shape (m_1, ..., m_d) or (m_1, ..., m_d, n_targets)
        y_std : ndarray of the same shape, if ``return_std``
        """
        check_is_fitted(self)
        if grid is None:
            if self.grid_ is None:
                raise ValueError(
                    "The data were not on a grid (dense backend): pass grid=[x_1, ...]."
                )
            grid = self.grid_
        if isinstance(grid, np.ndarray) and grid.ndim == 1:
            grid = [grid]
        axes = [np.asarray(g, dtype=np.float64).reshape(-1) for g in grid]
        if len(axes) != self.n_features_in_:
            raise ValueError(
                f"grid has {len(axes)} axes but the model was fitted on {self.n_features_in_}."
            )
        for i, a in enumerate(axes):
            if a.size == 0 or not np.all(np.isfinite(a)) or np.any(np.diff(a) <= 0):
                raise ValueError(
                    f"grid axis {i} must be a non-empty, finite, strictly increasing array."
                )
        shape = tuple(a.shape[0] for a in axes)
        if self.backend_ == "dense":
            mesh = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, len(axes))
            out = self.predict(mesh, return_std=return_std)
            if not return_std:
                return out.reshape(shape + out.shape[1:])
            mean, std = out
            return mean.reshape(shape + mean.shape[1:]), std.reshape(shape + std.shape[1:])
        gen = torch_generator(random_state, self._device)
        grid_t = [
            self._tensor((a - self.X_mean_[i]) / self.X_scale_[i], self._device)
            for i, a in enumerate(axes)
        ]
        mean, var = self._posterior.predict_grid(grid_t, generator=gen)
        mean = self._as_output(mean.cpu().numpy() * self._y_std + self._y_mean)
        mean = mean.reshape(shape + mean.shape[1:])
        if not return_std:
            return mean
        std = self._as_output(np.sqrt(var.cpu().numpy())[:, None] * self._y_std)
        return mean, std.reshape(shape + std.shape[1:])
