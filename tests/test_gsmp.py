"""GSMPKernel and LinearMultipleKernel: closed forms, GPyTorch's kernel suite, PSD properties."""

from __future__ import annotations

import math
import pickle
import unittest

import gpytorch
import numpy as np
import pytest
import torch
from gpytorch.test.base_kernel_test_case import BaseKernelTestCase
from hypothesis import given, settings
from hypothesis import strategies as st

from gpkern.kernels import GSMPKernel, LinearMultipleKernel
from gpkern.kernels.gsmp import gsmp_grid


@pytest.fixture(autouse=True)
def _one_thread():
    # The CI machine is shared: two OpenMP threads per tiny op cost more than they save.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def gsmp_numpy(x1, x2, w, mu, sd):
    """Independent double loop over the GSMP formula."""
    K = np.zeros((len(x1), len(x2)))
    for i, a in enumerate(x1):
        for j, b in enumerate(x2):
            tau = a - b
            K[i, j] = sum(
                w[q] * np.prod(np.exp(-2 * np.pi**2 * tau**2 * sd[q] ** 2) * np.cos(2 * np.pi * mu[q] * tau))
                for q in range(len(w))
            )
    return K


def test_gsmp_matches_formula_2d(rng):
    mu = rng.uniform(0, 1, (4, 2))
    sd = rng.uniform(0.05, 0.5, (4, 2))
    w = np.array([0.5, 0.0, 2.0, 1.3])
    x1, x2 = rng.normal(size=(7, 2)), rng.normal(size=(5, 2))
    k = GSMPKernel(means=torch.tensor(mu), bandwidths=torch.tensor(sd), weights=torch.tensor(w))
    K = k(torch.tensor(x1), torch.tensor(x2)).to_dense().detach().numpy()
    np.testing.assert_allclose(K, gsmp_numpy(x1, x2, w, mu, sd), rtol=1e-12, atol=1e-12)
    d = k(torch.tensor(x1), diag=True).detach().numpy()
    np.testing.assert_allclose(d, np.full(7, w.sum()), rtol=1e-12)


def test_gsmp_is_fourier_transform_of_gaussian_mixture(rng):
    # k(tau) = E_s[cos(2 pi s tau)] with s ~ N(mu, sd^2): Monte Carlo over the spectral density.
    mu, sd, tau = 0.3, 0.05, np.linspace(0, 5, 11)
    s = rng.normal(mu, sd, 400_000)
    mc = np.cos(2 * np.pi * s[:, None] * tau[None, :]).mean(0)
    k = GSMPKernel(means=torch.tensor([mu]), bandwidths=sd, weights=torch.tensor([1.0]))
    K = k(torch.tensor(tau)[:, None], torch.zeros(1, 1)).to_dense()[:, 0].detach().numpy()
    np.testing.assert_allclose(K, mc, atol=5e-3)


