"""Convolutional architectures against neural-tangents 0.6.5 (float64) values, conv/pool maps
against explicit sums, and the bad-input errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gpkern.kernels import NNGPKernel
from gpkern.kernels.nngp import (
    AvgPool,
    Conv,
    Dense,
    Erf,
    FanInSum,
    FanOut,
    Flatten,
    Gelu,
    GlobalAvgPool,
    LayerNorm,
    LeakyRelu,
    Relu,
    parallel,
    serial,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # many small tensor ops: one thread is much faster on a shared, oversubscribed CPU
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _images():
    i, c, h, w = np.meshgrid(np.arange(3), np.arange(2), np.arange(5), np.arange(5), indexing="ij")
    return torch.from_numpy(np.sin(1.0 + i + 0.3 * c + 0.7 * h + 1.1 * w * (i + 1)))  # (3, 2, 5, 5)


# neural-tangents 0.6.5 (jax 0.4.30, x64) on the same images in NHWC layout, with
# stax.AvgPool strides given explicitly (its default stride is 1, ours is the window, as torch)
ARCHS = {
    "cnn_gap": serial(
        Conv(3, stride=2, padding="same", W_std=1.5, b_std=0.1), Relu(),
        AvgPool(2, stride=1, padding="same"), Conv((2, 3), padding="valid", W_std=1.2, b_std=0.3),
        Gelu(), GlobalAvgPool(), Dense(1.0, 0.05),
    ),
    "cnn_flat": serial(
        Conv(3, W_std=1.3, b_std=0.2), LayerNorm(), Erf(), Conv(3, W_std=1.1, b_std=0.0),
        LeakyRelu(0.1), Flatten(), Dense(1.0, 0.1),
    ),
    "resnet": serial(
        Conv(3, W_std=1.4, b_std=0.1), FanOut(2),
        parallel(serial(Relu(), Conv(3, W_std=1.2, b_std=0.1)), serial()), FanInSum(),
        AvgPool(2, stride=2), Relu(), GlobalAvgPool(), Dense(1.0, 0.0),
    ),
}
NT = {
    ("cnn_gap", "nngp"): [[0.080290876923, 0.073931970632, 0.061748103981],
                          [0.073931970632, 0.084850367149, 0.057047221456],
                          [0.061748103981, 0.057047221456, 0.110609584342]],
    ("cnn_gap", "ntk"): [[0.188436751864, 0.159554578715, 0.114083144508],
                         [0.159554578715, 0.202163103244, 0.101546217843],
                         [0.114083144508, 0.101546217843, 0.284905161723]],
    ("cnn_flat", "nngp"): [[0.223217017431, 0.043197121583, 0.057348642835],
                           [0.043197121583, 0.223217017431, 0.043678549446],
                           [0.057348642835, 0.043678549446, 0.223217017431]],
    ("cnn_flat", "ntk"): [[0.697774133874, 0.002194672342, 0.043371029985],
                          [0.002194672342, 0.697774133365, 0.00564732226],
                          [0.043371029985, 0.00564732226, 0.697774133113]],
    ("resnet", "nngp"): [[0.228124383838, 0.152625657901, 0.129585482366],
                         [0.152625657901, 0.129843597605, 0.109987917908],
                         [0.129585482366, 0.109987917908, 0.123309307157]],
    ("resnet", "ntk"): [[0.411200223585, 0.238723009072, 0.189013388462],
                        [0.238723009072, 0.246146479595, 0.187487508802],
                        [0.189013388462, 0.187487508802, 0.268341828193]],
}


@pytest.mark.parametrize("name, kind", list(NT))
def test_conv_architectures_match_neural_tangents(name, kind):
    K = ARCHS[name].kernel(_images(), kind=kind).numpy()
    # neural-tangents itself is only accurate to ~1e-9 on the diagonal (|rho| = 1)
    np.testing.assert_allclose(K, np.array(NT[(name, kind)]), rtol=1e-8, atol=1e-11)


def test_blocks_and_diag_agree_for_images():
    arch, x = ARCHS["cnn_gap"], _images()
    full = arch.kernel(x, kind="ntk")
    np.testing.assert_allclose(arch.kernel(x, kind="ntk", batch_size=2).numpy(), full.numpy(), rtol=1e-12)
    np.testing.assert_allclose(arch.kernel(x, x, kind="ntk", diag=True).numpy(), np.diag(full.numpy()), rtol=1e-10)
    # tiny memory budget: one pair per block
    np.testing.assert_allclose(arch.kernel(x, max_memory=1).numpy(), arch.kernel(x).numpy(), rtol=1e-12)


def test_conv_then_flatten_equals_explicit_sum():
    # one conv (1 x 1 image channel sums written out) then Flatten: average over positions of
    # W^2 / k * sum_delta Sigma0[p + delta, p + delta] + b^2, with zero padding
    x = _images()[:2]
    W, b = 1.3, 0.2
    K = serial(Conv((1, 3), W_std=W, b_std=b), Flatten(), Dense(1.0)).kernel(x).numpy()
    X = x.numpy()
    pad = np.pad(X, ((0, 0), (0, 0), (0, 0), (1, 1)))
    ref = np.zeros((2, 2))
    for i in range(2):
        for j in range(2):
            tot = 0.0
            for h in range(5):
                for w in range(5):
                    s = sum((pad[i, :, h, w + d] * pad[j, :, h, w + d]).sum() / 2 for d in range(3))
                    tot += W**2 * s / 3 + b**2
            ref[i, j] = tot / 25
    np.testing.assert_allclose(K, ref, rtol=1e-12)


def test_nngp_kernel_with_input_shape():
    x = _images()
    kern = NNGPKernel(ARCHS["resnet"], kind="ntk", input_shape=(2, 5, 5))
    K = kern(x.reshape(3, -1)).to_dense().detach().numpy()
    np.testing.assert_allclose(K, np.array(NT[("resnet", "ntk")]), rtol=1e-8)


# -- bad input (item 7): errors at construction or at the first call --------------------------
def test_conv_needs_image_inputs():
    with pytest.raises(ValueError, match=r"\(n, C, H, W\)"):
        ARCHS["cnn_gap"].kernel(torch.randn(4, 10))
    with pytest.raises(ValueError, match="2-D .* or 4-D"):
        serial(Dense(1.0)).kernel(torch.randn(4, 3, 5))


def test_valid_window_larger_than_image():
    arch = serial(Conv(7, padding="valid"), Relu(), GlobalAvgPool(), Dense(1.0))
    with pytest.raises(ValueError, match="larger than the input size 5 with padding='valid'"):
        arch.kernel(_images())
    with pytest.raises(ValueError, match="larger than the input"):
        serial(Conv(3), AvgPool(6), Flatten(), Dense()).kernel(_images())


def test_spatial_layer_after_flatten_fails_at_construction():
    with pytest.raises(ValueError, match="Flatten or GlobalAvgPool"):
        serial(Conv(3), Flatten(), Conv(3))
    with pytest.raises(ValueError, match="Flatten or GlobalAvgPool"):
        serial(Conv(3), GlobalAvgPool(), Dense(), AvgPool(2))


def test_negative_or_invalid_hyperparameters():
    with pytest.raises(ValueError, match="W_std"):
        Conv(3, W_std=-0.5)
    with pytest.raises(ValueError, match="b_std"):
        Dense(1.0, b_std=-1)
    with pytest.raises(ValueError, match="kernel_size"):
        Conv(0)
    with pytest.raises(ValueError, match="padding"):
        Conv(3, padding="full")
    with pytest.raises(TypeError, match="kernel_size"):
        Conv(2.5)


def test_output_must_be_dense_and_branches_must_match():
    with pytest.raises(ValueError, match="end it with Flatten"):
        serial(Conv(3), Relu()).kernel(_images())
    with pytest.raises(ValueError, match="FanOut"):
        serial(Dense(), parallel(Dense(), Dense()))
    with pytest.raises(ValueError, match="kind"):
        serial(Dense()).kernel(torch.randn(3, 2), kind="cntk")
    with pytest.raises(ValueError, match="NaN"):
        serial(Dense()).kernel(np.array([[np.nan, 1.0]]))
