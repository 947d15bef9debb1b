"""Spectral mixture kernels: closed-form derivatives, Wiener-Khinchin, GPyTorch conformance."""

import math
import unittest

import numpy as np
import pytest
import torch
from gpytorch.test.base_kernel_test_case import BaseKernelTestCase
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.integrate import quad
from sklearn.gaussian_process.kernels import Matern

from gpkern.kernels import GaussianSpectralMixtureKernel, StudentTSpectralMixtureKernel
from gpkern.kernels.spectral import spectral_mixture_1d


def _params(seed, q=4):
    g = torch.Generator().manual_seed(seed)
    w = torch.rand(q, generator=g, dtype=torch.float64) + 0.1
    mu = torch.rand(q, generator=g, dtype=torch.float64) * 5
    ls = torch.rand(q, generator=g, dtype=torch.float64) * 3 + 0.2
    return w, mu, ls


@pytest.mark.parametrize("envelope", ["gaussian", "matern52"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_closed_form_derivatives_match_autograd(envelope, seed):
    w, mu, ls = _params(seed)
    # avoid d = 0 exactly for the Matérn |d| (its derivatives are continuous there, autograd of |d| is not)
    d = torch.linspace(-1.7, 1.9, 37, dtype=torch.float64).requires_grad_(True)
    ks = spectral_mixture_1d(d, w, mu, ls, envelope=envelope, orders=range(5))
    g = ks[0]
    for m in range(1, 5):
        (g,) = torch.autograd.grad(g.sum(), d, create_graph=True)
        torch.testing.assert_close(ks[m], g.detach(), rtol=1e-9, atol=1e-9 * float(ks[m].abs().max()))


def test_matern_derivatives_continuous_through_zero():
    # Matérn-5/2 is C^4: k^(m)(eps) - k^(m)(-eps) = O(eps * k^(m+1)) for m <= 3, O(eps) for m = 4.
    w, mu, ls = _params(3)
    eps = 1e-8
    ks = spectral_mixture_1d(torch.tensor([-eps, 0.0, eps]), w, mu, ls, envelope="matern52", orders=range(5))
    for m in range(5):
        slope = float(ks[m + 1].abs().max()) if m < 4 else 1e6 * float(ks[4].abs().max())
        assert abs(float(ks[m][0] - ks[m][2])) <= 4 * eps * slope + 1e-12 * float(ks[m].abs().max())
        assert abs(float(ks[m][1] - ks[m][2])) <= 4 * eps * slope + 1e-12 * float(ks[m].abs().max())


@pytest.mark.parametrize("d", [0.0, 0.13, 0.5, 1.1])
def test_gaussian_component_is_fourier_transform_of_gaussian_spectrum(d):
    # Wiener-Khinchin: exp(-l d^2) cos(2 pi mu d) = int S(nu) cos(2 pi nu d) dnu,
    # S = sqrt(pi / l) * (exp(-pi^2 (nu - mu)^2 / l) + exp(-pi^2 (nu + mu)^2 / l)) / 2.
    ell, mu = 2.3, 1.7
    def S(nu):
        return math.sqrt(math.pi / ell) * 0.5 * (math.exp(-math.pi**2 * (nu - mu) ** 2 / ell) + math.exp(-math.pi**2 * (nu + mu) ** 2 / ell))
    ref = quad(lambda nu: S(nu) * math.cos(2 * math.pi * nu * d), -20, 20, limit=400)[0]
    (k,) = spectral_mixture_1d(torch.tensor([d]), torch.ones(1), torch.tensor([mu]), torch.tensor([ell]))
    assert abs(float(k) - ref) < 1e-8


def test_matern_envelope_matches_sklearn_matern52():
    ell = 1.7
    d = np.linspace(-2, 2, 41)
    ref = Matern(length_scale=1.0 / ell, nu=2.5)(np.zeros((1, 1)), d[:, None])[0]
    (k,) = spectral_mixture_1d(torch.tensor(d), torch.ones(1), torch.zeros(1), torch.tensor([ell]), envelope="matern52")
    np.testing.assert_allclose(k.numpy(), ref, rtol=1e-12, atol=1e-14)


def test_product_kernel_matches_manual_product():
    k = StudentTSpectralMixtureKernel(num_mixtures=3, ard_num_dims=2)
    k.frequencies = torch.tensor([[0.5, 1.0, 2.0], [0.0, 3.0, 1.5]])
    x = torch.rand(7, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    K = k(x).to_dense()
    ref = torch.ones(7, 7, dtype=torch.float64)
    for j in range(2):
        (kj,) = spectral_mixture_1d(x[:, None, j] - x[None, :, j], k.weights[j], k.frequencies[j], k.scales[j], envelope="matern52")
        ref = ref * kj
    torch.testing.assert_close(K, ref)


def test_bad_arguments():
    with pytest.raises(ValueError, match="envelope"):
        spectral_mixture_1d(torch.zeros(1), torch.ones(1), torch.ones(1), torch.ones(1), envelope="cauchy")
    with pytest.raises(ValueError, match="orders"):
        spectral_mixture_1d(torch.zeros(1), torch.ones(1), torch.ones(1), torch.ones(1), orders=(5,))
    with pytest.raises(ValueError, match="num_mixtures"):
        GaussianSpectralMixtureKernel(num_mixtures=0)


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(2, 12),
    gaussian=st.booleans(),
)
def test_kernel_symmetric_psd(seed, n, gaussian):
    g = torch.Generator().manual_seed(seed)
    cls = GaussianSpectralMixtureKernel if gaussian else StudentTSpectralMixtureKernel
    k = cls(num_mixtures=5, ard_num_dims=2)
    k.frequencies = torch.rand(2, 5, generator=g, dtype=torch.float64) * 4
    k.weights = torch.rand(2, 5, generator=g, dtype=torch.float64) + 1e-3
    k.scales = torch.rand(2, 5, generator=g, dtype=torch.float64) * 5 + 0.1
    x = torch.rand(n, 2, generator=g, dtype=torch.float64) * 3
    K = k(x).to_dense().detach()
    torch.testing.assert_close(K, K.T)
    assert float(torch.linalg.eigvalsh(K).min()) >= -1e-9 * float(K.diagonal().max())


class TestGaussianSpectralMixtureGPyTorch(BaseKernelTestCase, unittest.TestCase):
    def create_kernel_no_ard(self, **kwargs):
        return GaussianSpectralMixtureKernel(num_mixtures=4, max_frequency=2.0, **kwargs)

    def create_kernel_ard(self, num_dims, **kwargs):
        return GaussianSpectralMixtureKernel(num_mixtures=4, max_frequency=2.0, ard_num_dims=num_dims, **kwargs)


class TestStudentTSpectralMixtureGPyTorch(BaseKernelTestCase, unittest.TestCase):
    def create_kernel_no_ard(self, **kwargs):
        return StudentTSpectralMixtureKernel(num_mixtures=4, max_frequency=2.0, **kwargs)

    def create_kernel_ard(self, num_dims, **kwargs):
        return StudentTSpectralMixtureKernel(num_mixtures=4, max_frequency=2.0, ard_num_dims=num_dims, **kwargs)
