"""Sparse SCA learning of linear multiple kernel weights, and MultipleKernelRegressor."""

from __future__ import annotations

import warnings

import gpytorch
import numpy as np
import pytest
import scipy.optimize
import torch
from sklearn.utils.estimator_checks import parametrize_with_checks

from conftest import dense_gp_reference
from gpkern.estimators import MultipleKernelRegressor
from gpkern.kernels import GSMPKernel, LinearMultipleKernel
from gpkern.models.multiple_kernel import _Blocks, lmk_objective, sca_fit, surrogate_minimize


@pytest.fixture(autouse=True)
def _one_thread():
    # The CI machine is shared: two OpenMP threads per tiny op cost more than they save.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _random_problem(seed=0, n=25, A=6, t=1):
    g = np.random.default_rng(seed)
    x = np.sort(g.uniform(0, 10, n))
    mus = g.uniform(0, 1, A)
    K = np.stack([np.exp(-0.5 * (x[:, None] - x[None]) ** 2 / (0.5 + a) ** 2) * np.cos(2 * np.pi * m * (x[:, None] - x[None])) for a, m in enumerate(mus)])
    Y = g.normal(size=(n, t))
    return K, Y


def _F_numpy(K, Y, w, s):
    C = np.tensordot(w, K, 1) + s * np.eye(K.shape[1])
    sign, logdet = np.linalg.slogdet(C)
    return float(np.trace(Y.T @ np.linalg.solve(C, Y)) + Y.shape[1] * logdet)


def test_objective_matches_numpy():
    K, Y = _random_problem(t=2)
    w = np.array([0.5, 0.0, 1.0, 0.2, 0.0, 0.3])
    got = lmk_objective([torch.tensor(K)], [torch.tensor(Y)], torch.tensor(w), 0.2)
    assert got == pytest.approx(_F_numpy(K, Y, w, 0.2), rel=1e-12)
    # two blocks sum
    got2 = lmk_objective([torch.tensor(K), torch.tensor(K)], [torch.tensor(Y), torch.tensor(Y)], torch.tensor(w), 0.2)
    assert got2 == pytest.approx(2 * _F_numpy(K, Y, w, 0.2), rel=1e-12)


def test_surrogate_solver_matches_scipy_lbfgsb():
    # The convex sub-problem: tr(YᵀC⁻¹Y) + lᵀx over x >= lower; reference: scipy's L-BFGS-B.
    K, Y = _random_problem(seed=1)
    A = K.shape[0]
    lin = np.concatenate([np.abs(np.random.default_rng(2).normal(size=A)) * 3, [5.0]])
    lower = np.concatenate([np.zeros(A), [1e-3]])

    def h(x):
        C = np.tensordot(x[:A], K, 1) + x[A] * np.eye(K.shape[1])
        alpha = np.linalg.solve(C, Y)
        grad = np.concatenate([-np.einsum("nt,anm,mt->a", alpha, K, alpha), [-(alpha**2).sum()]]) + lin
        return float((Y * alpha).sum() + lin @ x), grad

    x0 = np.concatenate([np.full(A, 0.2), [0.5]])
    ref = scipy.optimize.minimize(h, x0, jac=True, method="L-BFGS-B", bounds=[(lo, None) for lo in lower],
                                  options={"ftol": 1e-15, "gtol": 1e-12, "maxiter": 5000})
    blocks = _Blocks([torch.tensor(K)], [torch.tensor(Y)])
    x = surrogate_minimize(blocks, torch.tensor(x0), torch.tensor(lin), torch.tensor(lower), max_iter=100, tol=1e-14)
    assert h(x.numpy())[0] <= ref.fun + 1e-8 * abs(ref.fun)
    np.testing.assert_allclose(x.numpy(), ref.x, atol=1e-4)
    assert (x.numpy()[:A] == 0).sum() >= 1  # projection gives exact zeros


