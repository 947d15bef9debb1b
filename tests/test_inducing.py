"""Inducing-point selection, Nyström features and the ``inducing=`` parameter of the sparse models:
greedy pivots against a dense Schur-complement reference (and BoTorch's initialiser), k-DPP
selection against exact enumeration, Nyström features against dense numpy."""

from __future__ import annotations

import itertools
import warnings

import gpytorch
import numpy as np
import pytest
import torch
from scipy import stats
from sklearn.utils.estimator_checks import parametrize_with_checks

import gpkern.sampling.inducing as inducing_module
from gpkern.estimators import DKMClassifier, DKMRegressor, NystroemFeatures, ScaleMixtureClassifier
from gpkern.linalg.rpcholesky import rp_cholesky
from gpkern.sampling import INDUCING_METHODS, select_inducing


def _rbf(lengthscale: float = 0.5, outputscale: float = 1.0) -> gpytorch.kernels.Kernel:
    k = gpytorch.kernels.ScaleKernel(gpytorch.kernels.RBFKernel()).double()
    k.base_kernel.lengthscale = lengthscale
    k.outputscale = outputscale
    return k


def _np_rbf(A, B, lengthscale=0.5, outputscale=1.0):
    d2 = ((A[:, None, :] - B[None, :, :]) ** 2).sum(-1)
    return outputscale * np.exp(-0.5 * d2 / lengthscale**2)


def _dense_greedy(K: np.ndarray, m: int) -> list[int]:
    """Pivoted Cholesky by explicit Schur complements: the largest residual variance each step."""
    R = K.copy()
    chosen = []
    for _ in range(m):
        i = int(np.argmax(np.diag(R)))
        chosen.append(i)
        R = R - np.outer(R[:, i], R[i, :]) / R[i, i]
    return chosen


def _residual_trace(K: np.ndarray, S) -> float:
    S = list(S)
    return float(np.trace(K - K[:, S] @ np.linalg.solve(K[np.ix_(S, S)], K[S, :])))


@pytest.fixture
def X2():
    return np.random.default_rng(0).uniform(-2, 2, (80, 2))


# -- greedy variance ---------------------------------------------------------------------------
def test_greedy_variance_matches_dense_schur_reference(X2):
    K = _np_rbf(X2, X2, 0.7, 1.3)
    Z, idx = select_inducing(torch.as_tensor(X2), _rbf(0.7, 1.3), 20, "greedy_variance")
    assert idx.tolist() == _dense_greedy(K, 20)
    np.testing.assert_array_equal(Z.numpy(), X2[idx.numpy()])


def test_greedy_variance_matches_botorch_initialiser(X2):
    inducing_point_allocators = pytest.importorskip("botorch.models.utils.inducing_point_allocators")
    X = torch.as_tensor(X2)
    K = torch.as_tensor(_np_rbf(X2, X2, 0.7, 1.3))
    m = 25
    ref = inducing_point_allocators._pivoted_cholesky_init(
        X, K, m, quality_scores=torch.ones(X.shape[0], dtype=torch.float64)
    )
    assert ref.shape[0] == m  # no early stop: the comparison covers all m pivots
    Z, _ = select_inducing(X, _rbf(0.7, 1.3), m, "greedy_variance")
    torch.testing.assert_close(Z, ref, rtol=0, atol=0)


def test_greedy_pivoting_factor_is_the_nystrom_factor(X2):
    K = torch.as_tensor(_np_rbf(X2, X2, 0.7, 1.3))
    F, piv = rp_cholesky(lambda i: K[:, i], K.diagonal(), 12, pivoting="greedy")
    S = piv.tolist()
    Knm = K[:, S].numpy()
    ref = Knm @ np.linalg.solve(K[np.ix_(S, S)].numpy(), Knm.T)
    np.testing.assert_allclose((F @ F.T).numpy(), ref, atol=1e-10)
    with pytest.raises(ValueError, match="pivoting"):
        rp_cholesky(lambda i: K[:, i], K.diagonal(), 5, pivoting="max")


