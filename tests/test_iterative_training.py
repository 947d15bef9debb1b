"""Training of the iterative GP: the stochastic log marginal likelihood and its gradient against
the dense exact ones, with tolerances from the estimator's exact variance, and a fit."""

from __future__ import annotations

import math
import warnings

import gpytorch
import numpy as np
import pytest
import torch

import gpkern.estimators.gp_regressor as gp_regressor
from gpkern.estimators.gp_regressor import GPRegressor
from gpkern.models.exact import ExactGP
from gpkern.models.iterative import IterativeGP, IterativeSettings


def _data(n: int, seed: int = 0, t: int = 1):
    g = torch.Generator().manual_seed(seed)
    X = 4 * torch.rand(n, 2, generator=g, dtype=torch.float64)
    Y = torch.sin(2 * X[:, :1]) * torch.cos(X[:, 1:]) + 0.1 * torch.randn(
        n, t, generator=g, dtype=torch.float64
    )
    return X, Y


def _model(cls, **kw):
    kernel = gpytorch.kernels.ScaleKernel(gpytorch.kernels.RBFKernel(ard_num_dims=2)).double()
    kernel.base_kernel.lengthscale = torch.tensor([[0.7, 1.3]])
    kernel.outputscale = 1.5
    return cls(kernel, noise=0.05, **kw).double()


def _dense(model, X):  # A = K + s I as a differentiable dense function of the parameters
    return model.kernel(X, X).to_dense() + model.noise * torch.eye(X.shape[0], dtype=X.dtype)


def _exact_lml_and_grads(X, Y):
    exact = _model(ExactGP)
    lml = exact.log_marginal_likelihood(X, Y)
    lml.backward()
    return exact, float(lml.detach()), {k: p.grad.clone() for k, p in exact.named_parameters()}


def _iterative(X, Y, **settings):
    gp = _model(IterativeGP, backend="torch", settings=IterativeSettings(**settings))
    lml = gp.log_marginal_likelihood(X, Y)
    lml.backward()
    return gp, float(lml.detach()), {k: p.grad.clone() for k, p in gp.named_parameters()}


def test_full_rank_preconditioner_gives_the_exact_value_and_an_unbiased_gradient():
    """P = A (rank n): log|A| = log|P| exactly; the Hutchinson gradient has known variance."""
    X, Y = _data(120, t=2)
    n, t = Y.shape
    c = 400
    exact, lml_ref, grads_ref = _exact_lml_and_grads(X, Y)
    gp, lml, grads = _iterative(
        X, Y, num_probes=c, preconditioner_rank=n, cg_tol=1e-10, lanczos_iter=n
    )
    assert math.isclose(lml, lml_ref, rel_tol=1e-8, abs_tol=1e-8)
    # With z ~ N(0, A), d log|A| is estimated by the mean of w^T dA w, w = A^{-1} z ~ N(0, A^-1):
    # variance 2 tr((A^-1 dA)^2) per probe; the LML's gradient carries t/2 of it.
    with torch.no_grad():
        Ainv = torch.linalg.inv(_dense(exact, X))
        for name, p in exact.named_parameters():
            for i in range(p.numel()):
                M = Ainv @ _dA(exact, X, p, i)
                sd = 0.5 * t * math.sqrt(2 * float((M * M.T).sum()) / c)
                err = abs(float(grads[name].reshape(-1)[i] - grads_ref[name].reshape(-1)[i]))
                assert err < 5 * sd + 1e-6, (name, i, err, sd)
    assert gp.last_cg_iterations <= 3  # P = A up to rounding


def _dA(model, X, p, i, h=1e-5):  # central difference of the dense A in p's i-th entry
    flat = p.data.view(-1)
    base = float(flat[i])
    flat[i] = base + h
    plus = _dense(model, X)
    flat[i] = base - h
    minus = _dense(model, X)
    flat[i] = base
    return (plus - minus) / (2 * h)


