"""KeOps formulas and the iterative (CG / Lanczos) GP against independent dense references.

KeOps compiles each distinct formula (per dtype and right-hand-side width) once, which costs
seconds on this CPU, so the formula tests share ONE combined kernel whose components are each
wrapped in a ScaleKernel: the gradient with respect to each output scale isolates that
component's value u^T K_c v, and the gradients with respect to its own raw hyperparameters
isolate its derivative.  All right-hand sides have width 16 (one compiled width).
"""

from __future__ import annotations

import math
import warnings

import gpytorch
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import gpkern.linalg.dispatch as dispatch
import gpkern.linalg.keops as keops
from conftest import keops_compiles
from gpkern.estimators import GPRegressor
from gpkern.linalg.dispatch import (
    DENSE_MAX_N,
    KeOpsFallbackWarning,
    NoKeOpsFormulaWarning,
    choose_backend,
)
from gpkern.linalg.keops import (
    DenseNetworkKernel,
    KernelOperator,
    dense_network,
    kernel_formula,
    kernel_operator,
)
from gpkern.models.iterative import IterativeGP, IterativeSettings

WIDTH = 16


needs_keops = pytest.mark.skipif(not keops_compiles(), reason="pykeops cannot compile here")

RELU_NET = [
    ("dense", 1.3, 0.2),
    ("relu",),
    ("dense", 1.1, 0.3),
    ("leaky_relu", 0.2),
    ("dense", 0.9, 0.1),
]
ERF_NET = [
    ("dense", 1.2, 0.3),
    ("erf",),
    ("dense", 1.0, 0.1),
    ("abrelu", -0.4, 1.3),
    ("dense", 1.0, 0.0),
]


def _components(d: int) -> list[gpytorch.kernels.Kernel]:
    return [
        gpytorch.kernels.RBFKernel(ard_num_dims=d),
        gpytorch.kernels.MaternKernel(nu=0.5, ard_num_dims=d),
        gpytorch.kernels.MaternKernel(nu=1.5),
        gpytorch.kernels.MaternKernel(nu=2.5, ard_num_dims=d),
        gpytorch.kernels.PeriodicKernel(ard_num_dims=d),
        gpytorch.kernels.RQKernel(ard_num_dims=d),
        gpytorch.kernels.SpectralMixtureKernel(num_mixtures=2, ard_num_dims=d),
        gpytorch.kernels.RBFKernel(active_dims=[0, 2])
        * gpytorch.kernels.PeriodicKernel(active_dims=[1]),
        DenseNetworkKernel(RELU_NET, n_features=d),
        DenseNetworkKernel(ERF_NET, n_features=d, ntk=True),
    ]


def _combined(dtype: torch.dtype, d: int = 3) -> gpytorch.kernels.Kernel:
    gen = torch.Generator().manual_seed(1)
    kernel = gpytorch.kernels.AdditiveKernel(
        *[gpytorch.kernels.ScaleKernel(k) for k in _components(d)]
    )
    kernel = kernel.to(dtype)
    with torch.no_grad():
        for _name, p in kernel.named_parameters():
            p.add_(0.4 * torch.randn(p.shape, generator=gen, dtype=dtype))
    return kernel


