"""Sparse variational scale-mixture classifier: KL terms, marginals, fitting, sklearn conformance."""

from __future__ import annotations

import gpytorch
import numpy as np
import pytest
import scipy.integrate as si
import scipy.stats as st
import torch
from sklearn.datasets import make_blobs
from sklearn.utils.estimator_checks import parametrize_with_checks

from gpkern.estimators import ScaleMixtureClassifier
from gpkern.models.classification import SparseScaleMixtureClassifier, inverse_gamma_kl


@pytest.mark.parametrize("q,p", [((3.0, 2.0), (2.0, 2.0)), ((0.7, 5.0), (4.0, 0.3)), ((2.0, 2.0), (2.0, 2.0))])
def test_inverse_gamma_kl_matches_quadrature(q, p):
    dq, dp = st.invgamma(q[0], scale=q[1]), st.invgamma(p[0], scale=p[1])
    ref = si.quad(lambda v: dq.pdf(v) * (dq.logpdf(v) - dp.logpdf(v)), 0, np.inf, limit=500)[0]
    got = inverse_gamma_kl(*(torch.tensor(v, dtype=torch.float64) for v in (*q, *p)))
    assert float(got) == pytest.approx(ref, abs=1e-7)


def _model(prior=(3.0, 2.0), seed=0):
    gen = torch.Generator().manual_seed(seed)
    Z = torch.randn(5, 2, generator=gen, dtype=torch.float64)
    k = gpytorch.kernels.ScaleKernel(gpytorch.kernels.RBFKernel()).double()
    k.outputscale = 1.5
    model = SparseScaleMixtureClassifier(k, Z, 3, prior=prior).double()
    with torch.no_grad():
        model.q_mean.copy_(torch.randn(5, 3, generator=gen, dtype=torch.float64))
        model.q_sqrt_raw.copy_(0.3 * torch.randn(3, 5, 5, generator=gen, dtype=torch.float64))
        if prior is not None:
            model.raw_q_concentration.fill_(1.1)
            model.raw_q_rate.fill_(0.4)
    return model


def test_kl_is_the_expected_gaussian_kl_plus_the_scale_kl():
    """E_{q(s2)} KL(N(m, s2 S) || N(0, s2 I)) by Monte Carlo over scipy draws of s2."""
    model = _model()
    with torch.no_grad():
        m = model.q_mean.numpy()
        S = [(L @ L.T) for L in model.q_sqrt.numpy()]
        a, b = float(model.q_concentration), float(model.q_rate)
        s2 = st.invgamma(a, scale=b).rvs(4000, random_state=0)

        def gauss_kl(mc, Sc, v):
            M = len(mc)
            return 0.5 * (np.trace(Sc) + mc @ mc / v - M - np.linalg.slogdet(Sc)[1])

        mc_kl = np.mean([sum(gauss_kl(m[:, c], S[c], v) for c in range(3)) for v in s2])
        scale_kl = si.quad(
            lambda v: st.invgamma(a, scale=b).pdf(v)
            * (st.invgamma(a, scale=b).logpdf(v) - st.invgamma(3.0, scale=2.0).logpdf(v)),
            0,
            np.inf,
            limit=500,
        )[0]
        se = np.std([sum(gauss_kl(m[:, c], S[c], v) for c in range(3)) for v in s2]) / np.sqrt(len(s2))
        assert float(model.kl()) == pytest.approx(mc_kl + scale_kl, abs=5 * se + 1e-6)


