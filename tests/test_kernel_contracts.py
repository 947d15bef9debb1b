"""GPyTorch's kernel contract for every gpkern kernel.

Each kernel runs GPyTorch's own :class:`gpytorch.test.base_kernel_test_case.BaseKernelTestCase`
(active dims, kernels and data with batch dimensions, ``diag=True``, batch indexing of the
kernel, pickling, dtype moves), in float64 (``tests/conftest.py`` sets the default dtype).
The installed GPyTorch has dropped ``last_dim_is_batch`` from that suite (the argument is
deprecated there but still accepted by ``Kernel.__call__``), so :func:`test_last_dim_is_batch`
checks it here against the kernel applied to each input column. Finally every kernel, given
``batch_shape=(2,)``, drives GPyTorch's batch-independent multitask ``ExactGP``
(``MultitaskMultivariateNormal.from_batch_mvn``) through a few Adam steps.
"""

from __future__ import annotations

import unittest

import gpytorch
import pytest
import torch
from gpytorch.test.base_kernel_test_case import BaseKernelTestCase

from gpkern.kernels import (
    FeatureMapKernel,
    GaussianSpectralMixtureKernel,
    GSMPKernel,
    LinearMultipleKernel,
    NNGPKernel,
    RandomFeatureKernel,
    StudentTSpectralMixtureKernel,
)
from gpkern.kernels.nngp import Conv, Dense, Erf, Flatten, Relu, serial
from gpkern.kernels.nngp.hierarchical import HierarchicalCNNKernel
from gpkern.kernels.nngp.infinite_depth import InfiniteDepthKernel
from gpkern.linalg.keops import DenseNetworkKernel
from gpkern.models.dkm import NNGPGramKernel
from gpkern.models.grid import GridGP, ProductAxisKernel

_NO_BATCH = torch.Size([])


