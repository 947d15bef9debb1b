"""Exact GP regression, scikit-learn style, on GPyTorch kernels."""

from __future__ import annotations

import copy

import gpytorch
import numpy as np
import torch

from gpkern.estimators.base import BaseGPRegressor
from gpkern.kernels.constraints import log_positive
from gpkern.linalg.dispatch import choose_backend
from gpkern.models.exact import ExactGP
from gpkern.models.iterative import IterativeGP, IterativeSettings

__all__ = ["GPRegressor", "default_kernel", "default_lengthscale", "median_spread"]


def median_spread(X: torch.Tensor, max_points: int = 512) -> torch.Tensor:  # (n, d) -> (d,)
    r"""Per-feature median of :math:`|x_j - x'_j|` over pairs of distinct points.

    Robust to heavy tails and to features piled up at one value (a spread set by the bulk of
    the pairs rather than by outliers); features whose median is 0 fall back to their standard
    deviation, then to 1. Above ``max_points`` points (fewer in high dimension, to keep about
    :math:`4 \cdot 10^6` differences), evenly spaced rows stand in for all: deterministic.
    """
    n, d = X.shape
    if n < 2:
        return torch.ones(d, dtype=X.dtype, device=X.device)
    m = max(2, min(n, max_points, int((8e6 / d) ** 0.5)))
    rows = X[torch.linspace(0, n - 1, m, device=X.device).long()]
    i, j = torch.triu_indices(rows.shape[0], rows.shape[0], offset=1, device=X.device)
    spread = (rows[i] - rows[j]).abs().median(0).values
    spread = torch.where(spread > 0, spread, X.std(0))
    return torch.where(spread > 0, spread, torch.ones_like(spread))


def default_lengthscale(X: torch.Tensor) -> torch.Tensor:  # (n, d) -> (d,)
    r"""The default start of per-feature length-scales: :math:`\sqrt{d}` times each feature's
    median pairwise distance (:func:`median_spread`); see :func:`default_kernel` for why.

    Examples
    --------
    >>> import torch
    >>> from gpkern.estimators.gp_regressor import default_lengthscale
    >>> X = torch.tensor([[0.0, 0.0], [1.0, 2.0], [2.0, 4.0]], dtype=torch.float64)
    >>> [round(v, 4) for v in default_lengthscale(X).tolist()]  # medians 1 and 2, times sqrt(2)
    [1.4142, 2.8284]
    """
    return median_spread(X) * X.shape[1] ** 0.5


def default_kernel(X: torch.Tensor) -> gpytorch.kernels.Kernel:  # (n, d)
    r"""Scaled ARD RBF kernel, parameterised in log space
    (:func:`~gpkern.kernels.constraints.log_positive`), with
    length-scales initialised at :math:`\sqrt{d}` times each feature's median pairwise
    distance (:func:`median_spread`).

    The :math:`\sqrt{d}` keeps the typical scaled squared distance
    :math:`\sum_j (x_j - x'_j)^2 / \ell_j^2 \approx 2` whatever the dimension; starting at
    the plain spread gives :math:`k \approx e^{-d}` off the diagonal in high dimensions, a
    numerically diagonal kernel whose likelihood gradients vanish.
    """
    d = X.shape[1]
    kernel = gpytorch.kernels.ScaleKernel(
        gpytorch.kernels.RBFKernel(ard_num_dims=d, lengthscale_constraint=log_positive()),
        outputscale_constraint=log_positive(),
    )
    kernel = kernel.to(dtype=X.dtype, device=X.device)
    kernel.base_kernel.lengthscale = default_lengthscale(X).view(1, d)
    kernel.outputscale = torch.tensor(1.0, dtype=X.dtype)
    return kernel


