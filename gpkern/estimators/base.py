"""Shared scikit-learn plumbing for gpkern estimators: validation, dtype, devices, shapes.

Every gpkern regressor subclasses :class:`BaseGPRegressor` and so gets the same input checks,
target normalisation and output shapes; it implements the maths by calling a model in
:mod:`gpkern.models`. No maths lives here.
"""

from __future__ import annotations

import numbers

import numpy as np
import torch
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, validate_data

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
