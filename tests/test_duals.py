"""Dual activations against independent references, and the KeOps network formula against them.

References: one-dimensional quadrature of closed-form conditional expectations (piecewise-linear
activations), two-dimensional Gauss-Hermite quadrature (smooth activations) and Monte Carlo with
a tolerance from its standard error. The hard points are correlations of exactly +-1 (a point
with itself or its negative), zero-variance and tiny-variance inputs.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, special

from conftest import keops_compiles
from gpkern.kernels.nngp import ABRelu, Dense, Erf, Relu, duals, serial
from gpkern.kernels.nngp.hierarchical import kappa0, kappa1
from gpkern.kernels.nngp.infinite_depth import dual_activation
from gpkern.kernels.nngp.kernel import NNGPKernel
from gpkern.linalg.keops import DenseNetworkKernel, kernel_operator, layers_from_architecture
from gpkern.models.dkm import relu_gram_map
from gpkern.nn.snnk import SNNKLayer


def t(v) -> torch.Tensor:
    return torch.tensor(v, dtype=torch.float64)


# (sigma11, sigma12, sigma22): interior points, rho = +1 and -1 (equal and unequal variances),
# a zero-variance input on one side and on both.
COVS = [
    (1.0, 0.3, 2.0),
    (0.7, -0.5, 1.3),
    (2.0, 2.0, 2.0),
    (1.5, -1.5, 1.5),
    (0.5, 1.0, 2.0),
    (0.5, -1.0, 2.0),
    (0.0, 0.0, 1.7),
    (3.0, 0.0, 0.0),
    (0.0, 0.0, 0.0),
]
COV_IDS = [
    "interior+",
    "interior-",
    "rho=1",
    "rho=-1",
    "rho=1-unequal",
    "rho=-1-unequal",
    "zero-left",
    "zero-right",
    "zero-both",
]

A, B = -0.4, 1.7  # an ab-ReLU with both slopes non-zero
EA, EB, EC = 1.2, 0.7, 0.1  # a erf(b z) + c
W = 1.3  # sin(w z)


def _step(x, a, b):
    # phi' of the ab-ReLU; the subgradient (a + b) / 2 at 0 is the convention of the duals
    return np.where(x > 0, b, np.where(x < 0, a, 0.5 * (a + b)))


# name: (phi, phi', dual, derivative dual); numpy activations, torch duals of (s11, s12, s22)
ACTIVATIONS = {
    "relu": (
        lambda x: np.maximum(x, 0.0),
        lambda x: _step(x, 0.0, 1.0),
        lambda *s: duals.abrelu_dual(*s, 0.0, 1.0),
        lambda *s: duals.abrelu_dual_dot(*s, 0.0, 1.0),
    ),
    "abrelu": (
        lambda x: np.where(x > 0, B * x, A * x),
        lambda x: _step(x, A, B),
        lambda *s: duals.abrelu_dual(*s, A, B),
        lambda *s: duals.abrelu_dual_dot(*s, A, B),
    ),
    "erf": (
        lambda x: EA * special.erf(EB * x) + EC,
        lambda x: EA * EB * 2 / math.sqrt(math.pi) * np.exp(-((EB * x) ** 2)),
        lambda *s: duals.erf_dual(*s, EA, EB, EC),
        lambda *s: duals.erf_dual_dot(*s, EA, EB),
    ),
    "gelu": (
        lambda x: x * special.ndtr(x),
        lambda x: special.ndtr(x) + x * np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi),
        duals.gelu_dual,
        duals.gelu_dual_dot,
    ),
    "sine": (
        lambda x: np.sin(W * x),
        lambda x: W * np.cos(W * x),
        lambda *s: duals.sine_dual(*s, W),
        lambda *s: duals.sine_dual_dot(*s, W),
    ),
}
PIECEWISE = ("relu", "abrelu")


def _pair(s11, s12, s22, z1, z2):
    """(u, v) with covariance [[s11, s12], [s12, s22]] from independent standard normals."""
    s1, s2 = math.sqrt(s11), math.sqrt(s22)
    rho = s12 / (s1 * s2) if s1 * s2 > 0 else 0.0
    rho = min(1.0, max(-1.0, rho))
    return s1 * z1, s2 * (rho * z1 + math.sqrt(1 - rho * rho) * z2)


# -- independent references ------------------------------------------------------------------
def _positive_part_moments(m, s):
    """E[Theta(V)], E[V_+] for V ~ N(m, s^2) (s = 0: V = m)."""
    if s == 0:
        return float(m > 0) + 0.5 * float(m == 0), max(m, 0.0)
    r = m / s
    return special.ndtr(r), m * special.ndtr(r) + s * math.exp(-0.5 * r * r) / math.sqrt(
        2 * math.pi
    )


def _piecewise_reference(name, s11, s12, s22, derivative):
    """E[f(u) f(v)] as a 1-D integral over u of f(u) E[f(v) | u] (closed form for ab-ReLUs)."""
    a, b = (0.0, 1.0) if name == "relu" else (A, B)
    phi, dphi = ACTIVATIONS[name][:2]
    s1, s2 = math.sqrt(s11), math.sqrt(s22)
    rho = s12 / (s1 * s2) if s1 * s2 > 0 else 0.0
    rho = min(1.0, max(-1.0, rho))
    cond_sd = s2 * math.sqrt(1 - rho * rho)

    def integrand(z):
        m = rho * s2 * z  # E[v | u = s1 z]
        p_pos, pos = _positive_part_moments(m, cond_sd)
        p_neg, neg = _positive_part_moments(-m, cond_sd)  # for -v
        if derivative:
            inner = b * p_pos + a * p_neg
            return (
                float(dphi(np.array(s1 * z)))
                * inner
                * math.exp(-0.5 * z * z)
                / math.sqrt(2 * math.pi)
            )
        inner = b * pos - a * neg
        return (
            float(phi(np.array(s1 * z))) * inner * math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
        )

    left = integrate.quad(integrand, -np.inf, 0.0, epsabs=1e-14, epsrel=1e-12)[0]
    right = integrate.quad(integrand, 0.0, np.inf, epsabs=1e-14, epsrel=1e-12)[0]
    return left + right


def _gauss_hermite_reference(name, s11, s12, s22, derivative, n=120):
    z, w = np.polynomial.hermite_e.hermegauss(n)
    w = w / w.sum()
    f = ACTIVATIONS[name][1 if derivative else 0]
    u, v = _pair(s11, s12, s22, z[:, None], z[None, :])
    return float((w[:, None] * w[None, :] * f(u) * f(v)).sum())


def _reference(name, s11, s12, s22, derivative):
    if name in PIECEWISE:
        return _piecewise_reference(name, s11, s12, s22, derivative)
    return _gauss_hermite_reference(name, s11, s12, s22, derivative)


@pytest.mark.parametrize("derivative", [False, True], ids=["dual", "derivative-dual"])
@pytest.mark.parametrize("cov", COVS, ids=COV_IDS)
@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_duals_match_quadrature(name, cov, derivative):
    got = float(ACTIVATIONS[name][3 if derivative else 2](*map(t, cov)))
    ref = _reference(name, *cov, derivative)
    assert got == pytest.approx(ref, rel=1e-9, abs=1e-11)


@pytest.mark.parametrize("cov", COVS, ids=COV_IDS)
@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_duals_match_monte_carlo(name, cov):
    rng = np.random.default_rng(11)
    z1, z2 = rng.standard_normal((2, 400_000))
    u, v = _pair(*cov, z1, z2)
    phi, dphi, dual, dot = ACTIVATIONS[name]
    for f, g in ((phi, dual), (dphi, dot)):
        samples = f(u) * f(v)
        se = samples.std() / math.sqrt(samples.size)
        assert abs(float(g(*map(t, cov))) - samples.mean()) <= 5 * se + 1e-12


@pytest.mark.parametrize("order", [0, 1, 2])
@pytest.mark.parametrize("cov", COVS, ids=COV_IDS)
def test_arccos_kernel_is_twice_the_expectation_of_step_powers(order, cov):
    # k_n = 2 E[Theta(u) Theta(v) u^n v^n]: 1-D quadrature of the conditional moments of v
    s11, s12, s22 = cov
    s1, s2 = math.sqrt(s11), math.sqrt(s22)
    rho = s12 / (s1 * s2) if s1 * s2 > 0 else 0.0
    rho = min(1.0, max(-1.0, rho))
    sd = s2 * math.sqrt(1 - rho * rho)

    def moment(m):  # E[Theta(V) V^n], V ~ N(m, sd^2)
        if sd == 0:  # V = m
            return (1.0 if m > 0 else 0.5 if m == 0 else 0.0) * m**order
        r = m / sd
        cdf, pdf = special.ndtr(r), math.exp(-0.5 * r * r) / math.sqrt(2 * math.pi)
        return (cdf, m * cdf + sd * pdf, (m * m + sd * sd) * cdf + m * sd * pdf)[order]

    def integrand(z):
        u = s1 * z
        step = 1.0 if u > 0 else (0.5 if u == 0 else 0.0)
        return (
            step * u**order * moment(rho * s2 * z) * math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
        )

    ref = 2 * sum(
        integrate.quad(integrand, lo, hi, epsabs=1e-14, epsrel=1e-12)[0]
        for lo, hi in ((-np.inf, 0), (0, np.inf))
    )
    if s11 == 0 or s22 == 0:  # the step at u = 0 is 1/2 by convention; only k_0 is non-zero there
        ref = 0.5 if order == 0 else 0.0
    assert float(duals.arccos_kernel(*map(t, cov), order=order)) == pytest.approx(
        ref, rel=1e-9, abs=1e-12
    )


def test_arccos_kernel_rejects_other_orders():
    with pytest.raises(ValueError, match="order must be 0, 1 or 2"):
        duals.arccos_kernel(t(1.0), t(0.5), t(1.0), order=3)


# -- derivatives and the hard points --------------------------------------------------------
@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_derivative_dual_is_the_sigma12_derivative_of_the_dual(name):
    _, _, dual, dot = ACTIVATIONS[name]
    for s11, s12, s22 in [(1.0, 0.3, 2.0), (0.7, -0.5, 1.3), (2.5, 0.1, 0.4)]:
        x = t(s12).requires_grad_(True)
        (g,) = torch.autograd.grad(dual(t(s11), x, t(s22)), x)
        assert float(g) == pytest.approx(float(dot(t(s11), t(s12), t(s22))), rel=1e-10)


@pytest.mark.parametrize("order", [1, 2])
def test_arccos_kernel_derivative_is_n_squared_times_the_lower_order(order):
    for cov in [(1.0, 0.3, 2.0), (2.0, 2.0, 2.0), (1.5, -1.5, 1.5), (0.0, 0.0, 1.0)]:
        x = t(cov[1]).requires_grad_(True)
        (g,) = torch.autograd.grad(duals.arccos_kernel(t(cov[0]), x, t(cov[2]), order), x)
        lower = duals.arccos_kernel(*map(t, cov), order=order - 1)
        assert float(g) == pytest.approx(order**2 * float(lower), rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("cov", COVS, ids=COV_IDS)
@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_gradients_are_finite_at_every_hard_point(name, cov):
    for fn in ACTIVATIONS[name][2:]:
        s = [t(v).requires_grad_(True) for v in cov]
        grads = torch.autograd.grad(fn(*s), s, allow_unused=True)
        assert all(g is None or bool(torch.isfinite(g)) for g in grads)
    for order in (0, 1, 2):
        s = [t(v).requires_grad_(True) for v in cov]
        assert all(
            bool(torch.isfinite(g))
            for g in torch.autograd.grad(duals.arccos_kernel(*s, order=order), s)
        )


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_relu_family_gradient_at_unit_correlation_is_the_limit_from_inside(sign):
    # at rho = +-1 the sigma12-gradient is the limit of the interior gradients (which exist and
    # approach it like sqrt(1 - |rho|)); arccos itself would give inf - inf there
    s = 2.0
    for a, b in ((0.0, 1.0), (A, B)):
        grads = []
        for delta in (0.0, 1e-12, 1e-8):
            x = t(sign * s * (1 - delta)).requires_grad_(True)
            (g,) = torch.autograd.grad(duals.abrelu_dual(t(s), x, t(s), a, b), x)
            grads.append(float(g))
        assert grads[0] == pytest.approx(grads[1], rel=1e-6, abs=1e-6)
        assert grads[0] == pytest.approx(grads[2], rel=1e-4, abs=1e-4)
        assert grads[0] == pytest.approx(
            (a * a + b * b) / 2 if sign > 0 else a * b, rel=1e-15, abs=1e-15
        )


@pytest.mark.parametrize("a, b", [(0.0, 1.0), (0.01, 1.0), (A, B)])
def test_relu_family_exact_at_unit_correlation_and_zero_variance(a, b):
    for s in (1e-3, 1.0, 7.3):
        S = t(s)
        with torch.no_grad():  # the fused inference path
            v_pos, d_pos = duals.abrelu_dual_and_dot(S, S, S, a, b)
            v_neg, d_neg = duals.abrelu_dual_and_dot(S, -S, S, a, b)
        assert float(v_pos) == pytest.approx((a * a + b * b) / 2 * s, rel=1e-12)  # E[phi(u)^2]
        assert float(v_neg) == pytest.approx(-a * b * s, rel=1e-12, abs=1e-15)  # E[phi(u)phi(-u)]
        assert float(d_pos) == (a * a + b * b) / 2  # exactly: theta = 0
        assert float(d_neg) == pytest.approx(a * b, abs=1e-15)  # theta = pi
        # grad path (arccos_angle) gives the same
        x = S.clone().requires_grad_(True)
        assert float(duals.abrelu_dual_dot(S, x, S, a, b).detach()) == (a * a + b * b) / 2
    # rounding-level gaps (a point with itself through a different summation order) snap to rho = 1
    x = torch.randn(50, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    s11, s12, s22 = (x * x).sum(), x @ x, x.pow(2).sum()
    for s12_ in (s12, s12 * (1 - 4 * torch.finfo(torch.float64).eps)):
        assert float(duals.abrelu_dual_dot(s11, s12_, s22, a, b)) == (a * a + b * b) / 2
    assert float(duals.arccos_correlation(t(1 - 4 * 2.0**-52), 0)) == 1.0
    # a zero-variance input: the dual is 0 and the derivative dual phi'(0) E[phi'(v)]
    for fast in (True, False):
        with torch.set_grad_enabled(not fast):
            zero = t(0.0) if fast else t(0.0).requires_grad_(True)
            value, dot = duals.abrelu_dual_and_dot(zero, t(0.0), t(2.0), a, b)
        assert float(value.detach()) == 0.0
        assert float(dot.detach()) == pytest.approx((a + b) ** 2 / 4, rel=1e-14)


@pytest.mark.parametrize("scale", [1e-100, 1e-30, 1e-8, 1e30])
def test_relu_family_is_homogeneous_down_to_tiny_variances(scale):
    # E[phi(cu) phi(cv)] = c^2 E[phi(u) phi(v)] for piecewise-linear phi; the angle is scale-free
    for cov in [(1.0, 0.3, 2.0), (2.0, 2.0, 2.0), (0.5, -1.0, 2.0), (0.0, 0.0, 1.0)]:
        base = duals.abrelu_dual_and_dot(*map(t, cov), A, B)
        small = duals.abrelu_dual_and_dot(*(t(v * scale) for v in cov), A, B)
        assert float(small[0]) == pytest.approx(scale * float(base[0]), rel=1e-12, abs=0.0)
        assert float(small[1]) == pytest.approx(float(base[1]), rel=1e-12)
        for order in (0, 1, 2):
            k = duals.arccos_kernel(*(t(v * scale) for v in cov), order=order)
            assert float(k) == pytest.approx(
                scale**order * float(duals.arccos_kernel(*map(t, cov), order=order)),
                rel=1e-12,
                abs=0.0,
            )


def test_fused_inference_path_matches_the_autograd_path():
    g = torch.Generator().manual_seed(3)
    X = torch.randn(30, 4, generator=g, dtype=torch.float64)
    X[5] = X[4]
    X[6] = -X[4]
    X[7] = 0.0
    S = X @ X.T / 4
    d = S.diagonal()
    with torch.no_grad():
        fast = duals.abrelu_dual_and_dot(d[:, None], S, d[None, :], A, B)
    Sg = S.clone().requires_grad_(True)
    slow = duals.abrelu_dual_and_dot(d[:, None], Sg, d[None, :], A, B)
    torch.testing.assert_close(fast[0], slow[0].detach(), rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(fast[1], slow[1].detach(), rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_duals_are_symmetric_and_broadcast(name):
    g = torch.Generator().manual_seed(1)
    X = torch.randn(6, 3, generator=g, dtype=torch.float64)
    X[1] = X[0]
    X[2] = -X[0]
    X[3] = 0.0
    S = X @ X.T / 3
    d = S.diagonal()
    for fn in ACTIVATIONS[name][2:]:
        K = fn(d[:, None], S, d[None, :])
        assert K.shape == (6, 6)
        torch.testing.assert_close(K, K.T, rtol=1e-14, atol=0.0)


def test_odd_and_relu_identities():
    s11, s22 = t(1.3), t(0.6)
    for s12 in (0.0, 0.4, float(torch.sqrt(s11 * s22))):
        p, m = t(s12), t(-s12)
        # relu(u) - relu(-u) = u: E[relu(u) relu(v)] - E[relu(u) relu(-v)] = sigma12 / 2
        assert float(
            duals.abrelu_dual(s11, p, s22, 0.0, 1.0) - duals.abrelu_dual(s11, m, s22, 0.0, 1.0)
        ) == pytest.approx(s12 / 2, abs=1e-15)
        # odd activations have odd duals and even derivative duals
        for dual, dot in (
            (duals.erf_dual, duals.erf_dual_dot),
            (duals.sine_dual, duals.sine_dual_dot),
        ):
            assert float(dual(s11, p, s22) + dual(s11, m, s22)) == pytest.approx(0.0, abs=1e-15)
            assert float(dot(s11, p, s22)) == pytest.approx(float(dot(s11, m, s22)), rel=1e-15)


# -- the callers use these duals --------------------------------------------------------------
def test_callers_compute_the_same_duals():
    rho = torch.linspace(-1, 1, 41, dtype=torch.float64)
    torch.testing.assert_close(kappa0(rho), duals.arccos_correlation(rho, 0), rtol=0, atol=0)
    torch.testing.assert_close(kappa1(rho), duals.arccos_correlation(rho, 1), rtol=0, atol=0)
    xi = dual_activation("relu")
    torch.testing.assert_close(
        xi(rho), 2 * duals.abrelu_dual(torch.ones_like(rho), rho, torch.ones_like(rho), 0.0, 1.0)
    )
    torch.testing.assert_close(
        xi.derivative(rho),
        2 * duals.abrelu_dual_dot(torch.ones_like(rho), rho, torch.ones_like(rho), 0.0, 1.0),
    )
    one = torch.ones_like(rho)
    erf = dual_activation("erf")
    torch.testing.assert_close(
        erf(rho), duals.erf_dual(one, rho, one) / duals.erf_dual(one, one, one)
    )
    sine = dual_activation("sine", a=2.0)
    torch.testing.assert_close(sine(rho), torch.sinh(2 * rho) / math.sinh(2.0))
    torch.testing.assert_close(sine.derivative(rho), 2 * torch.cosh(2 * rho) / math.sinh(2.0))
    G = torch.tensor(
        [[1.0, 1.0, -2.0, 0.0], [1.0, 1.0, -2.0, 0.0], [-2.0, -2.0, 4.0, 0.0], [0.0, 0.0, 0.0, 0.0]]
    )
    g = G.diagonal()
    torch.testing.assert_close(
        relu_gram_map(G, g, g), 2 * duals.abrelu_dual(g[:, None], G, g[None, :], 0.0, 1.0)
    )
    torch.testing.assert_close(
        relu_gram_map(G, g, g), G.clamp_min(0.0)
    )  # rho in {1, -1} and zero rows


def test_dkm_gram_map_at_the_diagonal_has_exact_values_and_one_sided_gradients():
    for dtype in (torch.float64, torch.float32):
        G = torch.tensor([[4.0]], dtype=dtype, requires_grad=True)
        g = torch.tensor([4.0], dtype=dtype, requires_grad=True)
        K = relu_gram_map(G, g, g)
        assert float(K.detach()) == 4.0
        gG, gg = torch.autograd.grad(K.sum(), (G, g))
        # d/dG at rho = 1 is kappa_0(1) = 1; the variances enter only through the angle
        assert float(gG) == 1.0 and float(gg) == 0.0
        zero = relu_gram_map(
            torch.zeros(1, 1, dtype=dtype),
            torch.zeros(1, dtype=dtype),
            torch.tensor([4.0], dtype=dtype),
        )
        assert float(zero) == 0.0


def test_snnk_exact_forward_is_the_arc_cosine_kernel_including_zero_inputs():
    layer = SNNKLayer(3, 4, bias=False).double()
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x[0] = 0.0
    x[1] = layer.weight[0].detach()
    with torch.no_grad():
        out = layer.exact_forward(x)
    w = layer.weight.detach()
    nx, nw = x.norm(dim=-1), w.norm(dim=-1)
    ref = torch.zeros(5, 4, dtype=torch.float64)
    for i in range(1, 5):  # numpy-free reference: arccos then J_1
        c = ((x[i] @ w.T) / (nx[i] * nw)).clamp(-1, 1)
        th = torch.arccos(c)
        ref[i] = nx[i] * nw / math.pi * (torch.sin(th) + (math.pi - th) * c)
    torch.testing.assert_close(out, ref, rtol=1e-7, atol=1e-12)
    assert float(out[1, 0]) == pytest.approx(float(nw[0] ** 2), rel=1e-14)  # x = w: J_1(0) = pi


# -- the KeOps network formula against the duals ---------------------------------------------
ARCH = serial(
    Dense(1.3, 0.0),
    ABRelu(A, B),
    Dense(0.9, 0.2),
    Relu(),
    Dense(1.0, 0.1),
    Erf(EA, EB, EC),
    Dense(1.1, 0.0),
)


def _duals_network(X, layers, ntk):
    """NNGP/NTK recursion on the full matrix with the duals (diagonals from the matrix)."""
    S = X @ X.T / X.shape[1]
    T = None
    for layer in layers:
        d = S.diagonal()
        s11, s22 = d[:, None], d[None, :]
        if layer[0] == "dense":
            S = layer[1] ** 2 * S + layer[2] ** 2
            T = S if T is None else layer[1] ** 2 * T + S
        elif layer[0] == "abrelu":
            S, dot = duals.abrelu_dual_and_dot(s11, S, s22, layer[1], layer[2])
            T = T * dot
        else:
            _, a, b, c = layer
            S, T = duals.erf_dual(s11, S, s22, a, b, c), T * duals.erf_dual_dot(s11, S, s22, a, b)
    return T if ntk else S


def _hard_inputs():
    g = torch.Generator().manual_seed(0)
    x0, x1, x2 = torch.randn(3, 3, generator=g, dtype=torch.float64)
    # a point twice (rho = 1), its negative (rho = -1), zero, a tiny point, a rescaled copy
    return torch.stack([x0, x0, -x0, torch.zeros(3), 1e-30 * x1, x1, 3 * x1, x2])


def _keops_paths(layers, X, ntk, backend):
    net = DenseNetworkKernel(layers, X.shape[1], ntk=ntk)
    return {
        "torch-dense_network": lambda: net(X).to_dense(),
        "operator-point-terms": lambda: kernel_operator(net, X, backend=backend).to_dense(),
    }


# The KeOps formula shrinks cos(theta) by 1 - 16 eps (theta >= sqrt(32 eps) = 8.4e-8 rad), which
# moves the (ab)ReLU derivative dual by up to theta (a - b)^2 / (pi (a^2 + b^2)) ~ 5e-8 relative
# at rho = +-1: the NTK there matches to ~5e-8; the NNGP to rounding (its error is O(theta^2)).
NTK_RTOL = 1e-7


@pytest.mark.parametrize("ntk", [False, True], ids=["nngp", "ntk"])
def test_keops_network_formula_matches_the_duals_at_hard_points(ntk):
    X = _hard_inputs()
    layers = layers_from_architecture(ARCH)
    ref = _duals_network(X, layers, ntk)
    torch.testing.assert_close(
        NNGPKernel(ARCH, kind="ntk" if ntk else "nngp")(X).to_dense(), ref, rtol=1e-12, atol=1e-14
    )
    for name, fn in _keops_paths(layers, X, ntk, "torch").items():
        got = fn()
        assert bool(torch.isfinite(got).all()), name
        torch.testing.assert_close(got, ref, rtol=NTK_RTOL if ntk else 1e-10, atol=1e-14, msg=name)
    if ntk:  # the NTK error is confined to the rho = +-1 pairs, as the shrink predicts
        got = kernel_operator(
            DenseNetworkKernel(layers, 3, ntk=True), X, backend="torch"
        ).to_dense()
        rel = ((got - ref).abs() / ref.abs()).numpy()
        assert 1e-9 < rel[0, 1] < 1e-7 and rel[0, 5] < 1e-10  # x0 with itself / a random point


@pytest.mark.parametrize(
    "act", [("abrelu", A, B), ("relu",), ("erf", EA, EB, EC)], ids=["abrelu", "relu", "erf"]
)
def test_keops_point_terms_path_is_exact_at_zero_and_tiny_norms(act):
    # one activation straight after a bias-free dense layer: the hard points reach it unchanged
    g = torch.Generator().manual_seed(4)
    x0, x1 = torch.randn(2, 3, generator=g, dtype=torch.float64)
    X = torch.stack([x0, 1e-40 * x0, -1e-40 * x0, 1e-40 * x1, torch.zeros(3), x1])
    layers = [("dense", 1.0, 0.0), act]
    ref = _duals_network(
        X, [("dense", 1.0, 0.0), ("abrelu", 0.0, 1.0) if act == ("relu",) else act], False
    )
    got = kernel_operator(DenseNetworkKernel(layers, 3), X, backend="torch").to_dense()
    # accurate relative to sqrt(k11 k22) (entries of size 1e-80 included; x with -x, whose exact
    # ReLU value is 0, within 1e-15 of sqrt(k11 k22)); zero norms give exactly 0
    d = ref.diagonal()
    scale = (d[:, None] * d[None, :]).sqrt()
    assert bool(((got - ref).abs() <= 1e-12 * ref.abs() + 1e-15 * scale).all())
    if act[0] != "erf":
        assert bool((got[4] == 0).all())


@pytest.mark.parametrize("ntk", [False, True], ids=["nngp", "ntk"])
def test_keops_direct_torch_recursion_at_tiny_norms(ntk):
    g = torch.Generator().manual_seed(4)
    x0 = torch.randn(3, generator=g, dtype=torch.float64)
    X = torch.stack([x0, 1e-40 * x0, -1e-40 * x0, torch.zeros(3)])
    layers = [("dense", 1.0, 0.0), ("abrelu", A, B), ("dense", 1.0, 0.0)]
    got = DenseNetworkKernel(layers, 3, ntk=ntk)(X).to_dense()
    ref = _duals_network(X, layers, ntk)
    assert 0 < float(ref[1, 2]) < float(ref[1, 1]) < 1e-79  # tiny entries, resolved
    # the NTK within the shrink's 5e-8 at rho = +-1 (see NTK_RTOL); the NNGP to rounding
    torch.testing.assert_close(got, ref, rtol=NTK_RTOL if ntk else 1e-12, atol=1e-300)


@pytest.mark.parametrize("kind", ["nngp", "ntk"])
def test_keops_network_gradients_match_the_duals_at_hard_points(kind):
    # the GP optimiser differentiates the kernel in the Dense standard deviations
    X = _hard_inputs()
    R = torch.randn(len(X), len(X), generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    kernel = NNGPKernel(ARCH, kind=kind, learn_variances=True)
    params = list(kernel.parameters())
    ref = torch.autograd.grad((kernel(X).to_dense() * R).sum(), params)
    got = torch.autograd.grad(
        (kernel_operator(kernel, X, backend="torch").to_dense() * R).sum(), params
    )
    for a, b in zip(got, ref):
        assert bool(torch.isfinite(a).all())
        torch.testing.assert_close(a, b, rtol=NTK_RTOL if kind == "ntk" else 1e-9, atol=1e-12)


@pytest.mark.slow
@pytest.mark.skipif(not keops_compiles(), reason="pykeops cannot compile here")
@pytest.mark.parametrize("ntk", [False, True], ids=["nngp", "ntk"])
def test_keops_compiled_network_formula_matches_the_duals_at_hard_points(ntk):
    X = _hard_inputs()
    layers = layers_from_architecture(ARCH)
    ref = _duals_network(X, layers, ntk)
    net = DenseNetworkKernel(layers, X.shape[1], ntk=ntk)
    v = torch.eye(len(X), dtype=torch.float64)
    got = kernel_operator(net, X, backend="keops")._matmul(v)
    torch.testing.assert_close(got, ref, rtol=NTK_RTOL if ntk else 1e-10, atol=1e-14)