class GPRegressor(BaseGPRegressor):
    r"""Exact Gaussian process regression with GPyTorch kernels.

    The prior is :math:`f \sim \mathcal{GP}(0, k)` with observations
    :math:`y = f(x) + \varepsilon`, :math:`\varepsilon \sim \mathcal{N}(0, \sigma^2)`.
    ``fit`` maximises the exact log marginal likelihood

    .. math::

        \log p(y \mid X, \theta) = -\tfrac12 y^\top (K_\theta + \sigma^2 I)^{-1} y
            - \tfrac12 \log |K_\theta + \sigma^2 I| - \tfrac{n}{2} \log 2\pi

    over the kernel hyperparameters :math:`\theta` and the noise :math:`\sigma^2`, and
    predicts with the posterior

    .. math::

        \mu_* = K_{*X}(K_{XX} + \sigma^2 I)^{-1} y, \qquad
        \Sigma_* = K_{**} - K_{*X}(K_{XX} + \sigma^2 I)^{-1} K_{X*}.

    Parameters
    ----------
    kernel : gpytorch.kernels.Kernel, optional
        Covariance function; it is deep-copied, never modified. ``None`` uses a scaled ARD
        RBF kernel whose length-scales start at :math:`\sqrt{d}` times each feature's median
        pairwise distance (see :func:`default_kernel`).
    noise : float, optional
        Gaussian noise variance, in the units the kernel sees (normalised targets when
        ``normalize_y=True``). ``None`` learns it, starting from 0.1, above a floor of 1e-6; a
        float fixes it and is used exactly, however small (jitter, if the factorisation needs
        it, is added separately and reported in ``jitter_``).
    normalize_y : bool, default=True
        Standardise each target column before fitting; predictions are transformed back.
    normalize_X : bool or "auto", default="auto"
        Standardise each feature (``X_mean_``, ``X_scale_``; constant features keep scale 1)
        before the kernel sees it, so the fit does not depend on the units of the inputs.
        ``"auto"`` does it for the default kernel only: a kernel passed by the user works in
        the units of ``X``, so that its hyperparameters mean what they were set to (as in
        scikit-learn and GPyTorch). With standardisation ``kernel_``'s hyperparameters are
        in standardised units (a length-scale :math:`\ell` is :math:`\ell` times
        ``X_scale_`` in the units of ``X``); passed on as ``kernel=gp.kernel_``, it brings that
        standardisation with it.
    optimizer : {"lbfgs", "adam"} or None, default="lbfgs"
        Optimiser of the log marginal likelihood. ``None`` keeps the kernel's hyperparameters
        and the noise as given (as scikit-learn does).
    max_iter : int, default=100
        Iterations of the optimiser per start.
    n_restarts : int, default=0
        Extra starts from randomly perturbed hyperparameters (each positive hyperparameter
        multiplied by :math:`e^{z}`, :math:`z \sim \mathcal{N}(0, 1.5^2)`; other raw values
        shifted by :math:`z`); the best log marginal likelihood wins.
    random_state : int, RandomState instance or None, default=None
        Seeds the restarts and :meth:`sample_y`'s default.
    verbose : bool, default=False
        Show a progress bar while optimising.
    device : str or torch.device, optional
        Torch device to compute on; ``None`` uses the CPU.
    backend : {"auto", "dense", "keops", "distributed"}, default="auto"
        Linear algebra (:mod:`gpkern.linalg.dispatch`): ``"dense"`` Cholesky, or ``"keops"``:
        preconditioned CG and stochastic Lanczos on a KeOps kernel operator, memory linear in
        ``n_samples`` (:mod:`gpkern.models.iterative`). ``"auto"`` uses dense up to
        ``gpkern.linalg.dispatch.DENSE_MAX_N`` samples. Without a working pykeops the KeOps path
        warns and runs on a chunked torch operator. ``"distributed"``: the KeOps path with the
        training rows split across the processes of an initialised ``torch.distributed``
        group (:mod:`gpkern.distributed.model`; launch with ``torchrun``); every process calls
        ``fit`` and ``predict`` with the same data and gets the same results, those of
        ``"keops"`` when there is one process.
    backend_options : dict, optional
        Fields of :class:`gpkern.models.iterative.IterativeSettings` (CG tolerances, probes,
        preconditioner rank, prediction batch size) for the iterative backends.

    Attributes
    ----------
    kernel_ : gpytorch.kernels.Kernel
        The fitted kernel.
    noise_ : float
        The fitted noise variance (normalised units).
    X_train_ : ndarray of shape (n_samples, n_features)
        Training inputs (in the units of ``X``).
    X_mean_, X_scale_ : ndarray of shape (n_features,)
        The kernel sees ``(X - X_mean_) / X_scale_`` (zeros and ones without standardisation).
    y_train_ : ndarray of shape (n_samples,) or (n_samples, n_targets)
        Training targets.
    log_marginal_likelihood_value_ : float
        Log marginal likelihood of ``y_train_`` (original units) at the fitted hyperparameters.
        With an iterative backend and fixed hyperparameters (``optimizer=None``) its stochastic
        Lanczos estimate is computed on first access, not in ``fit``.
    jitter_ : float
        Jitter added to the kernel matrix's diagonal to factorise it (0 when none).
    n_iter_ : int
        Optimiser iterations run, summed over starts (0 with ``optimizer=None``).
    n_features_in_ : int
        Number of features seen in ``fit``.

    Warns
    -----
    sklearn.exceptions.ConvergenceWarning
        When the optimiser stops at ``max_iter`` before meeting its tolerance, or a learned
        hyperparameter ends at a bound (the noise at its floor; a length-scale at its
        constraint), as scikit-learn's ``GaussianProcessRegressor`` warns.
    gpkern.exceptions.NumericalWarning
        When the kernel matrix needed jitter to factorise.

    Examples
    --------
    >>> import numpy as np
    >>> from gpkern.estimators import GPRegressor
    >>> rng = np.random.default_rng(0)
    >>> X = rng.uniform(0, 5, (40, 1))
    >>> y = np.sin(X[:, 0]) + 0.1 * rng.standard_normal(40)
    >>> gp = GPRegressor(random_state=0).fit(X, y)
    >>> mean, std = gp.predict(X[:3], return_std=True)
    >>> mean.shape, std.shape
    ((3,), (3,))
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
        backend="auto",
        backend_options=None,
    ):
        self.kernel = kernel
        self.noise = noise
        self.normalize_y = normalize_y
        self.normalize_X = normalize_X
        self.optimizer = optimizer
        self.max_iter = max_iter
        self.n_restarts = n_restarts
        self.random_state = random_state
        self.verbose = verbose
        self.device = device
        self.backend = backend
        self.backend_options = backend_options

    # -- parameter checks ---------------------------------------------------------------------
    def _check_params(self) -> torch.device:
        device = self._check_gp_params()
        if self.backend not in ("auto", "dense", "keops", "distributed"):
            raise ValueError(
                "backend must be 'auto', 'dense', 'keops' or 'distributed', "
                f"got {self.backend!r}."
            )
        if self.backend == "distributed":
            if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
                raise RuntimeError(
                    "backend='distributed' needs an initialised torch.distributed process "
                    "group: launch with torchrun (torchrun --nproc-per-node P script.py) or "
                    "call torch.distributed.init_process_group() in every process first."
                )
            if self.n_restarts and not isinstance(self.random_state, (int, np.integer)):
                raise ValueError(
                    "backend='distributed' with n_restarts > 0 needs an int random_state: "
                    "every process must draw the same restarts."
                )
        if self.backend_options is not None and not isinstance(self.backend_options, dict):
            raise ValueError(
                "backend_options must be a dict or None, "
                f"got {type(self.backend_options).__name__}."
            )
        try:
            IterativeSettings(**(self.backend_options or {}))
        except TypeError as exc:
            raise ValueError(
                f"backend_options: {exc}; see gpkern.models.iterative.IterativeSettings."
            ) from exc
        return device

    # -- fitting ------------------------------------------------------------------------------
    def _make_model(self, X: torch.Tensor) -> ExactGP:
        kernel = default_kernel(X) if self.kernel is None else copy.deepcopy(self.kernel)
        learn = self.noise is None and self.optimizer is not None
        noise = 0.1 if self.noise is None else float(self.noise)
        distributed = self.backend == "distributed"
        kind = choose_backend(X.shape[0], kernel, "keops" if distributed else self.backend)
        if kind != "dense":
            settings = IterativeSettings(**(self.backend_options or {}))
            if distributed:
                from gpkern.distributed.model import DistributedGP as model_class
            else:
                model_class = IterativeGP
            model = model_class(
                kernel, noise, learn, settings=settings, backend=kind, verbose=self.verbose
            )
            return model.to(dtype=torch.float64, device=X.device)
        model = ExactGP(kernel, noise=noise, learn_noise=learn)
        return model.to(dtype=torch.float64, device=X.device)

    def fit(self, X, y):
        """Fit the GP: learn hyperparameters by maximising the log marginal likelihood.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training inputs (at least two samples).
        y : array-like of shape (n_samples,) or (n_samples, n_targets)
            Training targets; several columns are independent outputs sharing hyperparameters.

        Returns
        -------
        self : GPRegressor
            The fitted estimator.

        Raises
        ------
        ValueError
            Non-finite, complex, string or mismatched input, fewer than two samples, or bad
            parameters.
        gpkern.exceptions.NotPSDError
            If the kernel matrix is not positive definite even with jitter.
        """
        return self._fit_marginal_likelihood(X, y, lambda Xt, gen: self._make_model(Xt))

    # -- prediction ---------------------------------------------------------------------------
    def _latent(self, X, full_cov: bool):
        X = self._validate_test(X)
        Xs = self._tensor(X, self._device)
        mean, var = self._posterior.predict(Xs, full_cov=full_cov)  # (m, t), (m,) | (m, m)
        var = var.cpu().numpy()[..., None]  # shared by all outputs
        if not full_cov:
            var = np.broadcast_to(var, mean.shape)
        return mean.cpu().numpy() * self._y_std + self._y_mean, var

