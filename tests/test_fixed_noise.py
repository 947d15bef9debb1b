"""A fixed noise is used exactly as given, by every estimator taking ``noise``."""

import warnings

import gpytorch
import numpy as np
import pytest
import torch

from conftest import dense_gp_reference
from gpkern.estimators import (
    DKMRegressor,
    GPRegressor,
    GridGPRegressor,
    MultipleKernelRegressor,
    ScaleMixtureRegressor,
    StudentTProcessRegressor,
)
from gpkern.exceptions import NumericalWarning

LS, SCALE = 0.7, 1.3


def _kernel():
    k = gpytorch.kernels.ScaleKernel(gpytorch.kernels.RBFKernel()).double()
    k.base_kernel.lengthscale = LS
    k.outputscale = SCALE
    return k


def _rbf(A, B):  # the same kernel in numpy: the oracle's covariance
    return SCALE * np.exp(-0.5 * (A[:, None, 0] - B[None, :, 0]) ** 2 / LS**2)


@pytest.mark.parametrize("noise", [1e-12, 1e-7, 0.3])
def test_gp_regressor_uses_a_tiny_fixed_noise_exactly(noise):
    X = np.linspace(0, 6, 9)[:, None]  # spread: K + 1e-12 I factorises without jitter
    y = np.sin(X[:, 0])
    Xs = np.linspace(-0.5, 6.5, 15)[:, None]
    gp = GPRegressor(kernel=_kernel(), noise=noise, optimizer=None, normalize_y=False).fit(X, y)
    assert gp.noise_ == noise and gp.jitter_ == 0.0
    mean, var, lml = dense_gp_reference(_rbf(X, X), _rbf(Xs, X), _rbf(Xs, Xs), y, noise)
    mu, sd = gp.predict(Xs, return_std=True)
    np.testing.assert_allclose(mu, mean, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(sd**2, np.clip(var, 0, None), atol=1e-9)
    assert gp.log_marginal_likelihood_value_ == pytest.approx(lml, rel=1e-9)


def test_fixed_noise_that_needs_jitter_warns_and_reports_both():
    X = np.repeat(np.linspace(0, 1, 30), 2)[:, None]  # every point twice: K is singular
    gp = GPRegressor(kernel=_kernel(), noise=1e-300, optimizer=None)
    with pytest.warns(NumericalWarning, match="jitter"):
        gp.fit(X, np.sin(X[:, 0]))
    assert gp.noise_ == 1e-300 and gp.jitter_ > 0


def _fitted_noise(est, X, y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # budget warnings are not the point here
        return est.fit(X, y).noise_


@pytest.mark.parametrize(
    "make",
    [
        lambda noise: GPRegressor(noise=noise, max_iter=10),
        lambda noise: GridGPRegressor(noise=noise, max_iter=10),
        lambda noise: MultipleKernelRegressor(noise=noise, n_components=10, max_iter=5),
        lambda noise: MultipleKernelRegressor(noise=noise, n_components=10, max_iter=5, solver="lbfgs"),
        lambda noise: StudentTProcessRegressor(noise=noise, max_iter=10),
        lambda noise: ScaleMixtureRegressor(noise=noise, max_iter=10),
        lambda noise: DKMRegressor(noise=noise, n_layers=1, widths_ratio=1.0, max_iter=5),
    ],
    ids=["gp", "grid", "mkr-sca", "mkr-lbfgs", "student-t", "scale-mixture", "dkm"],
)
def test_every_estimator_keeps_a_fixed_noise_exactly(make):
    rng = np.random.default_rng(0)
    X = np.linspace(0, 5, 30)[:, None]
    y = np.sin(X[:, 0]) + 0.1 * rng.standard_normal(30)
    # 1e-7 is below every learned-noise floor (1e-6, and MultipleKernelRegressor's 1e-4).
    assert _fitted_noise(make(1e-7), X, y) == 1e-7


def test_grid_uses_a_tiny_fixed_noise_exactly():
    x1, x2 = np.linspace(0, 6, 7), np.linspace(0, 6, 6)
    X = np.stack(np.meshgrid(x1, x2, indexing="ij"), -1).reshape(-1, 2)
    y = np.sin(X[:, 0]) * np.cos(X[:, 1])
    k = gpytorch.kernels.RBFKernel(ard_num_dims=2).double()
    k.lengthscale = torch.tensor([[LS, LS]], dtype=torch.float64)
    grid = GridGPRegressor(kernel=k, noise=1e-12, optimizer=None, normalize_y=False).fit(X, y)
    dense = GPRegressor(kernel=k, noise=1e-12, optimizer=None, normalize_y=False).fit(X, y)
    assert grid.noise_ == 1e-12 and grid.backend_ == "kronecker"
    Xs = np.random.default_rng(1).uniform(0, 6, (20, 2))
    np.testing.assert_allclose(grid.predict(Xs), dense.predict(Xs), atol=1e-7)