def _data(dtype, n=120, m=90, d=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x1 = torch.rand(n, d, generator=gen, dtype=dtype) * 2 - 1
    x2 = torch.rand(m, d, generator=gen, dtype=dtype) * 2 - 1
    x2[:10] = x1[:10]  # exact coincidences: r = 0 inside a rectangular block
    u = torch.randn(n, WIDTH, generator=gen, dtype=dtype)
    v = torch.randn(m, WIDTH, generator=gen, dtype=dtype)
    return x1, x2, u, v


def _grads(kernel, value):
    params = [p for _, p in kernel.named_parameters()]
    return torch.autograd.grad(value, params)


@needs_keops
@pytest.mark.parametrize(
    "dtype, rtol, atol",
    [
        (torch.float64, 1e-6, 1e-6),
        # float32 compiles two more large formulas (minutes on a loaded 2-core CPU).
        pytest.param(torch.float32, 2e-3, 2e-3, marks=pytest.mark.slow),
    ],
    ids=["float64", "float32"],
)
def test_every_formula_matches_gpytorch_dense_values_and_gradients(dtype, rtol, atol):
    kernel = _combined(dtype)
    x1, x2, u, v = _data(dtype)
    # Independent reference: GPyTorch's own dense kernels (autograd through its torch code).
    K_ref = kernel(x1, x2).to_dense()
    ref_value = (u * (K_ref @ v)).sum()
    ref_grads = _grads(kernel, ref_value)

    op = kernel_operator(kernel, x1, x2, backend="keops")
    Kv = op._matmul(v)
    value = (u * Kv).sum()
    grads = _grads(kernel, value)

    scale = K_ref.abs().max()
    torch.testing.assert_close(Kv, K_ref @ v, rtol=rtol, atol=atol * float(scale) * 10)
    names = [name for name, _ in kernel.named_parameters()]
    for name, g, g_ref in zip(names, grads, ref_grads):
        # d/d(outputscale_c) isolates component c's value u^T K_c v; the rest its derivatives.
        torch.testing.assert_close(
            g, g_ref, rtol=rtol * 10, atol=atol * 50 * float(g_ref.abs().max() + 1), msg=name
        )
    # The transpose (x2, x1) reuses the same formula.
    vt = u[:, :1].expand(-1, WIDTH).contiguous()
    torch.testing.assert_close(
        op.mT._matmul(vt), K_ref.T @ vt, rtol=rtol, atol=atol * float(scale) * 10
    )


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_torch_operator_diagonal_entries_and_fallback_matmul(dtype):
    kernel = _combined(dtype)
    x1, x2, u, v = _data(dtype, n=60, m=60)
    x2 = x1.clone()
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    K_ref = kernel(x1, x2).to_dense()
    op = kernel_operator(kernel, x1, x2, backend="torch")
    torch.testing.assert_close(op._diagonal(), kernel(x1, diag=True), rtol=tol, atol=tol)
    rows = torch.tensor([3, 7])
    torch.testing.assert_close(op[rows].to_dense(), K_ref[rows], rtol=tol, atol=tol)
    # Tiny blocks force several row blocks and the checkpointed backward pass.
    value = (
        u * keops.torch_matmul(op.formula, x1, x2, op.theta_vec, v, max_block_elements=300)
    ).sum()
    torch.testing.assert_close(value, (u * (K_ref @ v)).sum(), rtol=tol * 10, atol=tol * 10)
    for g, g_ref in zip(_grads(kernel, value), _grads(kernel, (u * (K_ref @ v)).sum())):
        torch.testing.assert_close(g, g_ref, rtol=max(tol * 100, 1e-6), atol=max(tol * 100, 1e-6))


def _np_relu_like(k12, k11, k22, a, b):
    norm = np.sqrt(k11 * k22)
    c = np.clip(k12 / norm, -1, 1)
    th = np.arccos(c)
    pos = norm / (2 * np.pi) * (np.sin(th) + (np.pi - th) * c)
    neg = norm / (2 * np.pi) * (np.sin(th) - th * c)
    val = (a * a + b * b) * pos - 2 * a * b * neg
    dot = ((a * a + b * b) * (np.pi - th) + 2 * a * b * th) / (2 * np.pi)
    return val, dot, 0.5 * (a * a + b * b)


def _np_network(x1, x2, layers, ntk):
    """Independent numpy recursion over full matrices (diagonals taken from the full matrix)."""
    d = x1.shape[1]
    X = np.vstack([x1, x2])
    S = X @ X.T / d
    T = np.zeros_like(S)
    first = True
    for layer in layers:
        if layer[0] == "dense":
            S = layer[1] ** 2 * S + layer[2] ** 2
            T = S.copy() if first else layer[1] ** 2 * T + S
            first = False
            continue
        q = np.diag(S).copy()
        if layer[0] == "erf":
            dd = 1 + 2 * q
            new = 2 / np.pi * np.arcsin(np.clip(2 * S / np.sqrt(np.outer(dd, dd)), -1, 1))
            dot = 4 / np.pi / np.sqrt(np.outer(dd, dd) - 4 * S**2 + 1e-300)
            np.fill_diagonal(dot, 4 / np.pi / np.sqrt(dd * dd - 4 * q * q))
        else:
            if layer[0] == "relu":
                a, b = 0.0, 1.0
            elif layer[0] == "leaky_relu":
                a, b = layer[1], 1.0
            else:
                a, b = layer[1], layer[2]
            new, dot, _ = _np_relu_like(S, q[:, None], q[None, :], a, b)
        T = T * dot
        S = new
    out = T if ntk else S
    return out[: len(x1), len(x1) :]


@pytest.mark.parametrize("layers", [RELU_NET, ERF_NET], ids=["relu-leaky", "erf-abrelu"])
@pytest.mark.parametrize("ntk", [False, True], ids=["nngp", "ntk"])
def test_dense_network_formula_matches_numpy_recursion(layers, ntk):
    rng = np.random.default_rng(2)
    x1, x2 = rng.normal(size=(30, 4)), rng.normal(size=(25, 4))
    x2[:5] = x1[:5]
    got = dense_network(torch.as_tensor(x1)[:, None], torch.as_tensor(x2)[None], layers, 4, ntk=ntk)
    np.testing.assert_allclose(got.numpy(), _np_network(x1, x2, layers, ntk), rtol=1e-6, atol=1e-8)


def test_relu_nngp_matches_monte_carlo_of_a_wide_network():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(4, 3))
    layers = [("dense", 1.4, 0.3), ("relu",), ("dense", 1.0, 0.0)]
    width, draws = 2000, 200
    acc = np.zeros((4, 4))
    for _ in range(draws):
        W = rng.normal(size=(3, width)) * 1.4 / np.sqrt(3)
        h = np.maximum(x @ W + 0.3 * rng.normal(size=width), 0)
        acc += h @ h.T / width
    got = dense_network(torch.as_tensor(x)[:, None], torch.as_tensor(x)[None], layers, 3).numpy()
    np.testing.assert_allclose(got, acc / draws, rtol=0.03, atol=0.01)


