"""ConvergenceWarnings: every optimising estimator says when its optimiser stopped at the
budget or a hyperparameter ended at a bound, and stays silent on an easy converged fit."""

import warnings

import gpytorch
import numpy as np
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning

from gpkern.estimators import (
    DKMClassifier,
    DKMRegressor,
    GPRegressor,
    GridGPRegressor,
    MultipleKernelRegressor,
    ScaleMixtureClassifier,
    ScaleMixtureRegressor,
    StudentTProcessRegressor,
)
from gpkern.models.training import BoundHit, optimize, parameters_at_bounds


def _regression(n=40, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.uniform(0, 5, (n, 1))
    return X, np.sin(X[:, 0]) + 0.1 * rng.standard_normal(n)


def _classification(n=60, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 2))
    return X, (X[:, 0] + X[:, 1] > 0).astype(int)


def _grid(seed=0):
    rng = np.random.default_rng(seed)
    g = np.linspace(0, 1, 12)
    X = np.stack(np.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    return X, np.sin(5 * X[:, 0]) * np.cos(3 * X[:, 1]) + 0.05 * rng.standard_normal(len(X))


def _messages(est, X, y) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        est.fit(X, y)
    return [str(w.message) for w in caught if issubclass(w.category, ConvergenceWarning)]


def _silent(est, X, y):
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        return est.fit(X, y)


# -- the loop: what "converged" means ---------------------------------------------------------
def test_lbfgs_reports_budget_and_convergence():
    target = torch.arange(1.0, 6.0, dtype=torch.float64)
    x = torch.nn.Parameter(torch.zeros(5, dtype=torch.float64))

    def rosenbrockish():
        return ((x - target) ** 2 * torch.arange(1.0, 6.0, dtype=torch.float64) ** 3).sum()

    res = optimize(rosenbrockish, [x], max_iter=1)
    assert res.n_iter == 1 and not res.converged
    res = optimize(rosenbrockish, [x], max_iter=100)
    assert res.converged and res.n_iter < 100
    torch.testing.assert_close(x.detach(), target, rtol=0, atol=1e-5)


def test_lbfgs_min_improvement_stops_as_converged_after_its_patience():
    """With min_improvement, a run whose evaluations stop lowering the best loss by more than it
    ends after n_iter_no_change of them, converged, at the best point seen; a run that keeps
    improving by more is never cut short and meets L-BFGS's own tolerance."""
    target = torch.arange(1.0, 6.0, dtype=torch.float64)
    x = torch.nn.Parameter(torch.zeros(5, dtype=torch.float64))

    def quadratic():
        return ((x - target) ** 2 * torch.arange(1.0, 6.0, dtype=torch.float64) ** 3).sum()

    assert not optimize(quadratic, [x], max_iter=3).converged  # the budget, without the rule
    x.data.zero_()
    seen = []
    res = optimize(quadratic, [x], max_iter=50, min_improvement=1e6, n_iter_no_change=3,
                   callback=lambda i, v: seen.append(v))
    assert res.converged and len(seen) == 1 + 3 and res.loss == min(seen) < seen[0]
    torch.testing.assert_close(quadratic().detach(), torch.tensor(min(seen), dtype=torch.float64))
    x.data.zero_()
    res = optimize(quadratic, [x], max_iter=100, min_improvement=1e-12)
    assert res.converged and res.n_iter < 100
    torch.testing.assert_close(x.detach(), target, rtol=0, atol=1e-5)


def test_adam_converges_only_when_the_loss_stops_decreasing():
    x = torch.nn.Parameter(torch.tensor([3.0], dtype=torch.float64))
    loss = lambda: ((x - 1.0) ** 2).sum()  # noqa: E731
    assert not optimize(loss, [x], optimizer="adam", max_iter=20, lr=0.01).converged  # still far
    x.data.fill_(3.0)
    assert optimize(loss, [x], optimizer="adam", max_iter=2000, lr=0.05).converged


def test_parameters_at_bounds_reports_only_chosen_finite_bounds():
    k = gpytorch.kernels.RBFKernel(
        ard_num_dims=2, lengthscale_constraint=gpytorch.constraints.Interval(0.5, 4.0)
    ).double()
    k.lengthscale = torch.tensor([[0.5, 1.0]], dtype=torch.float64)
    s = gpytorch.kernels.ScaleKernel(k).double()
    s.outputscale = 1e-8  # Positive(): a lower bound of 0 encodes a sign, not a limit
    hits = parameters_at_bounds(s)
    assert hits == [BoundHit("base_kernel.lengthscale", 0, pytest.approx(0.5), 0.5, "lower")]
    k.raw_lengthscale.requires_grad_(False)  # fixed parameters are not reported
    assert parameters_at_bounds(s) == []


# -- GPRegressor --------------------------------------------------------------------------------
def test_gp_regressor_budget_warning():
    X, y = _regression()
    msgs = _messages(GPRegressor(max_iter=3), X, y)
    assert len(msgs) == 1
    assert "GPRegressor" in msgs[0] and "max_iter=3" in msgs[0] and "Increase max_iter" in msgs[0]


def test_gp_regressor_noise_floor_warning():
    X, _ = _regression()
    msgs = _messages(GPRegressor(), X, np.sin(X[:, 0]))  # noise-free targets
    (msg,) = [m for m in msgs if "noise" in m]
    assert "lower bound 1e-06" in msg and "noise=" in msg


def test_gp_regressor_lengthscale_bound_warning():
    X, y = _regression()
    bound = gpytorch.constraints.Interval(2.0, 10.0)  # the data want a length-scale near 1
    msgs = _messages(GPRegressor(kernel=gpytorch.kernels.RBFKernel(lengthscale_constraint=bound)), X, y)
    (msg,) = [m for m in msgs if "lengthscale" in m]
    assert "lower bound 2" in msg and "Change the bound" in msg


def test_gp_regressor_silent_when_converged():
    X, y = _regression()
    gp = _silent(GPRegressor(random_state=0), X, y)
    assert 0 < gp.n_iter_ < gp.max_iter


def test_gp_regressor_fixed_hyperparameters_never_warn():
    X, _ = _regression()
    _silent(GPRegressor(optimizer=None), X, np.sin(X[:, 0]))


# -- GridGPRegressor ----------------------------------------------------------------------------
def test_grid_budget_warning_and_silence():
    X, y = _grid()
    msgs = _messages(GridGPRegressor(max_iter=3), X, y)
    assert len(msgs) == 1 and "GridGPRegressor" in msgs[0]
    _silent(GridGPRegressor(random_state=0), X, y)


# -- MultipleKernelRegressor --------------------------------------------------------------------
def test_multiple_kernel_budget_warning_and_silence():
    X, y = _regression()
    msgs = _messages(MultipleKernelRegressor(max_iter=2, n_components=20, random_state=0), X, y)
    assert len(msgs) == 1 and "solver='sca'" in msgs[0] and "max_iter=2" in msgs[0]
    _silent(MultipleKernelRegressor(n_components=20, random_state=0), X, y)


def test_multiple_kernel_noise_floor_warning():
    X = np.linspace(0, 5, 40)[:, None]
    y = np.sin(X[:, 0])  # noise-free: the noise runs to its floor
    msgs = _messages(MultipleKernelRegressor(n_components=20, random_state=0), X, y)
    (msg,) = [m for m in msgs if "noise" in m]
    assert "lower bound 0.0001" in msg and "noise_lower_bound" in msg


# -- scale mixtures -----------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [StudentTProcessRegressor, ScaleMixtureRegressor])
def test_scale_mixture_regressors_budget_warning(cls):
    X, y = _regression()
    msgs = _messages(cls(max_iter=3), X, y)
    assert len(msgs) == 1 and cls.__name__ in msgs[0]


def test_scale_mixture_regressors_silent_when_converged():
    X, y = _regression()
    _silent(ScaleMixtureRegressor(random_state=0), X, y)
    _silent(StudentTProcessRegressor(df=4, random_state=0), X, y)


def test_scale_mixture_classifier_budget_warning_and_silence():
    X, y = _classification()
    msgs = _messages(ScaleMixtureClassifier(n_inducing=20, max_iter=5, random_state=0), X, y)
    assert len(msgs) == 1 and "adam" in msgs[0] and "max_iter=5" in msgs[0]
    _silent(ScaleMixtureClassifier(n_inducing=20, random_state=0), X, y)


# -- deep kernel machines -----------------------------------------------------------------------
def test_dkm_regressor_budget_warning_and_silence():
    X, y = _regression()
    msgs = _messages(DKMRegressor(n_layers=1, widths_ratio=1.0, max_iter=3, random_state=0), X, y)
    assert any("NNGP stage" in m for m in msgs) and any("Gram stage" in m for m in msgs)
    _silent(DKMRegressor(n_layers=1, widths_ratio=1.0, max_iter=100, random_state=0), X, y)


def test_dkm_classifier_budget_warning():
    X, y = _classification(30)
    msgs = _messages(DKMClassifier(n_layers=1, max_iter=3, random_state=0), X, y)
    assert any("DKMClassifier (NNGP stage)" in m for m in msgs)


def test_dkm_classifier_silent_when_converged():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 1))
    y = (X[:, 0] + rng.standard_normal(40) > 0).astype(int)  # overlapping classes: a finite optimum
    _silent(DKMClassifier(n_layers=1, n_inducing=5, max_iter=300, random_state=0), X, y)


# -- distributed SLIM-KL ------------------------------------------------------------------------
def test_slimkl_budget_and_noise_floor_warnings():
    from gpkern.distributed import slimkl

    def messages(X, y, **kw):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            slimkl.fit(X, y, n_components=20, **kw)
        return [str(w.message) for w in caught if issubclass(w.category, ConvergenceWarning)]

    X, y = _regression()
    (msg,) = messages(X, y, max_rounds=1)
    assert "SLIM-KL" in msg and "max_rounds=1" in msg
    Xf = np.linspace(0, 5, 40)[:, None]
    msgs = messages(Xf, np.sin(Xf[:, 0]), max_rounds=200)  # noise-free targets
    assert any("noise" in m and "lower bound 0.0001" in m for m in msgs)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        assert slimkl.fit(X, y, n_components=20, max_rounds=200).converged
