"""Nyström features on chosen landmarks: a scikit-learn transformer with :math:`\\Phi \\Phi^\\top
\\approx K`."""

from __future__ import annotations

import copy
import warnings

import gpytorch
import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from gpkern.estimators.base import BaseGPRegressor, commit_feature_attrs, torch_generator
from gpkern.estimators.gp_regressor import default_kernel
from gpkern.sampling.inducing import INDUCING_METHODS, select_inducing

__all__ = ["NystroemFeatures"]

_FEATURE_ATTRS = ("n_features_in_", "feature_names_in_")


def _validate_fit_input(est: BaseEstimator, X) -> tuple[np.ndarray, dict]:
    """``validate_data(est, X, reset=True)`` with the feature attributes handed back, not set."""
    saved = {k: getattr(est, k) for k in _FEATURE_ATTRS if hasattr(est, k)}
    try:
        X = validate_data(est, X, dtype=np.float64, reset=True)
        meta = {k: getattr(est, k) for k in _FEATURE_ATTRS if hasattr(est, k)}
    finally:
        for k in _FEATURE_ATTRS:
            if hasattr(est, k):
                delattr(est, k)
        for k, v in saved.items():
            setattr(est, k, v)
    return X, meta


class NystroemFeatures(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    r"""Nyström feature map on :math:`m` landmarks chosen by RPCholesky, a DPP or k-means.

    With landmarks :math:`Z` and :math:`K_{ZZ} = U \Lambda U^\top`, the features of :math:`x` are

    .. math::

        \phi(x) = k(x, Z)\, U \Lambda^{-1/2}, \qquad
        \Phi \Phi^\top = K_{nZ} K_{ZZ}^{+} K_{Zn} \preceq K_{nn},

    (eigenvalues below :math:`m \epsilon \lambda_{\max}` count as zero, giving zero columns),
    so linear models on :math:`\Phi` approximate kernel methods with :math:`K` in
    :math:`O(n m^2)`. Unlike scikit-learn's ``Nystroem`` (uniform landmarks), the landmarks come
    from :func:`gpkern.sampling.select_inducing`.

    Parameters
    ----------
    kernel : gpytorch.kernels.Kernel, optional
        The kernel :math:`k` (deep-copied, used at its current hyperparameters). ``None`` uses
        :func:`gpkern.estimators.gp_regressor.default_kernel` on the training inputs (scaled RBF,
        length-scales :math:`\sqrt{d}` times each feature's standard deviation).
    n_components : int, default=100
        Number of landmarks :math:`m` (clipped to the number of samples, with a warning).
    method : {"rpcholesky", "greedy_variance", "kdpp", "kmeans", "uniform"}, default="rpcholesky"
        Landmark choice (see :mod:`gpkern.sampling.inducing`).
    random_state : int, RandomState instance or None, default=None
        Seeds the landmark choice.

    Attributes
    ----------
    components_ : ndarray of shape (n_components_, n_features)
        The landmarks :math:`Z`.
    component_indices_ : ndarray of shape (n_components_,) or None
        Their rows in the training data (``None`` for ``"kmeans"``).
    normalization_ : ndarray of shape (n_components_, n_components_)
        :math:`U \Lambda^{-1/2}`.
    kernel_ : gpytorch.kernels.Kernel
        The kernel used.
    n_components_ : int
        Number of landmarks used.
    n_features_in_ : int
        Number of features seen in ``fit``.

    Examples
    --------
    >>> import numpy as np
    >>> from gpkern.estimators import NystroemFeatures
    >>> X = np.random.default_rng(0).normal(size=(100, 3))
    >>> NystroemFeatures(n_components=20, random_state=0).fit_transform(X).shape
    (100, 20)
    """

    def __init__(self, kernel=None, n_components=100, method="rpcholesky", random_state=None):
        self.kernel = kernel
        self.n_components = n_components
        self.method = method
        self.random_state = random_state

    def fit(self, X, y=None):
        """Choose the landmarks and the normalisation :math:`U \\Lambda^{-1/2}`.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : ignored

        Returns
        -------
        self : NystroemFeatures
        """
        if self.kernel is not None and not isinstance(self.kernel, gpytorch.kernels.Kernel):
            raise ValueError(
                f"kernel must be a gpytorch.kernels.Kernel or None, got {type(self.kernel).__name__}."
            )
        BaseGPRegressor._check_positive_int("n_components", self.n_components)
        if not isinstance(self.method, str) or self.method not in INDUCING_METHODS:
            raise ValueError(f"method must be one of {INDUCING_METHODS}, got {self.method!r}.")
        X, meta = _validate_fit_input(self, X)
        n = X.shape[0]
        m = self.n_components
        if m > n:
            warnings.warn(
                f"n_components={m} exceeds the {n} samples; using n_components={n}.",
                UserWarning,
                stacklevel=2,
            )
            m = n
        Xt = torch.tensor(X, dtype=torch.float64)
        kernel = default_kernel(Xt) if self.kernel is None else copy.deepcopy(self.kernel)
        kernel = kernel.to(torch.float64)
        Z, idx = select_inducing(Xt, kernel, m, self.method, torch_generator(self.random_state))
        with torch.no_grad():
            lam, U = torch.linalg.eigh(kernel(Z).to_dense())
        keep = lam > Z.shape[0] * torch.finfo(lam.dtype).eps * lam.max().clamp_min(0.0)
        scale = torch.where(keep, lam.clamp_min(torch.finfo(lam.dtype).tiny).rsqrt(), 0.0)
        commit_feature_attrs(self, meta)
        self.kernel_ = kernel
        self.components_ = Z.numpy().copy()
        self.component_indices_ = None if idx is None else idx.numpy().copy()
        self.normalization_ = (U * scale).numpy()
        self.n_components_ = int(Z.shape[0])
        self._n_features_out = self.n_components_
        return self

    def transform(self, X):
        """Nyström features :math:`\\phi(x) = k(x, Z) U \\Lambda^{-1/2}`.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        Phi : ndarray of shape (n_samples, n_components_)
        """
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float64, reset=False)
        Xt = torch.tensor(X, dtype=torch.float64)
        with torch.no_grad():
            KxZ = self.kernel_(Xt, torch.as_tensor(self.components_)).to_dense()
        return (KxZ @ torch.as_tensor(self.normalization_)).numpy()
