"""Deep kernel machines: Gram maps, objectives, NNGP limit, sparse == full, estimators."""

from __future__ import annotations

import math
import warnings

import gpytorch
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.utils.estimator_checks import parametrize_with_checks

from conftest import dense_gp_reference
from gpkern.estimators import DKMClassifier, DKMRegressor
from gpkern.estimators.dkm import AUTO_WIDTHS_RATIOS, MAX_FULL_SAMPLES
from gpkern.models.dkm import (
    DKM,
    NNGPGramKernel,
    SparseDKM,
    gaussian_kl,
    relu_gram_map,
    se_gram_map,
)
from gpkern.models.training import minimize


# ------------------------------------------------------------------------------------------------
# Independent numpy references
# ------------------------------------------------------------------------------------------------
def np_relu(S: np.ndarray) -> np.ndarray:
    """neural-tangents' ReLU layer (a = 0, b = 1) on a full covariance, times 2."""
    d = np.sqrt(np.diag(S))
    c = np.clip(S / np.outer(d, d), -1, 1)
    th = np.arccos(c)
    return np.outer(d, d) * (np.sin(th) + (np.pi - th) * c) / np.pi


def np_se(S: np.ndarray, ls: float = 1.0) -> np.ndarray:
    g = np.diag(S)
    return np.exp(-(g[:, None] + g[None, :] - 2 * S) / (2 * ls**2))


def np_nngp(X: np.ndarray, kind: str, n_layers: int, w, b, lss=(), scale=1.0) -> np.ndarray:
    S = (X * np.asarray(w)) @ X.T / X.shape[1] + b
    for layer in range(1, n_layers + 2):
        S = np_relu(S) if kind == "relu" else np_se(S, 1.0 if layer == 1 else lss[layer - 2])
    return scale * S


# ------------------------------------------------------------------------------------------------
# Gram maps and the NNGP kernel
# ------------------------------------------------------------------------------------------------
def test_relu_map_matches_neural_tangents_values():
    # PAPERS.md: Dense(1.5, .1) -> ReLU -> Dense(1.5, .1) -> ReLU -> Dense(1, 0), neural-tangents 0.6.5.
    X = torch.tensor([[1.0, 0, 0], [0.6, 0.8, 0], [-1, 2, 0.5]])
    S = 2.25 * X @ X.T / 3 + 0.01
    for _ in range(2):
        S = 0.5 * relu_gram_map(S, S.diagonal(), S.diagonal())  # NT's ReLU is half our map
        S = 2.25 * S + 0.01 if _ == 0 else S
    expected = torch.tensor(
        [
            [0.4325, 0.3195738818, 0.3831629765],
            [0.3195738818, 0.4325, 0.6441747102],
            [0.3831629765, 0.6441747102, 2.22546875],
        ]
    )
    torch.testing.assert_close(S, expected, atol=1e-9, rtol=1e-8)


def test_relu_map_is_twice_the_nngp_layers_relu():
    # The issue-5 NNGP layer library, once merged: the DKM map must be 2 x its ReLU layer.
    layers = pytest.importorskip("gpkern.kernels.nngp.layers")
    rng = np.random.default_rng(9)
    A = rng.standard_normal((6, 4))
    G = torch.tensor(A @ A.T / 4)
    g = G.diagonal()
    ref = 2.0 * layers.Relu().nngp(g[:, None], G, g[None, :])
    torch.testing.assert_close(relu_gram_map(G, g, g), ref, rtol=1e-9, atol=1e-9)


def test_se_map_is_rbf_of_input_distance():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((7, 3))
    G = torch.tensor(X @ X.T)
    K = se_gram_map(G, G.diagonal(), G.diagonal(), 1.3).numpy()
    D2 = ((X[:, None] - X[None]) ** 2).sum(-1)
    np.testing.assert_allclose(K, np.exp(-D2 / (2 * 1.3**2)), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ["relu", "se"])
def test_nngp_kernel_matches_numpy_recursion(kind):
    rng = np.random.default_rng(2)
    X = rng.standard_normal((9, 3))
    k = NNGPGramKernel(kind, n_layers=3, ard_num_dims=3)
    w = np.array([0.5, 2.0, 1.5])
    k.input_weight = torch.tensor(w).view(1, 3)
    k.input_bias = 0.2
    lss = (0.7, 1.4, 0.9)
    if kind == "se":
        k.layer_lengthscale = torch.tensor(lss)
    Xt = torch.tensor(X)
    K = k(Xt).to_dense().detach().numpy()
    np.testing.assert_allclose(K, np_nngp(X, kind, 3, w, 0.2, lss), rtol=1e-10, atol=1e-10)
    diag = k(Xt, diag=True).detach().numpy()
    np.testing.assert_allclose(diag, np.diag(K), rtol=1e-10)


@settings(max_examples=25, deadline=None)
@given(
    st.integers(2, 8),
    st.sampled_from(["relu", "se"]),
    st.integers(0, 3),
    st.integers(0, 10_000),
)
def test_nngp_kernel_symmetric_psd(n, kind, n_layers, seed):
    X = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed)) * 2
    K = NNGPGramKernel(kind, n_layers=n_layers)(X).to_dense().detach()
    torch.testing.assert_close(K, K.T)
    assert torch.linalg.eigvalsh(K).min() > -1e-9 * K.diagonal().max()


def test_nngp_kernel_batch_and_active_dims():
    X = torch.randn(2, 5, 4)
    k = NNGPGramKernel("relu", 2, batch_shape=torch.Size([2]))
    K = k(X).to_dense()
    assert K.shape == (2, 5, 5)
    torch.testing.assert_close(K[1], NNGPGramKernel("relu", 2)(X[1]).to_dense())
    ka = NNGPGramKernel("se", 1, active_dims=torch.tensor([0, 2]))
    torch.testing.assert_close(
        ka(X[0]).to_dense(), NNGPGramKernel("se", 1)(X[0][:, [0, 2]]).to_dense()
    )


