"""FeatureMapKernel: deep kernels from any torch module, trained jointly inside GPRegressor."""

from __future__ import annotations

import unittest

import gpytorch
import numpy as np
import pytest
import torch
from gpytorch.test.base_kernel_test_case import BaseKernelTestCase
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from gpkern.estimators import GPRegressor
from gpkern.kernels import FeatureMapKernel
from gpkern.linalg.low_rank import LowRankPosterior


@pytest.fixture(autouse=True)
def _single_thread():
    """Small matrices: one torch thread is as fast alone and far faster on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def mlp(d_in: int, d_out: int, seed: int = 0, width: int = 16) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(d_in, width), torch.nn.Tanh(), torch.nn.Linear(width, d_out)).double()


def test_identity_map_linear_base_is_linear_kernel(rng):
    X, Y = rng.standard_normal((7, 3)), rng.standard_normal((5, 3))
    k = FeatureMapKernel(torch.nn.Identity())
    np.testing.assert_allclose(k(torch.tensor(X), torch.tensor(Y)).to_dense().numpy(), X @ Y.T, rtol=1e-12)
    np.testing.assert_allclose(k(torch.tensor(X), diag=True).numpy(), (X * X).sum(1), rtol=1e-12)
    lin = gpytorch.kernels.LinearKernel()
    lin.variance = 1.0
    torch.testing.assert_close(k(torch.tensor(X)).to_dense(), lin(torch.tensor(X)).to_dense().detach())


def test_mlp_with_rbf_base_matches_numpy(rng):
    net = mlp(3, 2)
    X = rng.standard_normal((6, 3))
    W1, b1 = net[0].weight.detach().numpy(), net[0].bias.detach().numpy()
    W2, b2 = net[2].weight.detach().numpy(), net[2].bias.detach().numpy()
    Z = np.tanh(X @ W1.T + b1) @ W2.T + b2
    base = gpytorch.kernels.RBFKernel()
    base.lengthscale = 0.7
    k = FeatureMapKernel(net, base)
    sq = ((Z[:, None] - Z[None]) ** 2).sum(-1)
    np.testing.assert_allclose(k(torch.tensor(X)).to_dense().detach().numpy(), np.exp(-0.5 * sq / 0.49), rtol=1e-10)
    np.testing.assert_allclose(k(torch.tensor(X), diag=True).detach().numpy(), np.ones(6), rtol=1e-12)


def test_batched_inputs():
    net = mlp(2, 3)
    x = torch.randn(4, 5, 2)
    k = FeatureMapKernel(net, gpytorch.kernels.RBFKernel())
    K = k(x).to_dense()
    for i in range(4):
        torch.testing.assert_close(K[i], k(x[i]).to_dense())


class CNN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(1, 4, 3)
        self.head = torch.nn.Linear(4 * 6 * 6, 2)

    def forward(self, img):  # (N, 1, 8, 8) -> (N, 2)
        return self.head(torch.relu(self.conv(img)).flatten(1))


def test_images_through_input_shape():
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X, y = X[:60] / 16.0, y[:60].astype(float)
    net = CNN().double()
    k = FeatureMapKernel(net, gpytorch.kernels.RBFKernel(), input_shape=(1, 8, 8))
    imgs = torch.tensor(X).reshape(60, 1, 8, 8)
    torch.testing.assert_close(k.features(torch.tensor(X)), net(imgs))
    gp = GPRegressor(kernel=k, max_iter=3).fit(X, y)
    assert gp.predict(X[:4]).shape == (4,)
    with pytest.raises(ValueError, match="input_shape"):
        k.features(torch.randn(3, 63))


def test_joint_training_inside_gpregressor(rng):
    """GPRegressor optimises model.parameters(), which include the network's: both move, LML rises."""
    X = rng.standard_normal((40, 3))
    y = np.sin(X @ np.array([1.0, -1.0, 0.5]))
    net = mlp(3, 2)
    kern = FeatureMapKernel(net, gpytorch.kernels.ScaleKernel(gpytorch.kernels.RBFKernel()))
    start = GPRegressor(kernel=kern, optimizer=None).fit(X, y)
    gp = GPRegressor(kernel=kern, max_iter=30).fit(X, y)
    assert gp.log_marginal_likelihood() > start.log_marginal_likelihood() + 5
    fitted = gp.kernel_.feature_map
    assert not torch.allclose(fitted[0].weight, net[0].weight)
    assert float(gp.kernel_.base_kernel.base_kernel.lengthscale) != pytest.approx(
        float(kern.base_kernel.base_kernel.lengthscale)
    )
    # the user's kernel was deep-copied, not modified
    assert torch.equal(kern.feature_map[0].weight, mlp(3, 2)[0].weight)


