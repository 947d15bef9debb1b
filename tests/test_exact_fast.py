"""The direct stationary-kernel path of the exact GP against plain dense computations.

References: kernel matrices from explicit pairwise differences (an ``(n, m, d)`` tensor, no
quadratic expansion), GPyTorch's own dense evaluation, log marginal likelihoods from
``torch.linalg.cholesky`` with autograd through the factorisation, predictions from the numpy
oracle in ``conftest.dense_gp_reference``.
"""

from __future__ import annotations

import math

import gpytorch
import numpy as np
import pytest
import torch

from conftest import dense_gp_reference
from gpkern.estimators import GPRegressor
from gpkern.kernels.dense_stationary import register_stationary, stationary_matrix
from gpkern.models.exact import ExactGP, kernel_matrix

KINDS = ["rbf", "matern12", "matern32", "matern52", "rq"]


def make_kernel(kind: str, ard: bool, scaled: bool, d: int, seed: int = 0):
    dims = d if ard else None
    base = {
        "rbf": lambda: gpytorch.kernels.RBFKernel(ard_num_dims=dims),
        "matern12": lambda: gpytorch.kernels.MaternKernel(nu=0.5, ard_num_dims=dims),
        "matern32": lambda: gpytorch.kernels.MaternKernel(nu=1.5, ard_num_dims=dims),
        "matern52": lambda: gpytorch.kernels.MaternKernel(nu=2.5, ard_num_dims=dims),
        "rq": lambda: gpytorch.kernels.RQKernel(ard_num_dims=dims),
    }[kind]()
    kernel = gpytorch.kernels.ScaleKernel(base) if scaled else base
    kernel = kernel.double()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # hyperparameters away from GPyTorch's defaults, per dimension
        for p in kernel.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return kernel


def reference_matrix(kernel, X1: torch.Tensor, X2: torch.Tensor) -> torch.Tensor:
    """Kernel matrix from explicit pairwise differences; r = 0 exactly where x = x'."""
    scale = 1.0
    base = kernel
    if isinstance(kernel, gpytorch.kernels.ScaleKernel):
        scale, base = kernel.outputscale, kernel.base_kernel
    diff = (X1[:, None, :] - X2[None, :, :]) / base.lengthscale.reshape(-1)
    sq = diff.square().sum(-1)
    pos = sq > 0
    r = torch.where(pos, sq.clamp_min(1e-300).sqrt(), torch.zeros_like(sq))
    if isinstance(base, gpytorch.kernels.RQKernel):
        a = base.alpha.reshape(())
        K = (1 + sq / (2 * a)) ** (-a)
    elif isinstance(base, gpytorch.kernels.MaternKernel):
        nu = base.nu
        poly = {0.5: 1 + 0 * r, 1.5: 1 + math.sqrt(3) * r, 2.5: 1 + math.sqrt(5) * r + 5 * sq / 3}
        K = poly[nu] * torch.exp(-math.sqrt(2 * nu) * r)
    else:
        K = torch.exp(-0.5 * sq)
    return scale * K


def grads(kernel, value: torch.Tensor) -> list[torch.Tensor]:
    params = [p for p in kernel.parameters()]
    return list(torch.autograd.grad(value, params))


def assert_rel(a: torch.Tensor, b: torch.Tensor, rtol: float) -> None:
    scale = b.abs().max().clamp_min(1e-300)
    assert float((a - b).abs().max() / scale) < rtol


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("ard", [False, True])
@pytest.mark.parametrize("scaled", [False, True])
@pytest.mark.parametrize("cross", [False, True])
def test_matrix_and_gradient_equal_pairwise_reference(kind, ard, scaled, cross):
    gen = torch.Generator().manual_seed(1)
    X1 = torch.randn(30, 3, generator=gen, dtype=torch.float64)
    X2 = torch.randn(20, 3, generator=gen, dtype=torch.float64) if cross else None
    W = torch.randn(30, 20 if cross else 30, generator=gen, dtype=torch.float64)
    kernel = make_kernel(kind, ard, scaled, 3)
    fast = stationary_matrix(kernel, X1, X2)
    ref = reference_matrix(kernel, X1, X1 if X2 is None else X2)
    assert fast is not None
    assert_rel(fast, ref, 1e-12)
    for g_fast, g_ref in zip(grads(kernel, (fast * W).sum()), grads(kernel, (ref * W).sum())):
        assert_rel(g_fast, g_ref, 1e-10)