def test_weights_can_be_exact_zero_and_gradients_flow():
    k = GSMPKernel(n_components=3, weights=torch.tensor([0.0, 1.0, 2.0]))
    assert k.weights[0].item() == 0.0
    x = torch.linspace(0, 3, 6)[:, None]
    k(x).to_dense().sum().backward()
    assert torch.isfinite(k.raw_weights.grad).all()
    with pytest.raises(ValueError, match="non-negative"):
        k.weights = torch.tensor([-1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="3 entries"):
        k.weights = torch.ones(2)


def test_float32():
    k = GSMPKernel(n_components=5).to(torch.float32)
    x = torch.linspace(0, 3, 6, dtype=torch.float32)[:, None]
    K = k(x).to_dense()
    assert K.dtype == torch.float32
    k64 = GSMPKernel(n_components=5)
    np.testing.assert_allclose(K.detach().numpy(), k64(x.double()).to_dense().detach().numpy(), rtol=1e-5, atol=1e-6)


def test_gsmp_grid_nyquist_and_latin_hypercube():
    # A regular 20 x 20 design: n^(1/P) - 1 = 19 gaps per axis, the sampling interval itself.
    g0, g1 = torch.arange(20.0) * 0.5, torch.arange(20.0) * 2.0
    X = torch.stack(torch.meshgrid(g0, g1, indexing="ij"), -1).reshape(-1, 2)
    means, bw = gsmp_grid(X, 11, (0.001, 0.1), generator=torch.Generator().manual_seed(0))
    assert means.shape == (22, 2) and bw.shape == (22, 2)
    for p, nyq in enumerate([1.0, 0.25]):  # 0.5 / spacing
        np.testing.assert_allclose(np.sort(means[:11, p].numpy()), np.linspace(0, nyq, 11), atol=1e-12)
    assert torch.all(means[0] == 0)  # the trend component
    np.testing.assert_allclose(bw[:11, 0].numpy(), 0.001 / 9.5)
    np.testing.assert_allclose(bw[11:, 1].numpy(), 0.1 / 38.0)
    with pytest.raises(ValueError, match="bandwidths"):
        gsmp_grid(X, 5, -1.0)


def test_gsmp_grid_size_from_the_data():
    # A regular series resolves n/2 Fourier frequencies up to Nyquist: 60 months -> 31 rows,
    # 252 months -> 127, capped at max_components = 100 (the paper's grid).
    for months, Q in ((60, 31), (252, 100)):
        t = torch.arange(float(months), dtype=torch.float64)[:, None] / 12.0
        means, bw = gsmp_grid(t, bandwidths=(0.001, 0.05))
        assert means.shape == (2 * Q, 1)
        np.testing.assert_allclose(means[:Q, 0].numpy(), np.linspace(0, 6, Q), atol=1e-12)
        np.testing.assert_allclose(means[Q:], means[:Q])
        np.testing.assert_allclose(bw[Q:, 0].numpy(), 0.05 / ((months - 1) / 12), rtol=1e-12)
    assert gsmp_grid(t, bandwidths=0.0, max_components=50)[0].shape == (50, 1)
    # Three points standing in for the series' range and spacing (as SLIM-KL's agents use)
    # give its grid when told how many points there are.
    proxy = t[[0, 1, -1]]
    np.testing.assert_allclose(gsmp_grid(proxy, bandwidths=0.05, n_samples=252)[0],
                               gsmp_grid(t, bandwidths=0.05)[0])


def test_gsmp_grid_scattered_inputs_bound_the_frequencies():
    # 60 scattered points in 2-D resolve about sqrt(60) - 1 gaps per axis, not 59.
    g = torch.Generator().manual_seed(0)
    X = torch.rand(60, 2, generator=g, dtype=torch.float64) * 6 - 3
    span = X.max(0).values - X.min(0).values
    nyq = 0.5 * (60**0.5 - 1) / span
    K = [math.floor(float(nyq[p] * (span[p] + 0.5 / nyq[p]))) for p in range(2)]
    means, _ = gsmp_grid(X, bandwidths=0.5, generator=g)
    assert means.shape == (max(K) + 1, 2) and torch.all(means[0] == 0)
    for p in range(2):
        np.testing.assert_allclose(np.sort(means[:, p].numpy()), np.linspace(0, float(nyq[p]), max(K) + 1))
    # An integer grid keeps the same bound.
    means, _ = gsmp_grid(X, 50, bandwidths=0.5, generator=g)
    np.testing.assert_allclose(means.max(0).values.numpy(), nyq.numpy())
    # A constant feature only gets frequency zero; a binary one 0.5 / range, cos(pi tau) = -1
    # across its two levels.
    Xc = torch.cat([X, torch.full((60, 1), 2.0, dtype=torch.float64), (X[:, :1] > 0).double()], 1)
    means, _ = gsmp_grid(Xc, bandwidths=0.5, generator=g)
    assert torch.all(means[:, 2] == 0)
    assert float(means[:, 3].max()) == 0.5


def test_linear_multiple_kernel_matches_weighted_sum(rng):
    x = torch.tensor(rng.normal(size=(6, 2)))
    rbf = gpytorch.kernels.RBFKernel()
    per = gpytorch.kernels.PeriodicKernel()
    lin = gpytorch.kernels.LinearKernel()
    w = torch.tensor([0.3, 0.0, 1.7])
    k = LinearMultipleKernel([rbf, per, lin], weights=w)
    # independent numpy reference for each basis kernel
    xn = x.numpy()
    d2 = ((xn[:, None, :] - xn[None, :, :]) ** 2).sum(-1)
    ls = rbf.lengthscale.item()
    K_rbf = np.exp(-0.5 * d2 / ls**2)
    K_lin = lin.variance.item() * xn @ xn.T
    ref = 0.3 * K_rbf + 1.7 * K_lin
    np.testing.assert_allclose(k(x).to_dense().detach().numpy(), ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(k(x, diag=True).detach().numpy(), np.diag(ref), rtol=1e-10)
    assert k.basis(x, x).shape == (3, 6, 6)


def test_linear_multiple_kernel_bad_input():
    with pytest.raises(ValueError, match="non-empty"):
        LinearMultipleKernel([])
    with pytest.raises(TypeError, match="not a gpytorch"):
        LinearMultipleKernel([gpytorch.kernels.RBFKernel(), "rbf"])
    with pytest.raises(ValueError, match="batch shape"):
        LinearMultipleKernel([gpytorch.kernels.RBFKernel(batch_shape=torch.Size([2])), gpytorch.kernels.RBFKernel()])


def test_pickle_and_compose():
    k = LinearMultipleKernel([gpytorch.kernels.RBFKernel(), gpytorch.kernels.MaternKernel()])
    k2 = pickle.loads(pickle.dumps(k))
    x = torch.linspace(0, 1, 4)[:, None]
    torch.testing.assert_close(k(x).to_dense(), k2(x).to_dense())
    s = gpytorch.kernels.ScaleKernel(GSMPKernel(n_components=4)) + gpytorch.kernels.RBFKernel()
    assert s(x).to_dense().shape == (4, 4)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(2, 8),
    d=st.integers(1, 3),
    A=st.integers(1, 5),
    seed=st.integers(0, 10_000),
)
def test_gsmp_symmetric_psd(n, d, A, seed):
    g = np.random.default_rng(seed)
    k = GSMPKernel(
        means=torch.tensor(g.uniform(0, 2, (A, d))),
        bandwidths=torch.tensor(g.uniform(0.0, 1.0, (A, d))),
        weights=torch.tensor(g.uniform(0, 2, A) * (g.uniform(size=A) > 0.3)),
    )
    x = torch.tensor(g.normal(size=(n, d)) * 2)
    K = k(x).to_dense().detach()
    torch.testing.assert_close(K, K.T, rtol=0, atol=1e-12)
    assert torch.linalg.eigvalsh(K).min() >= -1e-9 * max(1.0, float(K.diagonal().max()))


@settings(max_examples=15, deadline=None)
@given(n=st.integers(2, 7), seed=st.integers(0, 10_000))
def test_lmk_symmetric_psd(n, seed):
    g = np.random.default_rng(seed)
    k = LinearMultipleKernel(
        [gpytorch.kernels.RBFKernel(), gpytorch.kernels.PeriodicKernel(), gpytorch.kernels.MaternKernel(nu=0.5)],
        weights=torch.tensor(g.uniform(0, 2, 3)),
    )
    x = torch.tensor(g.normal(size=(n, 2)))
    K = k(x).to_dense().detach()
    torch.testing.assert_close(K, K.T, rtol=0, atol=1e-12)
    assert torch.linalg.eigvalsh(K).min() >= -1e-9


class TestGSMPKernelGPyTorch(BaseKernelTestCase, unittest.TestCase):
    def create_kernel_no_ard(self, **kwargs):
        return GSMPKernel(**kwargs)

    def create_kernel_ard(self, num_dims, **kwargs):
        return GSMPKernel(ard_num_dims=num_dims, **kwargs)


class TestLinearMultipleKernelGPyTorch(BaseKernelTestCase, unittest.TestCase):
    def _kernels(self, batch_shape, ard=None):
        return [
            gpytorch.kernels.RBFKernel(ard_num_dims=ard, batch_shape=batch_shape),
            gpytorch.kernels.MaternKernel(ard_num_dims=ard, batch_shape=batch_shape),
        ]

    def create_kernel_no_ard(self, **kwargs):
        bs = kwargs.pop("batch_shape", torch.Size([]))
        return LinearMultipleKernel(self._kernels(bs), **kwargs)

    def create_kernel_ard(self, num_dims, **kwargs):
        bs = kwargs.pop("batch_shape", torch.Size([]))
        return LinearMultipleKernel(self._kernels(bs, num_dims), **kwargs)


def test_module_constant():
    assert math.isclose(GSMPKernel(n_components=3).weights.sum().item(), 1.0)


def test_gsmp_grid_first_order_components_are_rbf_of_one_input():
    # Component p of `additive` is scikit-learn's RBF of column p alone, with length-scale
    # range_p / (2 pi b); with one input none is added.
    from sklearn.gaussian_process.kernels import RBF

    g = torch.Generator().manual_seed(0)
    X = torch.rand(30, 3, generator=g, dtype=torch.float64) * torch.tensor([1.0, 4.0, 10.0])
    base_m, base_b = gsmp_grid(X, bandwidths=(0.001, 0.5), generator=torch.Generator().manual_seed(1))
    means, bw = gsmp_grid(X, bandwidths=(0.001, 0.5), generator=torch.Generator().manual_seed(1),
                          additive=(0.25, 1.0))
    assert torch.equal(means[: len(base_m)], base_m) and torch.equal(bw[: len(base_b)], base_b)
    assert means.shape == (len(base_m) + 6, 3) and torch.all(means[len(base_m):] == 0)
    K = GSMPKernel(means=means, bandwidths=bw).double().basis(X, X)[len(base_m):]
    span = (X.max(0).values - X.min(0).values).numpy()
    for i, (b, p) in enumerate([(b, p) for b in (0.25, 1.0) for p in range(3)]):
        ref = RBF(span[p] / (2 * math.pi * b))(X[:, p : p + 1].numpy())
        np.testing.assert_allclose(K[i].numpy(), ref, rtol=1e-12, atol=1e-14)
    t = torch.arange(10.0, dtype=torch.float64)[:, None]
    assert torch.equal(gsmp_grid(t, additive=0.5)[0], gsmp_grid(t)[0])
    with pytest.raises(ValueError, match="additive"):
        gsmp_grid(X, additive=-1.0)
