"""Deep kernel machines, scikit-learn style: :class:`DKMRegressor` and :class:`DKMClassifier`."""

from __future__ import annotations

import math
import numbers
import warnings

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
from gpkern.exceptions import NotPSDError
from gpkern.models.dkm import DKM, GRAM_KERNELS, NNGPGramKernel, SparseDKM
from gpkern.models.exact import gaussian_log_density
from gpkern.models.training import (
    OptimizeResult,
    optimize,
    parameters_at_bounds,
    warn_at_bounds,
    warn_if_unconverged,
)
from gpkern.sampling.inducing import INDUCING_METHODS, select_inducing

__all__ = [
    "DKMRegressor",
    "DKMClassifier",
    "MAX_FULL_SAMPLES",
    "AUTO_WIDTHS_RATIOS",
    "AUTO_N_FOLDS",
]

#: Largest training set the full DKM accepts: it learns one dense P x P Gram per layer and
#: factorises it at every step (O(L P^3) time, O(L P^2) memory). Above it use ``n_inducing``.
MAX_FULL_SAMPLES = 3000

#: Candidate width ratios of ``DKMRegressor(widths_ratio="auto")``, chosen among by the
#: cross-validated held-out log density on the training data (3000 is close to the NNGP).
AUTO_WIDTHS_RATIOS = (10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0)

#: Number of cross-validation folds of ``widths_ratio="auto"`` (fewer when there are fewer
#: training points).
AUTO_N_FOLDS = 5


def _check_common(est) -> torch.device:
    if (
        not isinstance(est.n_layers, numbers.Integral)
        or isinstance(est.n_layers, bool)
        or est.n_layers < 1
    ):
        raise ValueError(f"n_layers must be an integer >= 1, got {est.n_layers!r}.")
    if isinstance(est.widths_ratio, str):
        if est.widths_ratio != "auto":
            raise ValueError(
                f"widths_ratio must be 'auto', a positive float or a sequence of them, got "
                f"{est.widths_ratio!r}."
            )
        if not isinstance(est, DKMRegressor) or est.n_inducing is not None:
            raise ValueError(
                "widths_ratio='auto' is implemented for the full DKMRegressor only "
                "(n_inducing=None); pass a positive float here."
            )
        ratios = np.ones(1, dtype=object)
    else:
        ratios = np.atleast_1d(np.asarray(est.widths_ratio, dtype=object))
    try:
        values = ratios.astype(np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"widths_ratio must be a positive float or a sequence of them, got {est.widths_ratio!r}."
        ) from err
    if not np.all(np.isfinite(values)) or not np.all(values > 0):
        raise ValueError(
            f"widths_ratio must be positive and finite (it is the width ratio nu_l), got "
            f"{est.widths_ratio!r}; use a large value (e.g. 1e6) to approach the NNGP."
        )
    if values.size not in (1, est.n_layers):
        raise ValueError(
            f"widths_ratio has {values.size} entries but n_layers={est.n_layers}; pass one value "
            "or one per layer."
        )
    if est.kernel not in GRAM_KERNELS:
        raise ValueError(f"kernel must be one of {GRAM_KERNELS}, got {est.kernel!r}.")
    if est.n_inducing is not None:
        BaseGPRegressor._check_positive_int("n_inducing", est.n_inducing, minimum=1)
    if not isinstance(est.inducing, str) or est.inducing not in INDUCING_METHODS:
        raise ValueError(f"inducing must be one of {INDUCING_METHODS}, got {est.inducing!r}.")
    if est.batch_size is not None:
        BaseGPRegressor._check_positive_int("batch_size", est.batch_size, minimum=1)
        if est.n_inducing is None:
            raise ValueError(
                "batch_size needs the sparse DKM: the full DKM's objective couples all training "
                "points; set n_inducing (e.g. n_inducing=100) to train on minibatches."
            )
    BaseGPRegressor._check_positive_int("max_iter", est.max_iter, minimum=0)
    if not isinstance(est.joint_hyperparameters, (bool, np.bool_)):
        raise ValueError(
            f"joint_hyperparameters must be True or False, got {est.joint_hyperparameters!r}."
        )
    if not isinstance(est.lr, numbers.Real) or not est.lr > 0:
        raise ValueError(f"lr must be a positive float, got {est.lr!r}.")
    return resolve_device(est.device)


def _nu(est) -> float | list[float]:
    values = np.atleast_1d(np.asarray(est.widths_ratio, dtype=np.float64))
    return float(values[0]) if values.size == 1 else [float(v) for v in values]


