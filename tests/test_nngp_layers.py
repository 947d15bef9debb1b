"""NNGP/NTK layer maps against independent references: neural-tangents values, closed forms at
hand-computable inputs, and numerical integration (scipy) of the Gaussian expectations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.integrate as si
import scipy.special as ss
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gpkern.kernels.nngp import (
    ABRelu,
    Dense,
    Elementwise,
    Erf,
    Gelu,
    LayerNorm,
    LeakyRelu,
    Relu,
    serial,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # many small tensor ops: one thread is much faster on a shared, oversubscribed CPU
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


X_NT = torch.tensor([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0], [-1.0, 2.0, 0.5]], dtype=torch.float64)


def _nt_arch(act):
    return serial(Dense(W_std=1.5, b_std=0.1), act, Dense(1.5, 0.1), act, Dense(W_std=1.0, b_std=0.0))


def _sym(rows):
    K = np.zeros((3, 3))
    for i, r in enumerate(rows):
        K[i, i:] = r
    return K + np.triu(K, 1).T


# neural-tangents 0.6.5, float64 (PAPERS.md)
NT_RELU_NNGP = _sym([[0.4325, 0.3195738818, 0.3831629765], [0.4325, 0.6441747102], [2.22546875]])
NT_RELU_NTK = _sym([[1.2925, 0.6742349821, 0.3756123908], [1.2925, 1.2227490009], [6.67140625]])
NT_ERF_NNGP = _sym([[0.4522734481, 0.2477137296, -0.1660890669], [0.4522734481, 0.1786235952], [0.5485747555]])


@pytest.mark.parametrize(
    "act, kind, ref",
    [(Relu(), "nngp", NT_RELU_NNGP), (Relu(), "ntk", NT_RELU_NTK), (Erf(), "nngp", NT_ERF_NNGP)],
)
def test_neural_tangents_check_values(act, kind, ref):
    K = _nt_arch(act).kernel(X_NT, kind=kind).numpy()
    np.testing.assert_allclose(K, ref, atol=1e-8, rtol=0)


def test_relu_nngp_by_hand():
    # one hidden layer, W=1, b=0: K0 = x.x'/d; orthogonal unit-variance inputs -> 1/(2 pi)
    x = torch.tensor([[math.sqrt(2.0), 0.0], [0.0, math.sqrt(2.0)]], dtype=torch.float64)
    K = serial(Dense(1.0), Relu(), Dense(1.0)).kernel(x).numpy()
    np.testing.assert_allclose(K, [[0.5, 1 / (2 * math.pi)], [1 / (2 * math.pi), 0.5]], rtol=1e-14)
    T = serial(Dense(1.0), Relu(), Dense(1.0)).kernel(x, kind="ntk").numpy()
    # Theta = Sigma2 + W^2 * Theta1 * Sigma_dot, Theta1 = K0, Sigma_dot(0) = 1/4, (1) = 1/2
    np.testing.assert_allclose(T, [[0.5 + 1 * 0.5, 1 / (2 * math.pi)], [1 / (2 * math.pi), 1.0]], rtol=1e-14)


def test_erf_nngp_by_hand():
    x = torch.tensor([[1.0], [1.0]], dtype=torch.float64)
    K = serial(Dense(1.0), Erf(), Dense(1.0)).kernel(x).numpy()
    np.testing.assert_allclose(K, np.full((2, 2), 2 / math.pi * math.asin(2 / 3)), rtol=1e-14)


def _gauss_expect(f, s11, s12, s22):
    """E[f(u, v)] for (u, v) ~ N(0, [[s11, s12], [s12, s22]]) by nested scipy quadrature over
    (z1, z2), with break points at the kinks u = 0 and v = 0."""
    a = math.sqrt(s11)
    rho = s12 / math.sqrt(s11 * s22)
    b1, b2 = math.sqrt(s22) * rho, math.sqrt(s22) * math.sqrt(max(1 - rho**2, 0.0))
    phi = lambda z: math.exp(-z * z / 2) / math.sqrt(2 * math.pi)  # noqa: E731

    def inner(z1):
        u = a * z1
        if b2 == 0:
            return f(u, b1 * z1)
        kink = -b1 * z1 / b2
        g = lambda z2: f(u, b1 * z1 + b2 * z2) * phi(z2)  # noqa: E731
        lo = si.quad(g, -10, kink, epsabs=1e-13, epsrel=1e-12, limit=200)[0]
        hi = si.quad(g, kink, 10, epsabs=1e-13, epsrel=1e-12, limit=200)[0]
        return lo + hi

    h = lambda z1: inner(z1) * phi(z1)  # noqa: E731
    return si.quad(h, -10, 0, epsabs=1e-12, epsrel=1e-11, limit=200)[0] + si.quad(
        h, 0, 10, epsabs=1e-12, epsrel=1e-11, limit=200
    )[0]


def _Phi(x):
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


ACTS = {
    "relu": (Relu(), lambda x: max(x, 0.0), lambda x: float(x > 0)),
    "leaky": (LeakyRelu(0.2), lambda x: max(x, 0.2 * x), lambda x: 1.0 if x > 0 else 0.2),
    "abrelu": (ABRelu(-0.5, 2.0), lambda x: 2 * x if x > 0 else -0.5 * x, lambda x: 2.0 if x > 0 else -0.5),
    "erf": (Erf(1.3, 0.7, 0.2), lambda x: 1.3 * math.erf(0.7 * x) + 0.2,
            lambda x: 1.3 * 0.7 * 2 / math.sqrt(math.pi) * math.exp(-0.49 * x * x)),
    "gelu": (Gelu(), lambda x: x * _Phi(x), lambda x: _Phi(x) + x * math.exp(-x * x / 2) / math.sqrt(2 * math.pi)),
}


@pytest.mark.parametrize("name", list(ACTS))
@pytest.mark.parametrize("s11, s12, s22", [(1.0, 0.3, 2.0), (0.5, -0.4, 0.7), (1.5, 1.2, 1.1)])
def test_closed_forms_match_integration(name, s11, s12, s22):
    act, f, fp = ACTS[name]
    t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    got = act.nngp(t(s11), t(s12), t(s22)).item()
    ref = _gauss_expect(lambda u, v: f(u) * f(v), s11, s12, s22)
    assert got == pytest.approx(ref, abs=1e-7, rel=1e-7)
    got_dot = act.ntk_factor(t(s11), t(s12), t(s22)).item()
    ref_dot = _gauss_expect(lambda u, v: fp(u) * fp(v), s11, s12, s22)
    assert got_dot == pytest.approx(ref_dot, abs=1e-6, rel=1e-6)
    # the diagonal closed form is the map at rho = 1
    ref_diag = _gauss_expect(lambda u, v: f(u) ** 2, s11, s11, s11) if name != "relu" else s11 / 2
    assert act.nngp_diag(t(s11)).item() == pytest.approx(ref_diag, abs=1e-7, rel=1e-7)


def test_elementwise_quadrature_matches_closed_forms_and_polynomials():
    s11, s12, s22 = (torch.tensor(v, dtype=torch.float64) for v in (1.3, -0.6, 0.9))
    quad_erf = Elementwise(torch.erf, n_points=48)
    assert quad_erf.nngp(s11, s12, s22).item() == pytest.approx(Erf().nngp(s11, s12, s22).item(), abs=1e-9)
    assert quad_erf.ntk_factor(s11, s12, s22).item() == pytest.approx(Erf().ntk_factor(s11, s12, s22).item(), abs=1e-9)
    gelu = Elementwise(lambda x: x * 0.5 * (1 + torch.erf(x / math.sqrt(2))), n_points=64)
    assert gelu.nngp(s11, s12, s22).item() == pytest.approx(Gelu().nngp(s11, s12, s22).item(), abs=1e-8)
    # x^2: E[u^2 v^2] = s11 s22 + 2 s12^2 exactly; derivative 2x: 4 s12
    sq = Elementwise(lambda x: x**2, n_points=4)
    assert sq.nngp(s11, s12, s22).item() == pytest.approx((s11 * s22 + 2 * s12**2).item(), rel=1e-13)
    assert sq.ntk_factor(s11, s12, s22).item() == pytest.approx(4 * s12.item(), rel=1e-12)


def test_gelu_ntk_factor_is_derivative_of_nngp():
    s11, s22 = torch.tensor(0.8, dtype=torch.float64), torch.tensor(1.7, dtype=torch.float64)
    s12 = torch.tensor(0.4, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(Gelu().nngp(s11, s12, s22), s12)
    assert Gelu().ntk_factor(s11, s12, s22).item() == pytest.approx(g.item(), rel=1e-12)


def test_layernorm_normalises_dense_kernel():
    x = torch.tensor([[3.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    K = serial(Dense(2.0, 0.5), LayerNorm(), Dense(1.0)).kernel(x).numpy()
    K0 = 4 * (x @ x.T).numpy() / 2 + 0.25
    ref = K0 / np.sqrt(np.outer(np.diag(K0), np.diag(K0)))
    np.testing.assert_allclose(K, ref, rtol=1e-10)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    act=st.sampled_from(["relu", "erf", "gelu", "leaky"]),
    kind=st.sampled_from(["nngp", "ntk"]),
)

def test_kernel_symmetric_psd(seed, act, kind):
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.normal(size=(7, 4)))
    a = {"relu": Relu(), "erf": Erf(), "gelu": Gelu(), "leaky": LeakyRelu(0.1)}[act]
    arch = serial(Dense(1.3, 0.2), a, Dense(1.1, 0.1), a, Dense(1.0, 0.0))
    K = arch.kernel(x, kind=kind).numpy()
    np.testing.assert_allclose(K, K.T, atol=1e-12)
    assert np.linalg.eigvalsh(K).min() > -1e-10 * np.abs(K).max()
    # blocks and diagonal agree with the one-shot computation
    np.testing.assert_allclose(arch.kernel(x, kind=kind, batch_size=3).numpy(), K, rtol=1e-12)
    np.testing.assert_allclose(arch.kernel(x, x, kind=kind, diag=True).numpy(), np.diag(K), rtol=1e-12)


def test_erf_arcsine_identity_scipy():
    # the arcsine formula against scipy's erf via a 1-D Gauss-Hermite-free route: Owen's
    # identity E[erf(u) erf(v)] = (2/pi) asin(2 s12 / sqrt((1+2 s11)(1+2 s22)))
    f = lambda u, v: ss.erf(u) * ss.erf(v)  # noqa: E731
    ref = _gauss_expect(f, 0.4, 0.1, 0.6)
    t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    assert Erf().nngp(t(0.4), t(0.1), t(0.6)).item() == pytest.approx(ref, abs=1e-9)


@pytest.mark.slow
def test_ten_thousand_dense_inputs_in_bounded_blocks():
    # n = 10,000: only the (n, n) output is held; blocks are checked against direct rows
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10_000, 20, generator=g, dtype=torch.float32)
    arch = serial(Dense(1.5, 0.1), Relu(), Dense(1.5, 0.1), Relu(), Dense(1.0))
    K = arch.kernel(x, kind="ntk", max_memory=2**24)
    assert K.shape == (10_000, 10_000) and K.dtype == torch.float32
    rows = torch.tensor([0, 4321, 9999])
    ref = arch.kernel(x[rows].double(), x.double(), kind="ntk")
    np.testing.assert_allclose(K[rows].double().numpy(), ref.numpy(), rtol=2e-4, atol=1e-5)
