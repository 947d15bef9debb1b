"""Every estimator's predictions do not depend on the units of the inputs (``normalize_X``)."""

import gpytorch
import numpy as np
import pytest

from gpkern.estimators import (
    DKMClassifier,
    DKMRegressor,
    GPRegressor,
    GridGPRegressor,
    KernelClassifier,
    MultipleKernelRegressor,
    NystroemFeatures,
    ScaleMixtureClassifier,
    ScaleMixtureRegressor,
    SparseGPRegressor,
    StudentTProcessRegressor,
    WeightedLeastSquaresRegressor,
)
from gpkern.estimators.base import input_scaling

# Each feature rescaled or shifted: the fitted model must predict the same.
UNITS = {
    "x1e-3": lambda A: A * 1e-3,
    "x1e3": lambda A: A * 1e3,
    "+1e3": lambda A: A + 1e3,
}

# Standardisation maps all four inputs to the same numbers up to rounding (~1e-13); the
# optimisers amplify that to at most ~1e-7 here. Tolerances leave a margin of ~100.
REG_TOL = 1e-5
PROBA_TOL = 1e-4


def _regression_data():
    rng = np.random.default_rng(0)
    X = rng.uniform(0, 5, (40, 2))
    y = np.sin(X[:, 0]) + 0.5 * X[:, 1] + 0.1 * rng.standard_normal(40)
    Xs = rng.uniform(0, 5, (10, 2))
    return X, y, Xs, np.sin(Xs[:, 0]) + 0.5 * Xs[:, 1]


def _grid_data():
    g1, g2 = np.linspace(0, 5, 8), np.linspace(0, 3, 6)
    X = np.stack(np.meshgrid(g1, g2, indexing="ij"), -1).reshape(-1, 2)
    y = np.sin(X[:, 0]) + np.cos(X[:, 1])
    Xs = np.random.default_rng(1).uniform(0, 4, (10, 2))
    return X, y, Xs, np.sin(Xs[:, 0]) + np.cos(Xs[:, 1])


REGRESSORS = {
    "GPRegressor": lambda: GPRegressor(max_iter=50, random_state=0),
    "GridGPRegressor": lambda: GridGPRegressor(max_iter=30, random_state=0),
    "MultipleKernelRegressor": lambda: MultipleKernelRegressor(
        n_components=20, max_iter=30, random_state=0
    ),
    "StudentTProcessRegressor": lambda: StudentTProcessRegressor(max_iter=50, random_state=0),
    "ScaleMixtureRegressor": lambda: ScaleMixtureRegressor(max_iter=20, random_state=0),
    "DKMRegressor": lambda: DKMRegressor(max_iter=20, random_state=0),
    "SparseGPRegressor": lambda: SparseGPRegressor(n_inducing=15, max_iter=50, random_state=0),
}

# Estimators without a predictive distribution: compared on what they return.
POINT_ESTIMATORS = {
    "WeightedLeastSquaresRegressor": lambda X, y, Xs: (
        WeightedLeastSquaresRegressor(degree=3).fit(X, y).predict(Xs)
    ),
    "NystroemFeatures": lambda X, y, Xs: (
        NystroemFeatures(n_components=10, random_state=0).fit(X).transform(Xs)
    ),
}

CLASSIFIERS = {
    "ScaleMixtureClassifier": lambda: ScaleMixtureClassifier(
        n_inducing=20, max_iter=60, random_state=0
    ),
    "DKMClassifier": lambda: DKMClassifier(max_iter=20, random_state=0),
    "KernelClassifier": lambda: KernelClassifier(),
}


def test_every_estimator_is_covered():
    import gpkern.estimators as est

    assert set(est.__all__) == set(REGRESSORS) | set(CLASSIFIERS) | set(POINT_ESTIMATORS)


@pytest.mark.parametrize("name", list(POINT_ESTIMATORS))
def test_point_estimators_do_not_depend_on_input_units(name):
    X, y, Xs, _ = _regression_data()
    ref = POINT_ESTIMATORS[name](X, y, Xs)
    for unit, f in UNITS.items():
        out = POINT_ESTIMATORS[name](f(X), y, f(Xs))
        np.testing.assert_allclose(np.abs(out), np.abs(ref), rtol=REG_TOL, atol=REG_TOL, err_msg=unit)