def _initial_inducing(est, X: torch.Tensor, gen: torch.Generator) -> torch.Tensor:  # (M, d)
    """The sparse DKM's starting inducing inputs, chosen by ``est.inducing``; the kernel-based
    rules look at the NNGP kernel the DKM starts from."""
    kernel = NNGPGramKernel(est.kernel, int(est.n_layers), ard_num_dims=X.shape[1]).to(X)
    return select_inducing(X, kernel, int(est.n_inducing), est.inducing, gen).points


def _check_size(est, n: int) -> None:
    if est.n_inducing is None and n > MAX_FULL_SAMPLES:
        raise ValueError(
            f"The full DKM learns a dense {n} x {n} Gram per layer; it is limited to "
            f"n <= {MAX_FULL_SAMPLES} samples. Use the sparse DKM instead: set n_inducing "
            "(e.g. n_inducing=200) and optionally batch_size."
        )
    if est.n_inducing is not None and est.n_inducing > n:
        raise ValueError(
            f"n_inducing={est.n_inducing} exceeds the number of training samples ({n}); "
            "use n_inducing <= n_samples (or n_inducing=None for the full DKM)."
        )


def _batches(n: int, batch_size: int | None, gen: torch.Generator):
    """An endless stream of index batches, reshuffled every epoch."""
    size = n if batch_size is None else min(batch_size, n)
    while True:
        perm = torch.randperm(n, generator=gen) if size < n else torch.arange(n)
        for start in range(0, n - size + 1, size):
            yield perm[start : start + size]


def _opts(est, n_steps: int, use_lbfgs: bool) -> dict:
    tol = getattr(est, "tol", None)  # DKMClassifier's stopping rule for its Monte Carlo ELBO
    return dict(
        optimizer="lbfgs" if use_lbfgs else "adam",
        max_iter=n_steps,
        lr=None if use_lbfgs else est.lr,
        verbose=est.verbose,
        min_improvement=None if tol is None or not use_lbfgs else float(tol),
    )


def _nngp_stage(
    model, points, loss, est, desc: str, n_steps: int, use_lbfgs: bool
) -> OptimizeResult:
    """Stage 1: the hyperparameters (and q(f), inducing inputs) by the nu = infinity objective
    (NNGP marginal likelihood or ELBO); then the Grams restart at the NNGP's for them."""
    factors = {id(p) for p in model.factors}
    model.tied = True
    try:
        result = optimize(
            loss,
            [p for p in model.parameters() if id(p) not in factors],
            desc=desc + " (NNGP stage)",
            **_opts(est, n_steps, use_lbfgs),
        )
    finally:
        model.tied = False
    with torch.no_grad():
        model.reset_grams(points())
    return result


def _gram_stage(model, loss, est, desc: str, n_steps: int, use_lbfgs: bool) -> OptimizeResult:
    """Stage 2: the Grams (and q(f), inducing inputs) by the DKM objective.

    The noise stays at its stage-1 value; so do the kernel hyperparameters and output scale
    unless ``est.joint_hyperparameters``.
    """
    fixed = [model.raw_noise] if model.raw_noise is not None else []
    if not est.joint_hyperparameters:
        fixed = model.hyperparameters()
    fixed_ids = {id(p) for p in fixed}
    return optimize(
        loss,
        [p for p in model.parameters() if id(p) not in fixed_ids],
        desc=desc + " (Gram stage)",
        **_opts(est, n_steps, use_lbfgs),
    )


def _two_stage(
    model, points, loss, est, desc: str, n_steps: int, use_lbfgs: bool
) -> tuple[OptimizeResult, OptimizeResult]:
    """Fit hyperparameters with the Grams tied to the NNGP's, then learn the Grams.

    Stage 1 maximises the nu = infinity objective (the NNGP marginal likelihood or ELBO) over the
    hyperparameters (and q(f), inducing inputs). Stage 2 restarts the Grams at the NNGP's for
    the fitted hyperparameters and maximises the DKM objective over them with the
    hyperparameters held at their stage-1 values (the noise always; the kernel
    hyperparameters and output scale unless ``est.joint_hyperparameters``).
    """
    first = _nngp_stage(model, points, loss, est, desc, n_steps, use_lbfgs)
    return first, _gram_stage(model, loss, est, desc, n_steps, use_lbfgs)


