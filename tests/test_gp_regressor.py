"""GPRegressor: scikit-learn conformance, dense-oracle equality, learning, bad input."""

from __future__ import annotations

import warnings

import gpytorch
import numpy as np
import pytest
import torch
from sklearn.exceptions import NotFittedError
from sklearn.utils.estimator_checks import parametrize_with_checks

from conftest import dense_gp_reference
from gpkern.estimators import GPRegressor
from gpkern.exceptions import NotPSDError, NumericalWarning


@parametrize_with_checks([GPRegressor(max_iter=30, random_state=0)])
def test_sklearn_compatible(estimator, check):
    check(estimator)


def _rbf_kernel(lengthscale: float, outputscale: float) -> gpytorch.kernels.Kernel:
    k = gpytorch.kernels.ScaleKernel(gpytorch.kernels.RBFKernel()).double()
    k.base_kernel.lengthscale = lengthscale
    k.outputscale = outputscale
    return k


def _np_rbf(A, B, lengthscale, outputscale):
    d2 = ((A[:, None, :] - B[None, :, :]) ** 2).sum(-1)
    return outputscale * np.exp(-0.5 * d2 / lengthscale**2)


@pytest.mark.parametrize("normalize_y", [False, True])
def test_fixed_hyperparameters_match_dense_reference(rng, normalize_y):
    X = rng.uniform(-2, 2, (30, 2))
    y = np.sin(X[:, 0]) * np.cos(X[:, 1]) + 0.1 * rng.standard_normal(30)
    Xs = rng.uniform(-2, 2, (7, 2))
    ell, s2, noise = 0.8, 1.3, 0.05
    gp = GPRegressor(_rbf_kernel(ell, s2), noise=noise, optimizer=None, normalize_y=normalize_y).fit(X, y)

    m, sd = (y.mean(), y.std()) if normalize_y else (0.0, 1.0)
    K, Ks, Kss = _np_rbf(X, X, ell, s2), _np_rbf(Xs, X, ell, s2), _np_rbf(Xs, Xs, ell, s2)
    mean, var, lml = dense_gp_reference(K, Ks, Kss, (y - m) / sd, noise)

    pred, std = gp.predict(Xs, return_std=True)
    np.testing.assert_allclose(pred, mean * sd + m, rtol=1e-8)
    np.testing.assert_allclose(std, np.sqrt(var) * sd, rtol=1e-8)
    np.testing.assert_allclose(gp.log_marginal_likelihood(), lml - len(y) * np.log(sd), rtol=1e-8)
    _, cov = gp.predict(Xs, return_cov=True)
    v = Kss - Ks @ np.linalg.solve(K + noise * np.eye(len(y)), Ks.T)
    np.testing.assert_allclose(cov, v * sd**2, rtol=1e-7, atol=1e-12)
    # Held-out density: a Gaussian with the noise added, in original units.
    ys = rng.standard_normal(7)
    tot = (var + noise) * sd**2
    ref = -0.5 * ((ys - (mean * sd + m)) ** 2 / tot + np.log(2 * np.pi * tot))
    np.testing.assert_allclose(gp.log_predictive_density(Xs, ys), ref, rtol=1e-8)


def test_multi_output_matches_independent_single_outputs(rng):
    X = rng.uniform(-2, 2, (25, 1))
    Y = np.c_[np.sin(2 * X[:, 0]), np.cos(X[:, 0])] + 0.05 * rng.standard_normal((25, 2))
    kw = dict(noise=0.01, optimizer=None)
    multi = GPRegressor(_rbf_kernel(0.7, 1.0), **kw).fit(X, Y)
    for j in range(2):
        single = GPRegressor(_rbf_kernel(0.7, 1.0), **kw).fit(X, Y[:, j])
        np.testing.assert_allclose(multi.predict(X)[:, j], single.predict(X), rtol=1e-10)
        np.testing.assert_allclose(
            multi.predict(X, return_std=True)[1][:, j], single.predict(X, return_std=True)[1], rtol=1e-10
        )
    assert multi.predict(X[:3], return_cov=True)[1].shape == (3, 3, 2)
    assert multi.sample_y(X[:3], 4).shape == (3, 2, 4)
    assert multi.log_predictive_density(X[:3], Y[:3]).shape == (3, 2)