@pytest.mark.parametrize("name", list(REGRESSORS))
def test_regressor_predictions_do_not_depend_on_input_units(name):
    X, y, Xs, ys = _grid_data() if name == "GridGPRegressor" else _regression_data()
    ref = REGRESSORS[name]().fit(X, y)
    mean, std = ref.predict(Xs, return_std=True)
    assert np.all(std > 0)
    for unit, f in UNITS.items():
        est = REGRESSORS[name]().fit(f(X), y)
        m, s = est.predict(f(Xs), return_std=True)
        np.testing.assert_allclose(m, mean, rtol=REG_TOL, atol=REG_TOL, err_msg=unit)
        np.testing.assert_allclose(s, std, rtol=REG_TOL, atol=REG_TOL, err_msg=unit)
        np.testing.assert_allclose(
            est.log_predictive_density(f(Xs), ys),
            ref.log_predictive_density(Xs, ys),
            rtol=REG_TOL,
            atol=REG_TOL,
            err_msg=unit,
        )


@pytest.mark.parametrize("name", list(CLASSIFIERS))
def test_classifier_predictions_do_not_depend_on_input_units(name):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((60, 2)) + 3.0
    y = ((X[:, 0] - 3) * (X[:, 1] - 3) > 0).astype(int)
    ref = CLASSIFIERS[name]().fit(X, y)
    assert ref.score(X, y) > 0.9  # the reference fit learned the task
    score = ref.predict_proba if hasattr(ref, "predict_proba") else ref.decision_function
    expected = score(X)
    for unit, f in UNITS.items():
        est = CLASSIFIERS[name]().fit(f(X), y)
        np.testing.assert_array_equal(est.predict(f(X)), ref.predict(X), err_msg=unit)
        got = est.predict_proba(f(X)) if hasattr(est, "predict_proba") else est.decision_function(f(X))
        np.testing.assert_allclose(got, expected, rtol=PROBA_TOL, atol=PROBA_TOL, err_msg=unit)


def test_scaling_matches_hand_standardised_inputs_and_handles_constant_columns():
    # Independent reference: a GP with the same user kernel fitted on hand-standardised inputs.
    rng = np.random.default_rng(3)
    X = np.column_stack([rng.uniform(100, 200, 30), np.full(30, 7.0), rng.normal(0, 1e-3, 30)])
    y = np.sin(X[:, 0] / 20) + 1e3 * X[:, 2]
    Xs = X[:5] + 0.5
    kernel = gpytorch.kernels.ScaleKernel(gpytorch.kernels.RBFKernel(ard_num_dims=3))
    gp = GPRegressor(kernel=kernel, normalize_X=True, max_iter=20).fit(X, y)
    np.testing.assert_allclose(gp.X_mean_, X.mean(0))
    np.testing.assert_allclose(gp.X_scale_, [X[:, 0].std(), 1.0, X[:, 2].std()])
    Z = (X - X.mean(0)) / gp.X_scale_
    assert np.all(Z[:, 1] == 0)  # the constant column maps to zeros, not to NaN
    by_hand = GPRegressor(kernel=kernel, max_iter=20).fit(Z, y)
    np.testing.assert_array_equal(by_hand.X_mean_, np.zeros(3))
    np.testing.assert_array_equal(by_hand.X_scale_, np.ones(3))
    np.testing.assert_allclose(
        gp.predict(Xs), by_hand.predict((Xs - X.mean(0)) / gp.X_scale_), rtol=1e-8, atol=1e-10
    )
    # Rounding-level spread (a "constant" stored as 0.1 + tiny) counts as constant.
    mean, scale = input_scaling(np.array([[0.1], [0.1 + 1e-17], [0.1]]), True)
    assert scale[0] == 1.0