def _warn_two_stage(est, model, stages: tuple[OptimizeResult, OptimizeResult], use_lbfgs: bool) -> None:
    """ConvergenceWarnings for a two-stage fit that stopped at its budget or ended with a
    hyperparameter at a bound (raised outside the fits' filter of GPyTorch's UserWarnings)."""
    owner = type(est).__name__
    for stage, result in zip(("NNGP stage", "Gram stage"), stages):
        warn_if_unconverged(
            result, f"{owner} ({stage})", est.max_iter, optimizer="lbfgs" if use_lbfgs else "adam"
        )
    warn_at_bounds(parameters_at_bounds(model), owner, BaseGPRegressor._bound_hints)


def _iterations_run(stages, n: int, batch_size: int | None) -> int:
    """L-BFGS iterations, or Adam epochs, summed over the stages."""
    steps = sum(result.n_iter for result in stages)
    return steps if batch_size is None else steps // math.ceil(n / batch_size)


def _full_loss(model: DKM, X: torch.Tensor, Y: torch.Tensor):
    scale = float(Y.numel())

    def loss() -> torch.Tensor:
        try:
            return -model.objective(X, Y) / scale
        except NotPSDError:
            return torch.tensor(math.inf, dtype=X.dtype, device=X.device)

    return loss


def _cv_folds(n: int, n_folds: int, gen: torch.Generator) -> list[torch.Tensor]:
    """The held-out index sets of ``widths_ratio="auto"``: a random permutation of ``range(n)``
    drawn from ``gen``, cut into ``n_folds`` contiguous parts whose sizes differ by at most one
    (the first ``n % n_folds`` parts are one longer, as :func:`torch.tensor_split` cuts)."""
    return list(torch.tensor_split(torch.randperm(n, generator=gen), n_folds))


def _select_widths_ratio(est, Xt, Yt, noise: float, learn_noise: bool, gen) -> dict:
    """Choose nu from :data:`AUTO_WIDTHS_RATIOS` by K-fold cross-validated log density.

    The training points are cut into ``min(AUTO_N_FOLDS, n)`` folds (``_cv_folds``). For each
    fold, stage 1 runs once on the other points (kept in their original order), stage 2 once
    per candidate from that same start (so each is a plain two-stage fit), and every held-out
    point is scored by its log predictive density (noise included, summed over output columns).
    Returns the mean over all ``n`` held-out points for each nu (``-inf`` if any fit failed).
    """
    n = Xt.shape[0]
    if n < 3:
        raise ValueError(f"widths_ratio='auto' needs at least 3 training samples, got {n}.")
    folds = _cv_folds(n, min(AUTO_N_FOLDS, n), gen)
    totals = dict.fromkeys(AUTO_WIDTHS_RATIOS, 0.0)
    desc = "DKMRegressor (choosing widths_ratio)"
    for k, val in enumerate(folds):
        keep = torch.ones(n, dtype=torch.bool)
        keep[val] = False
        tr = keep.nonzero().ravel().to(Xt.device)
        val = val.to(Xt.device)
        Xtr, Ytr, Xv, Yv = Xt[tr], Yt[tr], Xt[val], Yt[val]
        model = DKM(Xtr, est.kernel, int(est.n_layers), AUTO_WIDTHS_RATIOS[0], noise, learn_noise)
        loss = _full_loss(model, Xtr, Ytr)
        _nngp_stage(model, lambda X=Xtr: X, loss, est, f"{desc} fold {k}", est.max_iter, True)
        start = {key: v.clone() for key, v in model.state_dict().items()}
        for nu in AUTO_WIDTHS_RATIOS:
            model.load_state_dict(start)
            model.nus = [nu] * model.n_layers
            _gram_stage(model, loss, est, f"{desc} fold {k} nu={nu:g}", est.max_iter, True)
            try:
                mean, var = model.predict(Xtr, Ytr, Xv)
                lpd = float(gaussian_log_density(Yv, mean, var[:, None] + model.noise).sum())
            except NotPSDError:
                lpd = -math.inf
            totals[nu] += lpd if math.isfinite(lpd) else -math.inf
    return {nu: total / n for nu, total in totals.items()}


def _best_widths_ratio(scores: dict) -> float:
    """The best-scoring nu; ties (and all ``-inf``) go to the largest, closest to the NNGP."""
    return max(reversed(list(scores)), key=scores.get)


def _sparse_loss(model: SparseDKM, X, Y, batch_size, gen):
    n = X.shape[0]
    stream = _batches(n, batch_size, gen)
    # Full batch: the same Monte Carlo draws at every call (common random numbers), so the
    # objective is deterministic and L-BFGS applies.
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))

    def loss() -> torch.Tensor:
        idx = next(stream)
        g = gen if batch_size is not None else torch.Generator(device=X.device).manual_seed(seed)
        try:
            return -model.elbo(X[idx], Y[idx], n_total=n, generator=g) / n
        except NotPSDError:
            return torch.tensor(math.inf, dtype=X.dtype, device=X.device)

    return loss


