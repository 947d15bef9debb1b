"""robust_cholesky and the Gaussian log likelihood against scipy."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gpkern.exceptions import NotPSDError, NumericalWarning
from gpkern.linalg.cholesky import gaussian_log_likelihood, robust_cholesky


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 12), t=st.integers(1, 3), seed=st.integers(0, 1000))
def test_log_likelihood_matches_scipy(n, t, seed):
    rng = np.random.default_rng(seed)
    B = rng.standard_normal((n, n))
    A = B @ B.T + n * np.eye(n)
    Y = rng.standard_normal((n, t))
    L, jitter = robust_cholesky(torch.tensor(A))
    assert jitter == 0.0
    lml, alpha = gaussian_log_likelihood(L, torch.tensor(Y))
    ref = sum(scipy.stats.multivariate_normal(np.zeros(n), A).logpdf(Y[:, j]) for j in range(t))
    np.testing.assert_allclose(float(lml), ref, rtol=1e-10)
    np.testing.assert_allclose(alpha.numpy(), np.linalg.solve(A, Y), rtol=1e-8)


def test_jitter_escalates_and_warns():
    A = torch.ones(4, 4, dtype=torch.float64)
    with pytest.warns(NumericalWarning, match="jitter"):
        L, jitter = robust_cholesky(A)
    assert jitter > 0
    torch.testing.assert_close(L @ L.T, A + jitter * torch.eye(4, dtype=torch.float64))


def test_indefinite_and_nonfinite_raise():
    with pytest.raises(NotPSDError, match="not positive definite"):
        robust_cholesky(-torch.eye(3, dtype=torch.float64), warn=False)
    with pytest.raises(NotPSDError, match="NaN or inf"):
        robust_cholesky(torch.tensor([[1.0, float("nan")], [0.0, 1.0]]))
