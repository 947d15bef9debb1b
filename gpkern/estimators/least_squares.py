r"""Weighted least-squares regression on an orthonormal basis, with optimal random designs.

:class:`WeightedLeastSquaresRegressor` fits :math:`\hat f = \sum_j \hat c_j \phi_j` in a Legendre,
trigonometric or user basis (:mod:`gpkern.sampling.bases`) by weighted least squares
(:func:`~gpkern.sampling.least_squares.weighted_least_squares`). Given a function, it chooses
its own points (``fit_function``): a projection DPP, repeated DPPs until
:math:`\|G - I\|_2 \le \delta`, volume-rescaled sampling, i.i.d. points of the optimal density
:math:`k_m/m \cdot \mu`, or i.i.d. uniform points (Nouy & Michel 2023); given data, it fits them
with the weights :math:`m / k_m` (``fit``).
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from gpkern.estimators.base import commit_feature_attrs, torch_generator, validate_training_data
from gpkern.sampling.bases import Basis, LegendreBasis, TrigonometricBasis
from gpkern.sampling.christoffel import optimal_weights, sample_optimal
from gpkern.sampling.dpp import sample_projection_dpp
from gpkern.sampling.least_squares import weighted_least_squares
from gpkern.sampling.volume import sample_repeated_dpp, sample_volume_rescaled

__all__ = ["WeightedLeastSquaresRegressor"]

_BASES = {"legendre": LegendreBasis, "trigonometric": TrigonometricBasis}
_SAMPLINGS = ("dpp", "repeated_dpp", "volume", "optimal_iid", "uniform")


class WeightedLeastSquaresRegressor(RegressorMixin, BaseEstimator):
    r"""Weighted least squares in an orthonormal basis, choosing its own points if asked.

    The fit minimises :math:`\sum_i w_i (y_i - \phi(x_i)^\top c)^2` through a QR factorisation,
    with :math:`w = m / k_m` (:math:`k_m = \|\phi\|^2`) for points of the optimal density or of
    a DPP, and :math:`w = 1` for uniform points. :math:`\|G - I\|_2` (:math:`G` the weighted
    Gram matrix, :math:`E[G] = I`) measures the stability of the design: below 1/2 the error is
    within a constant of the best approximation in :math:`V_m`.

    Parameters
    ----------
    basis : {"legendre", "trigonometric"} or Basis, default="legendre"
        The basis, orthonormal for the uniform probability measure on the box ``domain``; a
        :class:`~gpkern.sampling.bases.Basis` instance is used as is (``degree``,
        ``index_set`` and ``domain`` are then ignored).
    degree : int, default=3
        Polynomial degree (Legendre) or largest frequency (trigonometric).
    index_set : {"total", "tensor"}, default="total"
        Total-degree (:math:`\binom{p+d}{d}` functions) or tensor (:math:`(p+1)^d` Legendre)
        multi-index set.
    domain : pair or sequence of d pairs, optional
        The box :math:`\prod_c [a_c, b_c]`. ``fit`` defaults to the bounding box of ``X``;
        ``fit_function`` needs it here or as its argument.
    sampling : {"dpp", "repeated_dpp", "volume", "optimal_iid", "uniform"}, default="dpp"
        How ``fit_function`` chooses its points: a projection DPP (:math:`n = m`), repeated
        DPPs until :math:`\|G - I\|_2 \le` ``delta``, volume-rescaled sampling, i.i.d. points
        of :math:`k_m/m \cdot \mu`, or i.i.d. uniform points.
    n_samples : int, optional
        Number of points of ``fit_function``. Default: :math:`m` for ``"dpp"`` (the only value
        allowed), :math:`2m` for ``"volume"``, :math:`\max(2m, \lceil 2 m \ln m \rceil)` for the
        i.i.d. samplings; for ``"repeated_dpp"`` the budget of points (default :math:`100 m`):
        at most ``n_samples // m`` DPPs are drawn, with a
        :class:`~sklearn.exceptions.ConvergenceWarning` if ``delta`` is not reached.
    delta : float, default=0.5
        Target :math:`\|G - I\|_2` of ``"repeated_dpp"``.
    random_state : int, RandomState instance or None, default=None
        Seed of the sampling in ``fit_function``.

    Attributes
    ----------
    basis_ : Basis
        The basis used.
    coef_ : ndarray of shape (m,) or (m, t)
        Coefficients in the basis.
    points_ : ndarray of shape (n_samples, d)
        Points of the fit (the chosen ones for ``fit_function``).
    weights_ : ndarray of shape (n_samples,)
        Least-squares weights of the points.
    n_samples_ : int
        Number of points.
    gram_deviation_ : float
        :math:`\|G - I\|_2`.
    condition_number_ : float
        :math:`\operatorname{cond}(G)`.
    n_features_in_ : int
        Input dimension :math:`d`.

    Examples
    --------
    >>> import numpy as np
    >>> est = WeightedLeastSquaresRegressor(degree=10, sampling="repeated_dpp", random_state=0)
    >>> est = est.fit_function(lambda x: 1 / (1 + 25 * x[:, 0] ** 2), domain=(-1.0, 1.0))
    >>> est.gram_deviation_ <= 0.5, est.n_samples_ % 11 == 0
    (True, True)
    >>> est.predict(np.zeros((1, 1))).shape
    (1,)
    """

    def __init__(
        self,
        basis="legendre",
        degree=3,
        index_set="total",
        domain=None,
        sampling="dpp",
        n_samples=None,
        delta=0.5,
        random_state=None,
    ) -> None:
        self.basis = basis
        self.degree = degree
        self.index_set = index_set
        self.domain = domain
        self.sampling = sampling
        self.n_samples = n_samples
        self.delta = delta
        self.random_state = random_state

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        return tags

    # -- validation ---------------------------------------------------------------------------
    def _check_params(self) -> None:
        if not isinstance(self.basis, Basis) and self.basis not in _BASES:
            raise ValueError(
                f"basis must be one of {sorted(_BASES)} or a gpkern.sampling.Basis, got {self.basis!r}."
            )
        if not isinstance(self.basis, Basis):
            if (
                isinstance(self.degree, bool)
                or not isinstance(self.degree, numbers.Integral)
                or self.degree < 0
            ):
                raise ValueError(f"degree must be a non-negative int, got {self.degree!r}.")
            if self.index_set not in ("total", "tensor"):
                raise ValueError(f"index_set must be 'total' or 'tensor', got {self.index_set!r}.")
        if self.sampling not in _SAMPLINGS:
            raise ValueError(f"sampling must be one of {_SAMPLINGS}, got {self.sampling!r}.")
        if self.n_samples is not None and (
            isinstance(self.n_samples, bool)
            or not isinstance(self.n_samples, numbers.Integral)
            or self.n_samples < 1
        ):
            raise ValueError(f"n_samples must be a positive int or None, got {self.n_samples!r}.")
        if not isinstance(self.delta, numbers.Real) or not 0 < self.delta:
            raise ValueError(f"delta must be a positive float, got {self.delta!r}.")

    def _make_basis(self, dim: int, domain) -> Basis:
        if isinstance(self.basis, Basis):
            if self.basis.dim != dim:
                raise ValueError(
                    f"the basis has dimension {self.basis.dim}, the inputs have {dim}."
                )
            return self.basis
        return _BASES[self.basis](
            int(self.degree), dim=dim, index_set=self.index_set, domain=domain
        )

    def _n_points(self, m: int) -> int:
        n = self.n_samples
        if self.sampling == "dpp":
            if n is not None and n != m:
                raise ValueError(
                    f"a projection DPP has exactly m = {m} points, got n_samples={n}; use "
                    "sampling='volume' or 'repeated_dpp' for more points."
                )
            return m
        if self.sampling == "repeated_dpp":
            n = 100 * m if n is None else n
            if n < m:
                raise ValueError(f"n_samples must be at least m = {m} for repeated_dpp, got {n}.")
            return n
        if self.sampling == "volume":
            n = 2 * m if n is None else n
            if n < m:
                raise ValueError(f"volume-rescaled sampling needs n_samples >= m = {m}, got {n}.")
            return n
        n = max(2 * m, math.ceil(2 * m * math.log(m))) if n is None else n
        if n < m:
            raise ValueError(f"n_samples must be at least m = {m}, got {n}.")
        return n

    # -- fitting ------------------------------------------------------------------------------
    def _solve(self, basis: Basis, X: np.ndarray, y: np.ndarray, w: torch.Tensor) -> dict:
        fit = weighted_least_squares(torch.tensor(X), torch.tensor(y), basis, w)
        return {
            "basis_": basis,
            "coef_": fit.coef.numpy(),
            "points_": X,
            "weights_": w.numpy(),
            "n_samples_": X.shape[0],
            "gram_deviation_": fit.gram_deviation,
            "condition_number_": fit.condition_number,
        }

    def _store(self, state: dict, meta: dict) -> None:
        commit_feature_attrs(self, meta)
        for key, value in state.items():
            setattr(self, key, value)

    def fit(self, X, y):
        """Fit given data with the weights :math:`m / k_m(x_i)` of the basis.

        Parameters
        ----------
        X : array-like of shape (n_samples, d)
            Inputs, inside ``domain`` (default: their bounding box).
        y : array-like of shape (n_samples,) or (n_samples, t)

        Returns
        -------
        self
        """
        self._check_params()
        X, y, meta = validate_training_data(
            self, X, y, multi_output=True, y_numeric=True, dtype=np.float64
        )
        y = np.asarray(y, dtype=np.float64)
        domain = self.domain
        if domain is None and not isinstance(self.basis, Basis):
            lo, hi = X.min(0), X.max(0)
            pad = np.where(hi > lo, 0.0, 0.5)  # a constant feature still needs a box
            domain = np.stack([lo - pad, hi + pad], 1)
        basis = self._make_basis(X.shape[1], domain)
        if X.shape[0] < basis.m:
            raise ValueError(
                f"{type(self).__name__} with m = {basis.m} basis functions needs at least m "
                f"samples, got n_samples = {X.shape[0]}; lower the degree or add data."
            )
        w = optimal_weights(basis, torch.tensor(X))
        state = self._solve(basis, X, y, w)
        self._store(state, meta)
        return self

    def fit_function(self, f, domain=None):
        r"""Choose points with ``sampling``, evaluate ``f`` there and fit.

        Parameters
        ----------
        f : callable
            ``f(X)`` for ``X`` an ndarray of shape ``(n, d)`` returns an array of shape ``(n,)``
            or ``(n, t)``.
        domain : pair or sequence of d pairs, optional
            The box (overrides the ``domain`` parameter; ignored for a Basis instance).

        Returns
        -------
        self
        """
        self._check_params()
        if not callable(f):
            raise TypeError(f"f must be callable, got {type(f).__name__}.")
        domain = self.domain if domain is None else domain
        if isinstance(self.basis, Basis):
            basis = self.basis
        else:
            if domain is None:
                raise ValueError("fit_function needs a domain: pass it here or as a parameter.")
            box = np.asarray(domain, dtype=np.float64)
            basis = self._make_basis(1 if box.ndim == 1 else box.shape[0], box)
        n = self._n_points(basis.m)
        gen = torch_generator(self.random_state)
        if self.sampling == "dpp":
            x = sample_projection_dpp(basis, gen)
        elif self.sampling == "repeated_dpp":
            x, _ = sample_repeated_dpp(basis, self.delta, max_repeats=n // basis.m, generator=gen)
        elif self.sampling == "volume":
            x = sample_volume_rescaled(basis, n, gen)
        elif self.sampling == "optimal_iid":
            x = sample_optimal(basis, n, gen)
        else:
            x = basis.sample_measure(n, gen)
        w = (
            torch.ones(x.shape[0], dtype=torch.float64)
            if self.sampling == "uniform"
            else optimal_weights(basis, x)
        )
        X = x.numpy()
        y = np.asarray(f(X), dtype=np.float64)
        if y.shape not in ((X.shape[0],),) and not (y.ndim == 2 and y.shape[0] == X.shape[0]):
            raise ValueError(
                f"f returned shape {y.shape} for {X.shape[0]} points; expected (n,) or (n, t)."
            )
        if not np.isfinite(y).all():
            raise ValueError("f returned NaN or inf values.")
        state = self._solve(basis, X, y, w)
        self._store(state, {"n_features_in_": X.shape[1]})
        return self

    def predict(self, X):
        """:math:`\\hat f(X) = \\Phi(X) \\hat c`, shape ``(n,)`` or ``(n, t)``."""
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float64, reset=False)
        return self.basis_(torch.tensor(X)).numpy() @ self.coef_