class DKMRegressor(BaseGPRegressor):
    r"""Deep kernel machine regression (full or sparse inducing-point).

    A DKM learns one Gram matrix per layer by maximising

    .. math::

        \mathcal{L}(G_1, \dots, G_L) = \log P(Y \mid G_L)
            - \sum_{l=1}^{L} \nu_l\, \mathrm{KL}\big(\mathcal{N}(0, G_l) \,\|\,
              \mathcal{N}(0, K(G_{l-1}))\big),

    with :math:`G_0 = X W X^\top / d + b` and :math:`K` a kernel on Gram matrices (ReLU
    arc-cosine or squared exponential); the output layer is a GP with covariance
    :math:`s K(G_L) + \sigma^2 I`. The hyperparameters (input weights :math:`W`, bias :math:`b`,
    layer length-scales for ``"se"``, :math:`s`, :math:`\sigma^2`) are those of the NNGP
    with kernel :class:`~gpkern.models.dkm.NNGPGramKernel`, fitted by its marginal likelihood;
    the Grams then start at the NNGP's and are learned with the hyperparameters held fixed, so
    that as :math:`\nu_l \to \infty` the fitted DKM is that NNGP. See
    :class:`~gpkern.models.dkm.DKM` and :class:`~gpkern.models.dkm.SparseDKM`.

    Parameters
    ----------
    n_layers : int, default=2
        Number of learned Gram layers :math:`L` (>= 1).
    widths_ratio : float, sequence of float or "auto", default=1000.0
        Width ratios :math:`\nu_l` (> 0), one for all layers or one per layer. Larger values
        keep the Grams closer to the NNGP prior; small ones let them fit the training targets
        and overfit: on MASS Boston and modeldata concrete :math:`\nu = 1` and :math:`\nu = 10`
        predict clearly worse than the NNGP (:math:`\nu \to \infty`), :math:`\nu = 100` is
        worse on some splits, and the default :math:`\nu = 1000` is within noise of the NNGP or
        better (``benchmarks/results/defaults.md``). The paper's :math:`\nu = 1` stays
        reachable by ``widths_ratio=1.0``. ``"auto"`` (full DKM only) chooses one
        :math:`\nu` for all layers from
        :data:`AUTO_WIDTHS_RATIOS` = (10, 30, 100, 300, 1000, 3000) by
        :data:`AUTO_N_FOLDS`-fold cross-validation on the training data: the points are
        shuffled (``random_state``) and cut into folds; for each fold the DKM is fitted on the
        other points once per candidate (stage 1 shared, as it does not depend on
        :math:`\nu`), the held-out points are scored by their log predictive density, and the
        candidate with the best mean over all points is refitted on all of them (ties go to the
        larger :math:`\nu`). It costs about ``n_folds + 1`` first stages and
        ``6 n_folds + 1`` second stages (about ten plain fits; not the default for that
        cost, as it chose 30 to 1000 on Boston and concrete and the default's results are
        as good). The DKM objective itself cannot choose :math:`\nu`: its maximum only grows
        as :math:`\nu` shrinks.
    kernel : {"relu", "se"}, default="relu"
        Gram-level kernel.
    n_inducing : int, optional
        ``None`` uses the full DKM (at most :data:`MAX_FULL_SAMPLES` = 3000 samples); an
        integer uses the sparse DKM with that many inducing points, initialised by
        ``inducing`` and learned.
    inducing : {"uniform", "kmeans", "greedy_variance", "rpcholesky", "kdpp"}, default="uniform"
        How the sparse DKM's inducing inputs start (:func:`gpkern.sampling.select_inducing`;
        the kernel-based rules use the NNGP kernel at its starting hyperparameters). Ignored by
        the full DKM.
    noise : float, optional
        Gaussian noise variance in normalised units; ``None`` learns it (from 0.1); a float is
        used exactly.
    normalize_y : bool, default=True
        Standardise each target column before fitting.
    normalize_X : bool or "auto", default=True
        Standardise each feature (``X_mean_``, ``X_scale_``) before the input layer
        :math:`G_0` sees it. The DKM's kernels are not shift-invariant (:math:`G_0` is an inner
        product), so centring matters as well as the scale: without it, features in
        thousandths give a nearly constant :math:`G_0` and features shifted by thousands a
        kernel dominated by the offset. ``"auto"`` means ``True`` (the DKM always builds its
        own kernel).
    max_iter : int, default=100
        L-BFGS iterations (full batch), or Adam epochs when ``batch_size`` is set, per stage.
        Fitting has two stages: the hyperparameters are first fitted with the Grams tied to
        the NNGP's (:math:`\nu = \infty`, the NNGP marginal likelihood); then the Grams
        restart at the NNGP Grams of those hyperparameters and are learned with the DKM
        objective, the hyperparameters held at their first-stage values (see
        ``joint_hyperparameters``; the noise is always held: a point estimate of :math:`G_L`
        can otherwise absorb it and collapse it, giving over-confident predictions).
    joint_hyperparameters : bool, default=False
        Re-learn the kernel hyperparameters and output scale together with the Grams in the
        second stage, by the DKM objective. The objective is then maximised jointly over the
        Grams and the prior they are penalised against, which weakens the KL terms: on a
        concrete training split the second stage at :math:`\nu = 1000` moved the layer
        length-scales from (1.02, 0.79) to (0.67, 2.12) and the output scale from 3.1 to
        5.9 while the KL terms stayed below 0.02 nats per point, and the held-out log
        density fell below the NNGP's (-0.133 against -0.126; -0.122 with the
        hyperparameters held).
    batch_size : int, optional
        Minibatch size of the sparse DKM (Adam); ``None`` trains on all points with L-BFGS.
    lr : float, default=0.01
        Adam learning rate (minibatch training only).
    random_state : int, RandomState instance or None, default=None
        Seeds the inducing-point choice, minibatches and :meth:`sample_y`'s default.
    verbose : bool, default=False
        Show a progress bar while optimising.
    device : str or torch.device, optional
        Torch device; ``None`` uses the CPU.

    Attributes
    ----------
    model_ : gpkern.models.dkm.DKM or gpkern.models.dkm.SparseDKM
        The fitted model.
    grams_ : list of ndarray
        The learned Grams :math:`G_1, \dots, G_L` at the training points (full DKM) or at the
        inducing points (sparse DKM).
    prior_grams_ : list of ndarray
        The NNGP Grams :math:`K^l(G_0)`, :math:`l = 1, \dots, L`, at the same points and the
        fitted hyperparameters.
    inducing_points_ : ndarray of shape (n_inducing, n_features) or None
        Learned inducing inputs (sparse DKM), in the units of ``X``.
    X_mean_, X_scale_ : ndarray of shape (n_features,)
        The model sees ``(X - X_mean_) / X_scale_``.
    noise_ : float
        Fitted noise variance (normalised units).
    objective_ : float
        Final DKM objective (ELBO for the sparse DKM), in the units of ``y``.
    n_iter_ : int
        Optimiser iterations (or epochs) run, summed over the two stages.
    widths_ratio_ : float or list of float
        The :math:`\nu_l` of the fitted model (the chosen one with ``widths_ratio="auto"``).
    widths_ratio_scores_ : dict or None
        With ``widths_ratio="auto"``: the cross-validated mean held-out log density per
        training point (normalised units, summed over targets) of each candidate;
        ``None`` otherwise.
    n_features_in_ : int
        Number of features seen in ``fit``.

    Examples
    --------
    >>> import numpy as np
    >>> from gpkern.estimators import DKMRegressor
    >>> rng = np.random.default_rng(0)
    >>> X = rng.uniform(-2, 2, (40, 1))
    >>> y = np.sin(2 * X[:, 0]) + 0.1 * rng.standard_normal(40)
    >>> dkm = DKMRegressor(n_layers=2, max_iter=20, random_state=0).fit(X, y)
    >>> mean, std = dkm.predict(X[:3], return_std=True)
    >>> mean.shape, std.shape
    ((3,), (3,))
    """

    def __init__(
        self,
        n_layers=2,
        widths_ratio=1000.0,
        kernel="relu",
        n_inducing=None,
        inducing="uniform",
        noise=None,
        normalize_y=True,
        normalize_X=True,
        max_iter=100,
        joint_hyperparameters=False,
        batch_size=None,
        lr=0.01,
        random_state=None,
        verbose=False,
        device=None,
    ):
        self.n_layers = n_layers
        self.widths_ratio = widths_ratio
        self.kernel = kernel
        self.n_inducing = n_inducing
        self.inducing = inducing
        self.noise = noise
        self.normalize_y = normalize_y
        self.normalize_X = normalize_X
        self.max_iter = max_iter
        self.joint_hyperparameters = joint_hyperparameters
        self.batch_size = batch_size
        self.lr = lr
        self.random_state = random_state
        self.verbose = verbose
        self.device = device

    def _builds_own_kernel(self) -> bool:
        return True

    def _check_params(self) -> torch.device:
        if self.noise is not None and (
            not isinstance(self.noise, numbers.Real)
            or not math.isfinite(self.noise)
            or self.noise <= 0
        ):
            raise ValueError(
                f"noise must be a positive float or None (learned), got {self.noise!r}."
            )
        return _check_common(self)

    def fit(self, X, y):
        """Fit the DKM: learn the Grams and hyperparameters by maximising the DKM objective.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,) or (n_samples, n_targets)

        Returns
        -------
        self : DKMRegressor

        Raises
        ------
        ValueError
            Bad parameters or input, more than 3000 samples for the full DKM, or
            ``n_inducing`` larger than the number of samples.

        Warns
        -----
        sklearn.exceptions.ConvergenceWarning
            When a stage's optimiser stops at ``max_iter`` before meeting its tolerance, or a learned
            hyperparameter ends at a bound (the noise at its floor).
        """
        device = self._check_params()
        state = self._validate_train(X, y)
        n = state["X_train_"].shape[0]
        _check_size(self, n)
        Xt = self._tensor(state["X_norm"], device)
        Yt = self._tensor(state["Y_norm"], device)
        gen = torch_generator(self.random_state)
        noise = 0.1 if self.noise is None else float(self.noise)
        learn_noise = self.noise is None
        scale = float(Yt.numel())
        scores = None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # GPyTorch's float64 hints
            if isinstance(self.widths_ratio, str):
                scores = _select_widths_ratio(self, Xt, Yt, noise, learn_noise, gen)
                nu = _best_widths_ratio(scores)
            else:
                nu = _nu(self)
            if self.n_inducing is None:
                model = DKM(Xt, self.kernel, int(self.n_layers), nu, noise, learn_noise)
                loss = _full_loss(model, Xt, Yt)
                stages = _two_stage(
                    model, lambda: Xt, loss, self, "DKMRegressor", self.max_iter, use_lbfgs=True
                )
                obj_norm = -stages[1].loss * scale
                points = Xt
                inducing = None
            else:
                model = SparseDKM(
                    _initial_inducing(self, Xt, gen),
                    Yt.shape[1],
                    self.kernel,
                    int(self.n_layers),
                    nu,
                    "gaussian",
                    noise,
                    learn_noise,
                ).to(device)
                stages = _two_stage(
                    model,
                    lambda: model.inducing.detach(),
                    _sparse_loss(model, Xt, Yt, self.batch_size, gen),
                    self,
                    "DKMRegressor",
                    self.max_iter
                    * (1 if self.batch_size is None else math.ceil(n / self.batch_size)),
                    use_lbfgs=self.batch_size is None,
                )
                with torch.no_grad():
                    obj_norm = float(model.elbo(Xt, Yt, n_total=n))
                points = model.inducing.detach()
                inducing = points.cpu().numpy() * state["X_scale_"] + state["X_mean_"]
        if not math.isfinite(obj_norm):
            raise NotPSDError(
                "The DKM objective is not finite at any visited point; try a larger noise."
            )
        _warn_two_stage(self, model, stages, self.n_inducing is None or self.batch_size is None)
        with torch.no_grad():
            grams = [G.cpu().numpy() for G in model.grams()]
            prior = [G.cpu().numpy() for G in model.prior_grams(points)[1:]]
        state.update(
            model_=model,
            grams_=grams,
            prior_grams_=prior,
            inducing_points_=inducing,
            noise_=float(model.noise.detach()),
            objective_=obj_norm - n * float(np.log(state["_y_std"]).sum()),
            n_iter_=_iterations_run(stages, n, self.batch_size if self.n_inducing else None),
            widths_ratio_=model.nus[0] if len(set(model.nus)) == 1 else list(model.nus),
            widths_ratio_scores_=scores,
            _Xt=Xt,
            _Yt=Yt,
            _device=device,
        )
        self._store(state)
        return self

    # -- prediction ---------------------------------------------------------------------------
    def _latent(self, X, full_cov: bool):
        X = self._validate_test(X)
        Xs = self._tensor(X, self._device)
        if isinstance(self.model_, DKM):
            mean, var = self.model_.predict(self._Xt, self._Yt, Xs, full_cov=full_cov)
            var = var[None] if full_cov else var[:, None].expand(-1, mean.shape[1])
        else:
            mean, var = self.model_.predict(Xs, full_cov=full_cov)  # (m, t), (m, t) | (c, m, m)
        var = var.cpu().numpy()
        return mean.cpu().numpy() * self._y_std + self._y_mean, var.transpose(1, 2, 0) if full_cov else var

    def log_marginal_likelihood(self):
        """The fitted DKM objective (its ELBO for the sparse DKM), in the units of ``y``.

        It equals the GP log marginal likelihood of :math:`Y` given :math:`G_L` minus the
        weighted KL terms; with :math:`\\nu \\to \\infty` it tends to the NNGP's log marginal
        likelihood.
        """
        check_is_fitted(self)
        return self.objective_