# ------------------------------------------------------------------------------------------------
# Objectives
# ------------------------------------------------------------------------------------------------
def test_kl_matches_torch_distributions():
    rng = np.random.default_rng(3)
    A = rng.standard_normal((6, 6))
    B = rng.standard_normal((6, 8))
    G = torch.tensor(A @ A.T / 6 + 0.1 * np.eye(6))
    K = torch.tensor(B @ B.T / 8 + 0.2 * np.eye(6))
    ref = torch.distributions.kl_divergence(
        torch.distributions.MultivariateNormal(torch.zeros(6), G),
        torch.distributions.MultivariateNormal(torch.zeros(6), K),
    )
    L_K = torch.linalg.cholesky(K)
    torch.testing.assert_close(gaussian_kl(torch.linalg.cholesky(G), L_K), ref)
    # a general (non-triangular) factor: G = V V^T with V = chol(G) Q, Q orthogonal
    Q = torch.linalg.qr(torch.tensor(rng.standard_normal((6, 6))))[0]
    torch.testing.assert_close(gaussian_kl(torch.linalg.cholesky(G) @ Q, L_K), ref)


def _data(n=14, d=2, t=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g)
    Y = torch.sin(2 * X[:, :1]) * torch.ones(1, t) + 0.1 * torch.randn(n, t, generator=g)
    return X, Y