@settings(max_examples=20, deadline=None)
@given(
    n=st.integers(2, 25), d=st.integers(1, 4), seed=st.integers(0, 10_000), which=st.integers(0, 9)
)
def test_operator_is_symmetric_psd_and_equals_its_dense_matrix(n, d, seed, which):
    gen = torch.Generator().manual_seed(seed)
    kernel = _components(max(d, 3))[which].double()
    x = torch.randn(n, max(d, 3), generator=gen, dtype=torch.float64)
    op = kernel_operator(kernel, x, backend="torch")
    K = op.to_dense().detach()
    torch.testing.assert_close(K, K.T, rtol=1e-10, atol=1e-10)
    assert torch.linalg.eigvalsh(K).min() > -1e-8 * max(1.0, float(K.diagonal().max()))
    v = torch.randn(n, 3, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(op._matmul(v).detach(), K @ v, rtol=1e-10, atol=1e-10)


def test_unsupported_kernels_are_rejected_clearly():
    with pytest.raises(TypeError, match="no KeOps formula"):
        kernel_formula(gpytorch.kernels.PolynomialKernel(power=2))
    with pytest.raises(TypeError, match="batch"):
        kernel_formula(gpytorch.kernels.RBFKernel(batch_shape=torch.Size([2])))
    with pytest.raises(ValueError, match="Unknown layer"):
        DenseNetworkKernel([("conv", 1.0)], n_features=2)
    with pytest.raises(ValueError, match="2-D"):
        kernel_operator(gpytorch.kernels.RBFKernel(), torch.zeros(2, 3, 1))


def test_dispatch_rule(monkeypatch):
    rbf = gpytorch.kernels.RBFKernel()
    monkeypatch.setattr(dispatch, "keops_available", lambda dtype=torch.float64: (True, ""))
    assert choose_backend(DENSE_MAX_N, rbf) == "dense"
    assert choose_backend(DENSE_MAX_N + 1, rbf) == "keops"
    assert choose_backend(10, rbf, "keops") == "keops"
    assert choose_backend(10**6, rbf, "dense") == "dense"
    # No formula: dense, and above DENSE_MAX_N not silently.
    assert choose_backend(DENSE_MAX_N, gpytorch.kernels.PolynomialKernel(power=2)) == "dense"
    with pytest.warns(NoKeOpsFormulaWarning, match="PolynomialKernel has no KeOps formula"):
        assert choose_backend(10**6, gpytorch.kernels.PolynomialKernel(power=2)) == "dense"
    with pytest.raises(ValueError, match="KeOps formula"):
        choose_backend(10, gpytorch.kernels.PolynomialKernel(power=2), "keops")
    with pytest.raises(ValueError, match="backend must be"):
        choose_backend(10, rbf, "gpu")
    monkeypatch.setattr(
        dispatch, "keops_available", lambda dtype=torch.float64: (False, "no compiler")
    )
    with pytest.warns(KeOpsFallbackWarning, match="no compiler"):
        assert choose_backend(DENSE_MAX_N + 1, rbf) == "torch"


def test_estimator_rejects_bad_backend_arguments():
    X, y = np.random.default_rng(0).normal(size=(10, 2)), np.arange(10.0)
    with pytest.raises(ValueError, match="backend must be"):
        GPRegressor(backend="cuda").fit(X, y)
    with pytest.raises(ValueError, match="backend_options"):
        GPRegressor(backend="keops", backend_options={"cg_iters": 3}).fit(X, y)
    with pytest.raises(ValueError, match="cg_tol"):
        GPRegressor(backend="keops", backend_options={"cg_tol": -1.0}).fit(X, y)
    with pytest.raises(ValueError, match="KeOps formula"):
        GPRegressor(kernel=gpytorch.kernels.PolynomialKernel(power=2), backend="keops").fit(X, y)


def _chunked_torch_only(monkeypatch):
    """pykeops reported unavailable: backend="keops" fits run on the chunked torch twin (no
    compile), after a fallback warning (ignored by the tests that call this)."""
    monkeypatch.setattr(dispatch, "keops_available", lambda dtype=torch.float64: (False, "simulated"))


def _toy(n, seed=0, d=2):
    rng = np.random.default_rng(seed)
    X = rng.uniform(-3, 3, (n, d))
    y = np.sin(2 * X[:, 0]) * np.cos(X[:, 1]) + 0.1 * rng.standard_normal(n)
    return X, y, rng.uniform(-3, 3, (200, d))


def test_compile_failure_warns_and_falls_back_to_chunked_torch(monkeypatch):
    def broken():
        raise keops.KeOpsCompileError("simulated: g++ not found")

    monkeypatch.setattr(keops.runtime, "lazy_tensor_class", broken)
    monkeypatch.setattr(dispatch, "_STATUS", {})
    X, y, Xt = _toy(150)
    kernel = gpytorch.kernels.ScaleKernel(gpytorch.kernels.MaternKernel(nu=2.5))
    with pytest.warns(KeOpsFallbackWarning, match="simulated: g\\+\\+ not found"):
        gp = GPRegressor(kernel=kernel, noise=0.05, optimizer=None, backend="keops").fit(X, y)
    dense = GPRegressor(kernel=kernel, noise=0.05, optimizer=None, backend="dense").fit(X, y)
    m, s = gp.predict(Xt, return_std=True)
    md, sd = dense.predict(Xt, return_std=True)
    np.testing.assert_allclose(m, md, atol=1e-5)
    np.testing.assert_allclose(s, sd, atol=2e-2)
    # The model was built on the chunked torch operator: predicting warns no more.
    assert gp._model.backend == "torch"
    with warnings.catch_warnings():
        warnings.simplefilter("error", KeOpsFallbackWarning)
        gp.predict(Xt)


def test_iterative_posterior_matches_scipy_reference_at_fixed_hyperparameters():
    """Torch operator (no compile): CG mean, exact variance, and the conservative Galerkin variance."""
    from conftest import dense_gp_reference

    X, y, Xt = _toy(400, seed=1)
    kernel = gpytorch.kernels.ScaleKernel(gpytorch.kernels.RBFKernel()).double()
    kernel.base_kernel.lengthscale = 0.8
    noise = 0.01
    Xt_t, X_t = torch.as_tensor(Xt), torch.as_tensor(X)
    with torch.no_grad():
        K, Ks, Kss = (
            kernel(a, b).to_dense().numpy() for a, b in ((X_t, X_t), (Xt_t, X_t), (Xt_t, Xt_t))
        )
    mean_ref, var_ref, lml_ref = dense_gp_reference(K, Ks, Kss, y, noise)
    gp = IterativeGP(kernel, noise=noise, learn_noise=False, backend="torch").double()
    post = gp.posterior(X_t, torch.as_tensor(y)[:, None])
    assert post.L.dtype == torch.float32  # stored narrow, applied in float64 (checked below)
    mean, var = post.predict(Xt_t)
    assert mean.dtype == var.dtype == torch.float64
    np.testing.assert_allclose(mean[:, 0].numpy(), mean_ref, atol=1e-5)
    assert np.all(var.numpy() >= var_ref - 1e-6)  # Galerkin: never below the exact variance
    np.testing.assert_allclose(var.numpy(), var_ref, atol=1e-2)
    _, var_exact = post.predict(Xt_t, exact_variance=True, batch_size=64)
    np.testing.assert_allclose(var_exact.numpy(), var_ref, atol=1e-6)
    # Stochastic Lanczos log marginal likelihood (15 probes, pivoted-Cholesky preconditioner).
    assert abs(post.log_marginal_likelihood - lml_ref) < 0.01 * abs(lml_ref) + 2.0


@pytest.mark.slow
@needs_keops
def test_keops_gp_matches_dense_gp_at_n2000():
    X, y, Xt = _toy(2000, seed=4)
    common = dict(random_state=0, optimizer="lbfgs", max_iter=10)
    dense = GPRegressor(backend="dense", **common).fit(X, y)
    fast = GPRegressor(backend="keops", **common).fit(X, y)
    assert isinstance(fast._model, IterativeGP)
    ls_d = dense.kernel_.base_kernel.lengthscale.detach().numpy()[0]
    ls_k = fast.kernel_.base_kernel.lengthscale.detach().numpy()[0]
    # The exact (dense) marginal likelihood at the KeOps hyperparameters is as good as at the
    # dense optimum: the stochastic log-determinant only blurs flat directions of the surface.
    at_keops = GPRegressor(
        kernel=fast.kernel_, noise=fast.noise_, optimizer=None, backend="dense"
    ).fit(X, y)
    lml_d, lml_at_k = dense.log_marginal_likelihood(), at_keops.log_marginal_likelihood()
    md, sd = dense.predict(Xt, return_std=True)
    mk, sk = fast.predict(Xt, return_std=True)
    report = dict(
        ls_d=ls_d,
        ls_k=ls_k,
        noise=(dense.noise_, fast.noise_),
        lml=(lml_d, lml_at_k),
        mean_err=np.abs(mk - md).max(),
        std_err=np.abs(sk - sd).max(),
    )
    assert abs(lml_at_k - lml_d) < 1e-2 * abs(lml_d) + 1.0, report
    np.testing.assert_allclose(ls_k[0], ls_d[0], rtol=0.1, err_msg=str(report))  # well identified
    np.testing.assert_allclose(ls_k[1], ls_d[1], rtol=0.3, err_msg=str(report))  # flat direction
    np.testing.assert_allclose(fast.noise_, dense.noise_, rtol=0.1, err_msg=str(report))
    assert report["mean_err"] < 0.03 * y.std(), report
    assert report["std_err"] < 0.03 * y.std(), report
    # The estimator's own (stochastic Lanczos) log marginal likelihood is close to the exact one.
    assert abs(fast.log_marginal_likelihood() - lml_at_k) < 0.01 * abs(lml_d) + 5.0, report


@pytest.mark.gpu
def test_keops_on_gpu_matches_dense_on_gpu():
    kernel = _combined(torch.float64).cuda()
    x1, x2, u, v = (t.cuda() for t in _data(torch.float64))
    K_ref = kernel(x1, x2).to_dense()
    op = kernel_operator(kernel, x1, x2, backend="keops")
    torch.testing.assert_close(op._matmul(v), K_ref @ v, rtol=1e-6, atol=1e-6)
    value = (u * op._matmul(v)).sum()
    for g, g_ref in zip(_grads(kernel, value), _grads(kernel, (u * (K_ref @ v)).sum())):
        torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
def test_keops_gp_on_gpu_matches_dense_gp_on_gpu():
    X, y, Xt = _toy(3000, seed=5)
    kernel = gpytorch.kernels.ScaleKernel(gpytorch.kernels.RBFKernel())
    dense = GPRegressor(
        kernel=kernel, noise=0.02, optimizer=None, backend="dense", device="cuda"
    ).fit(X, y)
    fast = GPRegressor(
        kernel=kernel, noise=0.02, optimizer=None, backend="keops", device="cuda"
    ).fit(X, y)
    np.testing.assert_allclose(fast.predict(Xt), dense.predict(Xt), atol=1e-4)


def test_iterative_settings_validate():
    with pytest.raises(ValueError, match="num_probes"):
        IterativeSettings(num_probes=0)
    assert IterativeSettings(seed=0).seed == 0
    assert math.isclose(IterativeSettings().cg_tol, 0.01)
    assert isinstance(
        kernel_operator(gpytorch.kernels.RBFKernel(), torch.zeros(3, 1), backend="torch"),
        KernelOperator,
    )


def _np_spectral(x1, x2, w, rate, mu, envelope, product):
    """Independent numpy reference: w, rate, mu of shape (D or 1, Q) [product] or (A, P) [sum]."""
    tau = x1[:, None, :] - x2[None, :, :]  # (n, m, D)
    if product:
        out = np.ones(tau.shape[:2])
        for d in range(tau.shape[-1]):
            j = d if w.shape[0] > 1 else 0
            t = tau[..., d : d + 1]
            if envelope == "gaussian":
                env = np.exp(-rate[j] * t**2)
            else:
                a = np.sqrt(5) * np.abs(t) * rate[j]
                env = (1 + a + a**2 / 3) * np.exp(-a)
            out *= (w[j] * env * np.cos(2 * np.pi * mu[j] * t)).sum(-1)
        return out
    comps = np.exp(-(tau[..., None, :] ** 2) * rate) * np.cos(2 * np.pi * mu * tau[..., None, :])
    return (w * comps.prod(-1)).sum(-1)


@pytest.mark.parametrize("envelope", ["gaussian", "matern52"])
@pytest.mark.parametrize("dims", [1, 3], ids=["shared", "ard"])
def test_spectral_mixture_product_formula_matches_numpy(envelope, dims):
    rng = np.random.default_rng(5)
    x1, x2 = rng.normal(size=(20, 3)), rng.normal(size=(15, 3))
    w, rate, mu = (
        rng.uniform(0.2, 1, (dims, 4)),
        rng.uniform(0.1, 2, (dims, 4)),
        rng.uniform(0, 2, (dims, 4)),
    )
    T = torch.as_tensor
    got = keops.spectral_mixture_product(
        T(x1)[:, None], T(x2)[None], list(T(w)), list(T(rate)), list(T(mu)), envelope
    )
    np.testing.assert_allclose(
        got.numpy(), _np_spectral(x1, x2, w, rate, mu, envelope, True), rtol=1e-10
    )


def test_spectral_mixture_sum_formula_matches_numpy():
    rng = np.random.default_rng(6)
    x1, x2 = rng.normal(size=(20, 2)), rng.normal(size=(15, 2))
    w, rate, mu = rng.uniform(0, 1, 7), rng.uniform(0.1, 2, (7, 2)), rng.uniform(0, 2, (7, 2))
    T = torch.as_tensor
    got = keops.spectral_mixture_sum(
        T(x1)[:, None], T(x2)[None], T(w), list(T(rate).T), list(T(mu).T)
    )
    np.testing.assert_allclose(
        got.numpy(), _np_spectral(x1, x2, w, rate, mu, "gaussian", False), rtol=1e-10
    )


# gpkern's own kernels: each module registers its formula (gpkern.linalg.keops.registry).
def _peer_kernels():
    out = []
    try:
        from gpkern.kernels.spectral import (
            GaussianSpectralMixtureKernel,
            StudentTSpectralMixtureKernel,
        )

        out += [
            GaussianSpectralMixtureKernel(num_mixtures=3, ard_num_dims=3),
            StudentTSpectralMixtureKernel(2),
        ]
    except ImportError:
        pass
    try:
        from gpkern.kernels.gsmp import GSMPKernel

        out.append(GSMPKernel(n_components=5, ard_num_dims=3))
    except ImportError:
        pass
    try:
        from gpkern.kernels.nngp import Dense, Erf, LeakyRelu, Relu, serial
        from gpkern.kernels.nngp.kernel import NNGPKernel

        arch = serial(
            Dense(1.3, 0.2),
            Relu(),
            Dense(1.1, 0.3),
            LeakyRelu(0.2),
            Erf(1.2, 0.8, 0.1),
            Dense(0.9, 0.1),
        )
        out += [
            NNGPKernel(arch, learn_variances=True),
            NNGPKernel(arch, kind="ntk", learn_variances=True),
        ]
    except ImportError:
        pass
    return out


def test_peer_kernels_formulas_match_their_dense_forward():
    kernels = _peer_kernels()
    if not kernels:
        pytest.skip("gpkern.kernels.spectral / gsmp / nngp are not merged on this branch")
    x, _, u, v = _data(torch.float64, n=40, m=40)
    for kernel in kernels:
        kernel = kernel.double()
        with torch.no_grad():
            for p in kernel.parameters():
                p.add_(
                    0.1
                    * torch.randn(
                        p.shape, generator=torch.Generator().manual_seed(3), dtype=p.dtype
                    )
                )
        K_ref = kernel(x).to_dense()
        op = kernel_operator(kernel, x, backend="torch")
        value = (u * op._matmul(v)).sum()
        ref = (u * (K_ref @ v)).sum()
        torch.testing.assert_close(value, ref, rtol=1e-6, atol=1e-6, msg=type(kernel).__name__)
        for g, g_ref in zip(_grads(kernel, value), _grads(kernel, ref)):
            torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-4, msg=type(kernel).__name__)