def test_learning_recovers_lengthscales():
    # Draw from a GP with ARD length-scales (0.5, 3.0): the fit must find them.
    rng = np.random.default_rng(1)
    X = rng.uniform(-3, 3, (300, 2))
    true = np.array([0.5, 3.0])
    K = np.exp(-0.5 * (((X[:, None, :] - X[None, :, :]) / true) ** 2).sum(-1))
    y = np.linalg.cholesky(K + 1e-8 * np.eye(300)) @ rng.standard_normal(300) + 0.05 * rng.standard_normal(300)
    gp = GPRegressor(normalize_y=False, random_state=0).fit(X, y)
    # the default kernel sees standardised inputs: its length-scales count in units of X_scale_
    ell = gp.kernel_.base_kernel.lengthscale.detach().numpy().ravel() * gp.X_scale_
    np.testing.assert_allclose(ell, true, rtol=0.25)
    assert 0.05**2 / 3 < gp.noise_ < 0.05**2 * 3


def test_float32_input_and_reproducibility(rng):
    X = rng.uniform(0, 5, (40, 1))
    y = np.sin(X[:, 0]) + 0.1 * rng.standard_normal(40)
    a = GPRegressor(n_restarts=2, random_state=3).fit(X.astype(np.float32), y.astype(np.float32))
    b = GPRegressor(n_restarts=2, random_state=3).fit(X, y)
    assert a.predict(X).dtype == np.float64
    np.testing.assert_allclose(a.predict(X), b.predict(X), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(b.sample_y(X[:5], 3, random_state=7), b.sample_y(X[:5], 3, random_state=7))
    assert not np.allclose(b.sample_y(X[:5], 3, random_state=7), b.sample_y(X[:5], 3, random_state=8))
    c = GPRegressor(n_restarts=2, random_state=3).fit(X, y)
    np.testing.assert_array_equal(b.predict(X), c.predict(X))


def test_sample_y_moments_match_posterior(rng):
    X = rng.uniform(0, 5, (20, 1))
    y = np.sin(X[:, 0])
    gp = GPRegressor(_rbf_kernel(1.0, 1.0), noise=0.1, optimizer=None).fit(X, y)
    Xs = np.linspace(0, 5, 4)[:, None]
    draws = gp.sample_y(Xs, 20000, random_state=0)
    mean, cov = gp.predict(Xs, return_cov=True)
    np.testing.assert_allclose(draws.mean(1), mean, atol=4 * np.sqrt(np.diag(cov).max() / 20000))
    np.testing.assert_allclose(np.cov(draws), cov, atol=0.05 * np.abs(cov).max())


def test_adam_optimizer_and_restarts_improve_likelihood(rng):
    X = rng.uniform(0, 10, (60, 1))
    y = np.sin(3 * X[:, 0]) + 0.1 * rng.standard_normal(60)
    none = GPRegressor(optimizer=None).fit(X, y)
    adam = GPRegressor(optimizer="adam", max_iter=200).fit(X, y)
    lbfgs = GPRegressor(n_restarts=3, random_state=0).fit(X, y)
    assert adam.log_marginal_likelihood() > none.log_marginal_likelihood()
    assert lbfgs.log_marginal_likelihood() >= adam.log_marginal_likelihood() - 1.0


# -- bad input -------------------------------------------------------------------------------


@pytest.fixture
def fitted(rng):
    X = rng.uniform(0, 5, (20, 2))
    y = np.sin(X[:, 0])
    return GPRegressor(max_iter=20).fit(X, y), X, y


@pytest.mark.parametrize(
    "X, y, match",
    [
        (np.array([[0.0], [np.nan]]), np.array([0.0, 1.0]), "NaN"),
        (np.array([[0.0], [np.inf]]), np.array([0.0, 1.0]), "infinity"),
        (np.array([[0.0], [1.0]]), np.array([0.0, np.nan]), "NaN"),
        (np.array([[0.0], [1.0], [2.0]]), np.array([0.0, 1.0]), "inconsistent numbers of samples"),
        (np.array([[0.0]]), np.array([0.0]), "1 sample"),
        (np.zeros((0, 1)), np.zeros(0), "0 sample"),
        (np.array([["a"], ["b"]]), np.array([0.0, 1.0]), "could not convert|numeric"),
        (np.array([[1 + 1j], [2.0]]), np.array([0.0, 1.0]), "Complex"),
    ],
)
def test_bad_fit_input_raises_and_leaves_fitted_state(fitted, X, y, match):
    gp, X0, _ = fitted
    before = gp.predict(X0)
    with pytest.raises(ValueError, match=match):
        gp.fit(X, y)
    np.testing.assert_array_equal(gp.predict(X0), before)
    assert gp.n_features_in_ == 2


def test_bad_parameters(rng):
    X, y = rng.standard_normal((10, 1)), rng.standard_normal(10)
    for kwargs, match in [
        ({"noise": -1.0}, "noise"),
        ({"noise": float("nan")}, "noise"),
        ({"optimizer": "sgd"}, "optimizer"),
        ({"max_iter": -1}, "max_iter"),
        ({"n_restarts": 1.5}, "n_restarts"),
        ({"kernel": "rbf"}, "gpytorch.kernels.Kernel"),
        ({"device": "not-a-device"}, "device"),
    ]:
        with pytest.raises(ValueError, match=match):
            GPRegressor(**kwargs).fit(X, y)


def test_predict_errors(fitted):
    gp, X, y = fitted
    with pytest.raises(NotFittedError):
        GPRegressor().predict(X)
    with pytest.raises(ValueError, match="features"):
        gp.predict(X[:, :1])
    with pytest.raises(ValueError, match="At most one"):
        gp.predict(X, return_std=True, return_cov=True)
    with pytest.raises(ValueError, match="y has shape"):
        gp.log_predictive_density(X, np.c_[y, y])
    with pytest.raises(ValueError, match="n_samples"):
        gp.sample_y(X, 0)


class _NegativeKernel(gpytorch.kernels.Kernel):
    """Not a covariance: the negative of an RBF kernel."""

    def forward(self, x1, x2, diag=False, **params):
        d2 = self.covar_dist(x1, x2, square_dist=True, diag=diag)
        return -torch.exp(-0.5 * d2)


def test_non_psd_kernel_raises_before_state_changes(fitted):
    gp, X, y = fitted
    before = gp.predict(X)
    gp.set_params(kernel=_NegativeKernel(), noise=1e-3, optimizer=None)
    with pytest.raises(NotPSDError, match="not positive definite"):
        gp.fit(X, y)
    np.testing.assert_array_equal(gp.predict(X), before)


def test_singular_kernel_gets_jitter_with_warning():
    # A huge, nearly rank-one kernel next to the smallest allowed noise: rounding makes the
    # matrix indefinite to working precision, so the factorisation needs jitter.
    X = np.linspace(0, 1, 200)[:, None]
    y = np.sin(X[:, 0])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gp = GPRegressor(_rbf_kernel(10.0, 1e10), noise=1e-6, optimizer=None, normalize_y=False).fit(X, y)
    msgs = [str(w.message) for w in caught if issubclass(w.category, NumericalWarning)]
    assert msgs and "jitter" in msgs[0]
    assert gp.jitter_ > 0 and f"{gp.jitter_:.3g}" in msgs[0]
    assert np.all(np.isfinite(gp.predict(X)))


def test_user_kernel_is_not_modified(rng):
    X, y = rng.uniform(0, 5, (30, 1)), rng.standard_normal(30)
    k = _rbf_kernel(1.0, 1.0)
    GPRegressor(kernel=k).fit(X, y)
    assert float(k.base_kernel.lengthscale) == pytest.approx(1.0)


def test_default_kernel_is_not_diagonal_in_high_dimensions():
    # 64-d digits: with length-scales at the plain feature spread, k ~ exp(-64) off the diagonal.
    from sklearn.datasets import load_digits

    from gpkern.estimators.gp_regressor import default_kernel

    X = torch.tensor(load_digits().data[:200])
    K = default_kernel(X)(X).to_dense().detach()
    off = K[~torch.eye(200, dtype=torch.bool)] / K.diagonal().mean()
    assert float(off.median()) > 0.05


def test_refit_on_an_array_forgets_dataframe_feature_names():
    pd = pytest.importorskip("pandas")
    from gpkern.estimators import DKMClassifier, KernelClassifier

    rng = np.random.default_rng(0)
    X = rng.standard_normal((20, 2))
    df = pd.DataFrame(X, columns=["a", "b"])
    y_reg, y_cls = X[:, 0], (X[:, 0] > 0).astype(int)
    for est, y in ((GPRegressor(optimizer=None), y_reg), (KernelClassifier(), y_cls),
                   (DKMClassifier(n_inducing=5, max_iter=2), y_cls)):
        est.fit(df, y)
        assert list(est.feature_names_in_) == ["a", "b"]
        est.fit(X, y)
        assert not hasattr(est, "feature_names_in_") and est.n_features_in_ == 2
