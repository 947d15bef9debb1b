"""SparseGPRegressor and the collapsed bound: the exact GP at m = n, the bound below the exact log
marginal likelihood, and the bound and predictive distribution against dense numpy formulas."""

from __future__ import annotations

import warnings

import gpytorch
import numpy as np
import pytest
import torch
from scipy import stats
from sklearn.utils.estimator_checks import parametrize_with_checks

from gpkern.estimators import GPRegressor, SparseGPRegressor
from gpkern.models.exact import ExactGP
from gpkern.models.sparse import SparseGP, collapsed_bound
from gpkern.sampling import select_inducing


@parametrize_with_checks([SparseGPRegressor(n_inducing=10, max_iter=20, random_state=0)])
def test_sklearn_compatible(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # n_inducing > n on the checks' tiny sets
        check(estimator)


def _rbf(lengthscale: float, outputscale: float) -> gpytorch.kernels.Kernel:
    k = gpytorch.kernels.ScaleKernel(gpytorch.kernels.RBFKernel()).double()
    k.base_kernel.lengthscale = lengthscale
    k.outputscale = outputscale
    return k


def _np_rbf(A, B, lengthscale, outputscale):
    d2 = ((A[:, None, :] - B[None, :, :]) ** 2).sum(-1)
    return outputscale * np.exp(-0.5 * d2 / lengthscale**2)


def _data(n=60, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.uniform(-2, 2, (n, 2))
    y = np.sin(2 * X[:, 0]) * np.cos(X[:, 1]) + 0.1 * rng.standard_normal(n)
    return X, y


@pytest.mark.parametrize("normalize_y", [False, True])
def test_all_points_inducing_equals_exact_gp(normalize_y):
    X, y = _data()
    Y = np.stack([y, np.cos(X[:, 0])], 1)  # two outputs sharing the kernel
    Xs = np.random.default_rng(1).uniform(-2, 2, (9, 2))
    kernel, noise = _rbf(0.8, 1.5), 0.05
    opts = dict(kernel=kernel, noise=noise, optimizer=None, normalize_y=normalize_y)
    exact = GPRegressor(**opts).fit(X, Y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # K_mm = K_nn may need a little jitter
        sparse = SparseGPRegressor(n_inducing=len(X), **opts).fit(X, Y)
    np.testing.assert_array_equal(sparse.inducing_indices_, np.arange(len(X)))
    m_e, s_e = exact.predict(Xs, return_std=True)
    m_s, s_s = sparse.predict(Xs, return_std=True)
    np.testing.assert_allclose(m_s, m_e, atol=1e-6)
    np.testing.assert_allclose(s_s, s_e, atol=1e-6)
    _, c_e = exact.predict(Xs, return_cov=True)
    _, c_s = sparse.predict(Xs, return_cov=True)
    np.testing.assert_allclose(c_s, c_e, atol=1e-6)
    assert abs(sparse.elbo_ - exact.log_marginal_likelihood_value_) < 1e-6
    np.testing.assert_allclose(
        sparse.log_predictive_density(Xs, Y[:9]), exact.log_predictive_density(Xs, Y[:9]), atol=1e-6
    )


@pytest.mark.parametrize("seed", range(6))
def test_bound_never_exceeds_exact_log_marginal_likelihood(seed):
    rng = np.random.default_rng(seed)
    X, y = _data(50, seed)
    lengthscale, outputscale = np.exp(rng.uniform(-1.5, 1)), np.exp(rng.uniform(-1, 1.5))
    noise = float(np.exp(rng.uniform(-5, 0)))
    Xt, Yt = torch.as_tensor(X), torch.as_tensor(y)[:, None]
    kernel = _rbf(lengthscale, outputscale)
    with torch.no_grad():
        exact = float(ExactGP(kernel, noise=noise).double().log_marginal_likelihood(Xt, Yt))
    K = _np_rbf(X, X, lengthscale, outputscale)
    exact_np = stats.multivariate_normal(np.zeros(50), K + noise * np.eye(50)).logpdf(y)
    assert abs(exact - exact_np) < 1e-6 * max(1.0, abs(exact_np))
    for m in (3, 10, 25, 40):
        Z = Xt[torch.as_tensor(rng.choice(50, m, replace=False))]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            bound = float(collapsed_bound(kernel, Xt, Yt, Z, torch.tensor(noise, dtype=torch.float64)))
        assert bound <= exact + 1e-8 * abs(exact)


def _dense_reference(X, y, Z, Xs, lengthscale, outputscale, noise):
    """The bound and the optimal q(u)'s predictive distribution, straight from their formulas."""
    Knn = _np_rbf(X, X, lengthscale, outputscale)
    Knm = _np_rbf(X, Z, lengthscale, outputscale)
    Kmm = _np_rbf(Z, Z, lengthscale, outputscale)
    Q = Knm @ np.linalg.solve(Kmm, Knm.T)
    n = len(X)
    bound = stats.multivariate_normal(np.zeros(n), Q + noise * np.eye(n)).logpdf(y)
    bound -= np.trace(Knn - Q) / (2 * noise)
    Sigma = np.linalg.inv(Kmm + Knm.T @ Knm / noise)
    Ksm = _np_rbf(Xs, Z, lengthscale, outputscale)
    mean = Ksm @ Sigma @ Knm.T @ y / noise
    Kss = _np_rbf(Xs, Xs, lengthscale, outputscale)
    cov = Kss - Ksm @ np.linalg.solve(Kmm, Ksm.T) + Ksm @ Sigma @ Ksm.T
    return bound, mean, cov


@pytest.mark.parametrize("inducing", ["rpcholesky", "greedy_variance", "kdpp", "kmeans", "uniform"])
def test_bound_and_prediction_match_dense_formulas(inducing):
    X, y = _data(70, 3)
    Xs = np.random.default_rng(2).uniform(-2, 2, (8, 2))
    ls, os, noise = 0.9, 1.2, 0.03
    gp = SparseGPRegressor(
        kernel=_rbf(ls, os), n_inducing=12, inducing=inducing, noise=noise, optimizer=None,
        normalize_y=False, random_state=0,
    ).fit(X, y)
    Z = gp.inducing_points_
    assert Z.shape == (12, 2) and gp.n_inducing_ == 12
    if inducing == "kmeans":
        assert gp.inducing_indices_ is None
    else:
        np.testing.assert_array_equal(Z, X[gp.inducing_indices_])
    bound, mean, cov = _dense_reference(X, y, Z, Xs, ls, os, noise)
    assert gp.jitter_ == 0.0
    assert abs(gp.elbo_ - bound) < 1e-7 * abs(bound)
    assert gp.log_marginal_likelihood() == gp.elbo_
    m, c = gp.predict(Xs, return_cov=True)
    np.testing.assert_allclose(m, mean, atol=1e-8)
    np.testing.assert_allclose(c, cov, atol=1e-8)
    _, s = gp.predict(Xs, return_std=True)
    np.testing.assert_allclose(s, np.sqrt(np.diag(cov)), atol=1e-8)


def test_bound_gradient_matches_finite_differences():
    X, y = _data(30, 4)
    Xt, Yt = torch.as_tensor(X), torch.as_tensor(y)[:, None]
    model = SparseGP(_rbf(0.7, 1.1), Xt[:8], noise=0.1).double()
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(model.log_marginal_likelihood(Xt, Yt), params)
    eps = 1e-6
    for p, g in zip(params, grads):
        for i in range(p.numel()):
            with torch.no_grad():
                p.view(-1)[i] += eps
                up = float(model.log_marginal_likelihood(Xt, Yt))
                p.view(-1)[i] -= 2 * eps
                down = float(model.log_marginal_likelihood(Xt, Yt))
                p.view(-1)[i] += eps
            assert abs((up - down) / (2 * eps) - float(g.view(-1)[i])) < 1e-5 * max(1, abs(up))


def test_fit_raises_the_bound_and_predicts_well():
    X, y = _data(300, 5)
    Xs, ys = _data(100, 6)
    kernel = _rbf(3.0, 0.5)
    fixed = SparseGPRegressor(kernel=kernel, n_inducing=20, optimizer=None, random_state=0)
    fitted = SparseGPRegressor(kernel=kernel, n_inducing=20, max_iter=50, random_state=0)
    fixed.fit(X, y)
    fitted.fit(X, y)
    assert fitted.elbo_ > fixed.elbo_ + 10
    assert fitted.score(Xs, ys) > 0.9
    exact = GPRegressor(kernel=fitted.kernel_, noise=fitted.noise_, optimizer=None).fit(X, y)
    assert fitted.elbo_ <= exact.log_marginal_likelihood_value_ + 1e-8


def test_reselect_rounds_rechoose_points():
    X, y = _data(200, 7)
    opts = dict(kernel=_rbf(3.0, 0.5), n_inducing=15, inducing="greedy_variance", max_iter=15)
    one_round = SparseGPRegressor(**opts).fit(X, y)
    two_rounds = SparseGPRegressor(reselect=1, **opts).fit(X, y)
    assert two_rounds.n_iter_ == 2 * 15
    # greedy selection is deterministic, so round 2's points are greedy's at round 1's kernel
    after_round_1 = select_inducing(X, one_round.kernel_, 15, "greedy_variance").indices.numpy()
    np.testing.assert_array_equal(two_rounds.inducing_indices_, after_round_1)
    assert not np.array_equal(after_round_1, one_round.inducing_indices_)
    np.testing.assert_array_equal(two_rounds.inducing_points_, X[after_round_1])
    assert two_rounds.elbo_ > one_round.elbo_


def test_too_many_inducing_points_are_clipped_with_warning():
    X, y = _data(20, 8)
    with pytest.warns(UserWarning, match="exceeds the 20 training samples"):
        gp = SparseGPRegressor(n_inducing=50, max_iter=5, random_state=0).fit(X, y)
    assert gp.n_inducing_ == 20


@pytest.mark.parametrize(
    "params, match",
    [
        ({"inducing": "dpp"}, "inducing must be one of"),
        ({"n_inducing": 0}, "n_inducing must be"),
        ({"reselect": -1}, "reselect must be"),
        ({"reselect": 1.5}, "reselect must be"),
    ],
)
def test_bad_parameters_raise_before_state_change(params, match):
    X, y = _data(40, 9)
    gp = SparseGPRegressor(n_inducing=10, max_iter=5, random_state=0).fit(X, y)
    before = gp.inducing_points_.copy(), gp.elbo_
    gp.set_params(**params)
    with pytest.raises(ValueError, match=match):
        gp.fit(X[:20], y[:20])
    np.testing.assert_array_equal(gp.inducing_points_, before[0])
    assert gp.elbo_ == before[1]


def test_sample_y_moments_match_predictive():
    X, y = _data(80, 10)
    gp = SparseGPRegressor(n_inducing=15, max_iter=20, random_state=0).fit(X, y)
    Xs = np.random.default_rng(3).uniform(-2, 2, (4, 2))
    draws = gp.sample_y(Xs, n_samples=4000, random_state=1)
    mean, std = gp.predict(Xs, return_std=True)
    np.testing.assert_allclose(draws.mean(1), mean, atol=5 * std.max() / np.sqrt(4000))
    np.testing.assert_allclose(draws.std(1), std, rtol=0.1)
