"""GridGPRegressor and the grid GP model against dense references."""

from __future__ import annotations

import math
import warnings

import gpytorch
import numpy as np
import pytest
import torch
from sklearn.utils.estimator_checks import parametrize_with_checks

from conftest import dense_gp_reference
from gpkern.estimators import GPRegressor, GridGPRegressor
from gpkern.estimators.grid_gp import detect_grid
from gpkern.linalg.dispatch import GridFallbackWarning
from gpkern.models.grid import GridGP


@pytest.fixture(autouse=True)
def _single_thread():
    """LAPACK's threaded eigh is ~100x slower on the shared, oversubscribed CI cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@parametrize_with_checks([GridGPRegressor(max_iter=5)])
def test_sklearn_compatible(estimator, check):
    check(estimator)


def _rbf_np(a, b, ls):
    return np.exp(-0.5 * (a[:, None] - b[None, :]) ** 2 / ls**2)


def _fixed_kernels(lengthscales):
    kernels = []
    for ls in lengthscales:
        k = gpytorch.kernels.RBFKernel()
        k.lengthscale = ls
        kernels.append(k)
    return kernels


def _reference(X, y, Xs, lengthscales, noise):
    """Independent numpy product-RBF kernel (unit output scale) and the scipy oracle."""

    def K(A, B):
        out = np.ones((A.shape[0], B.shape[0]))
        for i, ls in enumerate(lengthscales):
            out *= _rbf_np(A[:, i], B[:, i], ls)
        return out

    return dense_gp_reference(K(X, X), K(Xs, X), K(Xs, Xs), y, noise)


GRIDS = {
    1: [np.linspace(0, 1, 23)],
    2: [np.linspace(0, 1, 9), np.linspace(-1, 2, 11)],
    3: [np.linspace(0, 1, 5), np.linspace(-1, 1, 6), np.linspace(0, 3, 4)],
}
LS = [0.3, 0.8, 0.9]


def _grid_data(d, missing, seed=0):
    rng = np.random.default_rng(seed)
    axes = GRIDS[d]
    shape = tuple(a.shape[0] for a in axes)
    mesh = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, d)
    y = np.sin(3 * mesh).sum(1) + 0.1 * rng.standard_normal(mesh.shape[0])
    Y = y.reshape(shape).copy()
    obs = np.ones(mesh.shape[0], dtype=bool)
    if missing:
        obs[rng.permutation(mesh.shape[0])[: int(0.3 * mesh.shape[0])]] = False
        Y.reshape(-1)[~obs] = np.nan
    return axes, Y, mesh, y, obs


@pytest.mark.parametrize("d", [1, 2, 3])
@pytest.mark.parametrize("missing", [False, True])
def test_grid_predictions_equal_dense_gp_on_observed(d, missing):
    axes, Y, mesh, y, obs = _grid_data(d, missing)
    noise = 0.05
    gp = GridGPRegressor(
        kernel=_fixed_kernels(LS[:d]),
        noise=noise,
        optimizer=None,
        normalize_y=False,
        num_probes=256,
        random_state=0,
    ).fit(grid=axes, y=Y)
    assert gp.backend_ == ("kronecker-partial" if missing else "kronecker")
    rng = np.random.default_rng(1)
    Xs = np.column_stack([rng.uniform(a.min(), a.max(), 40) for a in axes])
    mean_ref, var_ref, lml_ref = _reference(mesh[obs], y[obs], Xs, LS[:d], noise)
    mean, std = gp.predict(Xs, return_std=True)
    np.testing.assert_allclose(mean, mean_ref, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(std**2, var_ref, rtol=1e-6, atol=1e-8)
    if missing:  # stochastic log-determinant: 256 probes
        assert gp.log_marginal_likelihood() == pytest.approx(lml_ref, rel=2e-2, abs=1.0)
    else:
        assert gp.log_marginal_likelihood() == pytest.approx(lml_ref, rel=1e-9)
    # on the grid itself: exact (full) or Monte Carlo pathwise variance (partial)
    _, var_grid_ref, _ = _reference(mesh[obs], y[obs], mesh, LS[:d], noise)
    m_grid, s_grid = gp.predict_grid(return_std=True)
    assert m_grid.shape == Y.shape
    np.testing.assert_allclose(m_grid.reshape(-1), gp.predict(mesh), rtol=1e-8, atol=1e-9)
    if missing:
        ratio = s_grid.reshape(-1) ** 2 / var_grid_ref
        # 128 pathwise draws: each ratio ~ chi2_128 / 128, standard deviation 0.125
        assert np.all(np.abs(ratio - 1) < 0.6)
    else:
        np.testing.assert_allclose(s_grid.reshape(-1) ** 2, var_grid_ref, rtol=1e-6, atol=1e-9)


def test_points_input_detects_partial_grid_in_any_order():
    axes, Y, mesh, y, obs = _grid_data(2, True)
    rng = np.random.default_rng(3)
    perm = rng.permutation(int(obs.sum()))
    kw = dict(kernel=_fixed_kernels(LS[:2]), noise=0.05, optimizer=None, random_state=0)
    a = GridGPRegressor(**kw).fit(grid=axes, y=Y)
    b = GridGPRegressor(**kw).fit(mesh[obs][perm], y[obs][perm])
    assert b.backend_ == "kronecker-partial"
    np.testing.assert_array_equal(b.observed_, a.observed_)
    Xs = rng.uniform(0, 1, (15, 2))
    np.testing.assert_allclose(b.predict(Xs), a.predict(Xs), rtol=1e-8, atol=1e-10)


def test_detect_grid():
    axes, index = detect_grid(np.array([[1.0, 5.0], [0.0, 5.0], [1.0, 4.0]]))
    np.testing.assert_array_equal(axes[0], [0.0, 1.0])
    np.testing.assert_array_equal(axes[1], [4.0, 5.0])
    np.testing.assert_array_equal(index, [3, 1, 2])


def test_fitted_full_grid_matches_ard_gp_regressor():
    """Product of 1-D RBFs with one output scale == scaled ARD RBF: same optimum."""
    axes, Y, mesh, y, _ = _grid_data(2, False)
    grid_gp = GridGPRegressor(random_state=0).fit(grid=axes, y=Y)
    dense_gp = GPRegressor(random_state=0).fit(mesh, y)
    assert grid_gp.log_marginal_likelihood() == pytest.approx(
        dense_gp.log_marginal_likelihood(), rel=1e-4
    )
    Xs = np.random.default_rng(0).uniform(0, 1, (20, 2))
    m1, s1 = grid_gp.predict(Xs, return_std=True)
    m2, s2 = dense_gp.predict(Xs, return_std=True)
    np.testing.assert_allclose(m1, m2, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(s1, s2, rtol=1e-2, atol=1e-3)


def test_partial_grid_fit_learns_close_to_dense():
    axes, Y, mesh, y, obs = _grid_data(2, True)
    grid_gp = GridGPRegressor(random_state=0, num_probes=64, max_iter=50).fit(grid=axes, y=Y)
    dense_gp = GPRegressor(random_state=0, max_iter=50).fit(mesh[obs], y[obs])
    # the fitted hyperparameters' exact (dense) log marginal likelihood is near the optimum
    model = grid_gp._model
    with torch.no_grad():
        Xt = torch.as_tensor((mesh[obs] - grid_gp.X_mean_) / grid_gp.X_scale_)
        Yt = torch.as_tensor((y[obs] - grid_gp._y_mean) / grid_gp._y_std)[:, None]
        exact = (
            float(model.dense_log_marginal_likelihood(Xt, Yt))
            - obs.sum() * np.log(grid_gp._y_std).sum()
        )
    assert exact == pytest.approx(dense_gp.log_marginal_likelihood(), abs=1.0)


def test_multi_output_and_surface():
    axes, Y, mesh, y, obs = _grid_data(2, False)
    Y2 = np.stack([Y, -2 * Y + 1], -1)
    gp = GridGPRegressor(random_state=0, max_iter=20).fit(grid=axes, y=Y2)
    Xs = mesh[:7]
    mean, std = gp.predict(Xs, return_std=True)
    assert mean.shape == (7, 2) and std.shape == (7, 2)
    np.testing.assert_allclose(mean[:, 1], -2 * mean[:, 0] + 1, rtol=1e-5, atol=1e-5)
    samples = gp.sample_y(Xs, n_samples=3, random_state=0)
    assert samples.shape == (7, 2, 3)
    lpd = gp.log_predictive_density(Xs, Y2.reshape(-1, 2)[:7])
    assert lpd.shape == (7, 2) and np.all(np.isfinite(lpd))
    assert gp.predict_grid().shape == Y.shape + (2,)


def test_random_points_use_dense_backend():
    rng = np.random.default_rng(0)
    X = rng.uniform(0, 1, (30, 3))
    y = np.sin(4 * X).sum(1)
    gp = GridGPRegressor(kernel=_fixed_kernels(LS), noise=0.05, optimizer=None, normalize_y=False)
    with pytest.warns(GridFallbackWarning, match="only 30 of its 27000 cells"):
        gp.fit(X, y)
    assert gp.backend_ == "dense" and gp.grid_ is None
    Xs = rng.uniform(0, 1, (10, 3))
    mean_ref, var_ref, lml_ref = _reference(X, y, Xs, LS, 0.05)
    mean, std = gp.predict(Xs, return_std=True)
    np.testing.assert_allclose(mean, mean_ref, rtol=1e-7, atol=1e-8)
    np.testing.assert_allclose(std**2, var_ref, rtol=1e-6, atol=1e-9)
    assert gp.log_marginal_likelihood() == pytest.approx(lml_ref, rel=1e-9)
    assert gp.predict_grid([np.linspace(0, 1, 3)] * 3).shape == (3, 3, 3)


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [({"max_grid_size": 10}, "cells > 10"), ({"min_fill": 0.9}, "< min_fill = 0.9")],
)
def test_dense_fallback_says_why(kwargs, reason):
    rng = np.random.default_rng(1)
    axes = [np.linspace(0, 1, 6), np.linspace(0, 1, 5)]
    X = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 2)
    X = X[rng.permutation(30)[:24]]
    y = np.sin(3 * X).sum(1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", GridFallbackWarning)
        assert GridGPRegressor(optimizer=None).fit(X, y).backend_ == "kronecker-partial"
    with pytest.warns(GridFallbackWarning, match=reason):
        assert GridGPRegressor(optimizer=None, **kwargs).fit(X, y).backend_ == "dense"
    with pytest.warns(GridFallbackWarning, match="repeat the same grid cell"):
        GridGPRegressor(optimizer=None).fit(np.vstack([X, X[:1]]), np.r_[y, y[:1]])


def test_bad_input_leaves_estimator_unchanged():
    axes, Y, *_ = _grid_data(2, False)
    gp = GridGPRegressor(max_iter=3).fit(grid=axes, y=Y)
    before = gp.predict_grid()
    with pytest.raises(ValueError, match="grid has shape"):
        gp.fit(grid=axes, y=Y[:, :-1])
    with pytest.raises(ValueError, match="not both"):
        gp.fit(np.zeros((3, 2)), np.zeros(3), grid=axes)
    with pytest.raises(ValueError, match="strictly increasing"):
        gp.fit(grid=[axes[0][::-1], axes[1]], y=Y)
    with pytest.raises(ValueError, match="one 1-D kernel per dimension"):
        gp.set_params(kernel=[gpytorch.kernels.RBFKernel()]).fit(grid=axes, y=Y)
    Y2 = np.stack([Y, Y], -1)
    Y2[0, 0, 1] = np.nan
    with pytest.raises(ValueError, match="same cells"):
        GridGPRegressor().fit(grid=axes, y=Y2)
    np.testing.assert_array_equal(gp.predict_grid(), before)


def test_grid_model_gradients_match_dense_twin():
    axes = [torch.linspace(0, 1, 6), torch.linspace(0, 1, 5)]
    mesh = torch.cartesian_prod(*axes)
    Y = torch.sin(3 * mesh).sum(1, keepdim=True)
    model = GridGP([gpytorch.kernels.MaternKernel(nu=2.5), gpytorch.kernels.RBFKernel()], noise=0.1)
    grads = []
    for structured in (True, False):
        model.zero_grad()
        lml = (
            model.log_marginal_likelihood(axes, Y)
            if structured
            else model.dense_log_marginal_likelihood(mesh, Y)
        )
        lml.backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)
    assert math.isfinite(float(lml))


def test_dense_fallback_likelihood_matches_autograd_through_cholesky():
    """The fallback's closed-form gradient equals autograd through a plain Cholesky."""
    gen = torch.Generator().manual_seed(0)
    X = torch.rand(40, 2, generator=gen, dtype=torch.float64)  # scattered: not a grid
    Y = torch.sin(4 * X).sum(1, keepdim=True)
    model = GridGP([gpytorch.kernels.MaternKernel(nu=2.5), gpytorch.kernels.RBFKernel()], noise=0.1)
    model = model.double()
    values, grads = [], []
    for plain in (False, True):
        model.zero_grad()
        if plain:
            K = model.dense_covariance(X) + model.noise * torch.eye(40, dtype=torch.float64)
            mvn = torch.distributions.MultivariateNormal(torch.zeros(40, dtype=torch.float64), K)
            lml = mvn.log_prob(Y.T).sum()
        else:
            lml = model.dense_log_marginal_likelihood(X, Y)
        lml.backward()
        values.append(float(lml))
        grads.append([p.grad.clone() for p in model.parameters()])
    assert values[0] == pytest.approx(values[1], rel=1e-12)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_pathwise_variance_is_unbiased_on_a_new_grid():
    axes = [torch.linspace(0, 1, 7), torch.linspace(0, 2, 5), torch.linspace(-1, 1, 4)]
    mesh = torch.cartesian_prod(*axes)
    model = GridGP(
        [
            gpytorch.kernels.RBFKernel(),
            gpytorch.kernels.MaternKernel(nu=1.5),
            gpytorch.kernels.RBFKernel(),
        ],
        outputscale=1.7,
        noise=0.05,
    )
    g = torch.Generator().manual_seed(0)
    observed = torch.rand(mesh.shape[0], generator=g) > 0.3
    Y = torch.randn(mesh.shape[0], 1, generator=g)
    post = model.posterior(axes, Y, observed)
    test_axes = [torch.linspace(0, 1, 9), torch.linspace(0, 2, 5), torch.linspace(-1, 1, 3)]
    Xs = torch.cartesian_prod(*test_axes)
    mean, var = post.predict_grid(test_axes, n_samples=4000, generator=g)
    with torch.no_grad():  # dense oracle on the observed cells
        Xo = mesh[observed]
        A = model.dense_covariance(Xo) + 0.05 * torch.eye(Xo.shape[0])
        Ks = model.dense_covariance(Xs, Xo)
        mean_ref = Ks @ torch.linalg.solve(A, Y[observed])
        var_ref = model.prior_diag(Xs) - (Ks * torch.linalg.solve(A, Ks.T).T).sum(1)
    torch.testing.assert_close(mean, mean_ref, rtol=1e-7, atol=1e-8)
    # 4000 draws: relative standard deviation sqrt(2/4000) = 2.2% per cell
    assert float((var / var_ref - 1).abs().max()) < 0.12
    _, var_exact = post.predict_grid(test_axes, variance="exact")
    torch.testing.assert_close(var_exact, var_ref, rtol=1e-6, atol=1e-9)