class DKMClassifier(BaseGPClassifier):
    r"""Deep kernel machine classification with a softmax likelihood.

    One latent output per class shares the DKM's last-layer kernel :math:`s K(G_L)`; the output
    layer is variational, :math:`q(f_i) = \mathcal{N}(\mu_c, A_c)` per class, and the softmax
    expectation is estimated by Monte Carlo. With ``n_inducing=None`` the inducing points are the
    training points themselves (the full DKM, at most 3000 samples); an integer uses that many
    learned inducing points (the sparse DKM, linear in ``n`` per epoch).

    Parameters
    ----------
    n_layers : int, default=2
        Number of learned Gram layers (>= 1).
    widths_ratio : float or sequence of float, default=1000.0
        Width ratios :math:`\nu_l` (> 0). On wine and iris :math:`\nu` from 1 to 1000 changes
        the held-out log loss by less than 0.01 nats; the default follows
        :class:`DKMRegressor`, where small values overfit the Grams
        (``benchmarks/results/defaults.md``). The paper's :math:`\nu = 1` is
        ``widths_ratio=1.0``.
    kernel : {"relu", "se"}, default="relu"
        Gram-level kernel.
    n_inducing : int, optional
        ``None``: full DKM; an integer: sparse DKM with that many inducing points.
    inducing : {"uniform", "kmeans", "greedy_variance", "rpcholesky", "kdpp"}, default="uniform"
        How the sparse DKM's inducing inputs start (see :class:`DKMRegressor`).
    normalize_X : bool or "auto", default=True
        Standardise each feature before the input layer sees it (see :class:`DKMRegressor`).
    max_iter : int, default=100
        L-BFGS iterations (full batch, with fixed Monte Carlo draws) or Adam epochs (with
        ``batch_size``), per stage: hyperparameters with the Grams tied to the NNGP's first,
        then the Grams with the hyperparameters held (as in :class:`DKMRegressor`).
    joint_hyperparameters : bool, default=False
        Re-learn the kernel hyperparameters and output scale with the Grams in the second
        stage (see :class:`DKMRegressor`).
    batch_size : int, optional
        Minibatch size (sparse DKM only).
    lr : float, default=0.05
        Adam learning rate (minibatch training only).
    n_mc : int, default=8
        Monte Carlo samples of the softmax expectation during training.
    tol : float or None, default=1e-4
        Full-batch (L-BFGS) training: a stage also stops, as converged, once 10 consecutive
        evaluations have each failed to lower its best objective (minus the ELBO per training
        point, a Monte Carlo estimate with ``n_mc`` fixed draws) by more than ``tol``, the rule
        of scikit-learn's MLP. Past that point the held-out log loss no longer improves: on
        breast_cancer it was -0.094 after 11 evaluations of the first stage and -0.122 after
        all 200 of both stages at ``max_iter=100``, while the objective fell by less than
        3e-5 per evaluation. ``None`` runs each stage to L-BFGS's own tolerance (1e-9) or
        ``max_iter``.
    random_state : int, RandomState instance or None, default=None
        Seeds inducing points, minibatches, Monte Carlo draws and :meth:`predict_proba`.
    verbose : bool, default=False
        Show a progress bar while optimising.
    device : str or torch.device, optional
        Torch device; ``None`` uses the CPU.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        Class labels.
    model_ : gpkern.models.dkm.SparseDKM
        The fitted model.
    grams_ : list of ndarray
        Learned Grams at the inducing (or training) points.
    prior_grams_ : list of ndarray
        NNGP Grams at the same points and the fitted hyperparameters.
    n_iter_ : int
        Optimiser iterations (or epochs) run, summed over the two stages.
    n_features_in_ : int
        Number of features seen in ``fit``.

    Examples
    --------
    >>> import numpy as np
    >>> from gpkern.estimators import DKMClassifier
    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((60, 2))
    >>> y = (X[:, 0] * X[:, 1] > 0).astype(int)
    >>> clf = DKMClassifier(max_iter=50, random_state=0).fit(X, y)
    >>> clf.predict_proba(X[:2]).shape
    (2, 2)
    """

    #: Monte Carlo samples averaged by :meth:`predict_proba`.
    n_mc_predict = 256

    def __init__(
        self,
        n_layers=2,
        widths_ratio=1000.0,
        kernel="relu",
        n_inducing=None,
        inducing="uniform",
        normalize_X=True,
        max_iter=100,
        joint_hyperparameters=False,
        batch_size=None,
        lr=0.05,
        n_mc=8,
        tol=1e-4,
        random_state=None,
        verbose=False,
        device=None,
    ):
        self.n_layers = n_layers
        self.widths_ratio = widths_ratio
        self.kernel = kernel
        self.n_inducing = n_inducing
        self.inducing = inducing
        self.normalize_X = normalize_X
        self.max_iter = max_iter
        self.joint_hyperparameters = joint_hyperparameters
        self.batch_size = batch_size
        self.lr = lr
        self.n_mc = n_mc
        self.tol = tol
        self.random_state = random_state
        self.verbose = verbose
        self.device = device

    def _builds_own_kernel(self) -> bool:
        return True

    def fit(self, X, y):
        """Fit the DKM classifier.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,)
            Class labels (at least two classes).

        Returns
        -------
        self : DKMClassifier

        Raises
        ------
        ValueError
            Bad parameters or input, a single class, more than 3000 samples for the full DKM,
            or ``n_inducing`` larger than the number of samples.

        Warns
        -----
        sklearn.exceptions.ConvergenceWarning
            When a stage's optimiser stops at ``max_iter`` before meeting its tolerance, or a learned
            hyperparameter ends at a bound.
        """
        device = _check_common(self)
        BaseGPRegressor._check_positive_int("n_mc", self.n_mc, minimum=1)
        if self.tol is not None and (
            not isinstance(self.tol, numbers.Real) or not math.isfinite(self.tol) or self.tol < 0
        ):
            raise ValueError(f"tol must be a non-negative float or None, got {self.tol!r}.")
        X, y, new = validate_training_data(self, X, y, dtype=np.float64, ensure_min_samples=2)
        classes, codes = encode_class_labels(self, y)
        n = X.shape[0]
        _check_size(self, n)
        scaling = self._input_scaling(X)
        Xt = torch.tensor(self._apply_scaling(X, scaling), dtype=torch.float64, device=device)
        Yt = torch.tensor(codes, dtype=torch.float64, device=device)[:, None]
        gen = torch_generator(self.random_state)
        full = self.n_inducing is None
        Z = Xt if full else _initial_inducing(self, Xt, gen)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            model = SparseDKM(
                Z,
                len(classes),
                self.kernel,
                int(self.n_layers),
                _nu(self),
                likelihood="softmax",
                learn_inducing=not full,
                n_mc=int(self.n_mc),
            ).to(device)
            steps = self.max_iter * (
                1 if self.batch_size is None else math.ceil(n / self.batch_size)
            )
            stages = _two_stage(
                model,
                lambda: model.inducing.detach(),
                _sparse_loss(model, Xt, Yt, self.batch_size, gen),
                self,
                "DKMClassifier",
                steps,
                use_lbfgs=self.batch_size is None,
            )
        _warn_two_stage(self, model, stages, self.batch_size is None)
        with torch.no_grad():
            grams = [G.cpu().numpy() for G in model.grams()]
            prior = [G.cpu().numpy() for G in model.prior_grams(model.inducing)[1:]]
        commit_feature_attrs(self, new)
        self.X_mean_, self.X_scale_ = scaling["X_mean_"], scaling["X_scale_"]
        self.classes_ = classes
        self.model_ = model
        self.grams_ = grams
        self.prior_grams_ = prior
        self.n_iter_ = _iterations_run(stages, n, self.batch_size)
        self._device = device
        self._seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
        return self

    def predict_proba(self, X):
        """Class probabilities: the softmax averaged over the latent predictive distribution.

        Parameters
        ----------
        X : array-like of shape (n_queries, n_features)

        Returns
        -------
        proba : ndarray of shape (n_queries, n_classes)
        """
        check_is_fitted(self)
        X = self._scaled(validate_data(self, X, dtype=np.float64, reset=False))
        Xs = torch.tensor(X, dtype=torch.float64, device=self._device)
        mean, var = self.model_.predict(Xs)
        gen = torch.Generator(device=self._device).manual_seed(self._seed)
        # One set of draws shared by all rows: predictions do not depend on row order or batch.
        eps = torch.randn(
            (self.n_mc_predict, 1, mean.shape[1]),
            generator=gen,
            dtype=mean.dtype,
            device=mean.device,
        )
        probs = torch.softmax(mean + var.sqrt() * eps, dim=-1).mean(0)
        return probs.cpu().numpy()