def test_marginals_match_dense_formulas():
    model = _model()
    X = torch.randn(7, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        mean, var = model.marginals(X)
        Z = model.inducing_points
        Kzz = model.kernel(Z).to_dense().numpy()
        Kzz = Kzz + model.jitter * np.diag(Kzz).mean() * np.eye(5)
        Kxz = model.kernel(X, Z).to_dense().numpy()
        Kxx = model.kernel(X).to_dense().numpy()
        Lz = np.linalg.cholesky(Kzz)
        for c in range(3):
            # u_c = L_Z w_c with w_c ~ N(m_c, S_c): f = Kxz Kzz^-1 u + independent remainder
            Lc = model.q_sqrt[c].numpy()
            mu_u, cov_u = Lz @ model.q_mean[:, c].numpy(), Lz @ Lc @ Lc.T @ Lz.T
            P = Kxz @ np.linalg.inv(Kzz)
            ref_mean = P @ mu_u
            ref_cov = Kxx - P @ Kxz.T + P @ cov_u @ P.T
            np.testing.assert_allclose(mean[:, c].numpy(), ref_mean, rtol=1e-8, atol=1e-10)
            np.testing.assert_allclose(var[:, c].numpy(), np.diag(ref_cov), rtol=1e-7, atol=1e-10)


def test_predict_proba_is_the_student_t_expectation():
    """With one class score varying, p = E[softmax] where f ~ t_{2a}: compare with quadrature."""
    model = _model(prior=(3.0, 2.0))
    X = torch.zeros(1, 2, dtype=torch.float64)
    with torch.no_grad():
        mean, var = model.marginals(X)
        gen = torch.Generator().manual_seed(0)
        S = 100000
        s2 = float(model.q_rate) / torch._standard_gamma(model.q_concentration.expand(S), generator=gen)
        eps = torch.randn(S, 3, generator=gen, dtype=torch.float64)
        p = model.predict_proba(X, s2, eps).numpy()[0]
    assert p.sum() == pytest.approx(1.0)
    # independent reference: each f_c ~ t_{2a}(mu_c, (b/a) v_c) jointly through a shared sigma^2;
    # integrate sigma^2 numerically and the Gaussian f by Gauss-Hermite per class.
    a, b = float(model.q_concentration), float(model.q_rate)
    mu, v = mean.numpy()[0], var.numpy()[0]
    gh_x, gh_w = np.polynomial.hermite_e.hermegauss(40)
    grid = np.stack(np.meshgrid(gh_x, gh_x, gh_x, indexing="ij"), -1).reshape(-1, 3)
    wts = np.prod(np.stack(np.meshgrid(gh_w, gh_w, gh_w, indexing="ij"), -1).reshape(-1, 3), 1)
    wts = wts / wts.sum()

    def given_s2(s):
        f = mu + np.sqrt(s * v) * grid
        e = np.exp(f - f.max(1, keepdims=True))
        return (wts[:, None] * e / e.sum(1, keepdims=True)).sum(0)

    ref = np.array([
        si.quad(lambda s, c=c: st.invgamma(a, scale=b).pdf(s) * given_s2(s)[c], 0, np.inf, limit=200)[0]
        for c in range(3)
    ])
    np.testing.assert_allclose(p, ref, atol=5e-3)


@pytest.fixture
def blobs():
    X, y = make_blobs(n_samples=150, centers=[[-4, 0], [4, 0], [0, 5]], cluster_std=1.0, random_state=0)
    return X, y


@pytest.mark.parametrize("prior", ["inverse_gamma", None])
def test_fits_blobs_and_is_unsure_far_away(blobs, prior):
    X, y = blobs
    clf = ScaleMixtureClassifier(prior=prior, n_inducing=30, max_iter=200, batch_size=64, random_state=0)
    clf.fit(X, y)
    assert (clf.predict(X) == y).mean() > 0.95
    proba = clf.predict_proba(X)
    np.testing.assert_allclose(proba.sum(1), 1.0)
    far = X.mean(0) + 40.0 * np.array([[1.0, 0.0], [0.0, -1.0]])
    assert clf.predictive_entropy(far).min() > clf.predictive_entropy(X).mean() + 0.3
    assert (clf.scale_posterior_ is None) == (prior is None)
    # minibatches, draws and initialisation are all seeded
    again = ScaleMixtureClassifier(prior=prior, n_inducing=30, max_iter=200, batch_size=64, random_state=0)
    np.testing.assert_array_equal(again.fit(X, y).predict_proba(X), proba)


def test_string_labels_and_subset_invariance(blobs):
    X, y = blobs
    labels = np.array(["a", "b", "c"])[y]
    clf = ScaleMixtureClassifier(n_inducing=20, max_iter=50, random_state=1).fit(X, labels)
    assert set(clf.predict(X)) <= set(labels)
    np.testing.assert_allclose(clf.predict_proba(X[:5]), clf.predict_proba(X)[:5], rtol=1e-12)


def test_predict_proba_chunks_bound_memory_without_changing_results(blobs, monkeypatch):
    """Chunking over test points (sized by draws x classes) gives the same probabilities."""
    import gpkern.estimators.scale_mixture as sm

    X, y = blobs
    clf = ScaleMixtureClassifier(n_inducing=20, max_iter=20, n_predict_samples=300, random_state=0).fit(X, y)
    whole = clf.predict_proba(X)
    monkeypatch.setattr(sm, "_PREDICT_CHUNK_ELEMENTS", 300 * 3 * 7)  # 7 points per chunk
    np.testing.assert_allclose(clf.predict_proba(X), whole, rtol=1e-12, atol=1e-15)
    monkeypatch.setattr(sm, "_PREDICT_CHUNK_ELEMENTS", 1)  # one point per chunk
    np.testing.assert_allclose(clf.predict_proba(X[:9]), whole[:9], rtol=1e-12, atol=1e-15)


def test_bad_classifier_input(blobs):
    X, y = blobs
    with pytest.raises(ValueError, match="inverse_gamma"):
        ScaleMixtureClassifier(prior="burr12").fit(X, y)
    with pytest.raises(ValueError, match="Parameter"):
        ScaleMixtureClassifier(prior_params={"concentration": 0.0}).fit(X, y)
    with pytest.raises(ValueError, match="Parameter"):
        ScaleMixtureClassifier(prior_params={"rate": -1.0}).fit(X, y)
    with pytest.raises(ValueError, match="1 class"):
        ScaleMixtureClassifier().fit(X, np.zeros(len(y)))
    with pytest.raises(ValueError, match="Unknown label type"):
        ScaleMixtureClassifier().fit(X, np.linspace(0, 1, len(y)))
    for name in ("n_inducing", "batch_size", "n_samples"):
        with pytest.raises(ValueError, match=name):
            ScaleMixtureClassifier(**{name: 0}).fit(X, y)
    with pytest.raises(ValueError, match="lr"):
        ScaleMixtureClassifier(lr=-1.0).fit(X, y)
    with pytest.raises(ValueError, match="prior_params must be None"):
        ScaleMixtureClassifier(prior=None, prior_params={"rate": 1.0}).fit(X, y)


@parametrize_with_checks([ScaleMixtureClassifier()])
def test_sklearn_compatible(estimator, check):
    check(estimator)