def _perturb(model, scale=0.1, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for V in model.factors:
            V.add_(scale * torch.randn(V.shape, generator=g).tril() * V.diagonal().mean())


@pytest.mark.parametrize("whiten", [True, False], ids=["whitened", "unwhitened"])
@pytest.mark.parametrize("kind", ["relu", "se"])
def test_full_dkm_objective_matches_dense_formula(kind, whiten):
    X, Y = _data()
    model = DKM(X, kind, n_layers=2, widths_ratio=[0.7, 2.0], noise=0.05, whiten=whiten)
    _perturb(model)
    with torch.no_grad():
        G1, G2 = [G.numpy() for G in model.grams()]
        obj = float(model.objective(X, Y))
        lss = model.gram_kernel.layer_lengthscale.numpy() if kind == "se" else (1, 1)
    w = model.gram_kernel.input_weight.detach().numpy().ravel()
    b = float(model.gram_kernel.input_bias)
    G0 = (X.numpy() * w) @ X.numpy().T / 2 + b
    kmap = (
        (lambda S, layer: np_relu(S))
        if kind == "relu"
        else (lambda S, layer: np_se(S, 1.0 if layer == 1 else lss[layer - 2]))
    )

    def kl(G, K):
        P = G.shape[0]
        return 0.5 * (
            np.trace(np.linalg.solve(K, G)) - np.linalg.slogdet(G)[1] + np.linalg.slogdet(K)[1] - P
        )

    K3 = float(model.outputscale) * kmap(G2, 3)
    _, _, lml = dense_gp_reference(K3, K3[:1], K3[:1, :1], Y.numpy()[:, 0], 0.05)
    ref = lml - 0.7 * kl(G1, kmap(G0, 1)) - 2.0 * kl(G2, kmap(G1, 2))
    assert obj == pytest.approx(ref, rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("whiten", [False, True], ids=["unwhitened", "whitened"])
@pytest.mark.parametrize("kind", ["relu", "se"])
def test_sparse_objective_equals_full_when_inducing_are_training_points(kind, whiten):
    X, Y = _data(n=12, t=2)
    full = DKM(X, kind, n_layers=2, widths_ratio=1.5, noise=0.07, whiten=False)
    _perturb(full)
    sparse = SparseDKM(
        X, n_outputs=2, kernel=kind, n_layers=2, widths_ratio=1.5, noise=0.07, whiten=whiten
    )
    sparse.load_state_dict(full.state_dict(), strict=False)
    with torch.no_grad():
        _, K = full.kl_terms(X)
        C = K + 0.07 * torch.eye(12)
        # The optimal q(f) is the exact posterior; then the ELBO equals the marginal likelihood.
        mu = K @ torch.linalg.solve(C, Y)
        A = K - K @ torch.linalg.solve(C, K)
        sparse.set_output_posterior(mu, A + 1e-13 * torch.eye(12))
        f_obj = float(full.objective(X, Y))
        s_obj = float(sparse.elbo(X, Y, n_total=12))
        assert s_obj == pytest.approx(f_obj, rel=1e-7, abs=1e-7)
        # a suboptimal q(f) gives a strictly lower bound
        sparse.q_mean.add_(0.1)
        assert float(sparse.elbo(X, Y, n_total=12)) < f_obj - 1e-4
        # predictions agree too
        fm, fv = full.predict(X, Y, X[:5] + 0.3)
        sparse.q_mean.sub_(0.1)
        sm, sv = sparse.predict(X[:5] + 0.3)
    torch.testing.assert_close(sm, fm, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(sv, fv[:, None].expand(-1, 2), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kind", ["relu", "se"])
def test_whitened_and_unwhitened_agree_at_the_same_grams(kind):
    X, Y = _data(n=12, t=2)
    white = DKM(X, kind, n_layers=2, widths_ratio=[0.7, 2.0], noise=0.07)
    assert white.whiten
    # at initialisation both are at the NNGP Grams
    plain = DKM(X, kind, n_layers=2, widths_ratio=[0.7, 2.0], noise=0.07, whiten=False)
    with torch.no_grad():
        for Gw, Gp in zip(white.grams(), plain.grams()):
            torch.testing.assert_close(Gw, Gp, rtol=1e-5, atol=1e-6)
    _perturb(white, 0.2)
    with torch.no_grad():
        white.gram_kernel.input_weight = torch.tensor([[0.8, 1.3]])
        grams = white.grams()
        plain.load_state_dict(
            {k: v for k, v in white.state_dict().items() if not k.startswith("factors")},
            strict=False,
        )
        for V, G in zip(plain.factors, grams):
            V.copy_(math.sqrt(12) * torch.linalg.cholesky(G))
        for Gw, Gp in zip(grams, plain.grams()):
            torch.testing.assert_close(Gw, Gp)
        assert float(white.objective(X, Y)) == pytest.approx(
            float(plain.objective(X, Y)), rel=1e-9, abs=1e-9
        )
        torch.testing.assert_close(white.kl_terms(X)[0], plain.kl_terms(X)[0])
        Xs = X[:5] + 0.3
        for a, b in zip(white.predict(X, Y, Xs), plain.predict(X, Y, Xs)):
            torch.testing.assert_close(a, b)
    # the whitened Grams move with the prior: grams(X) uses the given inputs
    with torch.no_grad():
        torch.testing.assert_close(white.grams(X)[1], grams[1])


def test_relu_map_closed_form_gradient_matches_autograd_through_the_angle():
    """The closed-form backward of relu_gram_map against autograd through arccos_kernel (the
    guarded angle), on a cross Gram with distinct diagonals and a batch dimension."""
    from gpkern.kernels.nngp.duals import arccos_kernel

    g = torch.Generator().manual_seed(4)
    A, B = torch.randn(3, 5, 4, generator=g), torch.randn(3, 6, 4, generator=g)
    G = (A @ B.mT / 4 + 0.2).requires_grad_()
    g1 = ((A * A).sum(-1) / 4 + 0.2).requires_grad_()
    g2 = ((B * B).sum(-1) / 4 + 0.2).requires_grad_()
    W = torch.randn(3, 5, 6, generator=g)
    out = relu_gram_map(G, g1, g2)
    ref = arccos_kernel(g1.unsqueeze(-1), G, g2.unsqueeze(-2), order=1)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    grads = torch.autograd.grad((out * W).sum(), (G, g1, g2))
    refs = torch.autograd.grad((ref * W).sum(), (G, g1, g2))
    for a, b in zip(grads, refs):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # a Gram with its own diagonal (the points paired with themselves are snapped: theta = 0)
    X = torch.randn(6, 3, generator=g)
    S = (X @ X.T / 3 + 0.1).requires_grad_()
    assert torch.autograd.gradcheck(lambda M: relu_gram_map(M, M.diagonal(), M.diagonal()), (S,))


def test_tied_dkm_objective_is_the_factorised_layer_pass():
    """Stage 1 (tied) evaluates the NNGP kernel directly; the same objective and gradients as
    the layer pass that factorises every K_l and rebuilds G_l = L_l L_l^T."""
    X, Y = _data(n=12, t=2)
    for kind in ("relu", "se"):
        model = DKM(X, kind, n_layers=2, widths_ratio=3.0, noise=0.07)
        with torch.no_grad():
            model.gram_kernel.input_weight = torch.tensor([[0.7, 1.9]])
        model.tied = True
        fast = model.objective(X, Y)
        params = model.hyperparameters()
        g_fast = torch.autograd.grad(fast, params)
        layers = model._layers(X)
        slow = gpytorch.distributions.MultivariateNormal(
            torch.zeros(12), layers.K_out + model.noise * torch.eye(12)
        ).log_prob(Y.T).sum()
        g_slow = torch.autograd.grad(slow, params)
        assert float(fast.detach()) == pytest.approx(float(slow.detach()), rel=1e-10)
        for a, b in zip(g_fast, g_slow):
            torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("tied", [False, True], ids=["learned", "tied"])
@pytest.mark.parametrize("whiten", [False, True], ids=["unwhitened", "whitened"])
def test_sparse_marginals_at_the_inducing_points_skip_the_conditional(whiten, tied):
    """A batch equal to the inducing inputs takes the solve-free path; it must give what the
    general conditional gives for the same points inside a larger batch."""
    X, Y = _data(n=10, t=2)
    model = SparseDKM(X, n_outputs=2, n_layers=2, widths_ratio=2.0, whiten=whiten)
    _perturb(model)
    with torch.no_grad():
        model.q_mean.normal_(generator=torch.Generator().manual_seed(1))
        model.tied = tied
        mean, var, _, kls = model._marginals(X.clone())
        Xbig = torch.cat([X, torch.randn(3, 2, generator=torch.Generator().manual_seed(2))])
        mean_ref, var_ref, _, kls_ref = model._marginals(Xbig)
        factors = [V.tril() for V in model.factors]
        Kii, Kti, ktt, _ = model.propagate(model.inducing, factors, X.clone())
        Kii_r, Kti_r, ktt_r, _ = model.propagate(model.inducing, factors, Xbig)
    assert Kti is Kii
    torch.testing.assert_close(Kti_r[:10], Kii_r, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(ktt, ktt_r[:10], rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(mean, mean_ref[:10], rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(var, var_ref[:10], rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(kls, kls_ref)
    if tied:  # the NNGP kernel blocks, against the numpy recursion
        w = model.gram_kernel.input_weight.detach().numpy().ravel()
        b = float(model.gram_kernel.input_bias.detach())
        K = np_nngp(X.numpy(), "relu", 2, w, b, scale=float(model.outputscale.detach()))
        np.testing.assert_allclose(Kii.numpy(), K, rtol=1e-10, atol=1e-12)
        assert float(kls.abs().sum()) == 0.0


def test_propagate_full_cov_diagonal_matches_diag():
    X, Y = _data(n=10)
    model = DKM(X, "relu", n_layers=3)
    _perturb(model)
    Xs = torch.randn(6, 2)
    with torch.no_grad():
        m1, v1 = model.predict(X, Y, Xs)
        m2, C = model.predict(X, Y, Xs, full_cov=True)
    torch.testing.assert_close(m1, m2)
    torch.testing.assert_close(C.diagonal(), v1, rtol=1e-8, atol=1e-10)
    assert torch.linalg.eigvalsh(C).min() > -1e-8


@pytest.mark.parametrize("whiten", [True, False], ids=["whitened", "unwhitened"])
@pytest.mark.parametrize("kind", ["relu", "se"])
def test_full_objective_gradients_match_finite_differences(kind, whiten):
    X, Y = _data(n=6)
    model = DKM(X, kind, n_layers=2, widths_ratio=1.0, noise=0.1, whiten=whiten)
    _perturb(model)
    params = [p for p in model.parameters()]
    values = [p.detach().clone().requires_grad_() for p in params]

    def f(*vals):
        for p, v in zip(params, vals):
            p.data = v
        return model.objective(X, Y)

    # gradcheck needs a functional form: swap parameters for the probed tensors.
    def functional(*vals):
        state = {n: v for (n, _), v in zip(model.named_parameters(), vals)}
        return torch.func.functional_call(model, state, (X, Y), strict=False, tie_weights=False)

    model.forward = lambda X, Y: model.objective(X, Y)
    assert torch.autograd.gradcheck(functional, values, eps=1e-6, atol=1e-5, rtol=1e-4)
    del f


def test_sparse_objective_gradients_match_finite_differences():
    X, Y = _data(n=10)
    model = SparseDKM(X[:4], n_outputs=1, kernel="se", n_layers=2, widths_ratio=2.0)
    _perturb(model)
    values = [p.detach().clone().requires_grad_() for p in model.parameters()]
    names = [n for n, _ in model.named_parameters()]
    model.forward = lambda X, Y: model.elbo(X, Y, n_total=30)

    def functional(*vals):
        return torch.func.functional_call(model, dict(zip(names, vals)), (X, Y), strict=False)

    assert torch.autograd.gradcheck(functional, values, eps=1e-6, atol=1e-5, rtol=1e-4)


# ------------------------------------------------------------------------------------------------
# nu -> infinity: the DKM is the NNGP
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("whiten", [True, False], ids=["whitened", "unwhitened"])
@pytest.mark.parametrize("kind", ["relu", "se"])
def test_large_nu_collapses_to_nngp(kind, whiten):
    X, Y = _data(n=12)
    Xs = torch.linspace(-2.5, 2.5, 7)[:, None] * torch.tensor([[1.0, -0.5]])

    iters = 300 if kind == "relu" else 600  # the SE Grams are worse conditioned

    def fitted(nu):
        model = DKM(
            X, kind, n_layers=2, widths_ratio=nu, noise=0.05, learn_noise=False, whiten=whiten
        )
        model.set_hyperparameters_trainable(False)
        _perturb(model, 0.02, seed=1)  # start away from the NNGP Grams
        minimize(lambda: -model.objective(X, Y), model.parameters(), max_iter=iters, tol=1e-12)
        return model

    model = fitted(1e4)
    w = model.gram_kernel.input_weight.detach().numpy().ravel()
    b = float(model.gram_kernel.input_bias)
    lss = model.gram_kernel.layer_lengthscale.detach().numpy() if kind == "se" else ()
    XA = np.vstack([X.numpy(), Xs.numpy()])
    K = np_nngp(XA, kind, 2, w, b, lss, scale=float(model.outputscale.detach()))
    mean_ref, var_ref, _ = dense_gp_reference(
        K[:12, :12], K[12:, :12], K[12:, 12:], Y.numpy()[:, 0], 0.05
    )
    mean, var = model.predict(X, Y, Xs)
    np.testing.assert_allclose(mean[:, 0].numpy(), mean_ref, atol=3e-3 * np.abs(mean_ref).max())
    np.testing.assert_allclose(var.numpy(), var_ref, atol=3e-3 * var_ref.max())
    # Small nu learns a different representation: the test can fail.
    mean_small, _ = fitted(0.05).predict(X, Y, Xs)
    assert np.abs(mean_small[:, 0].numpy() - mean_ref).max() > 2e-2 * np.abs(mean_ref).max()


@pytest.mark.parametrize("whiten", [True, False], ids=["whitened", "unwhitened"])
def test_nngp_start_is_the_nngp_when_the_prior_gram_needs_jitter(whiten):
    """Duplicated inputs make K(G_0) singular, so its Cholesky factor needs jitter; the tied
    (stage-1) objective, and the whitened DKM at U = I, must still be the NNGP exactly: the
    jitter must not leak into the next layer's distances (it did, by 2 eps / l^2)."""
    from gpkern.linalg.cholesky import robust_cholesky

    X, Y = _data(n=10)
    X = torch.cat([X, X[:4]])  # duplicates, as in the concrete data
    Y = torch.cat([Y, Y[:4] + 0.05])
    Xs = torch.randn(5, 2, generator=torch.Generator().manual_seed(3))
    model = DKM(X, "se", n_layers=2, noise=0.05, learn_noise=False, whiten=whiten)
    with torch.no_grad():
        model.gram_kernel.layer_lengthscale = torch.tensor([0.01, 0.5])  # amplifies any jitter
        model.reset_grams(X)
        G0, g0, _ = model.gram_kernel.input_gram(X, X)
        assert robust_cholesky(model.gram_kernel.layer_map(1, G0, g0, g0), warn=False)[1] > 0
    w = model.gram_kernel.input_weight.detach().numpy().ravel()
    b = float(model.gram_kernel.input_bias.detach())
    s = float(model.outputscale.detach())
    K = np_nngp(np.vstack([X.numpy(), Xs.numpy()]), "se", 2, w, b, (0.01, 0.5), scale=s)
    mean_ref, var_ref, lml_ref = dense_gp_reference(
        K[:14, :14], K[14:, :14], K[14:, 14:], Y.numpy()[:, 0], 0.05
    )
    with torch.no_grad():
        model.tied = True
        assert float(model.objective(X, Y)) == pytest.approx(lml_ref, rel=1e-9)
        for tied in (True, False) if whiten else (True,):  # U = I is the NNGP when whitened
            model.tied = tied
            mean, var = model.predict(X, Y, Xs)
            np.testing.assert_allclose(mean[:, 0].numpy(), mean_ref, rtol=1e-7, atol=1e-9)
            np.testing.assert_allclose(var.numpy(), var_ref, rtol=1e-7, atol=1e-9)
        if whiten:
            assert float(model.objective(X, Y)) == pytest.approx(lml_ref, rel=1e-9)


@pytest.mark.parametrize("whiten", [True, False], ids=["whitened", "unwhitened"])
def test_predictions_reuse_the_layer_factorisations(whiten, monkeypatch):
    """Test points are conditioned with the Cholesky factors of the objective's own layer pass.

    A factorisation that needs jitter (K numerically singular, as with duplicated inputs) can
    get a different jitter when repeated; predictions then used factors that did not match
    the training Grams (a concrete CV fold lost 0.17 nats per point at nu = 3000). Here every
    layer factorisation gets a different jitter; at U = I the DKM must still predict exactly
    like the NNGP (numpy reference), and moved Grams must predict as without the jitter games.
    """
    import itertools

    import gpkern.models.dkm as dkm_module

    X, Y = _data(n=12)
    Xs = torch.randn(5, 2, generator=torch.Generator().manual_seed(4))
    model = DKM(X, "se", n_layers=2, noise=0.05, learn_noise=False, whiten=whiten)
    with torch.no_grad():
        model.gram_kernel.layer_lengthscale = torch.tensor([0.3, 0.5])
        model.reset_grams(X)
    w = model.gram_kernel.input_weight.detach().numpy().ravel()
    b = float(model.gram_kernel.input_bias.detach())
    s = float(model.outputscale.detach())
    K = np_nngp(np.vstack([X.numpy(), Xs.numpy()]), "se", 2, w, b, (0.3, 0.5), scale=s)
    mean_ref, var_ref, _ = dense_gp_reference(
        K[:12, :12], K[12:, :12], K[12:, 12:], Y.numpy()[:, 0], 0.05
    )
    _perturb(model, 0.05)
    with torch.no_grad():
        moved = model.predict(X, Y, Xs)
    true_cholesky, calls = dkm_module.robust_cholesky, itertools.count()

    def varying_jitter(A, **kwargs):  # 1e-4, 2e-4, 3e-4, ... of the mean diagonal
        eps = 1e-4 * (1 + next(calls) % 3) * float(A.diagonal().mean())
        eye = torch.eye(A.shape[-1], dtype=A.dtype)
        return torch.linalg.cholesky(A + eps * eye), eps

    monkeypatch.setattr(dkm_module, "robust_cholesky", varying_jitter)
    monkeypatch.setattr(dkm_module, "_chol", lambda A: true_cholesky(A, warn=False)[0])
    with torch.no_grad():
        if whiten:  # whitened: U = I is the NNGP whatever the jitter
            model.reset_grams(X)
            mean, var = model.predict(X, Y, Xs)
            np.testing.assert_allclose(mean[:, 0].numpy(), mean_ref, rtol=1e-7, atol=1e-9)
            np.testing.assert_allclose(var.numpy(), var_ref, rtol=1e-7, atol=1e-9)
        else:  # unwhitened Grams do not depend on the jitter: nor may the predictions, much
            mean, var = model.predict(X, Y, Xs)
            np.testing.assert_allclose(mean.numpy(), moved[0].numpy(), rtol=1e-2, atol=1e-3)
            np.testing.assert_allclose(var.numpy(), moved[1].numpy(), rtol=1e-2, atol=1e-3)
    assert next(calls) >= 2  # the patched factorisation was used


def test_estimator_large_nu_matches_nngp_gp_regressor():
    rng = np.random.default_rng(4)
    X = rng.uniform(-2, 2, (30, 2))
    y = np.sin(2 * X[:, 0]) + 0.3 * X[:, 1] + 0.1 * rng.standard_normal(30)
    Xs = rng.uniform(-2, 2, (8, 2))
    dkm = DKMRegressor(widths_ratio=1e5, max_iter=60, random_state=0).fit(X, y)
    m = dkm.model_
    kern = NNGPGramKernel("relu", 2, ard_num_dims=2)
    kern.load_state_dict(m.gram_kernel.state_dict())
    sk = gpytorch.kernels.ScaleKernel(kern)
    sk.outputscale = float(m.outputscale)
    gp = GPRegressorFixed(sk, dkm.noise_).fit(X, y)
    mu, sd = dkm.predict(Xs, return_std=True)
    mu_ref, sd_ref = gp.predict(Xs, return_std=True)
    np.testing.assert_allclose(mu, mu_ref, atol=2e-3 * np.abs(mu_ref).max())
    np.testing.assert_allclose(sd, sd_ref, atol=2e-3 * sd_ref.max())
    np.testing.assert_allclose(
        dkm.log_predictive_density(Xs, np.sin(2 * Xs[:, 0])),
        gp.log_predictive_density(Xs, np.sin(2 * Xs[:, 0])),
        atol=1e-2,
    )


def _nngp_reference(kind: str, d: int, max_iter: int):
    """GPRegressor with the DKM's nu -> infinity kernel (it starts where the DKM starts)."""
    from gpkern.estimators import GPRegressor

    sk = gpytorch.kernels.ScaleKernel(NNGPGramKernel(kind, 2, ard_num_dims=d))
    # normalize_X=True: the same standardised inputs the DKM's layers see
    return GPRegressor(kernel=sk, max_iter=max_iter, random_state=0, normalize_X=True)


@pytest.mark.parametrize("kind", ["relu", "se"])
def test_hyperparameters_are_the_nngp_estimators_at_every_nu(kind):
    """Stage 1 is the NNGP's marginal-likelihood fit and stage 2 leaves it alone: the fitted
    hyperparameters equal an independently fitted GPRegressor's whatever nu is, and at large
    nu the DKM predicts like that GP to rounding-level tolerance."""
    rng = np.random.default_rng(7)
    X = rng.uniform(-2, 2, (40, 2))
    y = np.tanh(3 * X[:, 0]) + 0.5 * np.sin(2 * X[:, 1]) + 0.1 * rng.standard_normal(40)
    Xs = rng.uniform(-2.5, 2.5, (10, 2))
    ys = np.tanh(3 * Xs[:, 0]) + 0.5 * np.sin(2 * Xs[:, 1])
    gp = _nngp_reference(kind, 2, 60).fit(X, y)
    fits = {
        nu: DKMRegressor(kernel=kind, widths_ratio=nu, max_iter=60, random_state=0).fit(X, y)
        for nu in (3.0, 1e10)
    }
    small, large = fits[3.0].model_, fits[1e10].model_
    # Stage 2 does not touch them: identical at nu = 3 and nu = 1e10.
    for a, b in zip(small.hyperparameters(), large.hyperparameters()):
        assert torch.equal(a, b)
    # Stage 1 is the NNGP's fit: from the same start, the same optimum as GPRegressor's
    # (another code path, whose L-BFGS steps differ by rounding). On data whose "se" optimum
    # runs along the ridge of input weights against layer length-scales the two stop at
    # different points of it; here the optimum is interior.
    np.testing.assert_allclose(
        fits[1e10].log_marginal_likelihood(), gp.log_marginal_likelihood(), atol=1e-3
    )
    dkm_params = dict(large.gram_kernel.named_parameters())
    for name, value in gp.kernel_.base_kernel.named_parameters():
        np.testing.assert_allclose(
            dkm_params[name].detach().numpy(), value.detach().numpy(), rtol=1e-4, err_msg=name
        )
    np.testing.assert_allclose(float(large.outputscale), float(gp.kernel_.outputscale), rtol=1e-4)
    np.testing.assert_allclose(fits[1e10].noise_, gp.noise_, rtol=1e-4)
    # At nu = 1e10 the DKM is the GP with its own hyperparameters, to rounding. (On data whose
    # "se" optimum runs far along the ridge, input weights ~1e-6 and a last length-scale ~1e-4,
    # rounding is amplified to ~1e-5; there the two differed by 0.5% before the Cholesky
    # jitter was taken out of the tied and whitened Grams.)
    kern = NNGPGramKernel(kind, 2, ard_num_dims=2)
    kern.load_state_dict(large.gram_kernel.state_dict())
    sk = gpytorch.kernels.ScaleKernel(kern)
    sk.outputscale = float(large.outputscale)
    same = GPRegressorFixed(sk, fits[1e10].noise_).fit(X, y)
    mu, sd = fits[1e10].predict(Xs, return_std=True)
    mu_ref, sd_ref = same.predict(Xs, return_std=True)
    np.testing.assert_allclose(mu, mu_ref, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(sd, sd_ref, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(
        fits[1e10].log_predictive_density(Xs, ys), same.log_predictive_density(Xs, ys), atol=1e-8
    )
    # ... and the independently fitted GP predicts alike (its optimum differs along the ridge).
    np.testing.assert_allclose(mu, gp.predict(Xs), atol=2e-2 * np.abs(mu_ref).max())


def test_joint_hyperparameters_relearns_them_in_the_gram_stage():
    rng = np.random.default_rng(7)
    X = rng.uniform(-2, 2, (40, 2))
    y = np.sin(2 * X[:, 0]) + 0.3 * X[:, 1] + 0.1 * rng.standard_normal(40)
    # raw inputs: on these the layer length-scales' stage-2 gradient is far from zero
    kw = dict(kernel="se", widths_ratio=3.0, max_iter=40, random_state=0, normalize_X=False)
    held = DKMRegressor(**kw).fit(X, y).model_
    joint = DKMRegressor(joint_hyperparameters=True, **kw).fit(X, y).model_
    assert float(joint.noise) == pytest.approx(float(held.noise), rel=1e-12)  # always held
    moved = joint.gram_kernel.layer_lengthscale - held.gram_kernel.layer_lengthscale
    assert float(moved.abs().max()) > 1e-3


def test_converged_objective_is_monotone_in_nu():
    """With the hyperparameters held, max_G [log P(Y|G) - nu KL(G)] and the KL at the optimum
    cannot increase with nu (KL >= 0), and the objective tends to the NNGP's log marginal
    likelihood; every fit starts from the same NNGP."""
    rng = np.random.default_rng(8)
    X = rng.uniform(-2, 2, (25, 1))
    y = np.tanh(3 * X[:, 0]) + 0.05 * rng.standard_normal(25)
    gp = _nngp_reference("se", 1, 200).fit(X, y)
    objectives, kls = [], []
    for nu in (0.3, 3.0, 30.0, 300.0, 3000.0):
        dkm = DKMRegressor(kernel="se", widths_ratio=nu, max_iter=200, random_state=0).fit(X, y)
        Xt = torch.as_tensor(dkm._Xt)
        with torch.no_grad():
            kls.append(float(dkm.model_.kl_terms(Xt)[0].sum()))
        objectives.append(dkm.log_marginal_likelihood())
    assert all(a >= b - 1e-6 for a, b in zip(objectives, objectives[1:])), objectives
    assert all(a >= b - 1e-7 for a, b in zip(kls, kls[1:])), kls
    assert objectives[0] > objectives[-1] + 1.0  # small nu fits the targets much better
    assert objectives[-1] >= gp.log_marginal_likelihood() - 1e-6
    assert objectives[-1] - gp.log_marginal_likelihood() < 5e-2


def GPRegressorFixed(kernel, noise):
    from gpkern.estimators import GPRegressor

    return GPRegressor(kernel=kernel, noise=noise, optimizer=None, normalize_X=True)


# ------------------------------------------------------------------------------------------------
# Estimators
# ------------------------------------------------------------------------------------------------
@parametrize_with_checks(
    [
        DKMRegressor(max_iter=5, random_state=0),
        DKMClassifier(n_inducing=10, max_iter=15, random_state=0),
    ]
)
def test_sklearn_compatible(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check(estimator)


@pytest.mark.slow
@parametrize_with_checks(
    [
        DKMRegressor(n_inducing=8, max_iter=10, random_state=0),
    ]
)
def test_sklearn_compatible_other_modes(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check(estimator)


@pytest.mark.slow
def test_wide_deep_gp_posterior_grams_approach_dkm():
    """HMC on finite 2-layer deep GPs: posterior mean Grams approach the DKM's as width grows."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_dkm.py"
    spec = importlib.util.spec_from_file_location("bench_dkm", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    X, Y, model = bench.toy_problem()
    with torch.no_grad():
        prior = model.prior_grams(X)[1:]
    target = bench.dkm_optimum(X, Y, model)

    def err(grams):
        return [
            float(torch.linalg.norm(G - T) / torch.linalg.norm(T)) for G, T in zip(grams, target)
        ]

    narrow = err(bench.hmc_grams(X, Y, model, 4, 200))
    wide = err(bench.hmc_grams(X, Y, model, 64, 200))
    reference = err(prior)
    for layer in range(2):
        assert wide[layer] < narrow[layer]
        assert wide[layer] < 0.3 * reference[layer]


def test_regressor_learns_and_beats_nngp_start():
    rng = np.random.default_rng(5)
    X = rng.uniform(-3, 3, (60, 1))
    y = np.sign(X[:, 0]) * np.abs(X[:, 0]) ** 0.5 + 0.05 * rng.standard_normal(60)
    Xs = rng.uniform(-3, 3, (40, 1))
    ys = np.sign(Xs[:, 0]) * np.abs(Xs[:, 0]) ** 0.5
    dkm = DKMRegressor(max_iter=80, random_state=0).fit(X, y)
    rmse = np.sqrt(np.mean((dkm.predict(Xs) - ys) ** 2))
    assert rmse < 0.15
    assert len(dkm.grams_) == 2 and dkm.grams_[0].shape == (60, 60)
    assert np.linalg.eigvalsh(dkm.grams_[1]).min() > -1e-10
    samples = dkm.sample_y(Xs[:5], n_samples=3)
    assert samples.shape == (5, 3)


def test_auto_widths_ratio_scores_are_cross_validated_log_densities():
    """Recompute candidates' scores (the extremes and the chosen one) from plain fits on the
    folds, by hand; the final model is the plain fit at the chosen nu."""
    from gpkern.estimators.base import torch_generator
    from gpkern.estimators.dkm import AUTO_N_FOLDS

    rng = np.random.default_rng(10)
    X = rng.uniform(-2, 2, (32, 1))
    y = np.sin(2 * X[:, 0]) + 0.1 * rng.standard_normal(32)
    auto = DKMRegressor(widths_ratio="auto", max_iter=10, random_state=3).fit(X, y)
    Yn = (y - y.mean()) / y.std()
    Xn = (X - X.mean(0)) / X.std(0)  # the folds see inputs standardised on all training points
    # The folds: the estimator's own seeding of random_state=3, one permutation cut in 5.
    perm = torch.randperm(32, generator=torch_generator(3)).numpy()
    folds = np.array_split(perm, AUTO_N_FOLDS)
    assert [len(f) for f in folds] == [7, 7, 6, 6, 6]
    assert set(auto.widths_ratio_scores_) == set(AUTO_WIDTHS_RATIOS)
    for nu in {AUTO_WIDTHS_RATIOS[0], auto.widths_ratio_, AUTO_WIDTHS_RATIOS[-1]}:
        total = 0.0
        for val in folds:
            tr = np.setdiff1d(np.arange(32), val)  # sorted: the estimator keeps the order
            ref = DKMRegressor(
                widths_ratio=nu, max_iter=10, normalize_y=False, normalize_X=False
            ).fit(Xn[tr], Yn[tr])
            total += ref.log_predictive_density(Xn[val], Yn[val]).sum()
        np.testing.assert_allclose(auto.widths_ratio_scores_[nu], total / 32, rtol=1e-7, atol=1e-9)
    best = max(auto.widths_ratio_scores_.values())
    assert auto.widths_ratio_scores_[auto.widths_ratio_] == best
    # The final model is the plain fit at the chosen nu on all training points.
    plain = DKMRegressor(widths_ratio=auto.widths_ratio_, max_iter=10, random_state=3).fit(X, y)
    Xs = rng.uniform(-2, 2, (10, 1))
    np.testing.assert_allclose(auto.predict(Xs), plain.predict(Xs), rtol=1e-10, atol=1e-12)
    assert plain.widths_ratio_scores_ is None and plain.widths_ratio_ == auto.widths_ratio_


def test_auto_widths_ratio_breaks_ties_towards_the_nngp():
    from gpkern.estimators.dkm import _best_widths_ratio

    assert _best_widths_ratio({10.0: -1.0, 100.0: -0.5, 1000.0: -0.5}) == 1000.0
    assert _best_widths_ratio({10.0: -0.1, 100.0: -0.5, 1000.0: -0.5}) == 10.0
    assert _best_widths_ratio(dict.fromkeys((10.0, 30.0), -math.inf)) == 30.0


def test_auto_widths_ratio_is_reproducible_and_uses_fewer_folds_for_tiny_data():
    rng = np.random.default_rng(12)
    X = rng.uniform(-2, 2, (4, 1))
    y = np.sin(2 * X[:, 0])
    a = DKMRegressor(widths_ratio="auto", max_iter=2, random_state=1).fit(X, y)
    b = DKMRegressor(widths_ratio="auto", max_iter=2, random_state=1).fit(X, y)
    assert a.widths_ratio_scores_ == b.widths_ratio_scores_  # 4 folds of one point each
    with pytest.raises(ValueError, match="at least 3 training samples"):
        DKMRegressor(widths_ratio="auto", max_iter=2).fit(X[:2], y[:2])


def test_sparse_regressor_minibatches():
    rng = np.random.default_rng(6)
    X = rng.uniform(-3, 3, (300, 2))
    y = np.sin(X[:, 0]) + 0.1 * rng.standard_normal(300)
    dkm = DKMRegressor(n_inducing=15, batch_size=100, max_iter=30, lr=0.03, random_state=0).fit(
        X, y
    )
    Xs = rng.uniform(-3, 3, (100, 2))
    rmse = np.sqrt(np.mean((dkm.predict(Xs) - np.sin(Xs[:, 0])) ** 2))
    assert rmse < 0.3
    assert dkm.inducing_points_.shape == (15, 2)
    assert np.isfinite(dkm.log_predictive_density(Xs, np.sin(Xs[:, 0]))).all()


def test_classifier_learns_xor():
    rng = np.random.default_rng(7)
    X = rng.standard_normal((60, 2))
    y = np.where(X[:, 0] * X[:, 1] > 0, "a", "b")
    clf = DKMClassifier(max_iter=30, random_state=0).fit(X, y)
    Xs = rng.standard_normal((200, 2))
    ys = np.where(Xs[:, 0] * Xs[:, 1] > 0, "a", "b")
    proba = clf.predict_proba(Xs)
    np.testing.assert_allclose(proba.sum(1), 1.0)
    assert (clf.predict(Xs) == ys).mean() > 0.85
    sparse = DKMClassifier(n_inducing=20, batch_size=40, max_iter=40, random_state=0).fit(X, y)
    assert (sparse.predict(Xs) == ys).mean() > 0.8


def test_full_classifier_fits_hundreds_of_points():
    """The whitened output layer keeps L-BFGS well conditioned with one inducing point per
    training point (the unwhitened one stayed at chance accuracy here)."""
    from sklearn.datasets import make_blobs

    X, y = make_blobs(150, centers=3, random_state=0)
    clf = DKMClassifier(max_iter=40, random_state=0).fit(X, y)
    assert (clf.predict(X) == y).mean() > 0.9


def test_classifier_tol_stops_stages_early_and_none_runs_to_the_budget():
    """tol stops a stage once the Monte Carlo objective stops improving by more than tol per
    point: fewer iterations than the budget, no ConvergenceWarning; tol=None runs L-BFGS to its
    own 1e-9 tolerance, here the budget, with the warning. n_iter_ counts what ran."""
    from sklearn.exceptions import ConvergenceWarning

    rng = np.random.default_rng(3)
    X = rng.standard_normal((40, 2))
    y = (X[:, 0] + 0.5 * rng.standard_normal(40) > 0).astype(int)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        fast = DKMClassifier(max_iter=60, tol=1e-3, random_state=0).fit(X, y)
    assert 0 < fast.n_iter_ < 2 * 60
    with pytest.warns(ConvergenceWarning, match="budget"):
        slow = DKMClassifier(max_iter=60, tol=None, random_state=0).fit(X, y)
    assert slow.n_iter_ > fast.n_iter_
    assert (fast.predict(X) == slow.predict(X)).mean() > 0.9


@pytest.mark.parametrize("tol", [-1e-4, math.nan, "small"])
def test_classifier_rejects_bad_tol(tol):
    X = np.random.default_rng(0).standard_normal((20, 2))
    with pytest.raises(ValueError, match="tol"):
        DKMClassifier(tol=tol).fit(X, np.arange(20) % 2)


# ------------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("Est", [DKMRegressor, DKMClassifier])
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n_layers": 0}, "n_layers"),
        ({"n_layers": 1.5}, "n_layers"),
        ({"widths_ratio": 0.0}, "widths_ratio"),
        ({"widths_ratio": -1.0}, "widths_ratio"),
        ({"widths_ratio": [1.0, -2.0]}, "widths_ratio"),
        ({"widths_ratio": [1.0, 2.0, 3.0]}, "widths_ratio"),
        ({"widths_ratio": math.inf}, "widths_ratio"),
        ({"widths_ratio": "wide"}, "widths_ratio"),
        ({"kernel": "tanh"}, "kernel"),
        ({"n_inducing": 50}, "n_inducing"),
        ({"n_inducing": 0}, "n_inducing"),
        ({"batch_size": 10}, "n_inducing"),
        ({"joint_hyperparameters": "yes"}, "joint_hyperparameters"),
    ],
)
def test_bad_parameters(Est, kwargs, match):
    X = np.random.default_rng(0).standard_normal((20, 2))
    y = np.arange(20) % 2
    with pytest.raises(ValueError, match=match):
        Est(**kwargs).fit(X, y)


def test_auto_widths_ratio_only_for_the_full_regressor():
    X = np.random.default_rng(0).standard_normal((20, 2))
    y = np.arange(20) % 2
    with pytest.raises(ValueError, match="full DKMRegressor"):
        DKMRegressor(widths_ratio="auto", n_inducing=5).fit(X, y)
    with pytest.raises(ValueError, match="full DKMRegressor"):
        DKMClassifier(widths_ratio="auto").fit(X, y)


def test_full_dkm_refuses_large_n_before_any_work():
    X = np.zeros((MAX_FULL_SAMPLES + 1, 1))
    y = np.zeros(MAX_FULL_SAMPLES + 1)
    for est in (DKMRegressor(), DKMClassifier()):
        with pytest.raises(ValueError, match="n_inducing"):
            est.fit(X, np.arange(len(y)) % 2 if isinstance(est, DKMClassifier) else y)


def test_failed_fit_leaves_fitted_estimator_unchanged():
    rng = np.random.default_rng(8)
    X = rng.standard_normal((20, 2))
    y = X[:, 0]
    dkm = DKMRegressor(max_iter=5, random_state=0).fit(X, y)
    before = dkm.predict(X[:3])
    dkm.set_params(n_inducing=100)
    with pytest.raises(ValueError, match="n_inducing"):
        dkm.fit(X, y)
    np.testing.assert_array_equal(dkm.predict(X[:3]), before)
    assert dkm.n_features_in_ == 2