# -- RPCholesky --------------------------------------------------------------------------------
def test_rpcholesky_residual_trace_decreases_and_beats_uniform():
    rng = np.random.default_rng(1)
    # one big cluster and a few far points: uniform landmarks miss the small clusters
    X = np.vstack([rng.normal(0, 0.3, (150, 2)), rng.normal(0, 0.3, (6, 2)) + [[4, 4]],
                   rng.normal(0, 0.3, (6, 2)) + [[-4, 4]]])
    K = _np_rbf(X, X, 0.4)
    kernel = _rbf(0.4)
    _, idx = select_inducing(X, kernel, 30, "rpcholesky", random_state=0)
    assert len(set(idx.tolist())) == 30
    traces = [_residual_trace(K, idx[:k].tolist()) for k in (1, 5, 10, 20, 30)]
    assert all(a > b for a, b in zip(traces, traces[1:]))
    rp = [_residual_trace(K, select_inducing(X, kernel, 15, "rpcholesky", s).indices.tolist())
          for s in range(10)]
    un = [_residual_trace(K, select_inducing(X, kernel, 15, "uniform", s).indices.tolist())
          for s in range(10)]
    assert np.mean(rp) < 0.7 * np.mean(un)


def test_selection_is_reproducible_and_distinct(X2):
    for method in ("uniform", "rpcholesky", "kdpp"):
        a = select_inducing(X2, _rbf(), 12, method, random_state=3).indices
        b = select_inducing(X2, _rbf(), 12, method, random_state=3).indices
        assert torch.equal(a, b)
        assert len(set(a.tolist())) == 12


# -- k-DPP -------------------------------------------------------------------------------------
def test_kdpp_selection_law_matches_enumeration():
    X = np.array([[0.0], [0.3], [0.5], [1.4], [2.0], [2.2]])
    K = _np_rbf(X, X, 0.6)
    k = 2
    subsets = list(itertools.combinations(range(6), k))
    p = np.array([np.linalg.det(K[np.ix_(S, S)]) for S in subsets])
    p /= p.sum()
    gen = torch.Generator().manual_seed(0)
    n_draws = 1500  # smallest expected count 14
    counts = dict.fromkeys(subsets, 0)
    for _ in range(n_draws):
        idx = select_inducing(X, _rbf(0.6), k, "kdpp", gen).indices
        counts[tuple(sorted(idx.tolist()))] += 1
    observed = np.array([counts[S] for S in subsets])
    assert stats.chisquare(observed, n_draws * p).pvalue > 1e-3


def test_kdpp_low_rank_path_gives_distinct_indices(monkeypatch, X2):
    monkeypatch.setattr(inducing_module, "KDPP_DENSE_MAX_N", 10)
    idx = select_inducing(X2, _rbf(), 15, "kdpp", random_state=0).indices
    assert idx.shape == (15,) and len(set(idx.tolist())) == 15


# -- k-means, uniform, validation ----------------------------------------------------------------
def test_kmeans_returns_m_centres_of_their_clusters():
    rng = np.random.default_rng(2)
    centres = np.array([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0], [5.0, 5.0]])
    X = np.vstack([c + 0.2 * rng.standard_normal((25, 2)) for c in centres])
    Z, idx = select_inducing(X, None, 4, "kmeans", random_state=0)
    assert idx is None and Z.shape == (4, 2)
    labels = np.argmin(((X[:, None] - Z.numpy()[None]) ** 2).sum(-1), axis=1)
    means = np.stack([X[labels == j].mean(0) for j in range(4)])
    np.testing.assert_allclose(Z.numpy(), means, atol=1e-8)


def test_bad_arguments_raise(X2):
    with pytest.raises(ValueError, match="inducing method"):
        select_inducing(X2, _rbf(), 5, "random")
    with pytest.raises(ValueError, match="m must be"):
        select_inducing(X2, _rbf(), 81, "uniform")
    with pytest.raises(ValueError, match="m must be"):
        select_inducing(X2, _rbf(), 0, "uniform")
    with pytest.raises(ValueError, match="needs a gpytorch"):
        select_inducing(X2, None, 5, "rpcholesky")


@pytest.mark.parametrize("method", ["greedy_variance", "rpcholesky", "kdpp"])
def test_rank_deficient_kernel_returns_fewer_points_with_warning(method):
    X = np.repeat(np.array([[0.0], [1.0], [2.0], [3.0], [4.0]]), 4, axis=0)
    with pytest.warns(UserWarning, match="numerical rank 5"):
        Z, idx = select_inducing(X, _rbf(0.5), 8, method, random_state=0)
    assert sorted(np.unique(Z.numpy()).tolist()) == [0.0, 1.0, 2.0, 3.0, 4.0]


