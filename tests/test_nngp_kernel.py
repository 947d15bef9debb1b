"""NNGPKernel: a GPyTorch kernel whose layer variances are learned by marginal likelihood."""

from __future__ import annotations

import unittest

import numpy as np
import pytest
import torch
from gpytorch.test.base_kernel_test_case import BaseKernelTestCase

from gpkern.estimators import GPRegressor
from gpkern.kernels import NNGPKernel
from gpkern.kernels.nngp import Dense, Erf, Relu, serial


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # many small tensor ops: one thread is much faster on a shared, oversubscribed CPU
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _arch():
    return serial(Dense(1.5, 0.1), Relu(), Dense(1.2, 0.2), Erf(), Dense(1.0, 0.05))


class TestNNGPKernelGPyTorch(BaseKernelTestCase, unittest.TestCase):
    def create_kernel_no_ard(self, **kwargs):
        return NNGPKernel(_arch(), kind="ntk", learn_variances=True, **kwargs)


def test_kernel_matches_architecture_and_closed_form_nngp():
    # one ReLU layer with W=1, b=0 on x.x'/d: the arc-cosine kernel, written out here
    rng = np.random.default_rng(0)
    X = rng.normal(size=(6, 3))
    kern = NNGPKernel(serial(Dense(1.0), Relu(), Dense(1.0)))
    K = kern(torch.from_numpy(X)).to_dense().detach().numpy()
    K0 = X @ X.T / 3
    n = np.sqrt(np.diag(K0))
    cos = np.clip(K0 / np.outer(n, n), -1, 1)
    th = np.arccos(cos)
    ref = np.outer(n, n) * (np.sin(th) + (np.pi - th) * cos) / (2 * np.pi)
    np.testing.assert_allclose(K, ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", ["nngp", "ntk"])
def test_gradients_match_finite_differences(kind):
    torch.manual_seed(0)
    x = torch.randn(5, 3, dtype=torch.float64)
    kern = NNGPKernel(_arch(), kind=kind, learn_variances=True).double()
    params = [p for p in kern.parameters()]
    assert len(params) == 6

    # analytic gradient of a scalar functional vs central differences
    w = torch.randn(5, 5, dtype=torch.float64)
    loss = (kern(x).to_dense() * w).sum() + kern(x, diag=True).pow(2).sum()
    grads = torch.autograd.grad(loss, params)
    eps = 1e-6
    for p, gr in zip(params, grads):
        base = p.data.clone()
        p.data = base + eps
        up = ((kern(x).to_dense() * w).sum() + kern(x, diag=True).pow(2).sum()).item()
        p.data = base - eps
        dn = ((kern(x).to_dense() * w).sum() + kern(x, diag=True).pow(2).sum()).item()
        p.data = base
        assert gr.item() == pytest.approx((up - dn) / (2 * eps), rel=1e-5, abs=1e-8)


def test_diagonal_gradient_is_finite():
    # rho = 1 on the diagonal: arccos has an infinite derivative there, the kernel does not
    x = torch.randn(4, 3, dtype=torch.float64)
    kern = NNGPKernel(_arch(), kind="ntk", learn_variances=True).double()
    loss = kern(x, diag=True).sum() + kern(x).to_dense().sum()
    grads = torch.autograd.grad(loss, list(kern.parameters()))
    assert all(torch.isfinite(g).all() for g in grads)


def test_learns_variances_inside_gpregressor():
    # data drawn from the NNGP prior with known variances: the fit should move towards them
    rng = np.random.default_rng(3)
    X = rng.normal(size=(80, 2))
    truth = serial(Dense(2.0, 0.5), Relu(), Dense(1.0, 0.3))
    K = truth.kernel(torch.from_numpy(X)).numpy()
    L = np.linalg.cholesky(K + 1e-6 * np.eye(len(X)))
    y = L @ rng.normal(size=len(X)) + 0.05 * rng.normal(size=len(X))
    start = NNGPKernel(serial(Dense(1.0, 0.1), Relu(), Dense(1.0, 0.1)), learn_variances=True)
    gp = GPRegressor(kernel=start, normalize_y=False, max_iter=40).fit(X, y)
    fixed = GPRegressor(kernel=start, normalize_y=False, optimizer=None, noise=gp.noise_).fit(X, y)
    assert gp.log_marginal_likelihood() > fixed.log_marginal_likelihood() + 1.0
    stds = gp.kernel_.stds()
    # the learned product W_out^2 * W_in^2 (the overall scale) approaches the truth (4)
    scale = (stds[1]["W_std"] ** 2 * stds[0]["W_std"] ** 2).item()
    assert 1.5 < scale < 10.0
    assert start.stds()[0]["W_std"].item() == pytest.approx(1.0)  # the estimator copied it


def test_float32_inputs():
    x = torch.randn(5, 3)
    kern = NNGPKernel(_arch(), kind="ntk").float()
    K32 = kern(x.float()).to_dense()
    assert K32.dtype == torch.float32
    K64 = NNGPKernel(_arch(), kind="ntk")(x.double()).to_dense()
    np.testing.assert_allclose(K32.numpy(), K64.numpy(), rtol=1e-4, atol=1e-5)


def test_bad_arguments():
    with pytest.raises(TypeError, match="serial"):
        NNGPKernel("relu")
    with pytest.raises(ValueError, match="kind"):
        NNGPKernel(_arch(), kind="cntk")
    with pytest.raises(ValueError, match="input_shape"):
        NNGPKernel(_arch(), input_shape=(3, 4))
    with pytest.raises(ValueError, match="W_std"):
        Dense(W_std=-1.0)
    with pytest.raises(ValueError, match="b_std"):
        Dense(1.0, b_std=float("nan"))
    with pytest.raises(TypeError, match="parentheses"):
        serial(Dense(1.0), Relu)
