"""Shared scikit-learn plumbing for gpkern estimators: validation, dtype, devices, shapes.

Every gpkern regressor subclasses :class:`BaseGPRegressor` and so gets the same input checks,
target normalisation, output shapes, marginal-likelihood fit loop and prediction surface
(``predict``, ``sample_y``, ``log_predictive_density``); it implements the maths by calling a
model in :mod:`gpkern.models` and exposing its posterior through ``_latent``.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable

import gpytorch
import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_array, check_is_fitted, validate_data

from gpkern.exceptions import NotPSDError
from gpkern.linalg.cholesky import robust_cholesky
from gpkern.models.exact import gaussian_log_density
from gpkern.models.training import (
    minimize_with_restarts,
    parameters_at_bounds,
    warn_at_bounds,
    warn_if_unconverged,
)
from gpkern.sampling.generator import as_generator

__all__ = [
    "BaseGPRegressor",
    "BaseGPClassifier",
    "torch_generator",
    "resolve_device",
    "validate_training_data",
    "commit_feature_attrs",
    "encode_class_labels",
    "InputStandardization",
    "input_scaling",
]

_RESET_ATTRS = ("n_features_in_", "feature_names_in_")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The torch device an estimator computes on (``None`` means CPU).

    Raises
    ------
    ValueError
        If the device is unknown or CUDA is requested on a machine without it.
    """
    if device is None:
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device={device!r} is not a valid torch device: {err}") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} requested but CUDA is not available; use device=None.")
    return dev


def torch_generator(random_state, device: torch.device | None = None) -> torch.Generator:
    """A seeded :class:`torch.Generator` from a scikit-learn ``random_state``.

    ``None`` draws a fresh seed from numpy's global state, an ``int`` seeds deterministically,
    and a :class:`numpy.random.RandomState` is consumed (as scikit-learn does).
    """
    return as_generator(check_random_state(random_state), device)


def validate_training_data(est: BaseEstimator, X, y, **kwargs) -> tuple[np.ndarray, np.ndarray, dict]:
    """scikit-learn's ``validate_data(est, X, y, reset=True, **kwargs)`` without side effects.

    ``validate_data`` writes ``n_features_in_`` / ``feature_names_in_``; they are taken back so
    that a fit that fails later leaves a fitted estimator unchanged.

    Returns
    -------
    X, y : ndarray
        The validated data.
    meta : dict
        The new ``n_features_in_`` / ``feature_names_in_``, to be set once the fit succeeded.
    """
    saved = {k: getattr(est, k) for k in _RESET_ATTRS if hasattr(est, k)}
    try:
        X, y = validate_data(est, X, y, reset=True, **kwargs)
        meta = {k: getattr(est, k) for k in _RESET_ATTRS if hasattr(est, k)}
    finally:
        for k in _RESET_ATTRS:
            if hasattr(est, k):
                delattr(est, k)
        for k, v in saved.items():
            setattr(est, k, v)
    return X, y, meta


def commit_feature_attrs(est: BaseEstimator, meta: dict) -> None:
    """Set the ``n_features_in_`` / ``feature_names_in_`` that :func:`validate_training_data`
    returned, removing one the new data did not have (a DataFrame fit followed by an array fit)."""
    for k in _RESET_ATTRS:
        if k in meta:
            setattr(est, k, meta[k])
        elif hasattr(est, k):
            delattr(est, k)


