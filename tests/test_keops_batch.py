"""Batched kernel operators against the kernel evaluated densely on each batch element.

The reference loops over the batch and calls the GPyTorch / gpkern kernel itself on unbatched
inputs (``kernel(x1[b], x2[b]).to_dense()``), never the operator's formula, so products,
diagonals, indexing and the gradients with respect to the kernel's parameters and the inputs
are checked against an independent dense twin. The KeOps test shares one combined kernel (one
compiled reduction and its gradient) as tests/test_keops.py does.
"""

from __future__ import annotations

import warnings

import gpytorch
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import keops_compiles
from gpkern.kernels.nngp import Dense, Erf, Relu, serial
from gpkern.kernels.nngp.kernel import NNGPKernel
from gpkern.linalg.keops import KeOpsFallbackWarning, KernelOperator, kernel_operator

needs_keops = pytest.mark.skipif(not keops_compiles(), reason="pykeops cannot compile here")


def _rbf() -> gpytorch.kernels.Kernel:
    kernel = gpytorch.kernels.ScaleKernel(gpytorch.kernels.RBFKernel(ard_num_dims=3))
    kernel.base_kernel.lengthscale = torch.tensor([0.7, 1.3, 0.9])
    kernel.outputscale = 1.7
    return kernel


def _matern() -> gpytorch.kernels.Kernel:
    kernel = gpytorch.kernels.MaternKernel(nu=2.5, ard_num_dims=3)
    kernel.lengthscale = torch.tensor([0.8, 1.1, 0.6])
    return kernel


def _nngp() -> gpytorch.kernels.Kernel:
    arch = serial(Dense(1.3, 0.2), Relu(), Dense(1.1, 0.3), Erf(1.2, 0.8, 0.1), Dense(0.9, 0.1))
    return NNGPKernel(arch, learn_variances=True)


KERNELS = {"rbf": _rbf, "matern": _matern, "nngp": _nngp}