class ScaledTanh(torch.nn.Module):
    """A feature map for inputs of any width: ``tanh(a x)`` with a learnable ``a``."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(0.7))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, d) -> (N, d)
        return torch.tanh(self.a * x)


def _lmk(batch_shape=_NO_BATCH, ard_num_dims=None, **kwargs):
    ard = {} if ard_num_dims is None else {"ard_num_dims": ard_num_dims}
    basis = [
        gpytorch.kernels.RBFKernel(batch_shape=batch_shape, **ard),
        gpytorch.kernels.PeriodicKernel(batch_shape=batch_shape, **ard),
    ]
    return LinearMultipleKernel(basis, weights=torch.tensor([0.7, 0.3]), batch_shape=batch_shape, **kwargs)


def _feature_map_rbf(batch_shape=_NO_BATCH, **kwargs):
    base = gpytorch.kernels.RBFKernel(batch_shape=batch_shape)
    return FeatureMapKernel(ScaledTanh(), base, batch_shape=batch_shape, **kwargs)


def _grid_gp(axes: int) -> GridGP:
    kernels = [gpytorch.kernels.RBFKernel(), gpytorch.kernels.MaternKernel(nu=1.5)] * (axes // 2)
    model = GridGP(kernels, outputscale=1.3)
    for i, k in enumerate(model.kernels):
        k.lengthscale = 0.5 + 0.25 * i
    return model


_DENSE_LAYERS = [("dense", 1.5, 0.1), ("relu",), ("dense", 1.0, 0.05)]

# name -> (no-ARD factory(**kwargs), ARD factory(num_dims, **kwargs) or None, input width of the
# multitask test)
KERNELS = {
    "gaussian_sm": (
        lambda **kw: GaussianSpectralMixtureKernel(num_mixtures=3, max_frequency=1.0, **kw),
        lambda d, **kw: GaussianSpectralMixtureKernel(num_mixtures=3, max_frequency=1.0, ard_num_dims=d, **kw),
        2,
    ),
    "student_t_sm": (
        lambda **kw: StudentTSpectralMixtureKernel(num_mixtures=3, max_frequency=1.0, **kw),
        lambda d, **kw: StudentTSpectralMixtureKernel(num_mixtures=3, max_frequency=1.0, ard_num_dims=d, **kw),
        2,
    ),
    "gsmp": (
        lambda **kw: GSMPKernel(n_components=4, bandwidths=0.1, **kw),
        lambda d, **kw: GSMPKernel(n_components=4, bandwidths=0.1, ard_num_dims=d, **kw),
        2,
    ),
    "linear_multiple": (_lmk, lambda d, **kw: _lmk(ard_num_dims=d, **kw), 2),
    "nngp": (
        lambda **kw: NNGPKernel(serial(Dense(1.5, 0.1), Relu(), Dense(1.0, 0.05)), learn_variances=True, **kw),
        None,
        2,
    ),
    "nngp_fixed": (lambda **kw: NNGPKernel(serial(Dense(1.5, 0.1), Relu(), Dense(1.0, 0.05)), **kw), None, 2),
    "ntk": (
        lambda **kw: NNGPKernel(
            serial(Dense(1.2, 0.1), Erf(), Dense(1.0, 0.1)), kind="ntk", learn_variances=True, **kw
        ),
        None,
        2,
    ),
    "nngp_conv": (
        lambda **kw: NNGPKernel(
            serial(Conv(2, W_std=1.3, b_std=0.1), Relu(), Flatten(), Dense(1.0, 0.05)),
            learn_variances=True,
            input_shape=(1, 2, 2),
            **kw,
        ),
        None,
        4,
    ),
    "feature_map_rbf": (_feature_map_rbf, None, 2),
    "feature_map_linear": (lambda **kw: FeatureMapKernel(ScaledTanh(), **kw), None, 2),
    "random_features": (
        lambda **kw: RandomFeatureKernel("rbf", n_features=64, **kw),
        lambda d, **kw: RandomFeatureKernel("rbf", n_features=64, ard_num_dims=d, **kw),
        2,
    ),
    "hierarchical": (lambda **kw: HierarchicalCNNKernel((2, 2), kind="ntk", **kw), None, 4),
    "product_axis": (lambda **kw: ProductAxisKernel(_grid_gp(4), **kw), None, 4),
    "infinite_depth": (lambda **kw: InfiniteDepthKernel("relu", depth=3, **kw), None, 2),
    "dense_network": (lambda **kw: DenseNetworkKernel(_DENSE_LAYERS, n_features=2, **kw), None, 2),
    "nngp_gram": (
        lambda **kw: NNGPGramKernel("relu", n_layers=2, **kw),
        lambda d, **kw: NNGPGramKernel("relu", n_layers=2, ard_num_dims=d, **kw),
        2,
    ),
    "nngp_gram_se": (lambda **kw: NNGPGramKernel("se", n_layers=2, **kw), None, 2),
}


class _Contract(BaseKernelTestCase):
    seed = 0
    name: str
    parameter_free = False

    def test_kernel_dtype_device(self):
        if not self.parameter_free:
            return super().test_kernel_dtype_device()
        # GPyTorch reads Kernel.dtype and Kernel.device off the parameters, and this kernel has
        # none: it computes in its inputs' dtype and device, kernel.dtype is the default dtype
        # whatever .to() was given and kernel.device is None, so the suite's checks of them
        # cannot apply. Check what they protect instead: after .to(float32) the kernel computes
        # in float32, on the inputs' device, and agrees with float64.
        x = self.create_data_single_batch()
        expected = self.create_kernel_no_ard()(x).to_dense()
        kernel = self.create_kernel_no_ard().to(dtype=torch.float32)
        out = kernel(x.float()).to_dense()
        self.assertEqual(out.dtype, torch.float32)
        self.assertEqual(out.device, x.device)
        self.assertAllClose(out.double(), expected, rtol=1e-4, atol=1e-5)

    def create_kernel_no_ard(self, **kwargs):
        return KERNELS[self.name][0](**kwargs)

    def create_kernel_ard(self, num_dims, **kwargs):
        ard = KERNELS[self.name][1]
        if ard is None:
            raise NotImplementedError  # the suite skips its ARD tests
        return ard(num_dims, **kwargs)


class TestGaussianSpectralMixtureContract(_Contract, unittest.TestCase):
    name = "gaussian_sm"


class TestStudentTSpectralMixtureContract(_Contract, unittest.TestCase):
    name = "student_t_sm"


class TestGSMPContract(_Contract, unittest.TestCase):
    name = "gsmp"


class TestLinearMultipleContract(_Contract, unittest.TestCase):
    name = "linear_multiple"


class TestNNGPContract(_Contract, unittest.TestCase):
    name = "nngp"


class TestNNGPFixedContract(_Contract, unittest.TestCase):
    name = "nngp_fixed"
    parameter_free = True


class TestNTKContract(_Contract, unittest.TestCase):
    name = "ntk"


class TestFeatureMapRBFContract(_Contract, unittest.TestCase):
    name = "feature_map_rbf"


class TestFeatureMapLinearContract(_Contract, unittest.TestCase):
    name = "feature_map_linear"


class TestRandomFeatureContract(_Contract, unittest.TestCase):
    name = "random_features"


class _FourColumns(_Contract):
    # For kernels defined on inputs of exactly 4 columns: the data have 4 columns (8 for the
    # active-dims test, which selects 4 of them).
    def create_data_no_batch(self):
        return torch.randn(50, 8)

    def create_data_single_batch(self):
        return torch.randn(2, 3, 4)

    def create_data_double_batch(self):
        return torch.randn(3, 2, 50, 4)

    def test_active_dims_range(self):
        # The suite selects 6 columns, which the kernel under test does not take as an input:
        # the same check with 4 consecutive columns.
        kernel = self.create_kernel_no_ard(active_dims=list(range(3, 7)))
        x = self.create_data_no_batch()
        expected = self.create_kernel_no_ard()(x[:, 3:7]).to_dense()
        self.assertAllClose(kernel(x).to_dense(), expected, rtol=1e-3, atol=1e-5)


class TestHierarchicalCNNContract(_FourColumns, unittest.TestCase):
    # defined on signals of length prod(filter_sizes) = 4
    name = "hierarchical"
    parameter_free = True


class TestNNGPConvContract(_FourColumns, unittest.TestCase):
    # a convolutional architecture on 1 x 2 x 2 images
    name = "nngp_conv"


class TestProductAxisContract(_FourColumns, unittest.TestCase):
    # a GridGP with 4 axes: its parameters live on the model, none on the kernel
    name = "product_axis"

    def test_kernel_dtype_device(self):
        # The kernel is a view on a GridGP whose parameters are registered on the model only
        # (the model's optimiser owns them), so kernel.dtype cannot follow them and .to()
        # converts the model: check that the view then computes in float32.
        x = self.create_data_single_batch()
        kernel = self.create_kernel_no_ard()
        expected = kernel(x).to_dense()
        kernel._model[0].to(torch.float32)
        out = kernel(x.float()).to_dense()
        self.assertEqual(out.dtype, torch.float32)
        self.assertAllClose(out.double(), expected, rtol=1e-4, atol=1e-5)


class TestInfiniteDepthContract(_Contract, unittest.TestCase):
    name = "infinite_depth"
    parameter_free = True


class TestDenseNetworkContract(_Contract, unittest.TestCase):
    name = "dense_network"
    parameter_free = True


class TestNNGPGramContract(_Contract, unittest.TestCase):
    name = "nngp_gram"


class TestNNGPGramSEContract(_Contract, unittest.TestCase):
    name = "nngp_gram_se"


# --------------------------------------------------------------------------------------------
# last_dim_is_batch (deprecated in GPyTorch, no longer in its suite): slice j of the result is
# the kernel on column j alone.
# --------------------------------------------------------------------------------------------
_NO_LAST_DIM_IS_BATCH = {
    # defined on signals of length prod(filter_sizes): a single column is not an input
    "hierarchical",
    # the feature map is a network on whole input rows
    "feature_map_rbf",
    "feature_map_linear",
    # n_features fixes the input width of the network's first layer
    "dense_network",
    # a product over all of a grid's axes
    "product_axis",
    # a convolutional architecture on images: a single column is not an image
    "nngp_conv",
}


@pytest.mark.parametrize("name", sorted(set(KERNELS) - _NO_LAST_DIM_IS_BATCH))
@pytest.mark.parametrize("batch_shape", [torch.Size([]), torch.Size([2])], ids=["nobatch", "batch2"])
def test_last_dim_is_batch(name, batch_shape):
    torch.manual_seed(0)
    kernel = KERNELS[name][0](batch_shape=batch_shape)
    x1 = torch.randn(*batch_shape, 5, 3)
    x2 = torch.randn(*batch_shape, 4, 3)
    with pytest.warns(DeprecationWarning):
        full = kernel(x1, x2, last_dim_is_batch=True).to_dense()
    with pytest.warns(DeprecationWarning):
        diag = kernel(x1, last_dim_is_batch=True, diag=True)
    assert full.shape == (*batch_shape, 3, 5, 4)
    assert diag.shape == (*batch_shape, 3, 5)
    for j in range(3):
        col = kernel(x1[..., j : j + 1], x2[..., j : j + 1]).to_dense()
        torch.testing.assert_close(full[..., j, :, :], col)
        torch.testing.assert_close(diag[..., j, :], kernel(x1[..., j : j + 1], diag=True))


@pytest.mark.parametrize("cls", [GaussianSpectralMixtureKernel, StudentTSpectralMixtureKernel])
def test_last_dim_is_batch_ard_spectral(cls):
    # Column j of an ARD spectral kernel is the one-dimensional kernel with mixture j.
    torch.manual_seed(0)
    kernel = cls(num_mixtures=3, ard_num_dims=3, batch_shape=torch.Size([2]))
    kernel.weights = torch.rand(2, 3, 3) + 0.1
    kernel.frequencies = torch.rand(2, 3, 3)
    kernel.scales = torch.rand(2, 3, 3) + 0.5
    x1, x2 = torch.randn(2, 5, 3), torch.randn(2, 4, 3)
    with pytest.warns(DeprecationWarning):
        full = kernel(x1, x2, last_dim_is_batch=True).to_dense()
    for j in range(3):
        ref = cls(num_mixtures=3, batch_shape=torch.Size([2]))
        ref.weights = kernel.weights[:, j : j + 1].detach()
        ref.frequencies = kernel.frequencies[:, j : j + 1].detach()
        ref.scales = kernel.scales[:, j : j + 1].detach()
        torch.testing.assert_close(full[:, j], ref(x1[..., j : j + 1], x2[..., j : j + 1]).to_dense())


def test_last_dim_is_batch_ard_gsmp_and_random_features():
    torch.manual_seed(0)
    x1, x2 = torch.randn(5, 3), torch.randn(4, 3)
    means, bw = torch.rand(4, 3), 0.2 * torch.rand(4, 3)
    gsmp = GSMPKernel(means=means, bandwidths=bw, weights=torch.rand(4) + 0.1)
    rff = RandomFeatureKernel("rbf", n_features=32, ard_num_dims=3)
    rff.lengthscale = torch.tensor([[0.5, 1.0, 2.0]])
    with pytest.warns(DeprecationWarning):
        full_gsmp = gsmp(x1, x2, last_dim_is_batch=True).to_dense()
    with pytest.warns(DeprecationWarning):
        full_rff = rff(x1, x2, last_dim_is_batch=True).to_dense()
    for j in range(3):
        ref = GSMPKernel(means=means[:, j], bandwidths=bw[:, j], weights=gsmp.weights.detach())
        torch.testing.assert_close(full_gsmp[j], ref(x1[:, j : j + 1], x2[:, j : j + 1]).to_dense())
        ref = RandomFeatureKernel("rbf", n_features=32)
        ref.lengthscale = rff.lengthscale[0, j].detach()
        torch.testing.assert_close(full_rff[j], ref(x1[:, j : j + 1], x2[:, j : j + 1]).to_dense())


@pytest.mark.parametrize("name", sorted(_NO_LAST_DIM_IS_BATCH))
def test_last_dim_is_batch_refused(name):
    kernel = KERNELS[name][0]()
    x = torch.randn(5, KERNELS[name][2])
    with pytest.raises((ValueError, NotImplementedError), match="last_dim_is_batch"):
        with pytest.warns(DeprecationWarning):
            kernel(x, last_dim_is_batch=True).to_dense()


# --------------------------------------------------------------------------------------------
# GPyTorch's batch-independent multitask ExactGP
# --------------------------------------------------------------------------------------------
class BatchIndependentMultitaskGP(gpytorch.models.ExactGP):
    def __init__(self, x, y, likelihood, kernel):
        super().__init__(x, y, likelihood)
        tasks = torch.Size([y.shape[-1]])
        self.mean_module = gpytorch.means.ConstantMean(batch_shape=tasks)
        self.covar_module = gpytorch.kernels.ScaleKernel(kernel, batch_shape=tasks)

    def forward(self, x):
        mvn = gpytorch.distributions.MultivariateNormal(self.mean_module(x), self.covar_module(x))
        return gpytorch.distributions.MultitaskMultivariateNormal.from_batch_mvn(mvn)


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_batch_independent_multitask_gp_trains(name):
    torch.manual_seed(0)
    d = KERNELS[name][2]
    x = torch.rand(30, d)
    s = x.sum(-1)
    y = torch.stack([torch.sin(4 * s), torch.cos(3 * s)], dim=-1) + 0.05 * torch.randn(30, 2)
    kernel = KERNELS[name][0](batch_shape=torch.Size([2]))
    likelihood = gpytorch.likelihoods.MultitaskGaussianLikelihood(num_tasks=2)
    model = BatchIndependentMultitaskGP(x, y, likelihood, kernel)
    mll = gpytorch.mlls.ExactMarginalLogLikelihood(likelihood, model)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    model.train()
    likelihood.train()
    losses = []
    for _ in range(20):
        optimizer.zero_grad()
        loss = -mll(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]
    model.eval()
    likelihood.eval()
    x_test = torch.rand(7, d)
    with torch.no_grad():
        pred = likelihood(model(x_test))
    assert pred.mean.shape == (7, 2)
    assert pred.variance.shape == (7, 2)
    assert torch.isfinite(pred.mean).all() and (pred.variance > 0).all()
