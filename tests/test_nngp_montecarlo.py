"""Monte Carlo: wide finite networks built from the same layer list converge to arch.kernel.

Tolerance: 4 Monte Carlo standard errors (estimated from the spread over draws) plus an
allowance for the O(1/width) finite-width bias (``bias`` × |K| / width × depth-ish constant).
The empirical NNGP of a draw is the last layer's covariance given its inputs,
W²·h·h'/m + b² (unbiased for the output covariance, with far less variance than f·f').
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from nngp_finite_nets import empirical_nngp, empirical_ntk

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


def _check(K, mean, se, width, bias=4.0, power=0.05):
    K, mean, se = K.numpy(), mean.numpy(), se.numpy()
    tol = 4 * se + bias * np.abs(K) / width
    err = np.abs(mean - K)
    assert (err <= tol).all(), f"max err/tol {np.max(err / tol):.2f}\nK={K}\nMC={mean}\nse={se}"
    # the test has power: the tolerance is far below the kernel's own scale
    assert np.median(tol / np.abs(K).max()) < power


def _dense_inputs():
    g = torch.Generator().manual_seed(0)
    return torch.randn(4, 5, generator=g, dtype=torch.float64)


MLP = serial(Dense(1.5, 0.1), Relu(), Dense(1.3, 0.2), Gelu(), Dense(1.2, 0.1), Erf(), Dense(1.0, 0.0))
RESNET = serial(
    Dense(1.2, 0.1),
    FanOut(2),
    parallel(serial(Relu(), Dense(1.0, 0.1), LeakyRelu(0.2), Dense(0.8, 0.0)), serial()),
    FanInSum(),
    LayerNorm(),
    Relu(),
    Dense(1.0, 0.05),
)
CNN = serial(
    Conv(3, W_std=1.5, b_std=0.1),
    Relu(),
    AvgPool(2),
    Conv(3, padding="valid", W_std=1.4, b_std=0.2),
    Relu(),
    GlobalAvgPool(),
    Dense(1.0, 0.0),
)
CNN_POOL1 = serial(Conv(3, W_std=1.5, b_std=0.2), Relu(), AvgPool(2, padding="same"), Flatten(), Dense(1.0, 0.1))
CNN_FLAT = serial(Conv((3, 2), stride=(1, 2), W_std=1.3, b_std=0.1), Erf(), Flatten(), Dense(1.0, 0.1))


def _images():
    g = torch.Generator().manual_seed(1)
    return torch.randn(3, 2, 6, 6, generator=g, dtype=torch.float64)


@pytest.mark.parametrize(
    "name, arch, x, width, draws, power",
    [
        ("mlp", MLP, _dense_inputs(), 256, 128, 0.05),
        ("resnet", RESNET, _dense_inputs(), 256, 128, 0.05),
        ("cnn", CNN, _images(), 128, 128, 0.1),
        ("cnn_flatten", CNN_FLAT, _images(), 128, 64, 0.05),
    ],
)
def test_empirical_nngp_converges(name, arch, x, width, draws, power):
    gen = torch.Generator().manual_seed(10)
    mean, se = empirical_nngp(arch, x, width, draws, gen)
    _check(arch.kernel(x, kind="nngp"), mean, se, width, power=power)


@pytest.mark.parametrize(
    "name, arch, x, width, draws",
    [
        ("mlp", MLP, _dense_inputs(), 512, 12),
        ("resnet", RESNET, _dense_inputs(), 512, 12),
        ("cnn_pool", CNN_POOL1, _images(), 256, 12),
        pytest.param("cnn", CNN, _images(), 128, 12, marks=pytest.mark.slow),
    ],
)

def test_empirical_ntk_converges(name, arch, x, width, draws):
    # the NTK of one finite net fluctuates more than its NNGP, and Jacobians are costly:
    # fewer draws, and a looser power requirement (tolerance < 12% of the kernel's scale)
    gen = torch.Generator().manual_seed(20)
    mean, se = empirical_ntk(arch, x, width, draws, gen)
    _check(arch.kernel(x, kind="ntk"), mean, se, width, power=0.12)


def test_monte_carlo_detects_a_wrong_convention():
    # the same CNN with a 'same'-padded second conv is a different kernel: the MC check must fail
    gen = torch.Generator().manual_seed(10)
    x = _images()
    mean, se = empirical_nngp(CNN, x, 128, 128, gen)
    wrong = serial(
        Conv(3, W_std=1.5, b_std=0.1), Relu(), AvgPool(2), Conv(3, W_std=1.4, b_std=0.2), Relu(),
        GlobalAvgPool(), Dense(1.0, 0.0),
    )
    with pytest.raises(AssertionError):
        _check(wrong.kernel(x), mean, se, 128, power=0.1)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["nngp", "ntk"])
def test_wide_mlp_width_2048(kind):
    x = _dense_inputs()
    gen = torch.Generator().manual_seed(30)
    if kind == "nngp":
        mean, se = empirical_nngp(MLP, x, 2048, 32, gen, chunk=4)
    else:
        mean, se = empirical_ntk(MLP, x, 2048, 8, gen, chunk=1)
    _check(MLP.kernel(x, kind=kind), mean, se, 2048)
