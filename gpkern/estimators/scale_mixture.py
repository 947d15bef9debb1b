"""Scale mixtures of GPs, scikit-learn style: Student-t process and general-prior regressors,
and the sparse variational scale-mixture classifier."""

from __future__ import annotations

import copy
import math
import numbers

import gpytorch
import numpy as np
import torch
from sklearn.utils.validation import check_is_fitted, validate_data

from gpkern.estimators.base import (
    BaseGPClassifier,
    BaseGPRegressor,
    commit_feature_attrs,
    encode_class_labels,
    resolve_device,
    torch_generator,
    validate_training_data,
)
from gpkern.estimators.gp_regressor import default_kernel
from gpkern.models.classification import SparseScaleMixtureClassifier
from gpkern.models.scale_mixture import ScaleMixtureGP, StudentTProcess, make_scale_prior
from gpkern.models.training import minimize
from gpkern.sampling.inducing import INDUCING_METHODS, select_inducing

__all__ = ["StudentTProcessRegressor", "ScaleMixtureRegressor", "ScaleMixtureClassifier"]


class _ScaleMixtureRegressorBase(BaseGPRegressor):
    """Fitting loop and prediction surface shared by the two scale-mixture regressors."""

    _model_name = "scale mixture"

    def _kernel(self, X: torch.Tensor) -> gpytorch.kernels.Kernel:
        return default_kernel(X) if self.kernel is None else copy.deepcopy(self.kernel)

    def _fit(self, X, y, make_model):
        return self._fit_marginal_likelihood(X, y, make_model, extras=self._fitted_extras)

    # -- prediction ---------------------------------------------------------------------------
    def _test_tensor(self, X) -> torch.Tensor:
        return self._tensor(self._validate_test(X), self._device)

    def _latent(self, X, full_cov: bool):
        # Moments of the (non-Gaussian) scale-mixture posterior of f: E[s | y] Sigma_*.
        Xs = self._test_tensor(X)  # first: raises NotFittedError before _posterior is read
        mean, var = self._posterior.predict(Xs, full_cov=full_cov)
        return mean.cpu().numpy() * self._y_std + self._y_mean, var.cpu().numpy()

    def predict_quantiles(self, X, q, include_noise=True):
        """Quantiles of the posterior predictive, which is not Gaussian.

        Parameters
        ----------
        X : array-like of shape (n_queries, n_features)
        q : float or array-like of shape (n_quantiles,)
            Probabilities in (0, 1).
        include_noise : bool, default=True
            Quantiles of :math:`y_*` (noise included); ``False`` gives those of :math:`f_*`.

        Returns
        -------
        quantiles : ndarray of shape (n_queries, n_quantiles) or (n_queries, n_targets, n_quantiles)
            For a scalar ``q`` the last axis is dropped.
        """
        q_arr = np.asarray(q, dtype=np.float64)
        if q_arr.ndim > 1 or not np.all((q_arr > 0) & (q_arr < 1)):
            raise ValueError(f"q must be a probability or 1-D array of probabilities in (0, 1), got {q!r}.")
        Xs = self._test_tensor(X)
        qt = torch.as_tensor(np.atleast_1d(q_arr), dtype=torch.float64, device=self._device)
        out = self._posterior.quantiles(Xs, qt, include_noise=include_noise).cpu().numpy()
        out = out * self._y_std[None, :, None] + self._y_mean[None, :, None]
        out = self._as_output(out)
        return out[..., 0] if q_arr.ndim == 0 else out

    def sample_y(self, X, n_samples=1, random_state=0):
        """Draw joint samples of the latent function from the posterior at ``X``.

        Each draw takes :math:`\\sigma^2` from its posterior, then :math:`f` from the Gaussian
        conditional, so the draws follow the heavy-tailed scale-mixture posterior.

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
        Xs = self._test_tensor(X)
        f = self._posterior.sample(Xs, n_samples, torch_generator(random_state, self._device))
        f = f.cpu().numpy() * self._y_std[None, :, None] + self._y_mean[None, :, None]
        return self._as_output(f)

    def log_predictive_density(self, X, y):
        """Per-point log density of held-out targets under the posterior predictive.

        The predictive of :math:`y_*` mixes :math:`\\mathcal{N}(\\mu_*, \\sigma^2(\\Sigma_* +
        \\varepsilon))` over the posterior of :math:`\\sigma^2` (noise included), in the units
        of ``y``.

        Parameters
        ----------
        X : array-like of shape (n_queries, n_features)
        y : array-like of shape (n_queries,) or (n_queries, n_targets)

        Returns
        -------
        log_density : ndarray of shape (n_queries,) or (n_queries, n_targets)
        """
        Y = self._check_targets(X, y)
        Xs = self._test_tensor(X)
        Yn = self._tensor((Y - self._y_mean) / self._y_std, self._device)
        lpd = self._posterior.log_predictive_density(Xs, Yn).cpu().numpy() - np.log(self._y_std)
        return self._as_output(lpd)


class StudentTProcessRegressor(_ScaleMixtureRegressorBase):
    r"""Student-t process regression (a GP with an inverse-gamma prior on its scale).

    .. math::

        \sigma^2 \sim \mathrm{IG}(a, b), \qquad
        y \mid \sigma^2 \sim \mathcal{N}\big(0, \sigma^2 (K_\theta + \varepsilon I)\big)
        \;\Longrightarrow\; y \sim \mathrm{MVT}_{\nu}\big(0, \tfrac{b}{a}(K_\theta + \varepsilon I)\big),
        \quad \nu = 2a.

    ``fit`` maximises the multivariate-t log density of ``y`` over :math:`a, b, \theta,
    \varepsilon`. The predictive of each test output is a Student-t with :math:`\nu + n` degrees
    of freedom,

    .. math::

        \mu_* = K_{*X} C^{-1} y, \qquad
        s_*^2 = \frac{2b + y^\top C^{-1} y}{2a + n}\,\big(K_{**} - K_{*X} C^{-1} K_{X*} + \varepsilon\big),

    with :math:`C = K + \varepsilon I`. Since :math:`\nu + n > 2` whenever :math:`n \ge 2`, the
    predictive always has a finite variance, even when the prior process (:math:`\nu \le 2`)
    does not. As :math:`\nu \to \infty` with :math:`b = a` the model is :class:`GPRegressor`.

    Parameters
    ----------
    kernel : gpytorch.kernels.Kernel, optional
        Covariance function (deep-copied). ``None`` uses a scaled ARD RBF kernel.
    df : float, optional
        Degrees of freedom :math:`\nu = 2a` of the prior process; ``None`` learns it (starting
        from 4), a positive float fixes it.
    noise : float, optional
        Noise :math:`\varepsilon` (normalised units); ``None`` learns it, starting from 0.1.
    normalize_y : bool, default=True
        Standardise each target column before fitting.
    optimizer : {"lbfgs", "adam"} or None, default="lbfgs"
        ``None`` keeps the hyperparameters as given (and :math:`b = a`).
    max_iter : int, default=100
    n_restarts : int, default=0
    random_state : int, RandomState instance or None, default=None
    verbose : bool, default=False
    device : str or torch.device, optional

    Attributes
    ----------
    kernel_ : gpytorch.kernels.Kernel
    noise_ : float
    df_ : float
        Fitted prior degrees of freedom :math:`2a`.
    rate_ : float
        Fitted :math:`b`.
    predictive_df_ : ndarray of shape (n_targets,)
        :math:`2a + n`, the predictive's degrees of freedom.
    log_marginal_likelihood_value_ : float
    jitter_ : float
    X_train_, y_train_, n_features_in_
        As in :class:`GPRegressor`.

    Examples
    --------
    >>> import numpy as np
    >>> from gpkern.estimators import StudentTProcessRegressor
    >>> rng = np.random.default_rng(0)
    >>> X = rng.uniform(0, 5, (40, 1))
    >>> y = np.sin(X[:, 0]) + 0.1 * rng.standard_t(2, 40)
    >>> tp = StudentTProcessRegressor(random_state=0).fit(X, y)
    >>> tp.predict_quantiles(X[:2], [0.05, 0.95]).shape
    (2, 2)
    """

    def __init__(
        self,
        kernel=None,
        df=None,
        noise=None,
        normalize_y=True,
        optimizer="lbfgs",
        max_iter=100,
        n_restarts=0,
        random_state=None,
        verbose=False,
        device=None,
    ):
        self.kernel = kernel
        self.df = df
        self.noise = noise
        self.normalize_y = normalize_y
        self.optimizer = optimizer
        self.max_iter = max_iter
        self.n_restarts = n_restarts
        self.random_state = random_state
        self.verbose = verbose
        self.device = device

    def _check_params(self) -> torch.device:
        if self.df is not None and (
            not isinstance(self.df, numbers.Real)
            or isinstance(self.df, bool)
            or not math.isfinite(self.df)
            or self.df <= 0
        ):
            raise ValueError(f"df must be a positive float or None (learned), got {self.df!r}.")
        return self._check_gp_params()

    def fit(self, X, y):
        """Fit the Student-t process by maximising the multivariate-t marginal likelihood.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,) or (n_samples, n_targets)
            Each column is an independent draw with its own scale :math:`\\sigma^2`.

        Returns
        -------
        self : StudentTProcessRegressor

        Raises
        ------
        ValueError
            Bad input or parameters.
        gpkern.exceptions.NotPSDError
            If the kernel matrix is not positive definite even with jitter.
        """

        def make(Xt, gen):
            a = 2.0 if self.df is None else 0.5 * float(self.df)
            learn = self.optimizer is not None
            return StudentTProcess(
                self._kernel(Xt),
                noise=0.1 if self.noise is None else float(self.noise),
                concentration=a,
                rate=a,
                learn_noise=learn and self.noise is None,
                learn_concentration=learn and self.df is None,
                learn_rate=learn,
            )

        return self._fit(X, y, make)

    def _fitted_extras(self, model, posterior) -> dict:
        return {
            "df_": float(2 * model.concentration.detach()),
            "rate_": float(model.rate.detach()),
            "predictive_df_": posterior.scale.df.cpu().numpy(),
        }


class ScaleMixtureRegressor(_ScaleMixtureRegressorBase):
    r"""GP regression with any prior on its scale, by importance sampling over :math:`\sigma^2`.

    .. math::

        \sigma^2 \sim h, \qquad y \mid \sigma^2 \sim \mathcal{N}\big(0, \sigma^2 (K_\theta + \varepsilon I)\big).

    With draws :math:`\sigma^2_s` from a proposal :math:`r` and self-normalised weights
    :math:`\bar w_s \propto h(\sigma^2_s)\mathcal{N}(y \mid 0, \sigma^2_s C)/r(\sigma^2_s)`,
    the predictive is the mixture

    .. math::

        p(y_* \mid y) \approx \sum_s \bar w_s\,
            \mathcal{N}\big(y_* \mid \mu_*, \sigma^2_s (\Sigma_* + \varepsilon)\big),

    and ``fit`` maximises the importance-sampling estimate
    :math:`\log \frac1S \sum_s w_s` of :math:`\log p(y)` over :math:`\theta, \varepsilon`
    (the draws are fixed, so the estimate is smooth). See
    :class:`gpkern.models.scale_mixture.ScaleMixtureGP` for the proposals.

    Parameters
    ----------
    kernel : gpytorch.kernels.Kernel, optional
        Covariance function (deep-copied). ``None`` uses a scaled ARD RBF kernel.
    prior : {"inverse_gamma", "burr12", "half_cauchy", "lognormal"} or torch.distributions.Distribution, default="burr12"
        Prior on :math:`\sigma^2` (see :func:`gpkern.models.scale_mixture.make_scale_prior`).
    prior_params : dict, optional
        Parameters of a named prior (positive numbers).
    n_samples : int, default=1000
        Importance-sampling draws :math:`S`.
    proposal : {"adaptive", "prior"}, default="adaptive"
        ``"prior"`` samples the prior (the paper's choice); ``"adaptive"`` mixes it with the
        likelihood-matched :math:`\mathrm{IG}(n/2, q/2)` and keeps the ESS high.
    min_ess : float, optional
        Warn (:class:`~gpkern.exceptions.LowESSWarning`) when the effective sample size is
        below it; default 5% of ``n_samples``.
    noise : float, optional
    normalize_y : bool, default=True
    optimizer : {"lbfgs", "adam"} or None, default="lbfgs"
    max_iter : int, default=100
    n_restarts : int, default=0
    random_state : int, RandomState instance or None, default=None
        Seeds the importance-sampling draws and the restarts.
    verbose : bool, default=False
    device : str or torch.device, optional

    Attributes
    ----------
    kernel_ : gpytorch.kernels.Kernel
    noise_ : float
    ess_ : ndarray of shape (n_targets,)
        Effective sample size :math:`1/\sum_s \bar w_s^2` of each output's weights.
    scale_samples_ : ndarray of shape (n_samples, n_targets)
        The draws :math:`\sigma^2_s` (normalised units).
    scale_weights_ : ndarray of shape (n_samples, n_targets)
        Their self-normalised weights.
    log_marginal_likelihood_value_ : float
        The importance-sampling estimate of :math:`\log p(y)` (units of ``y``).
    jitter_ : float
    X_train_, y_train_, n_features_in_
        As in :class:`GPRegressor`.

    Examples
    --------
    >>> import numpy as np
    >>> from gpkern.estimators import ScaleMixtureRegressor
    >>> rng = np.random.default_rng(0)
    >>> X = rng.uniform(0, 5, (40, 1))
    >>> y = np.sin(X[:, 0]) + 0.1 * rng.standard_t(2, 40)
    >>> sm = ScaleMixtureRegressor(prior="burr12", random_state=0).fit(X, y)
    >>> bool(sm.ess_[0] > 100)
    True
    """

    def __init__(
        self,
        kernel=None,
        prior="burr12",
        prior_params=None,
        n_samples=1000,
        proposal="adaptive",
        min_ess=None,
        noise=None,
        normalize_y=True,
        optimizer="lbfgs",
        max_iter=100,
        n_restarts=0,
        random_state=None,
        verbose=False,
        device=None,
    ):
        self.kernel = kernel
        self.prior = prior
        self.prior_params = prior_params
        self.n_samples = n_samples
        self.proposal = proposal
        self.min_ess = min_ess
        self.noise = noise
        self.normalize_y = normalize_y
        self.optimizer = optimizer
        self.max_iter = max_iter
        self.n_restarts = n_restarts
        self.random_state = random_state
        self.verbose = verbose
        self.device = device

    def _check_params(self) -> torch.device:
        make_scale_prior(self.prior, self.prior_params)  # validates the prior
        self._check_positive_int("n_samples", self.n_samples, minimum=2)
        if self.proposal not in ("adaptive", "prior"):
            raise ValueError(f"proposal must be 'adaptive' or 'prior', got {self.proposal!r}.")
        if self.min_ess is not None and (
            not isinstance(self.min_ess, numbers.Real) or not self.min_ess >= 0
        ):
            raise ValueError(f"min_ess must be a non-negative number or None, got {self.min_ess!r}.")
        return self._check_gp_params()

    def fit(self, X, y):
        """Fit the kernel and noise by maximising the importance-sampling marginal likelihood.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,) or (n_samples, n_targets)
            Each column is an independent draw with its own scale :math:`\\sigma^2`.

        Returns
        -------
        self : ScaleMixtureRegressor

        Raises
        ------
        ValueError
            Bad input or parameters (including prior parameters that are not positive).
        FloatingPointError
            If every importance weight underflows (the prior does not cover the data's scale).
        gpkern.exceptions.NotPSDError
            If the kernel matrix is not positive definite even with jitter.

        Warns
        -----
        gpkern.exceptions.LowESSWarning
            When the effective sample size is below ``min_ess``.
        """

        def make(Xt, gen):
            return ScaleMixtureGP(
                self._kernel(Xt),
                make_scale_prior(self.prior, self.prior_params),
                n_samples=self.n_samples,
                proposal=self.proposal,
                generator=gen,
                noise=0.1 if self.noise is None else float(self.noise),
                learn_noise=self.noise is None and self.optimizer is not None,
                min_ess=self.min_ess,
            )

        return self._fit(X, y, make)

    def _fitted_extras(self, model, posterior) -> dict:
        scale = posterior.scale
        return {
            "ess_": scale.ess.cpu().numpy(),
            "scale_samples_": scale.samples.cpu().numpy(),
            "scale_weights_": scale.weights.cpu().numpy(),
        }


# Elements of the (draws, points, classes) array predict_proba forms per chunk (~64 MiB).
_PREDICT_CHUNK_ELEMENTS = 2**23


def _classifier_kernel(X: torch.Tensor) -> gpytorch.kernels.Kernel:  # (n, d)
    """Scaled ARD RBF with length-scales at each feature's spread times sqrt(d).

    The sqrt(d) keeps typical squared distances near 2 length-scales in any dimension; at one
    spread per feature the kernel between distinct points of, e.g., 64-pixel digits is
    exp(-64): numerically diagonal, with vanishing gradients, and the classifier learns nothing.
    """
    kernel = default_kernel(X)
    with torch.no_grad():
        kernel.base_kernel.lengthscale = kernel.base_kernel.lengthscale * math.sqrt(X.shape[1])
    return kernel


class ScaleMixtureClassifier(BaseGPClassifier):
    r"""Sparse variational GP classifier with an inverse-gamma prior on the kernel's scale.

    One latent function per class, :math:`f_c \mid \sigma^2 \sim \mathcal{GP}(0, \sigma^2 k)`,
    a shared :math:`\sigma^2 \sim \mathrm{IG}(a, b)` and a softmax likelihood; ``fit`` maximises
    the evidence lower bound over inducing points, :math:`q(u \mid \sigma^2) =
    \mathcal{N}(m, \sigma^2 S)`, :math:`q(\sigma^2) = \mathrm{IG}(\alpha, \beta)` and the kernel
    hyperparameters with Adam on minibatches (see
    :class:`gpkern.models.classification.SparseScaleMixtureClassifier`). Marginally each latent
    value is Student-t, so far from the data the predictive spreads its mass more widely than a
    GP's. ``prior=None`` fixes :math:`\sigma^2 = 1`: the plain sparse variational GP classifier.

    .. math::

        p(y_* = c \mid x_*) = E_{q(\sigma^2)} E_{q(f_* \mid \sigma^2)}
            \big[\operatorname{softmax}(f_*)_c\big]
            \approx \frac1S \sum_s \operatorname{softmax}\big(\mu_* + \sigma_s \sqrt{v_*} \odot \epsilon_s\big)_c

    Parameters
    ----------
    kernel : gpytorch.kernels.Kernel, optional
        Covariance function shared by the classes (deep-copied). ``None`` uses a scaled ARD RBF
        kernel with length-scales starting at each feature's standard deviation times
        :math:`\sqrt{d}`.
        Its own output scale, if learned (as in the default), multiplies :math:`\sigma^2`: the
        two are one parameter, so the ELBO in effect also learns the prior's scale :math:`b`.
        For the paper's model, where :math:`\sigma^2` is the only scale and the prior is fixed,
        pass a kernel with a fixed scale (e.g. :class:`~gpkern.kernels.NNGPKernel` with fixed
        variances).
    prior : {"inverse_gamma"} or None, default="inverse_gamma"
        Prior on :math:`\sigma^2`; ``None`` fixes it to 1.
    prior_params : dict, optional
        ``{"concentration": a, "rate": b}`` (positive; default 2 and 2).
    n_inducing : int, default=200
        Number of inducing points (at most the number of training samples; the paper's 200),
        initialised by ``inducing`` and learned.
    inducing : {"uniform", "kmeans", "greedy_variance", "rpcholesky", "kdpp"}, default="uniform"
        How the inducing inputs start (:func:`gpkern.sampling.select_inducing`, the
        kernel-based rules at the kernel's starting hyperparameters); ``"uniform"`` is a random
        subset of the training inputs.
    n_samples : int, default=16
        Monte-Carlo draws per minibatch in the ELBO.
    n_predict_samples : int, default=256
        Monte-Carlo draws of :math:`(\sigma^2, f)` in :meth:`predict_proba` (fixed at fit time).
    batch_size : int, default=256
        Minibatch size (the whole set when smaller).
    max_iter : int, default=150
        Adam steps (a few hundred for real data sets).
    lr : float, default=0.05
        Adam learning rate.
    random_state : int, RandomState instance or None, default=None
        Seeds the initialisation, the minibatches and the Monte-Carlo draws.
    verbose : bool, default=False
        Show a progress bar.
    device : str or torch.device, optional

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
    kernel_ : gpytorch.kernels.Kernel
        The fitted kernel.
    inducing_points_ : ndarray of shape (n_inducing, n_features)
    scale_posterior_ : tuple of float or None
        :math:`(\alpha, \beta)` of :math:`q(\sigma^2)` (``None`` without a prior).
    elbo_ : float
        Final ELBO per training point (a minibatch Monte-Carlo estimate).
    n_iter_ : int
    n_features_in_ : int

    Examples
    --------
    >>> import numpy as np
    >>> from gpkern.estimators import ScaleMixtureClassifier
    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((60, 2))
    >>> y = (X[:, 0] + X[:, 1] > 0).astype(int)
    >>> clf = ScaleMixtureClassifier(n_inducing=20, max_iter=100, random_state=0).fit(X, y)
    >>> clf.predict_proba(X[:2]).shape
    (2, 2)
    """

    def __init__(
        self,
        kernel=None,
        prior="inverse_gamma",
        prior_params=None,
        n_inducing=200,
        inducing="uniform",
        n_samples=16,
        n_predict_samples=256,
        batch_size=256,
        max_iter=150,
        lr=0.05,
        random_state=None,
        verbose=False,
        device=None,
    ):
        self.kernel = kernel
        self.prior = prior
        self.prior_params = prior_params
        self.n_inducing = n_inducing
        self.inducing = inducing
        self.n_samples = n_samples
        self.n_predict_samples = n_predict_samples
        self.batch_size = batch_size
        self.max_iter = max_iter
        self.lr = lr
        self.random_state = random_state
        self.verbose = verbose
        self.device = device

    def _check_params(self):
        if self.kernel is not None and not isinstance(self.kernel, gpytorch.kernels.Kernel):
            raise ValueError(
                f"kernel must be a gpytorch.kernels.Kernel or None, got {type(self.kernel).__name__}."
            )
        if self.prior is None:
            if self.prior_params:
                raise ValueError("prior_params must be None when prior is None.")
            prior = None
        elif self.prior == "inverse_gamma":
            dist = make_scale_prior("inverse_gamma", self.prior_params)
            prior = (float(dist.concentration), float(dist.rate))
        else:
            raise ValueError(
                f"ScaleMixtureClassifier supports prior='inverse_gamma' (closed-form KL) or None, "
                f"got {self.prior!r}."
            )
        for name in ("n_inducing", "n_samples", "n_predict_samples", "batch_size"):
            BaseGPRegressor._check_positive_int(name, getattr(self, name))
        BaseGPRegressor._check_positive_int("max_iter", self.max_iter, minimum=0)
        if not isinstance(self.inducing, str) or self.inducing not in INDUCING_METHODS:
            raise ValueError(f"inducing must be one of {INDUCING_METHODS}, got {self.inducing!r}.")
        if not isinstance(self.lr, numbers.Real) or not math.isfinite(self.lr) or self.lr <= 0:
            raise ValueError(f"lr must be a positive float, got {self.lr!r}.")
        return prior, resolve_device(self.device)

    def fit(self, X, y):
        """Fit the variational posterior by maximising the ELBO with minibatch Adam.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,)
            Class labels (at least two classes).

        Returns
        -------
        self : ScaleMixtureClassifier

        Raises
        ------
        ValueError
            Bad input or parameters, continuous targets, or a single class.
        """
        prior, device = self._check_params()
        X, y, fitted_meta = validate_training_data(self, X, y, dtype=np.float64)
        classes, y_enc = encode_class_labels(self, y)
        n = X.shape[0]
        Xt = torch.tensor(X, dtype=torch.float64, device=device)
        yt = torch.tensor(y_enc, dtype=torch.long, device=device)
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=torch_generator(self.random_state)))
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            kernel = _classifier_kernel(Xt) if self.kernel is None else copy.deepcopy(self.kernel)
            M = min(self.n_inducing, n)
            # torch's global generator (seeded above) keeps the uniform choice as it always was
            kernel = kernel.to(dtype=torch.float64, device=device)
            Z = select_inducing(Xt, kernel, M, self.inducing, torch.default_generator).points
            model = SparseScaleMixtureClassifier(kernel, Z, len(classes), prior=prior)
            model = model.to(dtype=torch.float64, device=device)
            batch = min(self.batch_size, n)

            def loss() -> torch.Tensor:
                idx = torch.randperm(n, device="cpu")[:batch].to(device) if batch < n else slice(None)
                return -model.elbo(Xt[idx], yt[idx], n=n, n_samples=self.n_samples)

            best = minimize(
                loss,
                model.parameters(),
                optimizer="adam",
                max_iter=self.max_iter,
                lr=self.lr,
                verbose=self.verbose,
                desc="ScaleMixtureClassifier fit",
            )
            with torch.no_grad():
                scale_draws = model.sample_scale(self.n_predict_samples)
                normal_draws = torch.randn(
                    self.n_predict_samples, len(classes), dtype=torch.float64, device=device
                )
        if not math.isfinite(best):
            raise FloatingPointError(
                "The ELBO was not finite at any step; lower lr or check the kernel's hyperparameters."
            )
        commit_feature_attrs(self, fitted_meta)
        self.classes_ = classes
        self.kernel_ = model.kernel
        self.inducing_points_ = model.inducing_points.detach().cpu().numpy()
        self.scale_posterior_ = (
            (float(model.q_concentration.detach()), float(model.q_rate.detach()))
            if model.has_scale_prior
            else None
        )
        self.elbo_ = -best
        self.n_iter_ = self.max_iter
        self._model = model
        self._device = device
        self._draws = (scale_draws, normal_draws)
        return self

    def predict_proba(self, X):
        """Class probabilities, Monte-Carlo averaged over the scale and the latent functions.

        Parameters
        ----------
        X : array-like of shape (n_queries, n_features)

        Returns
        -------
        proba : ndarray of shape (n_queries, n_classes)
        """
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float64, reset=False)
        Xt = torch.tensor(X, dtype=torch.float64, device=self._device)
        # The draws make an (S, chunk, C) array: bound it, however many draws were asked for.
        chunk = max(1, _PREDICT_CHUNK_ELEMENTS // self._draws[1].numel())
        out = []
        for start in range(0, Xt.shape[0], chunk):
            out.append(self._model.predict_proba(Xt[start : start + chunk], *self._draws))
        return torch.cat(out).cpu().numpy() if out else np.zeros((0, len(self.classes_)))
