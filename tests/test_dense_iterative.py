"""The iterative estimator on the stored dense kernel matrix against the plain dense computation."""

import math

import gpytorch
import numpy as np
import pytest
import torch

from gpkern.estimators import GPRegressor
from gpkern.estimators import gp_regressor as gp_regressor_module
from gpkern.linalg import dispatch
from gpkern.models.dense_iterative import DenseIterativeGP
from gpkern.models.exact import ExactGP
from gpkern.models.iterative import IterativeGP, IterativeSettings


def _data(n=120, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.rand(n, d, generator=g, dtype=torch.float64)
    Y = torch.sin(4 * X[:, :1]) + X[:, 1:2] ** 2 + 0.1 * torch.randn(n, 1, generator=g, dtype=torch.float64)
    return X, Y


def _kernel():
    kernel = gpytorch.kernels.ScaleKernel(gpytorch.kernels.RBFKernel(ard_num_dims=3))
    kernel.base_kernel.lengthscale = torch.tensor([[0.4, 0.7, 1.0]])
    return kernel.double()


def _grads(model, X, Y):
    model.zero_grad()
    value = model.log_marginal_likelihood(X, Y)
    value.backward()
    return float(value.detach()), torch.cat([p.grad.reshape(-1) for p in model.parameters()])


def test_full_rank_preconditioner_gives_the_exact_value():
    # P = K + s I exactly: CG converges at once and log|A| = log|P| (determinant lemma).
    X, Y = _data()
    exact = ExactGP(_kernel(), noise=0.05).double()
    settings = IterativeSettings(preconditioner_rank=X.shape[0], cg_tol=1e-10)
    model = DenseIterativeGP(_kernel(), noise=0.05, settings=settings).double()
    assert float(model.log_marginal_likelihood(X, Y).detach()) == pytest.approx(
        float(exact.log_marginal_likelihood(X, Y)), rel=1e-8
    )


def test_gradient_is_unbiased_against_the_dense_gradient():
    # Low-rank preconditioner, many probes: the Hutchinson gradient and the SLQ value within
    # their Monte Carlo error of the closed form.
    X, Y = _data()
    value, grad = _grads(ExactGP(_kernel(), noise=0.05).double(), X, Y)
    settings = IterativeSettings(preconditioner_rank=10, num_probes=2000, cg_tol=1e-8,
                                 lanczos_iter=60)
    est_value, est_grad = _grads(DenseIterativeGP(_kernel(), noise=0.05, settings=settings).double(),
                                 X, Y)
    assert est_value == pytest.approx(value, abs=0.05)
    torch.testing.assert_close(est_grad, grad, rtol=0.02, atol=0.2)


def test_same_estimate_as_the_lazy_operator():
    # The stored matrix changes where the products come from, not the estimator.
    X, Y = _data()
    settings = IterativeSettings(preconditioner_rank=20)
    dense = DenseIterativeGP(_kernel(), noise=0.05, settings=settings).double()
    lazy = IterativeGP(_kernel(), noise=0.05, settings=settings, backend="torch").double()
    v1, g1 = _grads(dense, X, Y)
    v2, g2 = _grads(lazy, X, Y)
    assert v1 == pytest.approx(v2, rel=1e-8)
    torch.testing.assert_close(g1, g2, rtol=1e-6, atol=1e-8)


def test_posterior_is_the_exact_one():
    X, Y = _data()
    Xs = torch.rand(7, 3, dtype=torch.float64)
    m1, v1 = DenseIterativeGP(_kernel(), noise=0.05).double().posterior(X, Y).predict(Xs)
    m2, v2 = ExactGP(_kernel(), noise=0.05).double().posterior(X, Y).predict(Xs)
    torch.testing.assert_close(m1, m2)
    torch.testing.assert_close(v1, v2)


def test_rule_between_cholesky_and_the_kernel_operator():
    rbf = gpytorch.kernels.RBFKernel()
    lo, hi = dispatch.DENSE_ITERATIVE_MIN_N, dispatch.DENSE_MAX_N
    assert dispatch.choose_backend(lo - 1, rbf) == "dense"
    assert dispatch.choose_backend(lo, rbf) == "dense-iterative"
    assert dispatch.choose_backend(hi, rbf) == "dense-iterative"
    assert dispatch.choose_backend(hi, rbf, "dense") == "dense"
    # Any kernel has a dense matrix: no KeOps formula needed.
    assert dispatch.choose_backend(lo, gpytorch.kernels.PolynomialKernel(power=2)) == "dense-iterative"


def test_fit_reaches_the_dense_optimum(monkeypatch):
    rng = np.random.default_rng(0)
    X = rng.uniform(size=(400, 3))
    y = np.sin(4 * X[:, 0]) + X[:, 1] ** 2 + 0.1 * rng.standard_normal(400)
    Xte = rng.uniform(size=(200, 3))
    dense = GPRegressor(random_state=0).fit(X, y)
    monkeypatch.setattr(gp_regressor_module, "choose_backend", lambda n, k, b: "dense-iterative")
    iterative = GPRegressor(random_state=0).fit(X, y)
    assert isinstance(iterative._model, DenseIterativeGP)
    # Reported value is exact (Cholesky) at the hyperparameters reached: no better than the
    # dense optimum, and close to it.
    lml, best = iterative.log_marginal_likelihood_value_, dense.log_marginal_likelihood_value_
    assert best - 1.0 < lml <= best + 1e-6 * abs(best)
    exact_there = GPRegressor(kernel=iterative.kernel_, noise=iterative.noise_, optimizer=None)
    assert exact_there.fit(X, y).log_marginal_likelihood_value_ == pytest.approx(lml, rel=1e-10)
    scale = np.std(dense.predict(Xte))
    assert np.max(np.abs(iterative.predict(Xte) - dense.predict(Xte))) < 0.05 * scale
    assert math.isclose(iterative.noise_, dense.noise_, rel_tol=0.2)