@pytest.mark.parametrize("kind", KINDS)
def test_matrix_equals_gpytorch(kind):
    X1 = torch.randn(25, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    X2 = X1[:7] + 0.3
    kernel = make_kernel(kind, True, True, 4, seed=3)
    assert_rel(stationary_matrix(kernel, X1, X2), kernel(X1, X2).to_dense(), 1e-12)
    with torch.no_grad():  # GPyTorch zeroes the self-distance diagonal only without autograd
        assert_rel(stationary_matrix(kernel, X1), kernel(X1).to_dense(), 1e-12)


def test_float32_matches_float64():
    X = torch.randn(40, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    kernel = make_kernel("matern52", True, True, 3)
    K64 = stationary_matrix(kernel, X)
    K32 = stationary_matrix(kernel.float(), X.float())
    assert K32.dtype == torch.float32
    assert_rel(K32.double(), K64, 1e-5)


class _ShiftedRBF(gpytorch.kernels.RBFKernel):
    def forward(self, x1, x2, **params):
        return super().forward(x1, x2, **params) + 1.0


@pytest.mark.parametrize(
    "kernel",
    [
        gpytorch.kernels.PeriodicKernel(),
        gpytorch.kernels.RBFKernel(active_dims=[0, 1]),
        gpytorch.kernels.RBFKernel(batch_shape=torch.Size([2])),
        gpytorch.kernels.ScaleKernel(gpytorch.kernels.PeriodicKernel()),
        gpytorch.kernels.RBFKernel() + gpytorch.kernels.RBFKernel(),
        _ShiftedRBF(),
    ],
    ids=["periodic", "active_dims", "batch", "scaled_periodic", "sum", "subclass"],
)
def test_uncovered_kernels_go_through_gpytorch(kernel):
    kernel = kernel.double()
    X = torch.randn(12, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    assert stationary_matrix(kernel, X) is None
    assert torch.allclose(kernel_matrix(kernel, X), kernel(X).to_dense())


def test_registered_profile_is_used():
    class Cauchy(gpytorch.kernels.Kernel):
        has_lengthscale = True

        def forward(self, x1, x2, **params):
            sq = self.covar_dist(x1 / self.lengthscale, x2 / self.lengthscale, square_dist=True)
            return 1 / (1 + sq)

    register_stationary(Cauchy, lambda kernel, sq: 1 / (1 + sq))
    kernel = Cauchy().double()
    X = torch.randn(10, 2, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    with torch.no_grad():
        assert_rel(stationary_matrix(kernel, X), kernel(X).to_dense(), 1e-12)


def reference_lml(kernel, noise, X, Y) -> torch.Tensor:
    """log N(Y; 0, K + noise I) through torch.linalg.cholesky, differentiated by autograd."""
    n, t = Y.shape
    C = reference_matrix(kernel, X, X) + noise * torch.eye(n, dtype=X.dtype)
    L = torch.linalg.cholesky(C)
    quad = (Y * torch.cholesky_solve(Y, L)).sum()
    return -0.5 * quad - t * L.diagonal().log().sum() - 0.5 * n * t * math.log(2 * math.pi)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("ard", [False, True])
@pytest.mark.parametrize("t", [1, 3])
def test_log_marginal_likelihood_and_gradient_equal_dense_reference(kind, ard, t):
    gen = torch.Generator().manual_seed(7)
    X = torch.randn(40, 3, generator=gen, dtype=torch.float64)
    Y = torch.randn(40, t, generator=gen, dtype=torch.float64)
    model = ExactGP(make_kernel(kind, ard, True, 3, seed=8), noise=0.1).double()
    params = list(model.parameters())
    fast = model.log_marginal_likelihood(X, Y)
    ref = reference_lml(model.kernel, model.noise, X, Y)
    assert_rel(fast, ref, 1e-10)
    for g_fast, g_ref in zip(torch.autograd.grad(fast, params), torch.autograd.grad(ref, params)):
        assert_rel(g_fast, g_ref, 1e-10)


def test_log_marginal_likelihood_equals_gpytorch_path():
    """The direct path and GPyTorch's lazy evaluation give the same likelihood and gradient."""
    gen = torch.Generator().manual_seed(9)
    X = torch.randn(50, 4, generator=gen, dtype=torch.float64)
    Y = torch.randn(50, 2, generator=gen, dtype=torch.float64)
    model = ExactGP(make_kernel("rbf", True, True, 4, seed=10), noise=0.05).double()
    params = list(model.parameters())
    fast = model.log_marginal_likelihood(X, Y)
    C = model.kernel(X).to_dense() + model.noise * torch.eye(50, dtype=torch.float64)
    L = torch.linalg.cholesky(C)
    ref = (
        -0.5 * (Y * torch.cholesky_solve(Y, L)).sum()
        - 2 * L.diagonal().log().sum()
        - 50 * math.log(2 * math.pi)
    )
    assert_rel(fast, ref, 1e-10)
    for g_fast, g_ref in zip(torch.autograd.grad(fast, params), torch.autograd.grad(ref, params)):
        assert_rel(g_fast, g_ref, 1e-10)


@pytest.mark.parametrize("kind", ["rbf", "matern32"])
def test_posterior_equals_numpy_oracle(kind):
    gen = torch.Generator().manual_seed(11)
    X = torch.randn(30, 2, generator=gen, dtype=torch.float64)
    Xs = torch.randn(9, 2, generator=gen, dtype=torch.float64)
    y = torch.randn(30, 1, generator=gen, dtype=torch.float64)
    model = ExactGP(make_kernel(kind, True, True, 2, seed=12), noise=0.2).double()
    post = model.posterior(X, y)
    mean, var = post.predict(Xs)
    with torch.no_grad():
        K, Ks, Kss = (reference_matrix(model.kernel, a, b) for a, b in [(X, X), (Xs, X), (Xs, Xs)])
    ref_mean, ref_var, ref_lml = dense_gp_reference(
        K.numpy(), Ks.numpy(), Kss.numpy(), y[:, 0].numpy(), float(model.noise)
    )
    np.testing.assert_allclose(mean[:, 0].numpy(), ref_mean, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(var.numpy(), ref_var, rtol=1e-9, atol=1e-12)
    assert post.log_marginal_likelihood == pytest.approx(ref_lml, rel=1e-10)
    _, cov = post.predict(Xs, full_cov=True)
    np.testing.assert_allclose(cov.diagonal().numpy(), ref_var, rtol=1e-9, atol=1e-12)


def softplus_default_kernel(X: np.ndarray) -> gpytorch.kernels.Kernel:
    """The previous default: the same kernel and start with GPyTorch's softplus constraints."""
    d = X.shape[1]
    kernel = gpytorch.kernels.ScaleKernel(gpytorch.kernels.RBFKernel(ard_num_dims=d)).double()
    kernel.base_kernel.lengthscale = torch.as_tensor(X.std(0) * d**0.5).view(1, d)
    kernel.outputscale = 1.0
    return kernel


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_default_fit_reaches_the_softplus_optimum(seed):
    """Log-space parameters reach the same or a higher log marginal likelihood."""
    from gpkern.datasets import make_friedman

    X, y = make_friedman(150, noise=1.0, random_state=seed)
    new = GPRegressor(random_state=0).fit(X, y)
    old = GPRegressor(kernel=softplus_default_kernel(X), random_state=0).fit(X, y)
    assert new.log_marginal_likelihood_value_ >= old.log_marginal_likelihood_value_ - 1e-3


def test_median_spread_equals_brute_force():
    from gpkern.estimators.gp_regressor import median_spread

    rng = np.random.default_rng(13)
    X = np.column_stack([rng.standard_t(2, 60), rng.uniform(0, 3, 60), np.zeros(60)])
    X[:45, 1] = 1.0  # most pairs tie: median 0, falls back to the standard deviation
    i, j = np.triu_indices(60, 1)
    expected = np.empty(3)
    expected[1] = X[:, 1].std(ddof=1)
    expected[2] = 1.0
    got = median_spread(torch.as_tensor(X)).numpy()
    # torch's median is the lower middle value; numpy averages the two middle ones.
    lower = np.sort(np.abs(X[i] - X[j]), axis=0)[(len(i) - 1) // 2]
    np.testing.assert_allclose(got[0], lower[0], rtol=1e-12)
    assert lower[1] == 0.0
    np.testing.assert_allclose(got[1:], expected[1:], rtol=1e-12)


@pytest.mark.parametrize("model_class", ["ExactGP", "IterativeGP"])
def test_learned_noise_starts_at_the_value_given_in_float64(model_class):
    # The start used to go through float32: 0.05 became 0.0500000007.
    from gpkern.models.iterative import IterativeGP

    cls = {"ExactGP": ExactGP, "IterativeGP": IterativeGP}[model_class]
    model = cls(gpytorch.kernels.RBFKernel(), 0.05, True).double()
    assert float(model.noise.detach()) == pytest.approx(0.05, rel=1e-14)
    assert model.to(torch.float32).raw_noise.dtype == torch.float32
