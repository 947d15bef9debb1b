"""Woodbury low-rank GP algebra against the dense scipy oracle."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gpkern.linalg.low_rank import LowRankPosterior, woodbury_log_likelihood


@pytest.fixture(autouse=True)
def _single_thread():
    """Small matrices: one torch thread is as fast alone and far faster on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(2, 30), D=st.integers(1, 12), noise=st.floats(1e-3, 3.0), seed=st.integers(0, 10**6))
def test_woodbury_lml_equals_dense(n, D, noise, seed):
    from conftest import dense_gp_reference

    rng = np.random.default_rng(seed)
    F = rng.standard_normal((n, D))
    y = rng.standard_normal(n)
    K = F @ F.T
    _, _, lml_ref = dense_gp_reference(K, K, K, y, noise)
    lml, alpha = woodbury_log_likelihood(torch.tensor(F), torch.tensor(y)[:, None], noise)
    np.testing.assert_allclose(float(lml), lml_ref, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(alpha[:, 0].numpy(), np.linalg.solve(K + noise * np.eye(n), y), rtol=1e-6, atol=1e-8)


def test_posterior_equals_dense(rng):
    from conftest import dense_gp_reference

    F, Fs = rng.standard_normal((40, 6)), rng.standard_normal((9, 6))
    y = rng.standard_normal(40)
    mean_ref, var_ref, _ = dense_gp_reference(F @ F.T, Fs @ F.T, Fs @ Fs.T, y, 0.3)
    post = LowRankPosterior(torch.tensor(F), torch.tensor(y)[:, None], 0.3)
    mean, var = post.predict(torch.tensor(Fs))
    np.testing.assert_allclose(mean[:, 0].numpy(), mean_ref, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(var.numpy(), var_ref, rtol=1e-7, atol=1e-10)
    _, cov = post.predict(torch.tensor(Fs), full_cov=True)
    np.testing.assert_allclose(np.diag(cov.numpy()), var_ref, rtol=1e-7, atol=1e-10)


def test_gradient_matches_dense():
    torch.manual_seed(0)
    F = torch.randn(25, 4, requires_grad=True)
    Y = torch.randn(25, 2)
    noise = torch.tensor(0.2, requires_grad=True)
    lml, _ = woodbury_log_likelihood(F, Y, noise)
    g = torch.autograd.grad(lml, [F, noise])
    C = F @ F.T + noise * torch.eye(25)
    dense = torch.distributions.MultivariateNormal(torch.zeros(25), C).log_prob(Y.T).sum()
    gd = torch.autograd.grad(dense, [F, noise])
    for a, b in zip(g, gd):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("noise", [0.0, -1.0])
def test_nonpositive_noise_fails_loudly(noise):
    F = torch.zeros(5, 3)
    with pytest.raises(ValueError, match="noise must be > 0"):
        woodbury_log_likelihood(F, torch.randn(5, 1), noise)


def test_shape_errors():
    F = torch.randn(5, 2)
    with pytest.raises(ValueError, match=r"Y must be \(n, t\)"):
        LowRankPosterior(F, torch.randn(5), 0.1)
    with pytest.raises(ValueError, match=r"F must be \(n, D\)"):
        woodbury_log_likelihood(F, torch.randn(4, 1), 0.1)
