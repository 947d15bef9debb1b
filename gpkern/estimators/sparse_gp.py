"""Sparse GP regression (Titsias' collapsed bound) on chosen inducing points, scikit-learn style."""

from __future__ import annotations

import copy
import numbers
import warnings

import numpy as np
import torch

from gpkern.estimators.base import BaseGPRegressor
from gpkern.estimators.gp_regressor import default_kernel
from gpkern.models.sparse import SparseGP
from gpkern.sampling.inducing import INDUCING_METHODS, select_inducing

__all__ = ["SparseGPRegressor"]

#: Rounds of optimisation followed by a re-selection that ``reselect=True`` means.
DEFAULT_RESELECT_ROUNDS = 2


class SparseGPRegressor(BaseGPRegressor):
    r"""Sparse GP regression with the collapsed variational bound on chosen inducing points.

    :math:`m` inducing inputs :math:`Z` are chosen among the training inputs
    (:func:`gpkern.sampling.select_inducing`) and ``fit`` maximises the bound of Titsias (2009)

    .. math::

        \mathcal{L}(\theta, \sigma^2) = \log \mathcal{N}(y \mid 0, Q_{nn} + \sigma^2 I)
            - \frac{1}{2\sigma^2} \operatorname{tr}(K_{nn} - Q_{nn})
            \le \log p(y \mid \theta, \sigma^2),
        \qquad Q_{nn} = K_{nm} K_{mm}^{-1} K_{mn},

    in :math:`O(n m^2)` time and :math:`O(n m)` memory (:mod:`gpkern.models.sparse`);
    predictions come from the optimal :math:`q(u)`. With :math:`m = n` it is the exact GP.

    Parameters
    ----------
    kernel : gpytorch.kernels.Kernel, optional
        Covariance function; deep-copied, never modified. ``None`` uses
        :func:`gpkern.estimators.gp_regressor.default_kernel` (scaled ARD RBF).
    n_inducing : int, default=100
        Number of inducing points :math:`m`; more than the number of samples is clipped to it
        with a warning, and :math:`m = n` uses every training point (the exact GP).
    inducing : {"rpcholesky", "greedy_variance", "kdpp", "kmeans", "uniform"}, default="rpcholesky"
        How the inducing points are chosen (see :mod:`gpkern.sampling.inducing`); the kernel-based
        rules look at the kernel at its starting hyperparameters.
    reselect : bool or int, default=False
        Re-choose the points as the hyperparameters move: an integer :math:`r` runs
        :math:`r + 1` rounds of ``max_iter`` optimiser iterations with a re-selection at the
        current kernel after each round but the last; ``True`` means
        :data:`DEFAULT_RESELECT_ROUNDS`. Only the kernel-based rules use it.
    noise : float, optional
        Gaussian noise variance (normalised units when ``normalize_y``); ``None`` learns it
        from 0.1.
    normalize_y : bool, default=True
        Standardise each target column before fitting.
    normalize_X : bool or "auto", default="auto"
        Standardise each feature before the kernel sees it, as in
        :class:`~gpkern.estimators.GPRegressor` (``"auto"``: for the default kernel only).
        ``inducing_points_`` are reported in the units of ``X``.
    optimizer : {"lbfgs", "adam"} or None, default="lbfgs"
        Optimiser of the bound; ``None`` keeps the hyperparameters as given.
    max_iter : int, default=100
        Optimiser iterations per start (and per round with ``reselect``).
    n_restarts : int, default=0
        Extra starts from perturbed hyperparameters (see :class:`GPRegressor`).
    random_state : int, RandomState instance or None, default=None
        Seeds the point selection, the restarts and :meth:`sample_y`'s default.
    verbose : bool, default=False
        Show a progress bar while optimising.
    device : str or torch.device, optional
        Torch device; ``None`` uses the CPU.

    Attributes
    ----------
    inducing_points_ : ndarray of shape (m, n_features)
        The inducing inputs :math:`Z`.
    inducing_indices_ : ndarray of shape (m,) or None
        Their rows in ``X_train_`` (``None`` for ``inducing="kmeans"``).
    n_inducing_ : int
        Number of inducing points used, :math:`m` (fewer than ``n_inducing`` when clipped).
    elbo_ : float
        The collapsed bound at the fitted hyperparameters, in the units of ``y``.
    log_marginal_likelihood_value_ : float
        Same as ``elbo_`` (a lower bound on the log marginal likelihood).
    kernel_ : gpytorch.kernels.Kernel
        The fitted kernel.
    noise_ : float
        The fitted noise variance (normalised units).
    jitter_ : float
        Jitter added to :math:`K_{mm}`'s diagonal (0 when none).
    n_iter_ : int
        Optimiser iterations run.

    Examples
    --------
    >>> import numpy as np
    >>> from gpkern.estimators import SparseGPRegressor
    >>> rng = np.random.default_rng(0)
    >>> X = rng.uniform(0, 5, (200, 1))
    >>> y = np.sin(X[:, 0]) + 0.1 * rng.standard_normal(200)
    >>> gp = SparseGPRegressor(n_inducing=15, random_state=0).fit(X, y)
    >>> gp.inducing_points_.shape
    (15, 1)
    """

    def __init__(
        self,
        kernel=None,
        n_inducing=100,
        inducing="rpcholesky",
        reselect=False,
        noise=None,
        normalize_y=True,
        normalize_X="auto",
        optimizer="lbfgs",
        max_iter=100,
        n_restarts=0,
        random_state=None,
        verbose=False,
        device=None,
    ):
        self.kernel = kernel
        self.n_inducing = n_inducing
        self.inducing = inducing
        self.reselect = reselect
        self.noise = noise
        self.normalize_y = normalize_y
        self.normalize_X = normalize_X
        self.optimizer = optimizer
        self.max_iter = max_iter
        self.n_restarts = n_restarts
        self.random_state = random_state
        self.verbose = verbose
        self.device = device

    def _check_params(self) -> torch.device:
        device = self._check_gp_params()
        self._check_positive_int("n_inducing", self.n_inducing)
        if not isinstance(self.inducing, str) or self.inducing not in INDUCING_METHODS:
            raise ValueError(f"inducing must be one of {INDUCING_METHODS}, got {self.inducing!r}.")
        self._n_reselect()
        return device

    def _n_reselect(self) -> int:
        r = self.reselect
        if isinstance(r, (bool, np.bool_)):
            return DEFAULT_RESELECT_ROUNDS if r else 0
        if not isinstance(r, numbers.Integral) or r < 0:
            raise ValueError(f"reselect must be a bool or an integer >= 0, got {r!r}.")
        return int(r)

    def _select(self, X: torch.Tensor, kernel, gen: torch.Generator):
        n = X.shape[0]
        if self.n_inducing >= n:
            idx = torch.arange(n, device=X.device)
            return X, idx
        return select_inducing(X, kernel, int(self.n_inducing), self.inducing, gen)

    def fit(self, X, y):
        """Choose the inducing points and maximise the collapsed bound.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,) or (n_samples, n_targets)

        Returns
        -------
        self : SparseGPRegressor

        Raises
        ------
        ValueError
            Bad input or parameters.
        gpkern.exceptions.NotPSDError
            If :math:`K_{mm}` is not positive definite even with jitter.
        """
        self._check_params()
        chosen = {}

        def make_model(Xt: torch.Tensor, gen: torch.Generator) -> SparseGP:
            kernel = default_kernel(Xt) if self.kernel is None else copy.deepcopy(self.kernel)
            kernel = kernel.to(dtype=torch.float64, device=Xt.device)
            if self.n_inducing > Xt.shape[0]:
                warnings.warn(
                    f"n_inducing={self.n_inducing} exceeds the {Xt.shape[0]} training samples; "
                    f"using all {Xt.shape[0]} (the exact GP).",
                    UserWarning,
                    stacklevel=4,
                )
            Z, idx = self._select(Xt, kernel, gen)
            chosen["indices"] = idx
            learn = self.noise is None and self.optimizer is not None
            noise = 0.1 if self.noise is None else float(self.noise)
            return SparseGP(kernel, Z, noise=noise, learn_noise=learn)

        def between_rounds(model: SparseGP, Xt: torch.Tensor, gen: torch.Generator) -> None:
            Z, idx = self._select(Xt, model.kernel, gen)
            model.inducing = torch.nn.Parameter(Z.detach().clone(), requires_grad=False)
            chosen["indices"] = idx

        def extras(model: SparseGP, posterior) -> dict:
            idx = chosen["indices"]
            return {
                "inducing_points_": model.inducing.detach().cpu().numpy().copy(),
                "inducing_indices_": None if idx is None else idx.cpu().numpy().copy(),
                "n_inducing_": int(model.inducing.shape[0]),
            }

        looks_at_kernel = self.inducing in ("greedy_variance", "rpcholesky", "kdpp")
        rounds = 1 + (self._n_reselect() if looks_at_kernel else 0)
        self._fit_marginal_likelihood(
            X, y, make_model, extras, between_rounds=between_rounds, n_rounds=rounds
        )
        # the kernel saw standardised inputs (normalize_X); the points are reported in X's units
        self.inducing_points_ = self._unscaled(self.inducing_points_)
        return self

    @property
    def elbo_(self) -> float:
        """The collapsed bound at the fitted hyperparameters, in the units of ``y``."""
        return self.log_marginal_likelihood_value_

    def _latent(self, X, full_cov: bool):
        X = self._validate_test(X)
        Xs = self._tensor(X, self._device)
        mean, var = self._posterior.predict(Xs, full_cov=full_cov)
        var = var.cpu().numpy()[..., None]
        if not full_cov:
            var = np.broadcast_to(var, mean.shape)
        return mean.cpu().numpy() * self._y_std + self._y_mean, var