def _sm_gp_data(n=150, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.arange(n, dtype=torch.float64)[:, None]
    true_mu = torch.tensor([0.07, 0.19, 0.33])
    tk = GSMPKernel(means=true_mu, bandwidths=0.003, weights=torch.tensor([1.0, 0.7, 0.5]))
    K = tk(X).to_dense().detach() + 0.05 * torch.eye(n)
    y = torch.linalg.cholesky(K) @ torch.randn(n, generator=g, dtype=torch.float64)
    return X, (y - y.mean()) / y.std(), true_mu


@pytest.mark.parametrize("n, Q, learn_noise, min_zero", [(150, 60, False, 0.6), (200, 30, True, 0.55)])
def test_sparse_recovery_and_monotone_objective(n, Q, learn_noise, min_zero):
    X, y, true_mu = _sm_gp_data(n=n)
    k = GSMPKernel(means=torch.linspace(0, 0.5, Q), bandwidths=0.002)
    B = k.basis(X, X).detach()
    kw = dict(noise_lower_bound=1e-3) if learn_noise else dict(noise=0.05 / 2.25, learn_noise=False)
    res = sca_fit([B], [y[:, None]], max_iter=300, tol=1e-9, **kw)
    h = np.array(res.history)
    assert len(h) > 3
    assert np.all(np.diff(h) <= 0.0), "the SCA objective increased"
    # independent check of the final value
    F = _F_numpy(B.numpy(), y[:, None].numpy(), res.weights.numpy(), res.noise)
    assert h[-1] == pytest.approx(F, rel=1e-10)
    mu = k.means[:, 0]
    near = torch.zeros(Q, dtype=torch.bool)
    for m in true_mu:
        near |= (mu - m).abs() <= 1.5 * (0.5 / (Q - 1))
    w = res.weights
    assert float(w[near].sum() / w.sum()) >= 0.9
    assert float((w[~near] == 0).double().mean()) >= min_zero  # most others exactly zero


def test_sca_fixed_point_satisfies_kkt():
    # Stationarity of F itself, with gradients from numpy finite differences.
    K, Y = _random_problem(seed=3, n=30, A=5)
    res = sca_fit([torch.tensor(K)], [torch.tensor(Y)], max_iter=3000, tol=1e-14, noise_lower_bound=1e-3)
    w, s = res.weights.numpy(), res.noise
    x = np.concatenate([w, [s]])
    eps = 1e-6
    for a in range(len(x)):
        e = np.zeros_like(x)
        e[a] = eps
        fwd = _F_numpy(K, Y, (x + e)[:-1], (x + e)[-1])
        if x[a] > 1e-8 and (a < len(w) or s > 1e-3 + 1e-8):
            bwd = _F_numpy(K, Y, (x - e)[:-1], (x - e)[-1])
            assert abs((fwd - bwd) / (2 * eps)) < 1e-3, (a, x[a])
        else:
            assert (fwd - _F_numpy(K, Y, w, s)) / eps > -1e-3, (a, x[a])


def test_regressor_predicts_like_dense_gp_with_learned_kernel():
    rng = np.random.default_rng(0)
    X = np.arange(60.0)[:, None]
    y = np.sin(2 * np.pi * X[:, 0] / 12) + 0.02 * X[:, 0] + 0.05 * rng.normal(size=60)
    reg = MultipleKernelRegressor(n_components=30, random_state=0).fit(X, y)
    assert reg.weights_.shape == (60,)
    assert (reg.weights_ == 0).mean() > 0.5
    assert np.all(np.diff(reg.objective_history_) <= 0)
    Xs = np.linspace(-5, 70, 17)[:, None]
    k = reg.kernel_
    Xn, Xsn = (X - reg.X_mean_) / reg.X_scale_, (Xs - reg.X_mean_) / reg.X_scale_  # what k sees
    with torch.no_grad():
        K = k(torch.tensor(Xn)).to_dense().numpy()
        Ks = k(torch.tensor(Xsn), torch.tensor(Xn)).to_dense().numpy()
        Kss = k(torch.tensor(Xsn)).to_dense().numpy()
    yn = (y - y.mean()) / y.std()
    mean, var, lml = dense_gp_reference(K, Ks, Kss, yn, reg.noise_)
    m, sd = reg.predict(Xs, return_std=True)
    np.testing.assert_allclose(m, mean * y.std() + y.mean(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(sd, np.sqrt(np.maximum(var, 0)) * y.std(), rtol=1e-5, atol=1e-6)
    assert reg.log_marginal_likelihood() == pytest.approx(lml - 60 * np.log(y.std()), rel=1e-8)


def test_regressor_with_kernel_list_and_multioutput():
    rng = np.random.default_rng(1)
    X = rng.uniform(0, 5, (40, 1))
    Y = np.stack([np.sin(X[:, 0]), np.cos(X[:, 0])], 1) + 0.05 * rng.normal(size=(40, 2))
    kernels = [gpytorch.kernels.RBFKernel(), gpytorch.kernels.PeriodicKernel(), gpytorch.kernels.LinearKernel()]
    reg = MultipleKernelRegressor(kernel=kernels, max_iter=50).fit(X, Y)
    assert isinstance(reg.kernel_, LinearMultipleKernel)
    assert reg.predict(X).shape == (40, 2)
    assert reg.score(X, Y) > 0.9
    assert reg.sample_y(X[:5], n_samples=3).shape == (5, 2, 3)
    assert reg.log_predictive_density(X[:5], Y[:5]).shape == (5, 2)
    reg2 = MultipleKernelRegressor(kernel=kernels, solver="lbfgs", max_iter=30).fit(X, Y)
    assert reg2.score(X, Y) > 0.9


@pytest.mark.parametrize(
    "params, match",
    [
        ({"kernel": "rbf"}, "kernel must be"),
        ({"kernel": []}, "kernel must be"),
        ({"n_components": 0}, "n_components"),
        ({"bandwidths": -1.0}, "bandwidths"),
        ({"noise": -0.1}, "noise"),
        ({"noise_lower_bound": 0.0}, "noise_lower_bound"),
        ({"solver": "mosek"}, "solver"),
        ({"max_iter": -1}, "max_iter"),
        ({"tol": -1.0}, "tol"),
    ],
)
def test_bad_parameters(params, match):
    X, y = np.arange(10.0)[:, None], np.arange(10.0)
    with pytest.raises(ValueError, match=match):
        MultipleKernelRegressor(**params).fit(X, y)


def test_failed_fit_leaves_fitted_estimator_unchanged():
    X, y = np.arange(20.0)[:, None], np.sin(np.arange(20.0))
    reg = MultipleKernelRegressor(n_components=10).fit(X, y)
    before = reg.weights_.copy()
    Xbad = X.copy()
    Xbad[3, 0] = np.nan
    with pytest.raises(ValueError):
        reg.fit(Xbad, y)
    with pytest.raises(ValueError):
        reg.set_params(noise=-1.0).fit(X, y)
    np.testing.assert_array_equal(reg.weights_, before)
    assert reg.predict(X[:2]).shape == (2,)


@parametrize_with_checks([MultipleKernelRegressor(n_components=10, max_iter=10)])
def test_sklearn_compatible(estimator, check):
    check(estimator)


def test_defaults_do_not_interpolate_noise_on_small_scattered_data():
    # 60 scattered two-feature points with noise variance 0.01 (about 5e-3 of the target
    # variance): the default dictionary must estimate the noise and generalise like the GP.
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import KFold, cross_val_score

    from gpkern.estimators import GPRegressor

    rng = np.random.default_rng(0)
    X = rng.uniform(-3, 3, (60, 2))
    y = np.sin(X[:, 0]) + 0.3 * X[:, 1] ** 2 + 0.1 * rng.standard_normal(60)
    cv = KFold(3, shuffle=True, random_state=0)
    r2_gp = cross_val_score(GPRegressor(random_state=0), X, y, cv=cv).mean()
    r2 = cross_val_score(MultipleKernelRegressor(random_state=0), X, y, cv=cv).mean()
    assert r2 > r2_gp - 0.03, (r2, r2_gp)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        reg = MultipleKernelRegressor(random_state=0).fit(X, y)
    noise = 0.01 / y.var()  # the true noise in normalised units
    assert noise / 3 < reg.noise_ < 3 * noise
    assert reg.score(X, y) < 0.999


def test_default_first_order_components_select_the_relevant_inputs():
    # y depends on x0 and x1 only; four more inputs are noise. The isotropic grid alone must
    # weigh all six alike; the first-order components let the weights pick x0 and x1, and the
    # fit generalises like scikit-learn's ARD GP (an independent reference).
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(1)
    X = rng.uniform(-2, 2, (240, 6))
    y = np.sin(2 * X[:, 0]) + 0.5 * X[:, 1] ** 2 + 0.1 * rng.standard_normal(240)
    Xtr, Xte, ytr, yte = X[:180], X[180:], y[:180], y[180:]
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        reg = MultipleKernelRegressor(random_state=0).fit(Xtr, ytr)
    noise = 0.01 / ytr.var()  # the true noise in normalised units
    assert noise / 3 < reg.noise_ < 3 * noise
    A = reg.weights_.shape[0]
    first = reg.weights_[A - 6:]  # one component per input, in input order (gsmp_grid)
    bw = reg.kernel_.bandwidths[A - 6:].numpy()
    np.testing.assert_array_equal(bw > 0, np.eye(6, dtype=bool))
    assert first[0] > 0 and first[1] > 0
    assert np.all(first[2:] <= 1e-3 * first[:2].max())
    with warnings.catch_warnings():  # the isotropic grid alone interpolates: noise at its floor
        warnings.simplefilter("ignore", ConvergenceWarning)
        iso = MultipleKernelRegressor(additive_bandwidths=(), random_state=0).fit(Xtr, ytr)
    assert iso.weights_.shape[0] == A - 6
    scaler = StandardScaler().fit(Xtr)
    kern = ConstantKernel() * RBF(np.ones(6), (1e-2, 1e3)) + WhiteKernel(0.1)
    ard = GaussianProcessRegressor(kern, normalize_y=True, random_state=0)
    ard.fit(scaler.transform(Xtr), ytr)
    r2_ard = ard.score(scaler.transform(Xte), yte)
    assert reg.score(Xte, yte) > r2_ard - 0.02, (reg.score(Xte, yte), r2_ard)
    assert reg.score(Xte, yte) > iso.score(Xte, yte) + 0.02, (reg.score(Xte, yte), iso.score(Xte, yte))


def test_one_input_ignores_additive_bandwidths():
    X = np.linspace(0, 4, 50)[:, None]
    y = np.sin(3 * X[:, 0]) + 0.1 * np.random.default_rng(0).standard_normal(50)
    a = MultipleKernelRegressor(noise=0.01, random_state=0).fit(X, y)
    b = MultipleKernelRegressor(noise=0.01, additive_bandwidths=(0.25, 1.0), random_state=0).fit(X, y)
    np.testing.assert_array_equal(a.weights_, b.weights_)
    with pytest.raises(ValueError, match="additive_bandwidths"):
        MultipleKernelRegressor(additive_bandwidths=-1.0).fit(X, y)