def per_batch(kernel, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    """``K(x1, x2)`` of shape ``(*batch, n, m)``: the kernel called on every batch element."""
    batch = torch.broadcast_shapes(x1.shape[:-2], x2.shape[:-2])
    a = x1.expand(*batch, *x1.shape[-2:]).reshape(-1, *x1.shape[-2:])
    b = x2.expand(*batch, *x2.shape[-2:]).reshape(-1, *x2.shape[-2:])
    blocks = [kernel(a[i], b[i]).to_dense() for i in range(a.shape[0])]
    return torch.stack(blocks).reshape(*batch, x1.shape[-2], x2.shape[-2])


def _params(kernel) -> list[torch.Tensor]:
    return [p for _, p in kernel.named_parameters()]


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_torch_operator_equals_the_kernel_on_each_batch_element(name):
    """Batch shapes (2, 1) and (3,) broadcast to (2, 3); a right-hand side with a further
    leading batch dimension folds into columns. Products, the dense matrix, transposes and
    indexing equal the per-element kernel matrices, and so do the gradients of u^T K v with
    respect to the kernel's parameters and both inputs."""
    kernel = KERNELS[name]()
    g = torch.Generator().manual_seed(0)
    x1 = torch.randn(2, 1, 7, 3, generator=g).requires_grad_(True)
    x2 = torch.randn(3, 5, 3, generator=g).requires_grad_(True)
    v = torch.randn(4, 1, 1, 5, 2, generator=g)
    u = torch.randn(4, 2, 3, 7, 2, generator=g)
    op = kernel_operator(kernel, x1, x2, backend="torch")
    ref = per_batch(kernel, x1, x2)
    assert op.shape == ref.shape == (2, 3, 7, 5)
    out = op @ v
    torch.testing.assert_close(out, ref @ v)
    torch.testing.assert_close(op.to_dense(), ref)
    torch.testing.assert_close(op.mT @ u, ref.mT @ u)
    torch.testing.assert_close(op[1, 2, 1:6, [0, 3, 4]].to_dense(), ref[1, 2, 1:6, [0, 3, 4]])
    rows, cols = torch.tensor([1, 6, 0]), torch.tensor([0, 3, 4])
    torch.testing.assert_close(op[..., rows, cols], ref[..., rows, cols])
    torch.testing.assert_close(op[:, 1:].to_dense(), ref[:, 1:])
    leaves = [*_params(kernel), x1, x2]
    grads = torch.autograd.grad((u * out).sum(), leaves)
    grads_ref = torch.autograd.grad((u * (ref @ v)).sum(), leaves)
    for gr, gr_ref in zip(grads, grads_ref):
        torch.testing.assert_close(gr, gr_ref)


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_square_batched_operator_diagonal_and_symmetry(name):
    kernel = KERNELS[name]()
    x = torch.randn(2, 3, 6, 3, generator=torch.Generator().manual_seed(1))
    op = kernel_operator(kernel, x, backend="torch")
    with torch.no_grad():
        ref = per_batch(kernel, x, x)
        torch.testing.assert_close(op.diagonal(), ref.diagonal(dim1=-2, dim2=-1))
        torch.testing.assert_close(op.to_dense(), op.to_dense().mT)
        torch.testing.assert_close(op.expand(4, 2, 3, 6, 6).to_dense(), ref.expand(4, 2, 3, 6, 6))
        torch.testing.assert_close(op.unsqueeze(1).to_dense(), ref.unsqueeze(1))
        torch.testing.assert_close(op.permute(1, 0, 2, 3).to_dense(), ref.permute(1, 0, 2, 3))


@pytest.mark.parametrize("name", ["rbf", "nngp"])
def test_torch_operator_gradcheck_in_theta_and_inputs(name):
    """Finite differences of the batched product in the flat hyperparameters and the inputs."""
    kernel = KERNELS[name]()
    g = torch.Generator().manual_seed(2)
    x1 = torch.randn(2, 4, 3, generator=g, requires_grad=True)
    x2 = torch.randn(1, 3, 3, generator=g, requires_grad=True)
    v = torch.randn(2, 3, 2, generator=g)
    op = kernel_operator(kernel, x1, x2, backend="torch")
    theta = op.theta_vec.detach().clone().requires_grad_(True)

    def product(theta, x1, x2):
        return KernelOperator(x1, x2, theta, formula=op.formula, backend="torch") @ v

    assert torch.autograd.gradcheck(product, (theta, x1, x2))


def test_batch_shapes_must_broadcast():
    kernel = gpytorch.kernels.RBFKernel()
    with pytest.raises(ValueError, match="do not broadcast"):
        kernel_operator(kernel, torch.randn(2, 4, 3), torch.randn(3, 4, 3), backend="torch")


@settings(max_examples=25, deadline=None)
@given(
    batch=st.lists(st.integers(1, 3), min_size=0, max_size=2),
    n=st.integers(1, 6),
    d=st.integers(1, 3),
    lengthscale=st.floats(0.3, 3.0),
    seed=st.integers(0, 2**16),
)
def test_batched_operator_is_symmetric_and_equals_dense(batch, n, d, lengthscale, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*batch, n, d, generator=g)
    v = torch.randn(*batch, n, 2, generator=g)
    kernel = gpytorch.kernels.RBFKernel()
    kernel.lengthscale = lengthscale
    op = kernel_operator(kernel, x, backend="torch")
    with torch.no_grad():
        ref = per_batch(kernel, x, x)
        dense = op.to_dense()
        torch.testing.assert_close(dense, dense.mT)
        torch.testing.assert_close(dense, ref)
        torch.testing.assert_close(op @ v, ref @ v)
        torch.testing.assert_close(op.mT @ v, ref @ v)


def test_batch_independent_gpytorch_likelihood_with_iterative_solves():
    """A batch of two GPs through GPyTorch's likelihood with CG and stochastic Lanczos (no
    Cholesky): the log-density and its gradients agree with the dense batch."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 40, 3, generator=g)
    y = torch.randn(2, 40, generator=g)
    kernel = _rbf()
    likelihood = gpytorch.likelihoods.GaussianLikelihood(batch_shape=torch.Size([2]))
    likelihood.noise = torch.tensor([[0.2], [0.5]])
    op = kernel_operator(kernel, x, backend="torch")
    torch.manual_seed(0)
    with gpytorch.settings.max_cholesky_size(0), gpytorch.settings.num_trace_samples(2000):
        prior = gpytorch.distributions.MultivariateNormal(torch.zeros(2, 40), op)
        lp = likelihood(prior).log_prob(y)
    cov = per_batch(kernel, x, x) + likelihood.noise[..., None] * torch.eye(40)
    lp_ref = torch.distributions.MultivariateNormal(torch.zeros(2, 40), cov).log_prob(y)
    # The log-determinant is a stochastic estimate (2,000 probes); the quadratic term is CG.
    torch.testing.assert_close(lp, lp_ref, rtol=0, atol=0.3)
    params = _params(kernel)
    grads = torch.autograd.grad(lp.sum(), params)
    grads_ref = torch.autograd.grad(lp_ref.sum(), params)
    for gr, gr_ref in zip(grads, grads_ref):
        torch.testing.assert_close(gr, gr_ref, rtol=0.1, atol=0.1)


@pytest.mark.slow  # two KeOps compiles in batch mode (about a minute each on a loaded CPU)
@needs_keops
def test_keops_batched_products_and_gradients_equal_the_dense_kernel():
    """One combined kernel (scaled RBF + scaled Matérn + scaled NNGP) under KeOps batch mode:
    the product equals the dense batch, and the gradient with respect to each output scale
    isolates that component's u^T K_c v (each component checked separately), the gradients of
    the other parameters and of the inputs its derivative."""
    components = [_rbf().base_kernel, _matern(), _nngp()]
    kernel = gpytorch.kernels.AdditiveKernel(
        *[gpytorch.kernels.ScaleKernel(c) for c in components]
    )
    for s, scale in zip(kernel.kernels, (1.3, 0.7, 0.4)):
        s.outputscale = scale
    g = torch.Generator().manual_seed(4)
    x1 = torch.randn(2, 1, 30, 3, generator=g).requires_grad_(True)
    x2 = torch.randn(3, 20, 3, generator=g).requires_grad_(True)
    v = torch.randn(2, 3, 20, 4, generator=g)
    u = torch.randn(2, 3, 30, 4, generator=g)
    with warnings.catch_warnings():
        warnings.simplefilter("error", KeOpsFallbackWarning)
        op = kernel_operator(kernel, x1, x2, backend="keops")
        with torch.no_grad():
            out = op @ v
        value = (u * (op @ v)).sum()  # the differentiable reduction (grad formula)
    assert op.runtime.active
    ref = per_batch(kernel, x1, x2)
    torch.testing.assert_close(out, ref @ v)
    leaves = [*_params(kernel), x1, x2]
    grads = torch.autograd.grad(value, leaves)
    grads_ref = torch.autograd.grad((u * (ref @ v)).sum(), leaves)
    for gr, gr_ref in zip(grads, grads_ref):
        torch.testing.assert_close(gr, gr_ref)