def encode_class_labels(est: BaseEstimator, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(classes, codes)`` of classification targets, refusing fewer than two classes.

    Raises
    ------
    ValueError
        For continuous targets or a single class.
    """
    check_classification_targets(y)
    classes, codes = np.unique(y, return_inverse=True)
    if len(classes) < 2:
        raise ValueError(
            f"{type(est).__name__} needs at least 2 classes in y, got 1 class ({classes[0]!r}); "
            "pass labels of two or more classes."
        )
    return classes, codes


# -- input standardisation ------------------------------------------------------------------
def input_scaling(X: np.ndarray, standardize: bool) -> tuple[np.ndarray, np.ndarray]:
    r"""Per-feature ``(mean, scale)`` such that :math:`(X - \text{mean}) / \text{scale}` has zero
    mean and unit variance; the identity ``(0, 1)`` when ``standardize`` is false.

    A constant feature (spread below :math:`10\,\epsilon` relative to its magnitude, i.e.
    rounding) keeps scale 1, as scikit-learn's ``StandardScaler`` does, so it maps to zeros
    instead of blowing up.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features)
    standardize : bool

    Returns
    -------
    mean, scale : ndarray of shape (n_features,)
    """
    d = X.shape[1]
    if not standardize:
        return np.zeros(d), np.ones(d)
    mean = X.mean(axis=0)
    scale = X.std(axis=0)
    rounding = 10 * np.finfo(np.float64).eps * np.maximum(1.0, np.abs(mean))
    return mean, np.where(scale > rounding, scale, 1.0)


#: Attribute of a fitted ``kernel_`` holding the ``(X_mean_, X_scale_)`` its inputs went through.
INPUT_SCALING_ATTR = "gpkern_input_scaling"


class InputStandardization:
    r"""The ``normalize_X`` parameter shared by every gpkern estimator.

    Kernels built by the estimator itself see standardised inputs
    :math:`(X - \bar X) / s_X`, so fits and predictions do not depend on the units of the
    features: the default length-scales, input weights and inducing points start at the same
    place whatever the units, and kernels that are not shift-invariant (NNGP, deep kernel
    machines) see centred inputs. A kernel passed by the user keeps the user's units
    (``normalize_X="auto"``), so its hyperparameters mean what the user set, exactly as in
    scikit-learn and GPyTorch; ``normalize_X=True`` standardises for it too.

    Subclasses store ``normalize_X`` and may override :meth:`_builds_own_kernel`.
    """

    def _builds_own_kernel(self) -> bool:
        """Whether the estimator builds its kernel itself (no kernel object from the user)."""
        return getattr(self, "kernel", None) is None

    def _standardizes_inputs(self) -> bool:
        flag = self.normalize_X
        if isinstance(flag, str) and flag == "auto":
            return self._builds_own_kernel()
        if isinstance(flag, (bool, np.bool_)):
            return bool(flag)
        raise ValueError(f"normalize_X must be True, False or 'auto', got {flag!r}.")

    def _input_scaling(self, X: np.ndarray) -> dict:
        """The fitted ``X_mean_`` / ``X_scale_`` of training inputs ``X`` (nothing is stored).

        A kernel fitted by a gpkern estimator on standardised inputs carries that
        standardisation (:data:`INPUT_SCALING_ATTR`); passed as ``kernel=`` with
        ``normalize_X="auto"`` it sees its inputs through the same map, so ``kernel=gp.kernel_``
        reproduces ``gp``'s kernel whatever data the new estimator is fitted on.
        """
        standardize = self._standardizes_inputs()  # validates normalize_X
        stored = getattr(getattr(self, "kernel", None), INPUT_SCALING_ATTR, None)
        flag = self.normalize_X
        if isinstance(flag, str) and stored is not None and len(stored[0]) == X.shape[1]:
            return {"X_mean_": stored[0].copy(), "X_scale_": stored[1].copy()}
        mean, scale = input_scaling(X, standardize)
        return {"X_mean_": mean, "X_scale_": scale}

    @staticmethod
    def _apply_scaling(X: np.ndarray, scaling: dict) -> np.ndarray:
        return (X - scaling["X_mean_"]) / scaling["X_scale_"]

    def _scaled(self, X: np.ndarray) -> np.ndarray:
        """Inputs in the units the fitted kernel sees."""
        return (X - self.X_mean_) / self.X_scale_

    def _unscaled(self, Z: np.ndarray) -> np.ndarray:
        """Points the kernel sees (e.g. inducing points) back in the units of ``X``."""
        return Z * self.X_scale_ + self.X_mean_


class _LazyLogMarginalLikelihood:
    """The log marginal likelihood of a posterior that computes it on demand, in ``y``'s units.

    Iterative (KeOps) posteriors at fixed hyperparameters estimate it by stochastic Lanczos
    quadrature only when asked: most of a fixed-hyperparameter fit's work otherwise.
    """

    def __init__(self, posterior, offset: float) -> None:
        self.posterior, self.offset = posterior, offset

    def __call__(self) -> float:
        return float(self.posterior.log_marginal_likelihood) - self.offset


class BaseGPRegressor(InputStandardization, RegressorMixin, BaseEstimator):
    """Validation and shape handling shared by gpkern's regressors.

    Subclasses call :meth:`_validate_train` in ``fit`` and :meth:`_validate_test` in the
    prediction methods, and let :meth:`_as_output` restore the user's target shape. Targets
    are always handled as 2-D ``(n, t)`` internally; a 1-D ``y`` gives 1-D outputs back.

    Fitted attributes set by :meth:`_validate_train` (returned, to be stored by ``fit`` only
    once fitting succeeded, so that a failed ``fit`` leaves a fitted estimator unchanged):
    ``n_features_in_``, ``X_train_``, ``X_mean_``, ``X_scale_``, ``y_train_``, ``_y_mean``,
    ``_y_std``, ``_y_1d``; ``X_norm`` holds the training inputs as the kernel sees them.
    """

    #: below this many samples a model is refused (a GP needs at least two points).
    _min_samples = 2

    @property
    def log_marginal_likelihood_value_(self) -> float:
        """Log marginal likelihood at the fitted hyperparameters (computed on first access by
        posteriors that defer it, see :class:`gpkern.models.iterative.IterativePosterior`)."""
        value = self.__dict__.get("_log_marginal_likelihood_value")
        if value is None:
            raise AttributeError(
                f"'{type(self).__name__}' object has no attribute 'log_marginal_likelihood_value_'"
            )
        if isinstance(value, _LazyLogMarginalLikelihood):
            value = value()
            self.__dict__["_log_marginal_likelihood_value"] = value
        return value

    @log_marginal_likelihood_value_.setter
    def log_marginal_likelihood_value_(self, value) -> None:
        self.__dict__["_log_marginal_likelihood_value"] = value

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        return tags

    # -- validation ---------------------------------------------------------------------------
    def _validate_train(self, X, y) -> dict:
        """Check ``X, y`` and return the training state as a dict (nothing is stored)."""
        X, y, new = validate_training_data(
            self,
            X,
            y,
            multi_output=True,
            y_numeric=True,
            dtype=np.float64,
            ensure_min_samples=self._min_samples,
        )
        y = np.asarray(y, dtype=np.float64)
        y_1d = y.ndim == 1
        Y = y[:, None] if y_1d else y
        if self.normalize_y:
            mean = Y.mean(axis=0)
            std = Y.std(axis=0)
            std = np.where(std > 0, std, 1.0)
        else:
            mean = np.zeros(Y.shape[1])
            std = np.ones(Y.shape[1])
        scaling = self._input_scaling(X)
        return {
            **new,
            **scaling,
            "X_norm": self._apply_scaling(X, scaling),
            "X_train_": X,
            "y_train_": y,
            "_y_mean": mean,
            "_y_std": std,
            "_y_1d": y_1d,
            "Y_norm": (Y - mean) / std,
        }

    def _validate_test(self, X) -> np.ndarray:
        """Validated test inputs in the units the fitted kernel sees (see ``normalize_X``)."""
        check_is_fitted(self)
        return self._scaled(validate_data(self, X, dtype=np.float64, reset=False))

    def _store(self, state: dict) -> None:
        """Commit a fit's state to the estimator's attributes, all at once."""
        commit_feature_attrs(self, {k: v for k, v in state.items() if k in _RESET_ATTRS})
        kernel, mean, scale = state.get("kernel_"), state.get("X_mean_"), state.get("X_scale_")
        if isinstance(kernel, torch.nn.Module) and mean is not None:
            if np.any(mean != 0) or np.any(scale != 1):  # the kernel saw standardised inputs
                setattr(kernel, INPUT_SCALING_ATTR, (mean.copy(), scale.copy()))
        for key, value in state.items():
            if key not in ("X_norm", "Y_norm") and key not in _RESET_ATTRS:
                setattr(self, key, value)

    # -- the marginal-likelihood fit shared by GP-style regressors ----------------------------
    def _check_gp_params(self) -> torch.device:
        """Check ``kernel``, ``noise``, ``optimizer``, ``max_iter``, ``n_restarts``, ``device``."""
        if self.kernel is not None and not isinstance(self.kernel, gpytorch.kernels.Kernel):
            raise ValueError(
                f"kernel must be a gpytorch.kernels.Kernel or None, got {type(self.kernel).__name__}."
            )
        if self.noise is not None and (
            not isinstance(self.noise, numbers.Real) or not math.isfinite(self.noise) or self.noise <= 0
        ):
            raise ValueError(f"noise must be a positive float or None (learned), got {self.noise!r}.")
        if self.optimizer not in ("lbfgs", "adam", None):
            raise ValueError(f"optimizer must be 'lbfgs', 'adam' or None, got {self.optimizer!r}.")
        self._check_positive_int("max_iter", self.max_iter, minimum=0)
        self._check_positive_int("n_restarts", self.n_restarts, minimum=0)
        return resolve_device(self.device)

    def _fit_marginal_likelihood(
        self,
        X,
        y,
        make_model: Callable[[torch.Tensor, torch.Generator], torch.nn.Module],
        extras: Callable[[torch.nn.Module, object], dict] | None = None,
        between_rounds: Callable[[torch.nn.Module, torch.Tensor, torch.Generator], None]
        | None = None,
        n_rounds: int = 1,
    ):
        """Validate, build ``make_model(X, generator)``, maximise its log marginal likelihood
        (with restarts), condition, and commit everything at once.

        With ``n_rounds > 1`` the optimiser runs ``n_rounds`` times (restarts in the first only)
        and ``between_rounds(model, X, generator)`` updates the model in between.

        The model must offer ``log_marginal_likelihood(X, Y)``, ``posterior(X, Y, warn)`` (with
        ``log_marginal_likelihood`` and ``jitter``), ``kernel`` and ``noise``; ``extras(model,
        posterior)`` adds estimator-specific fitted attributes.
        """
        device = self._check_params()
        state = self._validate_train(X, y)
        Xt = self._tensor(state["X_norm"], device)
        Yt = self._tensor(state["Y_norm"], device)
        gen = torch_generator(self.random_state)
        model = make_model(Xt, gen).to(dtype=torch.float64, device=device)
        # Fails loudly, before any state changes, on a kernel that is not PSD at its start.
        if not getattr(model, "iterative", False):  # (CG cannot tell; one check costs a full solve)
            with torch.no_grad():
                model.log_marginal_likelihood(Xt, Yt)

        n_iter = 0
        if self.optimizer is not None:
            scale = float(Yt.numel())

            def loss() -> torch.Tensor:
                try:
                    return -model.log_marginal_likelihood(Xt, Yt) / scale
                except (NotPSDError, FloatingPointError):
                    return torch.tensor(math.inf, dtype=torch.float64, device=device)

            for r in range(n_rounds):
                if r:
                    between_rounds(model, Xt, gen)
                result = minimize_with_restarts(
                    loss,
                    model,
                    n_restarts=self.n_restarts if r == 0 else 0,
                    generator=gen,
                    optimizer=self.optimizer,
                    max_iter=self.max_iter,
                    verbose=self.verbose,
                    desc=f"{type(self).__name__} fit",
                )
                n_iter += result.n_iter
            self._warn_optimisation(result, model)

        posterior = model.posterior(Xt, Yt, warn=True)
        # log p(y) in original units: the normalisation is a change of variables per column.
        offset = Xt.shape[0] * float(np.log(state["_y_std"]).sum())
        if getattr(posterior, "log_marginal_likelihood_pending", False):
            lml = _LazyLogMarginalLikelihood(posterior, offset)
        else:
            lml = posterior.log_marginal_likelihood - offset
        state.update(
            kernel_=model.kernel,
            noise_=float(model.noise.detach()),
            jitter_=posterior.jitter,
            log_marginal_likelihood_value_=lml,
            n_iter_=n_iter,
            _model=model,
            _posterior=posterior,
            _device=device,
            _generator_seed=int(torch.randint(0, 2**31 - 1, (1,), generator=gen)),
        )
        if extras is not None:
            state.update(extras(model, posterior))
        self._store(state)
        return self

    #: Advice ending a warning about a hyperparameter at a bound, by parameter name.
    _bound_hints = {
        "noise": (
            "The noise is at its floor: the model interpolates the (normalised) targets. Noisy "
            "targets then mean a kernel too flexible for the data (rescale the inputs or use a "
            "simpler kernel); for noise-free targets, pass the noise you know as noise=..., "
            "which is used exactly."
        ),
    }

    def _warn_optimisation(self, result, model: torch.nn.Module) -> None:
        """ConvergenceWarnings for a fit that stopped at its budget or ended at a bound."""
        owner = type(self).__name__
        warn_if_unconverged(result, owner, self.max_iter, optimizer=self.optimizer, stacklevel=4)
        warn_at_bounds(parameters_at_bounds(model), owner, self._bound_hints, stacklevel=4)

    # -- the prediction surface shared by Gaussian-predictive regressors ----------------------
    def _latent(self, X, full_cov: bool) -> tuple[np.ndarray, np.ndarray]:
        """Posterior of the latent :math:`f` at ``X``, implemented by each regressor.

        Returns
        -------
        mean : ndarray of shape (m, t)
            In the units of ``y``.
        var : ndarray of shape (m, t), or (m, m, c) with c in {1, t} when ``full_cov``
            In normalised units (multiply by ``_y_std ** 2``); ``c = 1`` when all outputs share
            one covariance.
        """
        raise NotImplementedError

    def predict(self, X, return_std=False, return_cov=False):
        """Posterior mean of the latent function, optionally with its std or covariance.

        Parameters
        ----------
        X : array-like of shape (n_queries, n_features)
        return_std : bool, default=False
            Also return the posterior standard deviation of :math:`f` (noise excluded).
        return_cov : bool, default=False
            Also return the posterior covariance of :math:`f` (noise excluded).

        Returns
        -------
        y_mean : ndarray of shape (n_queries,) or (n_queries, n_targets)
        y_std : ndarray of shape (n_queries,) or (n_queries, n_targets), if ``return_std``
        y_cov : ndarray of shape (n_queries, n_queries) or (n_queries, n_queries, n_targets), if ``return_cov``

        Notes
        -----
        For a non-Gaussian posterior (scale mixtures) these are its first two moments;
        ``predict_quantiles`` gives its quantiles.
        """
        if return_std and return_cov:
            raise ValueError("At most one of return_std or return_cov can be requested.")
        mean, var = self._latent(X, full_cov=return_cov)
        out = self._as_output(mean)
        if return_std:
            return out, self._as_output(np.sqrt(np.clip(var, 0.0, None)) * self._y_std)
        if return_cov:
            m, t = mean.shape
            cov = np.broadcast_to(var, (m, m, t)) * self._y_std**2
            return out, cov[:, :, 0] if self._y_1d else cov
        return out

    def sample_y(self, X, n_samples=1, random_state=0):
        """Draw joint samples of the latent function from the posterior at ``X``.

        Parameters
        ----------
        X : array-like of shape (n_queries, n_features)
        n_samples : int, default=1
        random_state : int, RandomState instance or None, default=0
            Seeds the draw (as in scikit-learn's ``sample_y``).

        Returns
        -------
        y_samples : ndarray of shape (n_queries, n_samples) or (n_queries, n_targets, n_samples)
        """
        self._check_positive_int("n_samples", n_samples)
        mean, cov = self._latent(X, full_cov=True)  # (m, t), (m, m, c)
        gen = torch_generator(random_state)
        m, t = mean.shape
        factors = [_sample_factor(torch.as_tensor(cov[:, :, c])) for c in range(cov.shape[2])]
        out = np.empty((m, t, n_samples))
        for c in range(t):
            z = torch.randn(m, n_samples, generator=gen, dtype=torch.float64)
            out[:, c, :] = mean[:, c, None] + (factors[min(c, len(factors) - 1)] @ z).numpy() * self._y_std[c]
        return self._as_output(out)

    def log_marginal_likelihood(self):
        """Log marginal likelihood of the training targets at the fitted hyperparameters.

        Reported in the units of ``y`` (the normalisation's Jacobian is included), summed over
        outputs.
        """
        check_is_fitted(self)
        return self.log_marginal_likelihood_value_

    def log_predictive_density(self, X, y):
        r"""Per-point log density of held-out targets under the posterior predictive.

        .. math::

            \log p(y_* \mid x_*, \mathcal{D}) = \log \mathcal{N}(y_* \mid \mu_*, \sigma_*^2 + \sigma^2)

        in the units of ``y``.

        Parameters
        ----------
        X : array-like of shape (n_queries, n_features)
        y : array-like of shape (n_queries,) or (n_queries, n_targets)

        Returns
        -------
        log_density : ndarray of shape (n_queries,) or (n_queries, n_targets)
        """
        Y = self._check_targets(X, y)
        mean, var = self._latent(X, full_cov=False)
        total = (var + self.noise_) * self._y_std**2
        return self._as_output(
            gaussian_log_density(torch.as_tensor(Y), torch.as_tensor(mean), torch.as_tensor(total)).numpy()
        )

    def _check_targets(self, X, y) -> np.ndarray:
        """Validate held-out targets against the fitted output count; returns (m, t)."""
        self._validate_test(X)
        y = check_array(y, ensure_2d=False, dtype=np.float64, input_name="y")
        Y = y[:, None] if y.ndim == 1 else y
        n_out = self._y_mean.shape[0]
        if Y.shape[1] != n_out or Y.shape[0] != np.shape(X)[0]:
            raise ValueError(
                f"y has shape {y.shape} but X has {np.shape(X)[0]} rows and the model has {n_out} "
                "output(s); pass one target per row of X with the training target's shape."
            )
        return Y

    # -- conversions --------------------------------------------------------------------------
    def _tensor(self, A: np.ndarray, device: torch.device) -> torch.Tensor:
        # torch.tensor copies: read-only memmaps and non-contiguous arrays are safe.
        return torch.tensor(np.asarray(A, dtype=np.float64), dtype=torch.float64, device=device)

    def _as_output(self, A: np.ndarray) -> np.ndarray:
        """Drop the output axis (axis 1) when the targets were 1-D."""
        return A[:, 0, ...] if self._y_1d else A

    @staticmethod
    def _check_positive_int(name: str, value, minimum: int = 1) -> None:
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < minimum:
            raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")


def _sample_factor(cov: torch.Tensor) -> torch.Tensor:  # (m, m) -> (m, m)
    """A factor of a posterior covariance for sampling (it is often singular: jitter silently)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return robust_cholesky(cov, initial_jitter=1e-10, max_tries=10)[0]


class BaseGPClassifier(InputStandardization, ClassifierMixin, BaseEstimator):
    """The prediction surface shared by gpkern's probabilistic classifiers.

    Subclasses implement ``predict_proba`` (which checks fitted-ness) and set ``classes_``.
    """

    def predict_proba(self, X):  # pragma: no cover - abstract
        raise NotImplementedError

    def predict_log_proba(self, X):
        """Logarithm of :meth:`predict_proba`."""
        return np.log(self.predict_proba(X))

    def predict(self, X):
        """Most probable class under :meth:`predict_proba`.

        Parameters
        ----------
        X : array-like of shape (n_queries, n_features)

        Returns
        -------
        labels : ndarray of shape (n_queries,)
        """
        proba = self.predict_proba(X)  # checks fitted-ness before classes_ is touched
        return self.classes_[np.argmax(proba, axis=1)]

    def predictive_entropy(self, X):
        r"""Entropy of the predictive class distribution, :math:`-\sum_c p_c \log p_c` (nats).

        High where the model is unsure, e.g. out of distribution.

        Parameters
        ----------
        X : array-like of shape (n_queries, n_features)

        Returns
        -------
        entropy : ndarray of shape (n_queries,)
        """
        p = self.predict_proba(X)
        return -(p * np.log(np.clip(p, 1e-300, None))).sum(1)