def test_user_kernel_keeps_the_units_of_x_by_default():
    # A fixed user kernel means what it says: the posterior is the closed form on raw inputs.
    rng = np.random.default_rng(4)
    X = rng.uniform(0, 50, (20, 1))
    y = np.sin(X[:, 0] / 5)
    kernel = gpytorch.kernels.RBFKernel()
    kernel.lengthscale = 5.0
    gp = GPRegressor(kernel=kernel, noise=1e-2, normalize_y=False, optimizer=None).fit(X, y)
    Xs = np.linspace(0, 50, 7)[:, None]
    K = np.exp(-0.5 * (X - X.T) ** 2 / 25.0)
    Ks = np.exp(-0.5 * (Xs - X.T) ** 2 / 25.0)
    np.testing.assert_allclose(gp.predict(Xs), Ks @ np.linalg.solve(K + 1e-2 * np.eye(20), y), atol=1e-9)
    np.testing.assert_array_equal(gp.X_scale_, np.ones(1))
    # normalize_X=True: the same length-scale now counts in standard deviations of X.
    std = GPRegressor(kernel=kernel, noise=1e-2, normalize_y=False, normalize_X=True, optimizer=None)
    std.fit(X, y)
    Ks2 = np.exp(-0.5 * ((Xs - X.T) / X.std()) ** 2 / 25.0)
    K2 = np.exp(-0.5 * ((X - X.T) / X.std()) ** 2 / 25.0)
    np.testing.assert_allclose(
        std.predict(Xs), Ks2 @ np.linalg.solve(K2 + 1e-2 * np.eye(20), y), atol=1e-9
    )


def test_grid_axes_are_standardised_and_reported_in_the_units_of_x():
    X, y, _, _ = _grid_data()
    ref = GridGPRegressor(max_iter=20, random_state=0).fit(X, y)
    assert ref.backend_ == "kronecker"
    g = [np.linspace(0, 5, 5), np.linspace(0, 3, 4)]
    for f in UNITS.values():
        est = GridGPRegressor(max_iter=20, random_state=0).fit(f(X), y)
        np.testing.assert_allclose(est.grid_[0], f(np.linspace(0, 5, 8)))
        np.testing.assert_allclose(
            est.predict_grid([f(a) for a in g]), ref.predict_grid(g), rtol=REG_TOL, atol=REG_TOL
        )


def test_inducing_points_are_reported_in_the_units_of_x():
    rng = np.random.default_rng(5)
    X = rng.uniform(1e3, 2e3, (30, 2))
    y = (X[:, 0] > 1.5e3).astype(int)
    clf = ScaleMixtureClassifier(n_inducing=10, max_iter=0, random_state=0).fit(X, y)
    # With no optimisation steps they are still the training points they started at.
    assert all(np.isclose(X, z).all(1).any() for z in clf.inducing_points_)
    reg = DKMRegressor(n_inducing=10, max_iter=0, random_state=0).fit(X, X[:, 0] / 1e3)
    assert all(np.isclose(X, z).all(1).any() for z in reg.inducing_points_)


@pytest.mark.parametrize("bad", ["yes", None, 1.5])
def test_bad_normalize_x_is_refused_before_any_state_changes(bad):
    X, y, _, _ = _regression_data()
    gp = GPRegressor(max_iter=2).fit(X, y)
    before = gp.X_train_
    gp.set_params(normalize_X=bad)
    with pytest.raises(ValueError, match="normalize_X"):
        gp.fit(X[:10] + 1, y[:10])
    assert gp.X_train_ is before
    with pytest.raises(ValueError, match="normalize_X"):
        KernelClassifier(normalize_X=bad).fit(X, (y > 1).astype(int))



def test_a_fitted_kernel_passed_on_keeps_its_input_standardisation():
    X, y, Xs, _ = _regression_data()
    X = X * 1e3 + 5.0  # units where the raw and the standardised kernels differ a lot
    Xs = Xs * 1e3 + 5.0
    gp = GPRegressor(max_iter=30, random_state=0).fit(X, y)
    mean, std = gp.predict(Xs, return_std=True)
    # the fitted kernel on all the data, hyperparameters fixed: the same GP
    again = GPRegressor(kernel=gp.kernel_, noise=gp.noise_, optimizer=None).fit(X, y)
    np.testing.assert_array_equal(again.X_mean_, gp.X_mean_)
    m2, s2 = again.predict(Xs, return_std=True)
    np.testing.assert_allclose(m2, mean, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(s2, std, rtol=1e-8, atol=1e-10)
    # a kernel learned on a subset is applied to the whole set through the subset's map
    sub = GPRegressor(max_iter=30, random_state=0).fit(X[:25], y[:25])
    big = GPRegressor(kernel=sub.kernel_, noise=sub.noise_, optimizer=None).fit(X, y)
    np.testing.assert_array_equal(big.X_scale_, sub.X_scale_)
    # normalize_X=False is the caller's explicit choice: raw units
    raw = GPRegressor(kernel=gp.kernel_, noise=gp.noise_, optimizer=None, normalize_X=False)
    assert np.all(raw.fit(X, y).X_scale_ == 1.0)
