"""Random-feature kernels: Monte Carlo convergence to closed forms at the 1/sqrt(m) rate."""

from __future__ import annotations

import math
import unittest

import gpytorch
import numpy as np
import pytest
import torch
from gpytorch.test.base_kernel_test_case import BaseKernelTestCase
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from gpkern.kernels import RandomFeatureKernel
from gpkern.kernels.random_features import URF_ACTIVATIONS


@pytest.fixture(autouse=True)
def _single_thread():
    """Small matrices: one torch thread is as fast alone and far faster on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- independent closed forms (numpy) ------------------------------------------------------------
def exact_kernel(kind: str, activation: str | None, X: np.ndarray) -> np.ndarray:
    G = X @ X.T
    nrm = np.linalg.norm(X, axis=1)
    cos = np.clip(G / np.outer(nrm, nrm), -1, 1)
    th = np.arccos(cos)
    if kind == "rbf":
        sq = nrm[:, None] ** 2 + nrm[None] ** 2 - 2 * G
        return np.exp(-0.5 * sq)
    if kind == "arccos0":
        return 1 - th / np.pi
    if kind == "arccos1":
        return np.outer(nrm, nrm) / np.pi * (np.sin(th) + (np.pi - th) * cos)
    if kind == "softmax":
        return np.exp(G)
    return {
        "cos": np.cos,
        "sin": np.sin,
        "gaussian": lambda z: np.exp(-0.5 * z**2),
        "sinc": np.sinc,
        "exp": np.exp,
    }[activation](G)


CASES = [("rbf", None), ("arccos0", None), ("arccos1", None), ("softmax", None)] + [
    ("urf", a) for a in sorted(URF_ACTIVATIONS)
]


def make(kind, m, activation=None, seed=0, **kw):
    k = RandomFeatureKernel(kind, n_features=m, activation=activation, random_state=seed, **kw)
    k.lengthscale = 1.0
    return k


@pytest.mark.parametrize("kind,activation", CASES)
def test_monte_carlo_rate(kind, activation):
    """RMS error of the estimated Gram matrix falls as m^(-1/2): fitted log-log slope and err*sqrt(m)."""
    rng = np.random.default_rng(1)
    X = 0.4 * rng.standard_normal((8, 3))
    K = exact_kernel(kind, activation, X)
    ms = np.array([64, 256, 1024, 4096])
    errs = []
    for m in ms:
        e = [
            np.sqrt(np.mean((make(kind, int(m), activation, seed=s)(torch.tensor(X)).to_dense().detach().numpy() - K) ** 2))
            for s in range(24)
        ]
        errs.append(np.sqrt(np.mean(np.square(e))))
    errs = np.array(errs)
    slope = np.polyfit(np.log(ms), np.log(errs), 1)[0]
    assert -0.65 < slope < -0.35, (slope, errs)
    scaled = errs * np.sqrt(ms)
    assert scaled.max() / scaled.min() < 1.6, scaled
    # unbiased: the largest m is close in absolute terms
    assert errs[-1] < 0.1 * max(1.0, np.abs(K).max())


@pytest.mark.parametrize("kind", ["rbf", "arccos0", "arccos1", "softmax"])
def test_features_gram_and_diag(kind):
    x = torch.randn(7, 4)
    k = make(kind, 128)
    F = k.features(x)
    assert F.shape == (7, k.feature_dim)
    torch.testing.assert_close(k(x).to_dense(), F @ F.T)
    torch.testing.assert_close(k(x, diag=True), (F * F).sum(-1))


def test_lengthscale_and_ard_scale_inputs():
    x = torch.randn(5, 2)
    k = RandomFeatureKernel("rbf", n_features=64, ard_num_dims=2)
    k.lengthscale = torch.tensor([[2.0, 0.5]])
    ref = make("rbf", 64)(x / torch.tensor([2.0, 0.5])).to_dense()
    torch.testing.assert_close(k(x).to_dense(), ref)


def test_deterministic_in_seed_and_cross_covariance():
    x, y = torch.randn(5, 3), torch.randn(4, 3)
    a, b, c = make("rbf", 32, seed=3), make("rbf", 32, seed=3), make("rbf", 32, seed=4)
    torch.testing.assert_close(a(x, y).to_dense(), b(x, y).to_dense())
    assert not torch.allclose(a(x, y).to_dense(), c(x, y).to_dense())
    torch.testing.assert_close(a(x, y).to_dense(), a.features(x) @ a.features(y).T)


@pytest.mark.parametrize("kind,activation", [("arccos1", None), ("rbf", None), ("urf", "cos")])
def test_float32_matches_float64(kind, activation):
    """Same draws in both precisions: float32 output equals float64 output to float32 accuracy."""
    x = torch.randn(6, 3) * 0.5
    K64 = make(kind, 256, activation)(x).to_dense().detach()
    K32 = make(kind, 256, activation).float()(x.float()).to_dense().detach()
    assert K32.dtype == torch.float32
    torch.testing.assert_close(K32.double(), K64, rtol=1e-4, atol=1e-5)


@settings(max_examples=25, deadline=None)
@given(
    X=arrays(np.float64, st.tuples(st.integers(2, 12), st.integers(1, 4)), elements=st.floats(-2, 2)),
    kind=st.sampled_from(["rbf", "arccos0", "arccos1", "softmax"]),
)
def test_symmetric_psd(X, kind):
    K = make(kind, 64)(torch.tensor(X)).to_dense()
    torch.testing.assert_close(K, K.T)
    ev = torch.linalg.eigvalsh(K)
    assert ev.min() >= -1e-9 * max(1.0, ev.abs().max().item())


@settings(max_examples=15, deadline=None)
@given(X=arrays(np.float64, st.tuples(st.integers(2, 10), st.integers(1, 3)), elements=st.floats(-1, 1)),
       act=st.sampled_from(sorted(URF_ACTIVATIONS)))
def test_urf_symmetric(X, act):
    K = make("urf", 32, act)(torch.tensor(X)).to_dense()
    torch.testing.assert_close(K, K.T)


# -- bad input -------------------------------------------------------------------------------
@pytest.mark.parametrize("m", [0, -3, 2.5, True, "10"])
def test_bad_n_features(m):
    with pytest.raises(ValueError, match="n_features must be a positive integer"):
        RandomFeatureKernel("rbf", n_features=m)


@pytest.mark.parametrize("act", ["relu", "tanh", None, torch.sin])
def test_urf_activation_without_representation(act):
    with pytest.raises(ValueError, match="no known universal-random-feature"):
        RandomFeatureKernel("urf", activation=act)


def test_relu_hint_and_other_errors():
    with pytest.raises(ValueError, match="arccos1"):
        RandomFeatureKernel("urf", activation="relu")
    with pytest.raises(ValueError, match="kind must be one of"):
        RandomFeatureKernel("laplace")
    with pytest.raises(ValueError, match="only used with kind='urf'"):
        RandomFeatureKernel("rbf", activation="sin")
    with pytest.raises(ValueError, match="not a Gram"):
        RandomFeatureKernel("urf", activation="cos").features(torch.randn(3, 2))


# -- GPyTorch's kernel test suite -------------------------------------------------------------
class TestRandomFeatureKernelGPyTorch(BaseKernelTestCase, unittest.TestCase):
    def create_kernel_no_ard(self, **kwargs):
        return RandomFeatureKernel("rbf", n_features=64, **kwargs)

    def create_kernel_ard(self, num_dims, **kwargs):
        return RandomFeatureKernel("rbf", n_features=64, ard_num_dims=num_dims, **kwargs)


class TestArcCosKernelGPyTorch(BaseKernelTestCase, unittest.TestCase):
    def create_kernel_no_ard(self, **kwargs):
        return RandomFeatureKernel("arccos1", n_features=64, **kwargs)

    def create_kernel_ard(self, num_dims, **kwargs):
        return RandomFeatureKernel("arccos1", n_features=64, ard_num_dims=num_dims, **kwargs)


def test_in_gpytorch_scale_kernel_and_sum():
    x = torch.randn(6, 2)
    k = gpytorch.kernels.ScaleKernel(make("rbf", 64)) + make("arccos0", 64)
    assert k(x).to_dense().shape == (6, 6)
    assert math.isfinite(float(k(x).to_dense().detach().sum()))


def test_gpytorch_model_uses_woodbury_and_matches_dense():
    """Evaluated eagerly, the training covariance is a low-rank root: GPyTorch adds the noise as
    LowRankRootAddedDiag (Woodbury solves); the log density equals the dense one either way."""
    from gpkern.linalg.low_rank import woodbury_log_likelihood

    torch.manual_seed(0)
    x, y = torch.randn(80, 2), torch.randn(80)
    k = make("rbf", 16)
    lik = gpytorch.likelihoods.GaussianLikelihood()
    lik.noise = 0.2
    with gpytorch.settings.lazily_evaluate_kernels(False):
        out = lik(gpytorch.distributions.MultivariateNormal(torch.zeros(80), k(x)))
    assert type(out.lazy_covariance_matrix).__name__ == "LowRankRootAddedDiagLinearOperator"
    lazy = lik(gpytorch.distributions.MultivariateNormal(torch.zeros(80), k(x)))
    F = k.features(x).detach()
    dense = torch.distributions.MultivariateNormal(torch.zeros(80), F @ F.T + 0.2 * torch.eye(80)).log_prob(y)
    torch.testing.assert_close(out.log_prob(y).detach(), dense)
    torch.testing.assert_close(lazy.log_prob(y).detach(), dense)
    torch.testing.assert_close(woodbury_log_likelihood(F, y[:, None], 0.2)[0], dense)
