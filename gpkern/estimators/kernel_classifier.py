"""Kernel "regression-as-classification": sign / argmax of :math:`K^{-1}` regression on labels."""

from __future__ import annotations

import copy
import numbers

import gpytorch
import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from gpkern.estimators.base import (
    InputStandardization,
    commit_feature_attrs,
    encode_class_labels,
    resolve_device,
    validate_training_data,
)
from gpkern.linalg.cholesky import robust_cholesky

__all__ = ["KernelClassifier"]



def _default_kernel() -> gpytorch.kernels.Kernel:
    from gpkern.kernels.nngp import Dense, Relu, serial
    from gpkern.kernels.nngp.kernel import NNGPKernel

    return NNGPKernel(serial(Dense(1.0, 0.1), Relu(), Dense(1.0, 0.1), Relu(), Dense(1.0, 0.0)), kind="ntk")


class KernelClassifier(InputStandardization, ClassifierMixin, BaseEstimator):
    r"""Classify by kernel (ridge-less) regression on one-hot labels.

    With one-hot targets :math:`Y \in \{0, 1\}^{n \times C}`,

    .. math::

        F(x_*) = k(x_*, X)\,(K + \lambda I)^{-1} Y, \qquad \hat y(x_*) = \arg\max_c F_c(x_*),

    which for two classes is :math:`\operatorname{sign}(y^\top (K + \lambda I)^{-1} k_*)` with
    :math:`y \in \{-1, 1\}^n`: the infinite-width network trained to zero squared loss (NTK)
    or the NNGP posterior mean. With the deep kernels of
    :mod:`gpkern.kernels.nngp.infinite_depth` it shows the three infinite-depth regimes
    (1-NN, majority vote, singular kernel).

    Parameters
    ----------
    kernel : gpytorch.kernels.Kernel, optional
        Any GPyTorch kernel (e.g. :class:`~gpkern.kernels.NNGPKernel`,
        :class:`~gpkern.kernels.nngp.infinite_depth.InfiniteDepthKernel`); deep-copied.
        ``None`` uses the NTK of a two-hidden-layer ReLU network.
    ridge : float, default=0.0
        :math:`\lambda`; 0 interpolates (jitter is added only if the Cholesky factorisation
        fails, with a :class:`~gpkern.exceptions.NumericalWarning`).
    normalize_X : bool or "auto", default="auto"
        Standardise each feature (``X_mean_``, ``X_scale_``) before the kernel sees it;
        ``"auto"`` does it for the default kernel only (the NTK is not shift-invariant, and
        its bias terms are set for inputs of unit spread), a kernel given by the user works in
        the units of ``X``.
    device : str or torch.device, optional

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
    X_train_ : ndarray of shape (n_samples, n_features)
        In the units of ``X``.
    X_mean_, X_scale_ : ndarray of shape (n_features,)
        The kernel sees ``(X - X_mean_) / X_scale_``.
    dual_coef_ : ndarray of shape (n_samples, n_classes)
        :math:`(K + \lambda I)^{-1} Y`.
    jitter_ : float
    n_features_in_ : int

    Examples
    --------
    >>> import numpy as np
    >>> from gpkern.estimators import KernelClassifier
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(40, 2)); y = (X[:, 0] > 0).astype(int)
    >>> KernelClassifier().fit(X, y).score(X, y)
    1.0
    """

    def __init__(self, kernel=None, ridge=0.0, normalize_X="auto", device=None):
        self.kernel = kernel
        self.ridge = ridge
        self.normalize_X = normalize_X
        self.device = device

    def _check_params(self):
        if self.kernel is not None and not isinstance(self.kernel, gpytorch.kernels.Kernel):
            raise ValueError(f"kernel must be a gpytorch.kernels.Kernel or None, got {type(self.kernel).__name__}.")
        if (
            isinstance(self.ridge, bool)
            or not isinstance(self.ridge, numbers.Real)
            or not np.isfinite(self.ridge)
            or self.ridge < 0
        ):
            raise ValueError(f"ridge must be a finite float >= 0, got {self.ridge!r}.")
        return resolve_device(self.device)

    def _gram(self, kernel, A: np.ndarray, B: np.ndarray, device) -> torch.Tensor:
        a = torch.tensor(A, dtype=torch.float64, device=device)
        b = torch.tensor(B, dtype=torch.float64, device=device)
        with torch.no_grad():
            return kernel(a, b).to_dense()

    def fit(self, X, y):
        """Fit: solve :math:`(K + \\lambda I) A = Y` for the one-hot labels.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,)

        Returns
        -------
        self : KernelClassifier
        """
        device = self._check_params()
        X, y, new = validate_training_data(self, X, y, dtype=np.float64, y_numeric=False)
        classes, codes = encode_class_labels(self, y)
        scaling = self._input_scaling(X)
        kernel = _default_kernel() if self.kernel is None else copy.deepcopy(self.kernel)
        kernel = kernel.to(dtype=torch.float64, device=device)
        Xs = self._apply_scaling(X, scaling)
        K = self._gram(kernel, Xs, Xs, device)
        K = K + self.ridge * torch.eye(K.shape[0], dtype=K.dtype, device=device)
        L, jitter = robust_cholesky(K, initial_jitter=None)
        Y = torch.zeros(len(y), len(classes), dtype=torch.float64, device=device)
        Y[torch.arange(len(y)), torch.as_tensor(codes, device=device)] = 1.0
        A = torch.cholesky_solve(Y, L)
        self.kernel_ = kernel
        self.classes_ = classes
        self.X_train_ = X
        self.X_mean_, self.X_scale_ = scaling["X_mean_"], scaling["X_scale_"]
        self.dual_coef_ = A.cpu().numpy()
        self.jitter_ = float(jitter)
        commit_feature_attrs(self, new)
        self._device = device
        return self

    def decision_function(self, X):
        """Regression outputs: (n,) ``F_1 - F_0`` for two classes, else (n, n_classes) ``F``."""
        check_is_fitted(self)
        X = self._scaled(validate_data(self, X, dtype=np.float64, reset=False))
        Ks = self._gram(self.kernel_, X, self._scaled(self.X_train_), self._device)
        F = (Ks @ torch.as_tensor(self.dual_coef_, device=self._device)).cpu().numpy()
        return F[:, 1] - F[:, 0] if len(self.classes_) == 2 else F

    def predict(self, X):
        """Class with the largest regression output.

        Parameters
        ----------
        X : array-like of shape (n_queries, n_features)

        Returns
        -------
        y : ndarray of shape (n_queries,)
        """
        F = self.decision_function(X)
        idx = (F > 0).astype(int) if F.ndim == 1 else F.argmax(1)
        return self.classes_[idx]