@pytest.mark.slow
@needs_keops
def test_tour_section_fits_diamonds_with_keops():
    from gpkern.tour import SECTIONS, _keops_diamonds

    assert _keops_diamonds in SECTIONS
    (row,) = _keops_diamonds(True)
    assert row["metric"] == "RMSE" and 0 < row["value"] < 0.3  # log-price sd is about 1.0


@pytest.mark.filterwarnings("ignore::gpkern.linalg.keops.runtime.KeOpsFallbackWarning")
def test_fixed_hyperparameter_fit_defers_the_log_marginal_likelihood(monkeypatch):
    """optimizer=None: no stochastic Lanczos work in fit; the value appears on first access."""
    X, y, Xt = _toy(150, seed=5)
    calls = []
    original = IterativeGP.log_marginal_likelihood

    def counting(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(IterativeGP, "log_marginal_likelihood", counting)
    _chunked_torch_only(monkeypatch)
    kernel = gpytorch.kernels.ScaleKernel(gpytorch.kernels.RBFKernel()).double()
    gp = GPRegressor(kernel=kernel, noise=0.05, optimizer=None, backend="keops").fit(X, y)
    assert isinstance(gp._model, IterativeGP) and calls == []
    mean = gp.predict(Xt)  # predictions do not need it either
    assert calls == []
    lml = gp.log_marginal_likelihood()
    assert len(calls) == 1 and gp.log_marginal_likelihood_value_ == lml
    assert gp.log_marginal_likelihood() == lml and len(calls) == 1  # computed once
    # Independent reference: the exact (dense) log marginal likelihood at the same hyperparameters.
    dense = GPRegressor(kernel=kernel, noise=0.05, optimizer=None, backend="dense").fit(X, y)
    assert abs(lml - dense.log_marginal_likelihood()) < 0.02 * abs(dense.log_marginal_likelihood()) + 2.0
    np.testing.assert_allclose(mean, dense.predict(Xt), atol=1e-3)
    # Survives pickling while still pending; an unfitted estimator has no value.
    import pickle

    again = pickle.loads(pickle.dumps(GPRegressor(kernel=kernel, noise=0.05, optimizer=None, backend="keops").fit(X, y)))
    assert abs(again.log_marginal_likelihood() - lml) < 1e-8 * abs(lml)
    assert not hasattr(GPRegressor(), "log_marginal_likelihood_value_")


@pytest.mark.parametrize("layers", [RELU_NET, ERF_NET], ids=["relu-leaky", "erf-abrelu"])
@pytest.mark.parametrize("ntk", [False, True], ids=["nngp", "ntk"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_per_point_network_formula_matches_the_plain_recursion(layers, ntk, dtype):
    """The operator's formula (per-point variances, no clamp, factorised layers) against the
    pair-by-pair recursion, including exact and near duplicates (cos theta -> 1)."""
    gen = torch.Generator().manual_seed(7)
    x1 = torch.randn(40, 4, generator=gen, dtype=torch.float64)
    x2 = torch.randn(30, 4, generator=gen, dtype=torch.float64)
    x2[:5] = x1[:5]
    x2[5:10] = x1[5:10] * (1 + 1e-7)
    x2[10:12] = -x1[10:12]  # cos theta = -1 at the input
    x1, x2 = x1.to(dtype), x2.to(dtype)
    ref = dense_network(
        x1.double()[:, None], x2.double()[None], layers, 4, ntk=ntk
    )  # float64 reference
    kernel = DenseNetworkKernel(layers, n_features=4, ntk=ntk).to(dtype)
    got = kernel_operator(kernel, x1, x2, backend="torch").to_dense().double()
    assert torch.isfinite(got).all()
    scale = float(ref.abs().max())
    if dtype == torch.float64:
        # NNGP: the shrinkage of cos theta moves values by < 1e-12 of the scale; the NTK's
        # E[phi' phi'] has an arccos' singularity at cos theta = 1 (as with the old clamp).
        tol = 1e-6 if ntk else 1e-11
    else:
        tol = 2e-3
    torch.testing.assert_close(got, ref, rtol=0, atol=tol * scale)
    # The diagonal (paired operands) as well.
    diag = kernel_operator(kernel, x1, backend="torch")._diagonal().double()
    ref_diag = dense_network(x1.double(), x1.double(), layers, 4, ntk=ntk)
    torch.testing.assert_close(diag, ref_diag, rtol=0, atol=tol * scale)


def test_network_point_terms_are_the_layer_variances():
    """Columns: sqrt(S11), sqrt(1-eps)/sqrt(S11) per (ab)ReLU; 1/sqrt(D), D per erf."""
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    layers = [("dense", 1.3, 0.2), ("relu",), ("dense", 1.1, 0.3), ("erf", 1.0, 0.5, 0.0)]
    terms = keops.network_point_terms(x, layers)
    s11 = (x * x).sum(-1) / 3 * 1.69 + 0.04  # before the ReLU
    torch.testing.assert_close(terms[:, 0], s11.sqrt())
    torch.testing.assert_close(terms[:, 1], math.sqrt(1 - 1e-12) / s11.sqrt())
    s11 = (0.5 * s11) * 1.21 + 0.09  # ReLU halves the variance; then the dense layer
    D = 1 + 2 * 0.25 * s11
    torch.testing.assert_close(terms[:, 2], D.rsqrt())
    torch.testing.assert_close(terms[:, 3], D)
    assert keops.n_point_terms(layers) == terms.shape[1] == 4


@pytest.mark.filterwarnings("ignore::gpkern.linalg.keops.runtime.KeOpsFallbackWarning")
def test_nngp_recipe_subset_hyperparameters_then_keops_conditioning(monkeypatch):
    """The documented CPU recipe for large n (docs/user_guide/scaling.rst): learn the NNGP's
    scale and noise on a subset with the dense backend, refit with ``optimizer=None`` and
    ``backend="keops"`` on all points; it equals the dense GP with the same hyperparameters."""
    _chunked_torch_only(monkeypatch)
    rng = np.random.default_rng(8)
    X, Xt = rng.uniform(-2, 2, (200, 3)), rng.uniform(-2, 2, (50, 3))
    y = X @ [0.8, -0.5, 0.3] + 0.5 * np.abs(X[:, 0]) + 0.1 * rng.standard_normal(200)
    layers = [("dense", 1.5, 0.5), ("relu",), ("dense", 1.5, 0.5), ("relu",), ("dense", 1.5, 0.5)]
    kernel = gpytorch.kernels.ScaleKernel(DenseNetworkKernel(layers, n_features=3))
    subset = rng.choice(len(X), 80, replace=False)
    small = GPRegressor(kernel=kernel, backend="dense", max_iter=20, random_state=0)
    small.fit(X[subset], y[subset])
    assert small.noise_ < 0.1  # learned: the noise is about 1% of the targets' variance
    # variance_rank = n: the Galerkin variance subspace is complete, so variances are exact.
    opts = {"eval_cg_tol": 1e-8, "variance_rank": 200}
    big = GPRegressor(
        kernel=small.kernel_, noise=small.noise_, optimizer=None, backend="keops", backend_options=opts
    ).fit(X, y)
    assert isinstance(big._model, IterativeGP)
    ref = GPRegressor(
        kernel=small.kernel_, noise=small.noise_, optimizer=None, backend="dense"
    ).fit(X, y)
    mean, std = big.predict(Xt, return_std=True)
    mean_ref, std_ref = ref.predict(Xt, return_std=True)
    np.testing.assert_allclose(mean, mean_ref, atol=1e-5)
    np.testing.assert_allclose(std, std_ref, atol=1e-4)
