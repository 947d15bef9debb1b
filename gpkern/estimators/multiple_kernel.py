"""GP regression with a linear multiple kernel whose weights are learned sparsely (SCA)."""

from __future__ import annotations

import copy
import math
import numbers

import gpytorch
import numpy as np
import torch

from gpkern.estimators.base import resolve_device, torch_generator
from gpkern.estimators.gp_regressor import GPRegressor
from gpkern.kernels.gsmp import GSMPKernel
from gpkern.kernels.multiple import LinearMultipleKernel, WeightedKernelSum
from gpkern.models.exact import ExactGP
from gpkern.models.multiple_kernel import NOISE_FLOOR_HINT, sca_fit
from gpkern.models.training import (
    BOUND_RTOL,
    BoundHit,
    OptimizeResult,
    optimize,
    parameters_at_bounds,
    warn_at_bounds,
    warn_if_unconverged,
)

__all__ = ["MultipleKernelRegressor"]

#: refuse to build basis stacks larger than this (bytes); the message says what to do instead.
_MAX_BASIS_BYTES = 4 * 2**30
#: default relative bandwidths of the first-order components (several inputs).
_ADDITIVE = (0.25,)


class MultipleKernelRegressor(GPRegressor):
    r"""Exact GP regression with a linear multiple kernel :math:`k = \sum_a \theta_a k_a`, :math:`\theta \ge 0`.

    With ``kernel="gsmp"`` the basis is a grid spectral mixture product kernel
    (:class:`~gpkern.kernels.GSMPKernel`, Suwandi et al., 2023) whose grid is placed from the
    training inputs; otherwise any list of GPyTorch kernels (or a
    :class:`~gpkern.kernels.LinearMultipleKernel`) with fixed hyperparameters is combined.
    ``fit`` learns the weights :math:`\theta` and the noise :math:`s` by minimising

    .. math::

        F(\theta, s) = \operatorname{tr}\big(Y^\top C^{-1} Y\big) + t \log|C|, \qquad
        C = \sum_a \theta_a K_a + s I,

    (:math:`-2\times` the log marginal likelihood up to a constant) by successive convex
    approximation (:func:`gpkern.models.multiple_kernel.sca_fit`): the objective never
    increases and most weights end exactly at zero. Predictions are those of the exact GP with
    the learned kernel, as in :class:`GPRegressor`.

    Parameters
    ----------
    kernel : "gsmp", list of gpytorch.kernels.Kernel or LinearMultipleKernel, default="gsmp"
        The basis. Kernels are deep-copied, never modified; their own hyperparameters stay
        fixed with ``solver="sca"``.
    n_components : int, optional
        Grid size per bandwidth for ``kernel="gsmp"`` (ignored otherwise): that many
        frequencies, uniform over :math:`[0, \nu_p]` in each input dimension, with
        :math:`\nu_p` the Nyquist frequency of its effective sampling interval (see
        :func:`gpkern.kernels.gsmp.gsmp_grid`). ``None`` (default) takes the number of Fourier
        frequencies the data resolve, at most 100: 100 (the paper's grid) for a series of
        200 points or more, a handful for scattered data in several dimensions, whose
        :math:`n` points resolve only about :math:`n^{1/P}` values per axis.
    bandwidths : float or sequence of float, optional
        GSMP bandwidths relative to :math:`1/\text{range}` of each input dimension (see
        :func:`gpkern.kernels.gsmp.gsmp_grid`); each gets a full frequency grid. Default:
        ``(0.001, 0.05)`` for one input dimension, the paper's dictionary for time series:
        near-pure cosines for periodicities and components with a smooth envelope
        (length-scale about three times the data range) for trends, both of which
        extrapolate; ``(0.001, 0.05, 0.5)`` for several, adding local components
        (length-scale about a third of the range) for what a scattered design resolves in
        between: local components explain a series' past without extrapolating it, and the
        few frequencies that scattered data resolve are too few without them (see the user
        guide).
    additive_bandwidths : float or sequence of float, optional
        Relative bandwidths of first-order GSMP components for several inputs: each gives one
        squared-exponential kernel per input dimension, of that input alone (see
        :func:`gpkern.kernels.gsmp.gsmp_grid`), so that the sparse weights can tell relevant
        inputs from irrelevant ones, as ARD length-scales do; the grid's components weigh all
        inputs alike. Default: ``(0.25,)`` for several inputs (length-scale about
        range / (pi / 2) along each input); ``()`` turns them off. Ignored for one input
        and for a basis given by the user.
    noise : float, optional
        Noise variance in normalised units; ``None`` learns it (starting at 0.1). A given value
        is used exactly, even below ``noise_lower_bound``.
    noise_lower_bound : float, default=1e-4
        Lower bound on the learned noise (normalised units). With a large dictionary the
        likelihood can keep growing as the noise shrinks; the bound keeps the fit honest. A
        learned noise that ends at it raises a
        :class:`~sklearn.exceptions.ConvergenceWarning`, as does a solver stopping at
        ``max_iter``.
    normalize_y : bool, default=True
        Standardise each target column before fitting.
    normalize_X : bool or "auto", default="auto"
        Standardise each feature before the kernel sees it (see :class:`GPRegressor`);
        ``"auto"`` does it for ``kernel="gsmp"``, whose grid is placed from the data, and
        keeps the units of ``X`` for a basis given by the user.
    solver : {"sca", "lbfgs"}, default="sca"
        ``"sca"``: successive convex approximation with exact zeros. ``"lbfgs"``: maximise the
        log marginal likelihood over all kernel parameters with L-BFGS
        (:func:`gpkern.models.training.minimize`); weights are then positive, not sparse.
    max_iter : int, default=100
        SCA (or L-BFGS) iterations.
    tol : float, default=1e-6
        SCA stops when the relative decrease of :math:`F` in an iteration is below ``tol``.
    random_state : int, RandomState instance or None, default=None
        Seeds the GSMP grid's permutations (several inputs) and :meth:`sample_y`'s default.
    verbose : bool, default=False
        Show a progress bar while fitting.
    device : str or torch.device, optional
        Torch device to compute on; ``None`` uses the CPU.

    Attributes
    ----------
    kernel_ : WeightedKernelSum
        The fitted kernel (a :class:`~gpkern.kernels.GSMPKernel` or
        :class:`~gpkern.kernels.LinearMultipleKernel`).
    weights_ : ndarray of shape (n_basis,)
        Learned weights :math:`\theta`, mostly exact zeros with ``solver="sca"``.
    noise_ : float
        Learned (or given) noise variance, normalised units.
    objective_history_ : list of float
        :math:`F` before and after every SCA iteration (non-increasing).
    X_train_, y_train_, log_marginal_likelihood_value_, jitter_, n_features_in_, n_iter_
        As in :class:`GPRegressor`.

    Examples
    --------
    >>> import numpy as np
    >>> from gpkern.estimators import MultipleKernelRegressor
    >>> X = np.arange(80.0)[:, None]
    >>> y = np.sin(2 * np.pi * X[:, 0] / 12) + 0.01 * X[:, 0]
    >>> reg = MultipleKernelRegressor(n_components=40, random_state=0).fit(X, y)
    >>> bool((reg.weights_ == 0).mean() > 0.5)
    True
    >>> reg.predict(X[:2]).shape
    (2,)
    """

    def __init__(
        self,
        kernel="gsmp",
        n_components=None,
        bandwidths=None,
        additive_bandwidths=None,
        noise=None,
        noise_lower_bound=1e-4,
        normalize_y=True,
        normalize_X="auto",
        solver="sca",
        max_iter=100,
        tol=1e-6,
        random_state=None,
        verbose=False,
        device=None,
    ):
        self.kernel = kernel
        self.n_components = n_components
        self.bandwidths = bandwidths
        self.additive_bandwidths = additive_bandwidths
        self.noise = noise
        self.noise_lower_bound = noise_lower_bound
        self.normalize_y = normalize_y
        self.normalize_X = normalize_X
        self.solver = solver
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state
        self.verbose = verbose
        self.device = device

    # -- parameter checks ---------------------------------------------------------------------
    def _check_params(self) -> torch.device:
        k = self.kernel
        ok = (isinstance(k, str) and k == "gsmp") or isinstance(k, WeightedKernelSum) or (
            isinstance(k, (list, tuple)) and len(k) > 0
            and all(isinstance(c, gpytorch.kernels.Kernel) for c in k)
        )
        if not ok:
            raise ValueError(
                "kernel must be 'gsmp', a non-empty list of gpytorch.kernels.Kernel or a "
                f"LinearMultipleKernel/GSMPKernel, got {k!r}."
            )
        if self.n_components is not None:
            self._check_positive_int("n_components", self.n_components)
        if self.bandwidths is not None:
            bw = np.atleast_1d(np.asarray(self.bandwidths, dtype=object))
            if bw.size == 0 or not all(
                isinstance(b, numbers.Real) and math.isfinite(b) and b >= 0 for b in bw
            ):
                raise ValueError(
                    f"bandwidths must be a non-negative float or a non-empty list of them, got {self.bandwidths!r}."
                )
        if self.additive_bandwidths is not None:
            bw = np.atleast_1d(np.asarray(self.additive_bandwidths, dtype=object))
            if not all(isinstance(b, numbers.Real) and math.isfinite(b) and b >= 0 for b in bw):
                raise ValueError(
                    "additive_bandwidths must be a non-negative float or a list of them, got "
                    f"{self.additive_bandwidths!r}."
                )
        for name in ("noise", "noise_lower_bound"):
            value = getattr(self, name)
            if value is None and name == "noise":
                continue
            if not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a positive float, got {value!r}.")
        if self.solver not in ("sca", "lbfgs"):
            raise ValueError(f"solver must be 'sca' or 'lbfgs', got {self.solver!r}.")
        self._check_positive_int("max_iter", self.max_iter, minimum=0)
        if not isinstance(self.tol, numbers.Real) or not self.tol >= 0:
            raise ValueError(f"tol must be a non-negative float, got {self.tol!r}.")
        return resolve_device(self.device)

    def _builds_own_kernel(self) -> bool:
        return isinstance(self.kernel, str)

    def _make_kernel(self, X: torch.Tensor, gen: torch.Generator) -> WeightedKernelSum:
        if isinstance(self.kernel, str):
            bw = self.bandwidths
            if bw is None:  # a series to extrapolate, or scattered points to interpolate
                bw = (0.001, 0.05) if X.shape[1] == 1 else (0.001, 0.05, 0.5)
            add = _ADDITIVE if self.additive_bandwidths is None else self.additive_bandwidths
            add = tuple(map(float, np.atleast_1d(np.asarray(add, dtype=float))))
            nc = None if self.n_components is None else int(self.n_components)
            return GSMPKernel.from_data(X, nc, bw, generator=gen, additive=add)
        if isinstance(self.kernel, WeightedKernelSum):
            kernel = copy.deepcopy(self.kernel)
        else:
            kernel = LinearMultipleKernel(copy.deepcopy(list(self.kernel)))
        return kernel.to(dtype=X.dtype, device=X.device)

    # -- fitting ------------------------------------------------------------------------------
    _bound_hints = {"noise": NOISE_FLOOR_HINT}

    def fit(self, X, y):
        """Fit the weights (and noise) of the linear multiple kernel.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training inputs (at least two samples).
        y : array-like of shape (n_samples,) or (n_samples, n_targets)
            Training targets; several columns share the weights.

        Returns
        -------
        self : MultipleKernelRegressor
            The fitted estimator.

        Raises
        ------
        ValueError
            Non-finite, complex, string or mismatched input, bad parameters, or a basis too
            large to hold in memory.
        gpkern.exceptions.NotPSDError
            If the fitted covariance is not positive definite even with jitter.
        """
        device = self._check_params()
        state = self._validate_train(X, y)
        Xt = self._tensor(state["X_norm"], device)
        Yt = self._tensor(state["Y_norm"], device)
        gen = torch_generator(self.random_state)
        kernel = self._make_kernel(Xt, gen)
        n, A = Xt.shape[0], kernel.n_basis
        if A * n * n * 8 > _MAX_BASIS_BYTES:
            raise ValueError(
                f"The basis stack needs {A * n * n * 8 / 2**30:.1f} GiB ({A} kernels x {n}^2); "
                "use fewer components, subsample, or split the data over agents with "
                "gpkern.distributed.slimkl."
            )
        learn_noise = self.noise is None
        noise0 = max(0.1, float(self.noise_lower_bound)) if learn_noise else float(self.noise)
        history: list[float] = []
        if self.solver == "sca":
            with torch.no_grad():
                B = kernel.basis(Xt, Xt)
            res = sca_fit(
                [B], [Yt], noise=noise0, learn_noise=learn_noise,
                noise_lower_bound=min(float(self.noise_lower_bound), noise0),
                max_iter=int(self.max_iter), tol=float(self.tol), verbose=self.verbose,
                desc="MultipleKernelRegressor (SCA)",
            )
            with torch.no_grad():
                kernel.weights = res.weights
            noise, history, n_iter = res.noise, res.history, res.n_iter
            floor = min(float(self.noise_lower_bound), noise0)
            at_floor = learn_noise and noise - floor <= BOUND_RTOL * floor
            result = OptimizeResult(res.objective, n_iter, res.converged)
            hits = [BoundHit("noise", None, noise, floor, "lower")] if at_floor else []
            model = ExactGP(kernel, noise=noise, learn_noise=False,
                            noise_lower_bound=min(1e-6, noise / 2)).to(dtype=torch.float64, device=device)
        else:
            model = ExactGP(kernel, noise=noise0, learn_noise=learn_noise,
                            noise_lower_bound=float(self.noise_lower_bound)).to(dtype=torch.float64, device=device)
            scale = float(Yt.numel())
            result = optimize(lambda: -model.log_marginal_likelihood(Xt, Yt) / scale,
                              model.parameters(), max_iter=int(self.max_iter),
                              verbose=self.verbose, desc="MultipleKernelRegressor (L-BFGS)")
            n_iter, hits = result.n_iter, parameters_at_bounds(model)
        owner = f"{type(self).__name__} (solver={self.solver!r})"
        warn_if_unconverged(result, owner, int(self.max_iter), optimizer=self.solver)
        warn_at_bounds(hits, owner, self._bound_hints)
        posterior = model.posterior(Xt, Yt, warn=True)
        lml = posterior.log_marginal_likelihood - n * float(np.log(state["_y_std"]).sum())
        state.update(
            kernel_=model.kernel,
            weights_=model.kernel.weights.detach().cpu().numpy().copy(),
            noise_=float(model.noise.detach()),
            objective_history_=list(history),
            jitter_=posterior.jitter,
            log_marginal_likelihood_value_=lml,
            n_iter_=n_iter,
            _model=model,
            _posterior=posterior,
            _device=device,
            _generator_seed=int(torch.randint(0, 2**31 - 1, (1,), generator=gen)),
        )
        self._store(state)
        return self
