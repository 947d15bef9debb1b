"""Shared scikit-learn plumbing for gpkern estimators: validation, dtype, devices, shapes.

Every gpkern regressor subclasses :class:`BaseGPRegressor` and so gets the same input checks,
target normalisation and output shapes; it implements the maths by calling a model in
:mod:`gpkern.models`. No maths lives here.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import gpytorch
import numpy as np
import torch
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, validate_data

from gpkern.exceptions import NotPSDError
from gpkern.models.training import minimize_with_restarts

__all__ = ["BaseGPRegressor", "torch_generator", "resolve_device"]

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
    seed = int(check_random_state(random_state).randint(0, 2**31 - 1))
    gen = torch.Generator(device=device if device is not None else "cpu")
    gen.manual_seed(seed)
    return gen


class BaseGPRegressor(RegressorMixin, BaseEstimator):
    """Validation and shape handling shared by gpkern's regressors.

    Subclasses call :meth:`_validate_train` in ``fit`` and :meth:`_validate_test` in the
    prediction methods, and let :meth:`_as_output` restore the user's target shape. Targets
    are always handled as 2-D ``(n, t)`` internally; a 1-D ``y`` gives 1-D outputs back.

    Fitted attributes set by :meth:`_validate_train` (returned, to be stored by ``fit`` only
    once fitting succeeded, so that a failed ``fit`` leaves a fitted estimator unchanged):
    ``n_features_in_``, ``X_train_``, ``y_train_``, ``_y_mean``, ``_y_std``, ``_y_1d``.
    """

    #: below this many samples a model is refused (a GP needs at least two points).
    _min_samples = 2

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        return tags

    # -- validation ---------------------------------------------------------------------------
    def _validate_train(self, X, y) -> dict:
        """Check ``X, y`` and return the training state as a dict (nothing is stored)."""
        # validate_data(reset=True) writes n_features_in_ / feature_names_in_; take them back
        # so that nothing changes until the fit has succeeded.
        saved = {k: getattr(self, k) for k in _RESET_ATTRS if hasattr(self, k)}
        try:
            X, y = validate_data(
                self,
                X,
                y,
                multi_output=True,
                y_numeric=True,
                dtype=np.float64,
                ensure_min_samples=self._min_samples,
                reset=True,
            )
            new = {k: getattr(self, k) for k in _RESET_ATTRS if hasattr(self, k)}
        finally:
            for k in _RESET_ATTRS:
                if hasattr(self, k):
                    delattr(self, k)
            for k, v in saved.items():
                setattr(self, k, v)
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
        return {
            **new,
            "X_train_": X,
            "y_train_": y,
            "_y_mean": mean,
            "_y_std": std,
            "_y_1d": y_1d,
            "Y_norm": (Y - mean) / std,
        }

    def _validate_test(self, X) -> np.ndarray:
        check_is_fitted(self)
        return validate_data(self, X, dtype=np.float64, reset=False)

    def _store(self, state: dict) -> None:
        """Commit a fit's state to the estimator's attributes, all at once."""
        for key, value in state.items():
            if key != "Y_norm":
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
    ):
        """Validate, build ``make_model(X, generator)``, maximise its log marginal likelihood
        (with restarts), condition, and commit everything at once.

        The model must offer ``log_marginal_likelihood(X, Y)``, ``posterior(X, Y, warn)`` (with
        ``log_marginal_likelihood`` and ``jitter``), ``kernel`` and ``noise``; ``extras(model,
        posterior)`` adds estimator-specific fitted attributes.
        """
        device = self._check_params()
        state = self._validate_train(X, y)
        Xt = self._tensor(state["X_train_"], device)
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

            _, n_iter = minimize_with_restarts(
                loss,
                model,
                n_restarts=self.n_restarts,
                generator=gen,
                optimizer=self.optimizer,
                max_iter=self.max_iter,
                verbose=self.verbose,
                desc=f"{type(self).__name__} fit",
            )

        posterior = model.posterior(Xt, Yt, warn=True)
        # log p(y) in original units: the normalisation is a change of variables per column.
        lml = posterior.log_marginal_likelihood - Xt.shape[0] * float(np.log(state["_y_std"]).sum())
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
