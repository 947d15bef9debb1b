"""Hyperparameter gradients of the KeOps NNGP formula at the diagonal pairs.

At :math:`x = x'` the (ab)ReLU dual is evaluated at :math:`\\cos\\vartheta = 1 - 16\\epsilon`,
where :math:`\\sin\\vartheta - \\vartheta\\cos\\vartheta` has a derivative made of cancelling
:math:`\\pm 1/\\sin\\vartheta` terms; the reference is the torch backend (dense autograd).
"""

from __future__ import annotations

import pytest
import torch

from conftest import keops_compiles
from gpkern.kernels.nngp import Dense, Relu, serial
from gpkern.kernels.nngp.kernel import NNGPKernel
from gpkern.linalg.keops import kernel_operator


def _grads(kernel, x, a, backend):
    kernel.zero_grad()
    op = kernel_operator(kernel, x, backend=backend)
    (a * (op @ a)).sum().backward()
    return {name: p.grad.clone() for name, p in kernel.named_parameters()}


@pytest.mark.slow
@pytest.mark.skipif(not keops_compiles(), reason="KeOps cannot compile here")
def test_two_relu_layers_gradient_matches_torch_backend():
    torch.manual_seed(0)
    x = torch.randn(160, 3, dtype=torch.float64)
    a = torch.randn(160, 3, dtype=torch.float64)
    arch = serial(Dense(1.0, 0.1), Relu(), Dense(1.0, 0.1), Relu(), Dense(1.0, 0.1))
    kernel = NNGPKernel(arch, learn_variances=True).double()
    ref = _grads(kernel, x, a, "torch")
    got = _grads(kernel, x, a, "keops")
    assert set(got) == set(ref) and any(n.startswith("raw_W_std") for n in ref)
    for name, g in ref.items():
        err = (got[name] - g).abs().max() / g.abs().max()
        assert err < 1e-9, (name, float(err))
    # Diagonal pairs alone: the values are unchanged by the series branch.
    diag = kernel_operator(kernel, x, backend="keops") @ torch.eye(160, dtype=torch.float64)
    dense = kernel(x).to_dense()
    torch.testing.assert_close(diag.detach(), dense.detach(), rtol=1e-13, atol=0)
