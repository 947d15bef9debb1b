"""Every gpkern :class:`~linear_operator.LinearOperator` subclass against linear_operator's own
generic suite (:class:`~linear_operator.test.linear_operator_test_case.LinearOperatorTestCase`).

Each operator is checked with and without batch dimensions against a dense twin built here
(``torch.kron`` per batch element, never the operator's own ``to_dense``): products, solves,
log-determinants, roots, eigendecompositions, indexing, batch reshapes and the gradients of all
of them with respect to the operator's tensors.
"""

from __future__ import annotations

import unittest

import pytest
import torch
from linear_operator.operators import DiagLinearOperator
from linear_operator.test.linear_operator_test_case import (
    LinearOperatorTestCase,
    RectangularLinearOperatorTestCase,
)

from gpkern.linalg.kronecker import (
    KroneckerAddedDiagOperator,
    KroneckerOperator,
    KroneckerSumOperator,
)


def _spd(n: int, batch: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    """A well-conditioned dense SPD matrix (eigenvalues distinct with probability one)."""
    A = torch.randn(*batch, n, n, generator=g)
    return A @ A.mT / n + torch.eye(n)


def dense_kron(factors: list[torch.Tensor]) -> torch.Tensor:
    """The dense Kronecker product by ``torch.kron`` on every batch element (the reference)."""
    batch = torch.broadcast_shapes(*(f.shape[:-2] for f in factors))
    flat = [f.expand(*batch, *f.shape[-2:]).reshape(-1, *f.shape[-2:]) for f in factors]
    blocks = []
    for j in range(flat[0].shape[0]):
        out = flat[0][j]
        for f in flat[1:]:
            out = torch.kron(out, f[j])
        blocks.append(out)
    return torch.stack(blocks).reshape(*batch, *blocks[0].shape)


def _leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone().requires_grad_(True)


class TestKroneckerOperator(LinearOperatorTestCase, unittest.TestCase):
    seed = 0
    should_call_cg = False  # solves are mode products with the factor inverses
    sizes = (3, 2, 4)
    batch: tuple[int, ...] = ()

    def factors(self) -> list[torch.Tensor]:
        g = torch.Generator().manual_seed(1)
        return [_leaf(_spd(n, self.batch, g)) for n in self.sizes]

    def create_linear_op(self):
        return KroneckerOperator(*self.factors())

    def evaluate_linear_op(self, linear_op):
        return dense_kron(linear_op.factors)


class TestKroneckerOperatorBatch(TestKroneckerOperator):
    sizes = (3, 4)
    batch = (2,)


class TestKroneckerOperatorMultiBatch(TestKroneckerOperator):
    sizes = (3, 2)
    batch = (3, 2)


class TestKroneckerOperatorRectangular(RectangularLinearOperatorTestCase, unittest.TestCase):
    seed = 0
    shapes = ((2, 3), (5, 2), (3, 4))
    batch: tuple[int, ...] = ()

    def create_linear_op(self):
        g = torch.Generator().manual_seed(2)
        return KroneckerOperator(
            *[_leaf(torch.randn(*self.batch, *s, generator=g)) for s in self.shapes]
        )

    def evaluate_linear_op(self, linear_op):
        return dense_kron(linear_op.factors)


class TestKroneckerOperatorRectangularBatch(TestKroneckerOperatorRectangular):
    batch = (3, 2)


class TestKroneckerAddedDiagOperator(LinearOperatorTestCase, unittest.TestCase):
    """Constant diagonal: the exact eigen path."""

    seed = 0
    sizes = (3, 2, 4)
    batch: tuple[int, ...] = ()
    # Solves, log-determinants and roots are exact through the factor eigendecompositions:
    # linear_operator's CG and Lanczos are never needed.
    should_call_cg = False
    should_call_lanczos = False
    should_call_lanczos_diagonalization = False

    def diag(self, g: torch.Generator) -> torch.Tensor:
        return _leaf(0.5 + torch.rand(*self.batch, 1, generator=g))

    def create_linear_op(self):
        g = torch.Generator().manual_seed(3)
        factors = [_leaf(_spd(n, self.batch, g)) for n in self.sizes]
        return KroneckerAddedDiagOperator(KroneckerOperator(*factors), self.diag(g))

    def evaluate_linear_op(self, linear_op):
        K = dense_kron(linear_op.kron.factors)
        d = linear_op.diag_values.expand(*K.shape[:-1])
        return K + torch.diag_embed(d)


class TestKroneckerAddedDiagOperatorBatch(TestKroneckerAddedDiagOperator):
    sizes = (3, 4)
    batch = (2,)


class TestKroneckerAddedDiagOperatorFullDiag(TestKroneckerAddedDiagOperator):
    """A general positive diagonal: PCG in the Kronecker eigenbasis, stochastic log-determinant."""

    # Without a constant diagonal there is no structured eigendecomposition: roots and
    # eigendecompositions are linear_operator's Lanczos ones.
    should_call_lanczos = True
    should_call_lanczos_diagonalization = True

    def diag(self, g: torch.Generator) -> torch.Tensor:
        n = 1
        for s in self.sizes:
            n *= s
        return _leaf(0.5 + torch.rand(*self.batch, n, generator=g))


class TestKroneckerAddedDiagOperatorFullDiagBatch(TestKroneckerAddedDiagOperatorFullDiag):
    sizes = (3, 4)
    batch = (2,)


class TestKroneckerSumOperator(LinearOperatorTestCase, unittest.TestCase):
    seed = 0
    sizes = (3, 4)
    batch: tuple[int, ...] = ()

    def create_linear_op(self):
        g = torch.Generator().manual_seed(4)
        terms = [
            KroneckerOperator(*[_leaf(_spd(n, self.batch, g)) for n in self.sizes])
            for _ in range(2)
        ]
        return KroneckerSumOperator(*terms)

    def evaluate_linear_op(self, linear_op):
        return sum(dense_kron(t.factors) for t in linear_op.terms)


class TestKroneckerSumOperatorBatch(TestKroneckerSumOperator):
    batch = (2,)


class TestKernelOperator(LinearOperatorTestCase, unittest.TestCase):
    """The lazy kernel matrix (torch backend: the same operator without a KeOps compile)."""

    seed = 0
    n = 12
    batch: tuple[int, ...] = ()
    outputscale = 1.5

    def create_linear_op(self):
        import gpytorch

        from gpkern.linalg.keops import kernel_operator

        g = torch.Generator().manual_seed(5)
        x = torch.randn(*self.batch, self.n, 2, generator=g)
        kernel = gpytorch.kernels.ScaleKernel(gpytorch.kernels.RBFKernel())
        kernel.base_kernel.lengthscale = 0.4
        kernel.outputscale = self.outputscale
        op = kernel_operator(kernel, x, backend="torch")
        with torch.no_grad():
            torch.testing.assert_close(op.to_dense(), kernel(x).to_dense())
        return op

    def evaluate_linear_op(self, linear_op):
        x1, x2 = linear_op.x1, linear_op.x2
        return linear_op.formula(x1[..., :, None, :], x2[..., None, :, :], linear_op.theta_vec)


class TestKernelOperatorBatch(TestKernelOperator):
    n = 8
    batch = (2,)


class TestKernelOperatorMultiBatch(TestKernelOperator):
    n = 6
    batch = (3, 2)
    # Every eigenvalue above 1 (as the Kronecker factors here): the suite checks stochastic
    # log-determinants (256 probes) to 20 %, which a log-determinant near 0 would fail.
    outputscale = 20.0


class TestKernelOperatorRectangular(RectangularLinearOperatorTestCase, unittest.TestCase):
    """A cross-kernel matrix whose inputs' batch shapes (2, 1) and (3,) broadcast to (2, 3)."""

    seed = 0

    def create_linear_op(self):
        import gpytorch

        from gpkern.linalg.keops import kernel_operator

        g = torch.Generator().manual_seed(9)
        x1 = torch.randn(2, 1, 5, 3, generator=g)
        x2 = torch.randn(3, 7, 3, generator=g)
        kernel = gpytorch.kernels.MaternKernel(nu=1.5)
        kernel.lengthscale = 0.7
        op = kernel_operator(kernel, x1, x2, backend="torch")
        assert op.shape == (2, 3, 5, 7)
        with torch.no_grad():
            torch.testing.assert_close(op.to_dense(), kernel(x1, x2).to_dense())
        return op

    def evaluate_linear_op(self, linear_op):
        x1, x2 = linear_op.x1, linear_op.x2
        dense = linear_op.formula(x1[..., :, None, :], x2[..., None, :, :], linear_op.theta_vec)
        return dense.expand(linear_op.shape)


# -- beyond the generic suite: broadcasting, fallbacks, a GPyTorch batch model ---------------
def test_factor_batch_shapes_broadcast():
    """Factors of batch shapes (2, 1), (3,) and () give a (2, 3) batch of Kronecker products;
    products, solves and log-determinants agree with the dense twin, also for right-hand sides
    that carry extra batch dimensions."""
    g = torch.Generator().manual_seed(6)
    factors = [_spd(3, (2, 1), g), _spd(2, (3,), g), _spd(4, (), g)]
    K = KroneckerOperator(*factors)
    dense = dense_kron(factors)
    assert K.shape == dense.shape == (2, 3, 24, 24)
    rhs = torch.randn(5, 1, 1, 24, 2, generator=g)
    torch.testing.assert_close(K @ rhs, dense @ rhs)
    torch.testing.assert_close(K.solve(rhs), torch.linalg.solve(dense, rhs))
    torch.testing.assert_close(K.logdet(), torch.logdet(dense))
    noise = 0.3 + torch.rand(3, 1, generator=g)
    A = K.add_diagonal(noise)
    A_dense = dense + noise[..., None] * torch.eye(24)
    torch.testing.assert_close(A.solve(rhs), torch.linalg.solve(A_dense, rhs))
    torch.testing.assert_close(A.logdet(), torch.logdet(A_dense))
    # A second diagonal merges into the first, keeping the structure.
    extra = 0.1 + torch.rand(2, 3, 24, generator=g)
    A2 = A + DiagLinearOperator(extra)
    assert isinstance(A2, KroneckerAddedDiagOperator)
    torch.testing.assert_close(A2.to_dense(), A_dense + torch.diag_embed(extra))
    torch.testing.assert_close(A2.solve(rhs), torch.linalg.solve(A2.to_dense(), rhs))
    # An unbatched operator folds the right side's batch into columns.
    A0 = KroneckerOperator(*[f[(0,) * (f.ndim - 2)] for f in factors]).add_diagonal(noise[0])
    torch.testing.assert_close(A0.solve(rhs), torch.linalg.solve(A0.to_dense(), rhs))


def test_nonsymmetric_factors_fall_back_to_a_dense_solve():
    """The eigen path assumes symmetric factors: with a non-symmetric one the operator warns and
    solves densely, matching the dense solve, log-determinant and their gradients."""
    g = torch.Generator().manual_seed(7)
    A = _leaf(_spd(3, (), g) + 0.3 * torch.randn(3, 3, generator=g))
    B = _leaf(_spd(4, (), g))
    op = KroneckerOperator(A, B).add_diagonal(torch.tensor(0.5))
    dense = dense_kron([A, B]) + 0.5 * torch.eye(12)
    rhs = torch.randn(12, 2, generator=g)
    with pytest.warns(UserWarning, match="not symmetric"):
        x = op.solve(rhs)
    with pytest.warns(UserWarning, match="not symmetric"):
        quad, logdet = op.inv_quad_logdet(rhs, logdet=True)
    x_ref = torch.linalg.solve(dense, rhs)
    torch.testing.assert_close(x, x_ref)
    torch.testing.assert_close(quad, (rhs * x_ref).sum())
    torch.testing.assert_close(logdet, torch.logdet(dense))
    torch.testing.assert_close(op.mT.to_dense(), dense.mT)
    grads = torch.autograd.grad(x.sum() + logdet, (A, B))
    grads_ref = torch.autograd.grad(x_ref.sum() + torch.logdet(dense), (A, B))
    for gr, gr_ref in zip(grads, grads_ref):
        torch.testing.assert_close(gr, gr_ref)


def test_gpytorch_batch_independent_model_with_kronecker_covariance():
    """A batch of two independent grid GPs (batch noise) through GPyTorch's likelihood: the
    Kronecker structure survives (KroneckerAddedDiagOperator) and log_prob equals the dense one."""
    import gpytorch

    g = torch.Generator().manual_seed(8)
    factors = [_leaf(_spd(3, (2,), g)), _leaf(_spd(4, (2,), g))]
    y = torch.randn(2, 12, generator=g)
    likelihood = gpytorch.likelihoods.GaussianLikelihood(batch_shape=torch.Size([2])).double()
    likelihood.noise = torch.tensor([[0.1], [0.4]])
    mvn = gpytorch.distributions.MultivariateNormal(torch.zeros(2, 12), KroneckerOperator(*factors))
    marginal = likelihood(mvn)
    assert isinstance(marginal.lazy_covariance_matrix, KroneckerAddedDiagOperator)
    lp = marginal.log_prob(y)
    cov = dense_kron(factors) + likelihood.noise[..., None] * torch.eye(12)
    lp_ref = torch.distributions.MultivariateNormal(torch.zeros(2, 12), cov).log_prob(y)
    torch.testing.assert_close(lp, lp_ref)
    grads = torch.autograd.grad(lp.sum(), factors)
    grads_ref = torch.autograd.grad(lp_ref.sum(), factors)
    for gr, gr_ref in zip(grads, grads_ref):
        # Symmetric factors: only the symmetric part of the gradient is defined by the model.
        torch.testing.assert_close(gr, 0.5 * (gr_ref + gr_ref.mT))