def test_low_rank_preconditioner_value_within_its_monte_carlo_error():
    """P = L L^T + s I of rank 10: the quadrature is exact per probe (tight CG, full Lanczos),
    so the error is the probes' own, with variance 2 sum_i log^2 lambda_i(P^-1 A) per probe."""
    from gpkern.linalg.keops import kernel_operator
    from gpkern.linalg.rpcholesky import rp_cholesky

    X, Y = _data(150, seed=1)
    n, t = Y.shape
    c, rank, seed = 300, 10, 3
    exact, lml_ref, _ = _exact_lml_and_grads(X, Y)
    gp, lml, _ = _iterative(
        X, Y, num_probes=c, preconditioner_rank=rank, cg_tol=1e-10, lanczos_iter=n, seed=seed
    )
    with torch.no_grad():
        op = kernel_operator(exact.kernel, X, backend="torch")
        L, _ = rp_cholesky(
            op.columns, op._diagonal(), rank, generator=torch.Generator().manual_seed(seed)
        )
        P = L @ L.T + exact.noise * torch.eye(n, dtype=X.dtype)
        lam = torch.linalg.eigvals(torch.linalg.solve(P, _dense(exact, X))).real
    sd = 0.5 * t * math.sqrt(2 * float((lam.log() ** 2).sum()) / c)
    assert float(lam.max()) > 1.5  # the preconditioner is not A: the probes matter
    assert abs(lml - lml_ref) < 5 * sd, (lml, lml_ref, sd)
    assert gp.last_cg_iterations > 5


def test_training_loss_is_a_deterministic_function_of_the_seed():
    X, Y = _data(100, seed=2)
    a = _iterative(X, Y, num_probes=4, preconditioner_rank=5, seed=7)
    b = _iterative(X, Y, num_probes=4, preconditioner_rank=5, seed=7)
    other = _iterative(X, Y, num_probes=4, preconditioner_rank=5, seed=8)
    assert a[1] == b[1] and all(torch.equal(a[2][k], b[2][k]) for k in a[2])
    assert a[1] != other[1]


def test_training_budget_warns():
    from gpkern.exceptions import CGConvergenceWarning

    X, Y = _data(100, seed=2)
    with pytest.warns(CGConvergenceWarning, match="max_cg_iter"):
        _iterative(X, Y, max_cg_iter=2, preconditioner_rank=1, cg_tol=1e-10)


@pytest.mark.slow
def test_iterative_fit_reaches_the_dense_fit(monkeypatch):
    """GPRegressor on the chunked torch operator (no KeOps compile) at n = 600."""
    rng = np.random.default_rng(0)
    X = rng.uniform(-3, 3, size=(600, 2))
    y = np.sin(2 * X[:, 0]) * np.cos(X[:, 1]) + 0.1 * rng.standard_normal(600)
    common = dict(random_state=0, optimizer="lbfgs", max_iter=30)
    dense = GPRegressor(backend="dense", **common).fit(X, y)
    monkeypatch.setattr(gp_regressor, "choose_backend", lambda n, kernel, backend: "torch")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        fast = GPRegressor(backend="keops", **common).fit(X, y)
    assert isinstance(fast._model, IterativeGP) and fast._model.backend == "torch"
    monkeypatch.undo()
    at_fast = GPRegressor(
        kernel=fast.kernel_, noise=fast.noise_, optimizer=None, backend="dense"
    ).fit(X, y)
    lml_d, lml_at_fast = dense.log_marginal_likelihood(), at_fast.log_marginal_likelihood()
    # The exact LML at the iterative optimum is (nearly) as high as at the dense optimum, and the
    # iterative estimate of it is close to the exact value.
    assert lml_at_fast > lml_d - 2e-3 * abs(lml_d) - 0.5, (lml_at_fast, lml_d)
    assert abs(fast.log_marginal_likelihood() - lml_at_fast) < 1e-2 * abs(lml_d) + 1.0
    np.testing.assert_allclose(fast.noise_, dense.noise_, rtol=0.1)
