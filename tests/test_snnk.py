"""SNNKLayer: phi(x)^T psi(w) approaches the exact layer f(Wx + b) at the Monte Carlo rate."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gpkern.nn import SNNKLayer


@pytest.fixture(autouse=True)
def _single_thread():
    """Small matrices: one torch thread is as fast alone and far faster on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

ACTS = {
    "cos": np.cos,
    "sin": np.sin,
    "exp": np.exp,
    "gaussian": lambda z: np.exp(-0.5 * z**2),
    "sinc": np.sinc,
}


def exact_layer(activation: str, X: np.ndarray, W: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Independent numpy reference: f(XW^T + b), or the arc-cosine kernel of [x,1] and [w,b] for ReLU."""
    if activation != "relu":
        return ACTS[activation](X @ W.T + b)
    Xa = np.hstack([X, np.ones((len(X), 1))])
    Wa = np.hstack([W, b[:, None]])
    nx, nw = np.linalg.norm(Xa, axis=1), np.linalg.norm(Wa, axis=1)
    cos = np.clip(Xa @ Wa.T / np.outer(nx, nw), -1, 1)
    th = np.arccos(cos)
    return np.outer(nx, nw) / np.pi * (np.sin(th) + (np.pi - th) * cos)


@pytest.mark.parametrize("activation", ["relu", "cos", "sin", "exp", "gaussian", "sinc"])
def test_output_approaches_exact_layer(activation):
    rng = np.random.default_rng(0)
    X = 0.25 * rng.standard_normal((10, 5))
    torch.manual_seed(0)
    lin = torch.nn.Linear(5, 3)
    with torch.no_grad():
        lin.weight.mul_(0.5)
        lin.bias.mul_(0.5)
    W, b = lin.weight.detach().numpy(), lin.bias.detach().numpy()
    ref = exact_layer(activation, X, W, b)
    ms = np.array([64, 256, 1024, 4096])
    errs = []
    for m in ms:
        e = []
        for s in range(16):
            layer = SNNKLayer.from_linear(lin, activation, n_features=int(m), random_state=s)
            out = layer(torch.tensor(X)).detach().numpy()
            e.append(np.mean((out - ref) ** 2))
        errs.append(np.sqrt(np.mean(e)))
    errs = np.array(errs)
    slope = np.polyfit(np.log(ms), np.log(errs), 1)[0]
    assert -0.65 < slope < -0.35, (slope, errs)
    assert errs[-1] < 0.05 * max(1.0, np.abs(ref).max()), errs
    # exact_forward is the same layer as the independent reference
    np.testing.assert_allclose(layer.exact_forward(torch.tensor(X)).detach().numpy(), ref, rtol=1e-10, atol=1e-12)


def test_from_linear_copies_weights_and_no_bias():
    lin = torch.nn.Linear(4, 2, bias=False)
    layer = SNNKLayer.from_linear(lin, "sin", n_features=8)
    torch.testing.assert_close(layer.weight, lin.weight)
    assert layer.bias is None and layer.G.shape == (8, 4)


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def test_trainable_parameter_counts():
    """Weights mode is a drop-in (same count as Linear); feature mode trains Psi: D * out numbers.

    The paper's adapter setting (d_in = 768 down to 64): Linear has 49,216 trainable numbers; a
    ReLU-SNNK in feature mode with m = 128 has 8,192 (6.0x fewer), with URF (D = 2m) and
    m = 64 also 8,192.
    """
    linear = torch.nn.Linear(768, 64)
    assert count(linear) == 768 * 64 + 64 == 49216
    assert count(SNNKLayer(768, 64, "relu", n_features=128)) == 49216
    relu_feat = SNNKLayer(768, 64, "relu", n_features=128, trainable="features")
    sin_feat = SNNKLayer(768, 64, "sin", n_features=64, trainable="features")
    assert count(relu_feat) == 128 * 64 == 8192
    assert count(sin_feat) == 2 * 64 * 64 == 8192
    assert count(linear) / count(relu_feat) > 5  # the paper's "up to 5x" reduction holds here
    # buffers (random projections) are not trainable
    assert all(not b.requires_grad for b in relu_feat.buffers())


@pytest.mark.parametrize("trainable,ratio", [("weights", 0.7), ("features", 0.2)])
def test_drop_in_network_trains(trainable, ratio):
    """Adam through the layer lowers the loss (the arc-cosine NNK layer itself fits this target slowly)."""
    torch.manual_seed(0)
    X = torch.rand(128, 3) * 2 - 1
    y = torch.sin(2 * X.sum(1, keepdim=True))
    net = torch.nn.Sequential(SNNKLayer(3, 16, "relu", n_features=64, trainable=trainable), torch.nn.Linear(16, 1))
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    first = None
    for _ in range(200):
        opt.zero_grad()
        loss = ((net(X) - y) ** 2).mean()
        loss.backward()
        opt.step()
        first = float(loss) if first is None else first
    assert float(loss) < ratio * first


def test_float32_and_batch_dims():
    layer = SNNKLayer(4, 2, "cos", n_features=32, dtype=torch.float32)
    out = layer(torch.randn(3, 5, 4, dtype=torch.float32))
    assert out.shape == (3, 5, 2) and out.dtype == torch.float32
    layer64 = SNNKLayer(4, 2, "cos", n_features=32)
    x = torch.randn(5, 4) * 0.3
    torch.testing.assert_close(layer(x.float()).double(), layer64(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("m", [0, -1, 1.5])
def test_bad_n_features(m):
    with pytest.raises(ValueError, match="n_features must be a positive integer"):
        SNNKLayer(3, 2, n_features=m)


@pytest.mark.parametrize("act", ["tanh", "gelu", None])
def test_activation_without_representation(act):
    with pytest.raises(ValueError, match="no known universal-random-feature"):
        SNNKLayer(3, 2, activation=act)


def test_other_bad_input():
    with pytest.raises(ValueError, match="in_features must be a positive integer"):
        SNNKLayer(0, 2)
    with pytest.raises(ValueError, match="trainable must be"):
        SNNKLayer(3, 2, trainable="both")
    with pytest.raises(ValueError, match="expected inputs with 3 features"):
        SNNKLayer(3, 2)(torch.randn(4, 5))
    with pytest.raises(ValueError, match="exact_forward needs"):
        SNNKLayer(3, 2, trainable="features").exact_forward(torch.randn(4, 3))
