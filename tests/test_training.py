"""minimize: both optimisers reach a known minimum; bad options are refused."""

from __future__ import annotations

import pytest
import torch

from gpkern.models.training import minimize


@pytest.mark.parametrize("optimizer, max_iter", [("lbfgs", 50), ("adam", 3000)])
def test_reaches_least_squares_minimum(optimizer, max_iter):
    # An ill-conditioned quadratic whose minimiser is known in closed form.
    gen = torch.Generator().manual_seed(0)
    A = torch.randn(8, 3, generator=gen, dtype=torch.float64) @ torch.diag(torch.tensor([1.0, 3.0, 10.0]))
    b = torch.randn(8, generator=gen, dtype=torch.float64)
    x_star = torch.linalg.lstsq(A, b).solution
    x = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    best = minimize(lambda: ((A @ x - b) ** 2).sum(), [x], optimizer=optimizer, max_iter=max_iter, lr=None if optimizer == "lbfgs" else 0.05)
    assert best == pytest.approx(float(((A @ x_star - b) ** 2).sum()), rel=1e-6)
    torch.testing.assert_close(x.detach(), x_star, atol=1e-4, rtol=0)


def test_reaches_rosenbrock_minimum_lbfgs():
    x = torch.nn.Parameter(torch.tensor([-1.2, 1.0], dtype=torch.float64))
    best = minimize(lambda: (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2, [x], max_iter=100)
    assert best < 1e-8  # L-BFGS stops on a loss change below tol=1e-9
    torch.testing.assert_close(x.detach(), torch.ones(2, dtype=torch.float64), atol=1e-4, rtol=0)


def test_bad_options():
    x = torch.nn.Parameter(torch.zeros(1))
    with pytest.raises(ValueError, match="optimizer"):
        minimize(lambda: x.sum(), [x], optimizer="sgd")
    with pytest.raises(ValueError, match="max_iter"):
        minimize(lambda: x.sum(), [x], max_iter=-1)