def test_deep_kernel_beats_plain_gp_on_projection_task():
    """y = sin(2 w^T x) in 8-D with w oblique: a learned 1-D warp helps, ARD-RBF cannot align."""
    rng = np.random.default_rng(0)
    d = 8
    w = rng.standard_normal(d)
    w /= np.linalg.norm(w)
    X = rng.standard_normal((150, d))
    y = np.sin(2 * X @ w) + 0.05 * rng.standard_normal(150)
    Xt = rng.standard_normal((400, d))
    yt = np.sin(2 * Xt @ w)
    kern = FeatureMapKernel(mlp(d, 2), gpytorch.kernels.ScaleKernel(gpytorch.kernels.RBFKernel()))
    dkl = GPRegressor(kernel=kern, max_iter=100).fit(X, y)
    plain = GPRegressor(max_iter=100).fit(X, y)
    rmse_dkl = np.sqrt(np.mean((dkl.predict(Xt) - yt) ** 2))
    rmse_plain = np.sqrt(np.mean((plain.predict(Xt) - yt) ** 2))
    assert rmse_dkl < 0.5 * rmse_plain, (rmse_dkl, rmse_plain)
    assert dkl.log_marginal_likelihood() > plain.log_marginal_likelihood()


def test_linear_feature_kernel_woodbury_path_equals_gpregressor(rng):
    """A feature kernel without base exposes Phi: the O(n p^2) posterior equals the dense GP's."""
    X, Xs = rng.standard_normal((30, 3)), rng.standard_normal((6, 3))
    y = rng.standard_normal(30)
    kern = FeatureMapKernel(mlp(3, 4))
    gp = GPRegressor(kernel=kern, noise=0.2, optimizer=None, normalize_y=False).fit(X, y)
    mean, std = gp.predict(Xs, return_std=True)
    with torch.no_grad():
        post = LowRankPosterior(kern.features(torch.tensor(X)), torch.tensor(y)[:, None], 0.2)
        m2, v2 = post.predict(kern.features(torch.tensor(Xs)))
    np.testing.assert_allclose(mean, m2[:, 0].numpy(), rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(std, np.sqrt(v2.numpy()), rtol=1e-6, atol=1e-8)


def test_float32():
    net = mlp(3, 2).float()
    k = FeatureMapKernel(net, gpytorch.kernels.RBFKernel()).float()
    K = k(torch.randn(5, 3, dtype=torch.float32)).to_dense()
    assert K.dtype == torch.float32


@settings(max_examples=20, deadline=None)
@given(
    X=arrays(np.float64, st.tuples(st.integers(2, 12), st.just(3)), elements=st.floats(-3, 3)),
    seed=st.integers(0, 100),
    linear=st.booleans(),
)
def test_symmetric_psd(X, seed, linear):
    k = FeatureMapKernel(mlp(3, 2, seed), None if linear else gpytorch.kernels.RBFKernel())
    K = k(torch.tensor(X)).to_dense().detach()
    torch.testing.assert_close(K, K.T)
    ev = torch.linalg.eigvalsh(K)
    assert ev.min() >= -1e-9 * max(1.0, ev.abs().max().item())


# -- bad input --------------------------------------------------------------------------------
class WrongRank(torch.nn.Module):
    def forward(self, x):
        return x[:, :, None]


class Scalar(torch.nn.Module):
    def forward(self, x):
        return x.sum(-1)


class MakesNaN(torch.nn.Module):
    def forward(self, x):
        return x * float("nan")


@pytest.mark.parametrize("module", [WrongRank(), Scalar()])
def test_wrong_rank(module):
    with pytest.raises(ValueError, match=r"must return an \(N, p\) tensor"):
        FeatureMapKernel(module)(torch.randn(4, 2)).to_dense()


def test_nan_features_raise_and_fit_leaves_estimator_unchanged(rng):
    X, y = rng.standard_normal((10, 2)), rng.standard_normal(10)
    with pytest.raises(ValueError, match="NaN or infinite"):
        FeatureMapKernel(MakesNaN())(torch.randn(4, 2)).to_dense()
    gp = GPRegressor(kernel=FeatureMapKernel(torch.nn.Identity()), max_iter=2).fit(X, y)
    pred, X_train = gp.predict(X), gp.X_train_
    gp.set_params(kernel=FeatureMapKernel(MakesNaN()))
    with pytest.raises(ValueError, match="NaN or infinite"):
        gp.fit(X[:6], y[:6])
    np.testing.assert_array_equal(gp.predict(X), pred)
    assert gp.X_train_ is X_train


def test_module_on_other_device():
    meta = torch.nn.Linear(2, 2, device="meta")
    with pytest.raises(ValueError, match="on device meta"):
        FeatureMapKernel(meta)(torch.randn(3, 2)).to_dense()


def test_module_of_other_dtype():
    with pytest.raises(ValueError, match="dtype torch.float32"):
        FeatureMapKernel(torch.nn.Linear(2, 2).float())(torch.randn(3, 2)).to_dense()


def test_constructor_checks():
    with pytest.raises(TypeError, match="torch.nn.Module"):
        FeatureMapKernel(lambda x: x)
    with pytest.raises(TypeError, match="gpytorch.kernels.Kernel"):
        FeatureMapKernel(torch.nn.Identity(), base_kernel="rbf")
    for bad in [(), (0, 3), (2.5,), (-1,)]:
        with pytest.raises(ValueError, match="input_shape"):
            FeatureMapKernel(torch.nn.Identity(), input_shape=bad)


# -- GPyTorch's kernel test suite -------------------------------------------------------------
class TestFeatureMapKernelGPyTorch(BaseKernelTestCase, unittest.TestCase):
    def create_kernel_no_ard(self, **kwargs):
        bs = kwargs.get("batch_shape", torch.Size([]))
        return FeatureMapKernel(torch.nn.Identity(), gpytorch.kernels.RBFKernel(batch_shape=bs), **kwargs)

    def create_kernel_ard(self, num_dims, **kwargs):
        bs = kwargs.get("batch_shape", torch.Size([]))
        base = gpytorch.kernels.RBFKernel(ard_num_dims=num_dims, batch_shape=bs)
        return FeatureMapKernel(torch.nn.Identity(), base, **kwargs)


def test_gpytorch_exact_gp_model_trains():
    """The kernel drops into a plain GPyTorch ExactGP; Adam on mll moves the network."""
    torch.manual_seed(0)
    x = torch.linspace(-2, 2, 40)[:, None]
    y = torch.sin(3 * x[:, 0])

    class Model(gpytorch.models.ExactGP):
        def __init__(self):
            lik = gpytorch.likelihoods.GaussianLikelihood()
            super().__init__(x, y, lik)
            self.mean = gpytorch.means.ZeroMean()
            self.covar = FeatureMapKernel(mlp(1, 2), gpytorch.kernels.RBFKernel())

        def forward(self, z):
            return gpytorch.distributions.MultivariateNormal(self.mean(z), self.covar(z))

    model = Model()
    mll = gpytorch.mlls.ExactMarginalLogLikelihood(model.likelihood, model)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    model.train()
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = -mll(model(x), y)
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < losses[0] - 0.3


def test_nngp_base_kernel_on_learned_features():
    """With the NNGP kernel of issue 5 (skipped until it is merged): k = NNGP(h(x), h(y))."""
    nngp = pytest.importorskip("gpkern.kernels.nngp.kernel")
    from gpkern.kernels.nngp import Dense, Relu, serial

    base = nngp.NNGPKernel(serial(Dense(1.5, 0.1), Relu(), Dense(1.0, 0.05))).double()
    net = mlp(3, 4)
    x = torch.randn(6, 3)
    K = FeatureMapKernel(net, base)(x).to_dense().detach()
    with torch.no_grad():
        ref = base(net(x)).to_dense()
    torch.testing.assert_close(K, ref)
    ev = torch.linalg.eigvalsh(K)
    assert ev.min() > -1e-9 * ev.max()


@pytest.mark.gpu
def test_cuda_matches_cpu(rng):
    from gpkern.kernels import RandomFeatureKernel
    from gpkern.nn import SNNKLayer

    X, y = rng.standard_normal((30, 3)), rng.standard_normal(30)
    kern = FeatureMapKernel(mlp(3, 2), gpytorch.kernels.RBFKernel())
    gpu = GPRegressor(kernel=kern, noise=0.1, optimizer=None, device="cuda").fit(X, y)
    cpu = GPRegressor(kernel=kern, noise=0.1, optimizer=None).fit(X, y)
    np.testing.assert_allclose(gpu.predict(X), cpu.predict(X), rtol=1e-6, atol=1e-8)
    assert GPRegressor(kernel=kern, max_iter=5, device="cuda").fit(X, y).kernel_.feature_map[0].weight.is_cuda
    x = torch.randn(5, 3)
    rf = RandomFeatureKernel("rbf", n_features=64)
    torch.testing.assert_close(rf.cuda()(x.cuda()).to_dense().cpu(), rf.cpu()(x).to_dense())
    layer = SNNKLayer(3, 2, "sin", n_features=32)
    torch.testing.assert_close(layer.cuda()(x.cuda()).cpu(), layer.cpu()(x))


@pytest.mark.slow
def test_keops_base_kernel_on_learned_features():
    """KeOps backend over the feature space: GPyTorch's KeOps RBF on h(x) (compiles a formula)."""
    pytest.importorskip("pykeops")
    net = mlp(5, 2)
    x, v = torch.randn(1500, 5), torch.randn(1500, 2)
    keops = FeatureMapKernel(net, gpytorch.kernels.keops.RBFKernel())
    dense = FeatureMapKernel(net, gpytorch.kernels.RBFKernel())
    with torch.no_grad():
        op = keops(x).evaluate_kernel()
        assert type(op).__name__ == "KernelLinearOperator"  # the KeOps path, not a dense matrix
        torch.testing.assert_close(op @ v, dense(x).to_dense() @ v, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(
    "base",
    [None, gpytorch.kernels.LinearKernel(), gpytorch.kernels.ScaleKernel(gpytorch.kernels.RBFKernel())],
    ids=["dot", "linear", "scaled-rbf"],
)
@pytest.mark.parametrize("backend", ["torch", pytest.param("keops", marks=pytest.mark.slow)])
def test_kernel_operator_maps_inputs_through_the_network(base, backend):
    """Lazy operator k_0(h(x), h(x')) == the dense FeatureMapKernel, values and gradients."""
    from conftest import keops_compiles
    from gpkern.linalg.keops import kernel_operator

    if backend == "keops" and not keops_compiles():
        pytest.skip("pykeops cannot compile here")
    torch.manual_seed(0)
    kern = FeatureMapKernel(mlp(4, 3), None if base is None else base.double())
    x1, x2 = torch.randn(60, 4, dtype=torch.float64), torch.randn(45, 4, dtype=torch.float64)
    u, v = torch.randn(60, 2, dtype=torch.float64), torch.randn(45, 2, dtype=torch.float64)
    params = [p for p in kern.parameters() if p.requires_grad]

    ref = (u * (kern(x1, x2).to_dense() @ v)).sum()
    ref_grads = torch.autograd.grad(ref, params)
    op = kernel_operator(kern, x1, x2, backend=backend)
    assert op.x1.shape == (60, 3)  # the reduction runs on the 3 features, not the 4 inputs
    value = (u * op._matmul(v)).sum()
    grads = torch.autograd.grad(value, params)
    torch.testing.assert_close(value, ref, rtol=1e-9, atol=1e-9)
    for g, g_ref in zip(grads, ref_grads):
        torch.testing.assert_close(g, g_ref, rtol=1e-8, atol=1e-9)
    with torch.no_grad():
        sym = kernel_operator(kern, x1, backend=backend)
        torch.testing.assert_close(sym._diagonal(), kern(x1, diag=True), rtol=1e-10, atol=1e-12)


def test_nested_feature_map_has_no_keops_formula():
    from gpkern.linalg.keops import kernel_operator

    inner = FeatureMapKernel(mlp(2, 2), gpytorch.kernels.RBFKernel())
    with pytest.raises(TypeError, match="outermost"):
        kernel_operator(gpytorch.kernels.ScaleKernel(inner), torch.zeros(3, 2, dtype=torch.float64))


def test_gp_regressor_trains_a_deep_kernel_on_the_iterative_backend(rng, monkeypatch):
    """backend='keops' (here on its chunked torch twin, no compile): same posterior as dense at
    fixed hyperparameters, and marginal-likelihood training moves the network's weights."""
    import gpkern.linalg.dispatch as dispatch

    monkeypatch.setattr(dispatch, "keops_available", lambda dtype=torch.float64: (False, "simulated"))
    X = rng.uniform(-2, 2, size=(150, 2))
    y = np.sin(2 * X[:, 0]) + 0.5 * X[:, 1] + 0.05 * rng.standard_normal(150)
    Xt = rng.uniform(-2, 2, size=(40, 2))
    kern = FeatureMapKernel(mlp(2, 2), gpytorch.kernels.ScaleKernel(gpytorch.kernels.RBFKernel()))
    dense = GPRegressor(kernel=kern, noise=0.01, optimizer=None, backend="dense").fit(X, y)
    with pytest.warns(dispatch.KeOpsFallbackWarning, match="simulated"):
        lazy = GPRegressor(
            kernel=kern, noise=0.01, optimizer=None, backend="keops",
            backend_options={"eval_cg_tol": 1e-10},
        ).fit(X, y)
    assert type(lazy._model).__name__ == "IterativeGP"
    md, sd = dense.predict(Xt, return_std=True)
    mk, sk = lazy.predict(Xt, return_std=True)
    np.testing.assert_allclose(mk, md, atol=1e-4 * np.abs(md).max())
    np.testing.assert_allclose(sk, sd, atol=2e-2)

    before = kern.feature_map[0].weight.detach().clone()
    with pytest.warns(dispatch.KeOpsFallbackWarning):
        fitted = GPRegressor(kernel=kern, max_iter=5, backend="keops", random_state=0).fit(X, y)
    after = fitted.kernel_.feature_map[0].weight.detach()
    assert (after - before).abs().max() > 1e-4
    assert np.isfinite(fitted.log_marginal_likelihood())


def test_kronecker_grid_with_per_axis_deep_kernels():
    """Kronecker backend (issue 3's gpkern.linalg.kronecker; skipped until merged).

    On a grid, a product of per-axis deep kernels k(x, y) = prod_d k_RBF(h_d(x_d), h_d(y_d)) has
    covariance K_1 (x) K_2; its Kronecker solve/logdet equals the dense oracle, and gradients
    reach the warping networks through it.
    """
    kron = pytest.importorskip("gpkern.linalg.kronecker")
    from conftest import dense_gp_reference

    torch.manual_seed(0)
    g1, g2 = torch.linspace(-2, 2, 9), torch.linspace(-1, 1, 7)
    grid = torch.cartesian_prod(g1, g2)  # C order: last axis fastest, as kron expects
    y = torch.sin(3 * grid[:, 0]) * torch.cos(2 * grid[:, 1]) + 0.05 * torch.randn(len(grid))
    k1 = FeatureMapKernel(mlp(1, 1, seed=1, width=8), gpytorch.kernels.RBFKernel(), active_dims=[0])
    k2 = FeatureMapKernel(mlp(1, 1, seed=2, width=8), gpytorch.kernels.RBFKernel(), active_dims=[1])
    product = k1 * k2
    noise = 0.1

    def kron_nll():
        # each factor evaluated on its axis (the other coordinate is ignored through active_dims)
        K1 = k1(torch.stack([g1, torch.zeros_like(g1)], 1)).to_dense()
        K2 = k2(torch.stack([torch.zeros_like(g2), g2], 1)).to_dense()
        alpha, logdet = kron.kron_solve_logdet([K1, K2], noise, y[:, None])
        return 0.5 * (y[:, None] * alpha).sum() + 0.5 * logdet + 0.5 * len(y) * np.log(2 * np.pi)

    K = product(grid).to_dense().detach().numpy()
    _, _, lml = dense_gp_reference(K, K, K, y.numpy(), noise)
    np.testing.assert_allclose(float(kron_nll()), -lml, rtol=1e-8)
    params = list(k1.parameters()) + list(k2.parameters())
    opt = torch.optim.Adam(params, lr=0.05)
    first = float(kron_nll())
    for _ in range(20):
        opt.zero_grad()
        loss = kron_nll()
        loss.backward()
        opt.step()
    assert float(kron_nll()) < first - 1.0
