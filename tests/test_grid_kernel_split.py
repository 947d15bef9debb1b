"""One kernel given to GridGPRegressor is split exactly into per-axis factors, or refused: the
grid GP is then the dense GP with the same kernel object."""

import gpytorch
import numpy as np
import pytest
import torch

from gpkern.estimators import GPRegressor, GridGPRegressor
from gpkern.models.grid import split_axis_kernels


def _data(seed=0):
    rng = np.random.default_rng(seed)
    x1, x2 = np.linspace(0, 1, 30), np.linspace(0, 1, 25)
    X = np.stack(np.meshgrid(x1, x2, indexing="ij"), -1).reshape(-1, 2)
    y = np.sin(5 * X[:, 0]) * np.cos(4 * X[:, 1]) + 0.1 * rng.standard_normal(len(X))
    return X, y, rng.uniform(-0.1, 1.1, (40, 2))


def _scaled_ard():
    k = gpytorch.kernels.ScaleKernel(gpytorch.kernels.RBFKernel(ard_num_dims=2))
    k.base_kernel.lengthscale = torch.tensor([[0.3, 0.2]])
    k.outputscale = 1.7
    return k


def _product_of_axes():
    k0 = gpytorch.kernels.MaternKernel(nu=1.5, active_dims=[0])
    k0.lengthscale = 0.4
    k1 = gpytorch.kernels.PeriodicKernel(active_dims=[1])
    k1.lengthscale, k1.period_length = 0.8, 0.6
    k1b = gpytorch.kernels.RBFKernel(active_dims=[1])
    k1b.lengthscale = 0.9
    return gpytorch.kernels.ScaleKernel(k0 * k1) * k1b  # two factors on axis 1


def _shared_rbf():
    k = gpytorch.kernels.RBFKernel()
    k.lengthscale = 0.25
    return k


@pytest.mark.parametrize("make", [_scaled_ard, _product_of_axes, _shared_rbf],
                         ids=["scale-rbf-ard", "product-of-axes", "rbf-shared-lengthscale"])
def test_grid_equals_dense_gp_with_the_same_kernel(make):
    X, y, Xs = _data()
    kernel = make()
    kw = dict(kernel=kernel, noise=0.05, optimizer=None)
    dense = GPRegressor(**kw).fit(X, y)
    grid = GridGPRegressor(**kw).fit(X, y)
    assert grid.backend_ == "kronecker"
    np.testing.assert_allclose(grid.predict(Xs), dense.predict(Xs), rtol=0, atol=1e-8)
    lml_d, lml_g = dense.log_marginal_likelihood_value_, grid.log_marginal_likelihood_value_
    assert lml_g == pytest.approx(lml_d, rel=1e-8)
    _, sd_d = dense.predict(Xs, return_std=True)
    _, sd_g = grid.predict(Xs, return_std=True)
    np.testing.assert_allclose(sd_g, sd_d, atol=1e-7)


def test_split_takes_one_output_scale_and_distributes_ard_lengthscales():
    k = _scaled_ard()
    split = split_axis_kernels(k, 2)
    assert split.outputscale == pytest.approx(1.7)
    ls = [float(f.lengthscale) for f in split.kernels]
    assert ls == pytest.approx([0.3, 0.2], rel=1e-6)
    assert float(k.outputscale) == pytest.approx(1.7)  # the user's kernel is untouched
    assert k.base_kernel.lengthscale.shape == (1, 2)


def test_a_shared_lengthscale_stays_shared_while_learning():
    X, y, _ = _data()
    grid = GridGPRegressor(kernel=_shared_rbf(), max_iter=20, random_state=0).fit(X, y)
    a, b = grid.kernels_
    assert a is b  # one module on both axes: the dense kernel's single length-scale


@pytest.mark.parametrize(
    "kernel",
    [
        gpytorch.kernels.MaternKernel(nu=2.5),  # a function of the whole distance
        gpytorch.kernels.ScaleKernel(gpytorch.kernels.MaternKernel(nu=1.5, ard_num_dims=2)),
        gpytorch.kernels.RBFKernel(active_dims=[0]) + gpytorch.kernels.RBFKernel(active_dims=[1]),
        gpytorch.kernels.RBFKernel(active_dims=[0]),  # ignores axis 1
    ],
    ids=["matern", "scaled-matern-ard", "sum", "missing-axis"],
)
def test_kernels_that_do_not_factorise_are_refused_before_any_change(kernel):
    X, y, Xs = _data()
    gp = GridGPRegressor(noise=0.05, optimizer=None).fit(X, y)
    before = gp.predict(Xs)
    with pytest.raises(ValueError, match="list of one 1-D kernel per axis"):
        gp.set_params(kernel=kernel).fit(X, y)
    np.testing.assert_array_equal(gp.predict(Xs), before)


def test_a_product_of_one_dimensional_materns_is_accepted():
    X, y, Xs = _data()
    k = gpytorch.kernels.MaternKernel(nu=1.5, active_dims=[0]) * gpytorch.kernels.MaternKernel(
        nu=1.5, active_dims=[1]
    )
    dense = GPRegressor(kernel=k, noise=0.05, optimizer=None).fit(X, y)
    grid = GridGPRegressor(kernel=k, noise=0.05, optimizer=None).fit(X, y)
    np.testing.assert_allclose(grid.predict(Xs), dense.predict(Xs), atol=1e-8)


def test_list_items_must_be_one_dimensional():
    X, y, _ = _data()
    k = gpytorch.kernels.RBFKernel(ard_num_dims=2)
    with pytest.raises(ValueError, match="1-D kernels"):
        GridGPRegressor(kernel=[k, k], optimizer=None).fit(X, y)