# -- Nyström features ----------------------------------------------------------------------------
@parametrize_with_checks([NystroemFeatures(n_components=5, random_state=0)])
def test_nystroem_sklearn_compatible(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        check(estimator)


@pytest.mark.parametrize("method", INDUCING_METHODS)
def test_nystroem_gram_matches_dense_nystrom(X2, method):
    nf = NystroemFeatures(kernel=_rbf(0.8), n_components=15, method=method, random_state=0)
    Phi = nf.fit_transform(X2)
    Z = nf.components_
    Knm = _np_rbf(X2, Z, 0.8)
    ref = Knm @ np.linalg.solve(_np_rbf(Z, Z, 0.8), Knm.T)
    np.testing.assert_allclose(Phi @ Phi.T, ref, atol=1e-8)
    # new points: the cross Gram
    Xs = np.random.default_rng(5).uniform(-2, 2, (7, 2))
    Ksm = _np_rbf(Xs, Z, 0.8)
    ref_cross = Ksm @ np.linalg.solve(_np_rbf(Z, Z, 0.8), Knm.T)
    np.testing.assert_allclose(nf.transform(Xs) @ Phi.T, ref_cross, atol=1e-8)


def test_nystroem_with_all_points_reproduces_the_kernel():
    X = np.random.default_rng(4).uniform(-2, 2, (40, 2))
    Phi = NystroemFeatures(kernel=_rbf(0.3), n_components=40, method="uniform").fit_transform(X)
    np.testing.assert_allclose(Phi @ Phi.T, _np_rbf(X, X, 0.3), atol=1e-9)


def test_nystroem_clips_and_rejects_bad_method(X2):
    with pytest.warns(UserWarning, match="exceeds"):
        nf = NystroemFeatures(n_components=200, method="uniform", random_state=0).fit(X2)
    assert nf.n_components_ == 80
    before = nf.components_.copy()
    nf.set_params(method="dpp")
    with pytest.raises(ValueError, match="method must be one of"):
        nf.fit(X2[:10])
    np.testing.assert_array_equal(nf.components_, before)


# -- the inducing= parameter of the sparse models ------------------------------------------------
def _inducing(est) -> np.ndarray:
    if hasattr(est, "inducing_points_"):
        return est.inducing_points_
    return est.model_.inducing.detach().numpy()  # DKMClassifier keeps them on its model


@pytest.fixture
def clf_data():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((50, 2))
    return X, (X[:, 0] * X[:, 1] > 0).astype(int)


@pytest.mark.parametrize("method", ["kmeans", "rpcholesky", "kdpp", "greedy_variance"])
def test_sparse_dkm_and_scale_mixture_take_inducing(clf_data, method):
    X, y = clf_data
    reg = DKMRegressor(n_inducing=8, inducing=method, max_iter=3, random_state=0)
    reg.fit(X, X[:, 0] - X[:, 1])
    assert reg.inducing_points_.shape == (8, 2) and np.isfinite(reg.predict(X[:3])).all()
    clf = DKMClassifier(n_inducing=8, inducing=method, max_iter=3, random_state=0).fit(X, y)
    assert _inducing(clf).shape == (8, 2) and clf.predict_proba(X[:3]).shape == (3, 2)
    sm = ScaleMixtureClassifier(n_inducing=8, inducing=method, max_iter=3, random_state=0)
    sm.fit(X, y)
    assert sm.inducing_points_.shape == (8, 2) and sm.predict(X[:3]).shape == (3,)


def test_scale_mixture_default_inducing_is_a_training_subset(clf_data):
    X, y = clf_data
    sm = ScaleMixtureClassifier(n_inducing=8, max_iter=0, random_state=0).fit(X, y)
    # a subset of the rows, up to the round trip through standardised units
    dist = np.abs(sm.inducing_points_[:, None, :] - X[None, :, :]).max(-1).min(1)
    assert (dist < 1e-12 * (1 + np.abs(X).max())).all()


@pytest.mark.parametrize(
    "make", [
        lambda m: DKMRegressor(n_inducing=6, inducing=m, max_iter=2, random_state=0),
        lambda m: DKMClassifier(n_inducing=6, inducing=m, max_iter=2, random_state=0),
        lambda m: ScaleMixtureClassifier(n_inducing=6, inducing=m, max_iter=2, random_state=0),
    ],
)
def test_bad_inducing_raises_before_state_change(clf_data, make):
    X, y = clf_data
    est = make("uniform").fit(X, y)
    Z = _inducing(est).copy()
    est.set_params(inducing="dpp")
    with pytest.raises(ValueError, match="inducing must be one of"):
        est.fit(X[:20], y[:20])
    np.testing.assert_array_equal(_inducing(est), Z)
