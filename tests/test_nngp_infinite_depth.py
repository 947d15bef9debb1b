"""Deep normalised kernels on the sphere (Radhakrishnan et al.) and the KernelClassifier."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import scipy.integrate as si
import scipy.special as ss
import torch
from sklearn.neighbors import KNeighborsClassifier
from sklearn.utils.estimator_checks import parametrize_with_checks

from gpkern.estimators import KernelClassifier
from gpkern.kernels.nngp import ABRelu, Dense, Erf, serial
from gpkern.kernels.nngp.infinite_depth import (
    InfiniteDepthKernel,
    depth_kernel,
    dual_activation,
    regime,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # many tiny element-wise ops: one thread is much faster on a shared, oversubscribed CPU
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _gauss_corr(f, rho):
    """E[f(u) f(v)] for unit-variance (u, v) with correlation rho, by scipy quadrature."""
    s = math.sqrt(1 - rho**2)

    def inner(z1):
        g = lambda z2: f(rho * z1 + s * z2) * math.exp(-z2 * z2 / 2)  # noqa: E731
        kink = min(max(-rho * z1 / s, -9.9), 9.9)
        return si.quad(g, -10, 10, points=[kink], epsabs=1e-13, limit=200)[0] / math.sqrt(2 * math.pi)

    h = lambda z1: f(z1) * inner(z1) * math.exp(-z1 * z1 / 2) / math.sqrt(2 * math.pi)  # noqa: E731
    return si.quad(h, -10, 10, points=[0.0], epsabs=1e-12, limit=200)[0]


@pytest.mark.parametrize(
    "name, f",
    [
        ("relu", lambda x: math.sqrt(2) * max(x, 0.0)),
        ("erf", lambda x: ss.erf(x) / math.sqrt(2 / math.pi * math.asin(2 / 3))),
        ("sine", lambda x: math.sin(x) / math.sqrt(math.exp(-1) * math.sinh(1))),
    ],
)
@pytest.mark.parametrize("rho", [-0.6, 0.2, 0.85])
def test_duals_are_normalised_gaussian_expectations(name, f, rho):
    # sine_a with a = 1 is E[sin u sin v] / E[sin^2 u] for unit variances: sinh(rho)/sinh(1)
    xi = dual_activation(name, a=1.0)
    assert xi(torch.tensor(rho, dtype=torch.float64)).item() == pytest.approx(_gauss_corr(f, rho), abs=1e-8)
    assert xi(torch.tensor(1.0, dtype=torch.float64)).item() == pytest.approx(1.0, abs=1e-12)
    r = torch.tensor(rho, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(xi(r), r)
    assert xi.derivative(r.detach()).item() == pytest.approx(g.item(), rel=1e-10)


def test_optimal_duals_and_regimes():
    for d in (2, 3, 5, 9):
        xi = dual_activation(f"optimal{d}")
        assert xi(torch.tensor(1.0)).item() == pytest.approx(1.0)
        rule, alpha = regime(xi)
        assert rule == "singular kernel" and alpha == pytest.approx(d - 1)
    assert regime(dual_activation("relu"))[0] == "majority vote"
    assert regime(dual_activation("poly", coeffs={2: 1.0}))[0] == "1-NN"
    with pytest.raises(ValueError, match="sum to 1"):
        dual_activation("poly", coeffs={1: 0.5})
    with pytest.raises(ValueError, match="unknown"):
        dual_activation("tanh")
    with pytest.raises(ValueError, match="depth"):
        InfiniteDepthKernel("relu", depth=0)


@pytest.mark.parametrize("kind", ["nngp", "ntk"])
def test_depth_recursion_equals_serial_network(kind):
    # unnormalised recursion == Dense(1) -> normalised activation -> ... -> Dense(1) on the
    # sphere (inputs scaled by sqrt(d) so that x.x'/d is the cosine)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(6, 4))
    X = X / np.linalg.norm(X, axis=1, keepdims=True)
    rho = torch.from_numpy(X @ X.T)
    a_erf = 1 / math.sqrt(2 / math.pi * math.asin(2 / 3))
    for name, act in (("relu", ABRelu(0.0, math.sqrt(2))), ("erf", Erf(a=a_erf))):
        L = 4
        layers = [Dense(1.0)]
        for _ in range(L):
            layers += [act, Dense(1.0)]
        ref = serial(*layers).kernel(torch.from_numpy(X * 2.0), kind=kind)
        got = depth_kernel(rho, dual_activation(name), L, kind=kind, normalize=False)
        np.testing.assert_allclose(got.numpy(), ref.numpy(), rtol=1e-7, atol=1e-10)


def test_singular_exponent_of_deep_kernel():
    # K(rho) ~ (1 - rho)^(-alpha / 2) near rho = 1, alpha = 2 ln(1/xi'(0)) / ln xi'(1)
    eps = torch.logspace(-8, -4, 5, dtype=torch.float64)
    # (erf: xi'(1) = 1.23 is close to 1, so the asymptotics need more depth)
    for name, depth in (("optimal2", 40), ("optimal3", 40), ("erf", 200)):
        xi = dual_activation(name)
        for kind in ("nngp", "ntk"):
            K = depth_kernel(1 - eps, xi, depth, kind=kind).numpy()
            slope = np.polyfit(np.log(eps.numpy()), np.log(K), 1)[0]
            assert slope == pytest.approx(-regime(xi)[1] / 2, abs=0.03)


def _dirichlet_task(n, rng):
    """Two classes on the unit circle: Dir(1, 2) w.p. 0.4, Dir(2, 1) w.p. 0.6; Bayes error 0.24."""
    y = (rng.uniform(size=n) < 0.4).astype(int)
    s = np.where(y[:, None] == 1, rng.dirichlet([1, 2], n), rng.dirichlet([2, 1], n))
    return s / np.linalg.norm(s, axis=1, keepdims=True), y


def test_bayes_rate_of_the_task():
    # Beta(1,2) vs Beta(2,1) with priors .4/.6: min(.8(1-t), 1.2 t) integrates to 0.24
    val = si.quad(lambda t: min(0.8 * (1 - t), 1.2 * t), 0, 1, points=[0.4])[0]
    assert val == pytest.approx(0.24, abs=1e-12)


def test_three_regimes_on_dirichlet_task():
    rng = np.random.default_rng(0)
    X, y = _dirichlet_task(100, rng)
    Xt, yt = _dirichlet_task(400, rng)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # xi'(0) = 0: the 1-nearest-neighbour rule
        nn = KNeighborsClassifier(1).fit(X, y).predict(Xt)
        p = KernelClassifier(InfiniteDepthKernel(dual_activation("poly", coeffs={2: 1.0}), depth=18)).fit(X, y).predict(Xt)
        assert (p == nn).mean() > 0.97
        # optimal dual: the singular kernel vote with alpha = d - 1 = 1, closer to Bayes than 1-NN
        p = KernelClassifier(InfiniteDepthKernel("optimal2", depth=20)).fit(X, y).predict(Xt)
        D = np.linalg.norm(Xt[:, None] - X[None], axis=-1)
        vote = (((2 * y - 1)[None] / D).sum(1) > 0).astype(int)
        assert (p == vote).mean() > 0.95
        assert (p != yt).mean() < (nn != yt).mean()
        assert (p != yt).mean() < 0.24 + 0.1
        # ReLU: tends to the majority vote as the depth grows
        major = np.bincount(y[:60]).argmax()
        agree = [
            (KernelClassifier(InfiniteDepthKernel("relu", depth=L)).fit(X[:60], y[:60]).predict(Xt[:150]) == major).mean()
            for L in (10, 2000)
        ]
        assert agree[1] > agree[0] + 0.05


def test_classifier_matches_explicit_solve():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(30, 3))
    y = np.array(["a", "b", "c"])[rng.integers(0, 3, 30)]
    kern = InfiniteDepthKernel("erf", depth=3)
    clf = KernelClassifier(kern, ridge=1e-3).fit(X, y)
    Xs = rng.normal(size=(7, 3))
    K = kern(torch.from_numpy(X)).to_dense().numpy()
    Ks = kern(torch.from_numpy(Xs), torch.from_numpy(X)).to_dense().numpy()
    Y = (y[:, None] == clf.classes_[None]).astype(float)
    F = Ks @ np.linalg.solve(K + 1e-3 * np.eye(30), Y)
    np.testing.assert_allclose(clf.decision_function(Xs), F, rtol=1e-8, atol=1e-10)
    assert (clf.predict(Xs) == clf.classes_[F.argmax(1)]).all()
    with pytest.raises(ValueError, match="ridge"):
        KernelClassifier(ridge=-1.0).fit(X, y)


@parametrize_with_checks([KernelClassifier()])
def test_sklearn_compatible(estimator, check):
    check(estimator)
