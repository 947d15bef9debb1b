"""Hierarchical (tree) CNN kernels of Cagnetta, Favero & Wyart."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gpkern.kernels.nngp.hierarchical import (
    HierarchicalCNNKernel,
    hierarchical_architecture,
    hierarchical_kernel,
    kappa0,
    kappa1,
    normalize_patches,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_arc_cosine_functions_by_hand():
    t = torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64)
    np.testing.assert_allclose(kappa0(t).numpy(), [0.0, 0.5, 1.0], atol=1e-15)
    np.testing.assert_allclose(kappa1(t).numpy(), [0.0, 1 / math.pi, 1.0], atol=1e-15)


def test_two_layer_tree_written_out():
    # filters (2, 2) on d = 4: two patches; K_nngp = mean_k kappa1(t_k), Theta = mean kappa0 t + r
    x1 = torch.tensor([[1.0, 0.0, 3.0, 4.0]], dtype=torch.float64)
    x2 = torch.tensor([[1.0, 1.0, 0.0, 2.0]], dtype=torch.float64)
    t = torch.tensor([1 / math.sqrt(2), 8 / (5 * 2)], dtype=torch.float64)
    r = kappa1(t).mean()
    np.testing.assert_allclose(hierarchical_kernel(x1, x2, (2, 2), "nngp").item(), r.item(), rtol=1e-14)
    theta = (kappa0(t) * t).mean() + r
    np.testing.assert_allclose(hierarchical_kernel(x1, x2, (2, 2), "ntk").item(), theta.item(), rtol=1e-14)


@pytest.mark.parametrize("sizes", [(3, 2, 2), (2, 2, 2, 2), (4,)])
@pytest.mark.parametrize("kind", ["nngp", "ntk"])
def test_equals_strided_conv_architecture(sizes, kind):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 2, math.prod(sizes), generator=g, dtype=torch.float64)
    K = hierarchical_kernel(x, None, sizes, kind)
    A = hierarchical_architecture(sizes).kernel(normalize_patches(x, sizes[0])[:, :, None, :], kind=kind)
    # arccos near t = 1 (a patch with itself) keeps only ~8 digits in either implementation
    np.testing.assert_allclose(K.numpy(), A.numpy(), rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(hierarchical_kernel(x, x, sizes, kind, diag=True).numpy(), np.diag(K.numpy()), rtol=1e-12)


def test_gpytorch_kernel_and_errors():
    x = torch.randn(2, 6, 8, dtype=torch.float64)  # batch of 2, 6 signals of length 8
    k = HierarchicalCNNKernel((2, 4), kind="ntk")
    K = k(x).to_dense()
    assert K.shape == (2, 6, 6)
    np.testing.assert_allclose(K[1].numpy(), hierarchical_kernel(x[1], None, (2, 4)).numpy(), rtol=1e-12)
    with pytest.raises(ValueError, match="product of filter_sizes"):
        hierarchical_kernel(torch.randn(3, 7), None, (2, 4))
    with pytest.raises(ValueError, match="positive ints"):
        HierarchicalCNNKernel((2, 0))
