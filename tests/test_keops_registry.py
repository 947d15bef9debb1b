"""The KeOps formula registry, per-operator fallback state and the lazy pykeops import.

No test here compiles a KeOps formula: KeOps failures are simulated, and the products that do
run use the chunked torch operator, checked against GPyTorch's dense kernel matrices.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import textwrap
import warnings
from types import SimpleNamespace

import gpytorch
import pytest
import torch

import gpkern.linalg.dispatch as dispatch
import gpkern.linalg.keops as keops
from gpkern.kernels import GSMPKernel
from gpkern.kernels.nngp import Dense, Relu, serial
from gpkern.kernels.nngp.kernel import NNGPKernel
from gpkern.linalg.keops import (
    KeOpsCompileError,
    KeOpsFallbackWarning,
    keops_failure,
    kernel_formula,
    kernel_operator,
    register_formula,
)
from gpkern.linalg.keops import registry as keops_registry
from gpkern.linalg.keops.formula import _Linear

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _x(n=30, d=2, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


class _Dot(gpytorch.kernels.Kernel):
    """x . x' (a kernel gpkern knows nothing about)."""

    has_lengthscale = False

    def forward(self, x1, x2, diag=False, **params):
        return (x1 * x2).sum(-1) if diag else x1 @ x2.mT


@pytest.fixture
def clean_registry(monkeypatch):
    monkeypatch.setattr(keops_registry, "_FORMULAS", dict(keops_registry._FORMULAS))


def test_registering_a_formula_routes_a_new_kernel_to_keops(clean_registry, monkeypatch):
    monkeypatch.setattr(dispatch, "keops_available", lambda dtype=torch.float64: (True, ""))
    n = dispatch.DENSE_MAX_N + 1
    with pytest.raises(TypeError, match="_Dot has no KeOps formula: register one"):
        kernel_formula(_Dot())
    with pytest.warns(dispatch.NoKeOpsFormulaWarning, match="register_formula"):
        assert dispatch.choose_backend(n, _Dot()) == "dense"

    @register_formula(_Dot)
    def _dot_formula(kernel, d):
        return _Linear(None)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert dispatch.choose_backend(n, _Dot()) == "keops"
    x = _x()
    op = kernel_operator(gpytorch.kernels.ScaleKernel(_Dot()), x, backend="torch")
    ref = gpytorch.kernels.ScaleKernel(_Dot())(x).to_dense()
    torch.testing.assert_close(op.to_dense(), ref.detach())


def test_lookup_walks_the_mro_and_never_reads_class_names(clean_registry):
    class RenamedGSMP(GSMPKernel):
        pass

    class Spoof(_Dot):  # the name of a registered kernel, but not that kernel
        pass

    Spoof.__name__ = Spoof.__qualname__ = "GSMPKernel"
    x = _x(d=3)
    k = RenamedGSMP(n_components=4, ard_num_dims=3)
    op = kernel_operator(k, x, backend="torch")
    torch.testing.assert_close(op.to_dense(), k(x).to_dense().detach(), rtol=1e-10, atol=1e-12)
    with pytest.raises(TypeError, match="no KeOps formula"):
        kernel_formula(Spoof())
    # inherit=False: GPyTorch's derivative kernel subclasses RBFKernel but is not the RBF kernel.
    with pytest.raises(TypeError, match="RBFKernelGrad has no KeOps formula"):
        kernel_formula(gpytorch.kernels.RBFKernelGrad())
    source = (ROOT / "gpkern" / "linalg" / "keops").rglob("*.py")
    assert not [p.name for p in source if "__name__ ==" in p.read_text()]


def test_nngp_layers_are_recognised_by_class():
    class MyRelu(Relu):
        pass

    x = _x(d=3)
    k = NNGPKernel(serial(Dense(1.2, 0.1), MyRelu(), Dense(1.0, 0.0)))
    op = kernel_operator(k, x, backend="torch")
    torch.testing.assert_close(op.to_dense(), k(x).to_dense().detach(), rtol=1e-8, atol=1e-10)
    layers = keops.layers_from_architecture(k.arch)
    assert [layer[0] for layer in layers] == ["dense", "abrelu", "dense"]

    class Relu2:  # no registered translation, whatever its name
        pass

    with pytest.raises(TypeError, match="Relu2 has no KeOps formula"):
        keops.layers_from_architecture(SimpleNamespace(layers=(Dense(1.0, 0.0), Relu2())))


def test_keops_failure_tells_pykeops_errors_from_formula_bugs():
    LazyTensor = pytest.importorskip("pykeops.torch").LazyTensor
    with pytest.raises(ValueError) as info:  # pykeops' own dimension check, no compile
        LazyTensor(torch.zeros(2, 3)[:, None, :]) + LazyTensor(torch.zeros(2, 4)[None, :, :])
    assert keops_failure(info.value)
    assert keops_failure(KeOpsCompileError("simulated"))
    assert keops_failure(subprocess.CalledProcessError(1, ["g++"]))
    assert not keops_failure(TypeError("a bug in a formula"))


def test_a_formula_bug_propagates_instead_of_falling_back(monkeypatch):
    pytest.importorskip("pykeops")

    def buggy(self, xi, xj, theta, start=0):
        raise TypeError("simulated formula bug")

    monkeypatch.setattr(keops.formula._Stationary, "evaluate", buggy)
    op = kernel_operator(gpytorch.kernels.RBFKernel(), _x(), backend="keops")
    with warnings.catch_warnings():
        warnings.simplefilter("error", KeOpsFallbackWarning)
        with pytest.raises(TypeError, match="simulated formula bug"):
            op._matmul(torch.ones(30, 2, dtype=torch.float64))
    assert op.runtime.active  # not mistaken for "KeOps unavailable"


def test_compile_failure_falls_back_for_that_operator_only(monkeypatch):
    calls = []

    def flaky(formula, x1, x2, theta, rhs):  # the first reduction fails to compile
        calls.append(1)
        if len(calls) == 1:
            raise KeOpsCompileError("simulated: g++ not found")
        return keops.torch_matmul(formula, x1, x2, theta, rhs)

    monkeypatch.setattr(keops.operator, "keops_matmul", flaky)
    kernel = gpytorch.kernels.ScaleKernel(gpytorch.kernels.MaternKernel(nu=1.5))
    x, v = _x(40), torch.randn(40, 3, dtype=torch.float64)
    ref = (kernel(x).to_dense() @ v).detach()
    a = kernel_operator(kernel, x)
    with pytest.warns(KeOpsFallbackWarning, match="simulated: g\\+\\+ not found"):
        out = a._matmul(v)
    torch.testing.assert_close(out.detach(), ref)
    assert not a.runtime.active and len(calls) == 1
    shared = kernel_operator(kernel, x, runtime=a.runtime)
    with warnings.catch_warnings():
        warnings.simplefilter("error", KeOpsFallbackWarning)
        a._matmul(v), a.mT._matmul(v), shared._matmul(v), a.detach()._matmul(v)
    assert len(calls) == 1  # these went straight to torch, silently
    b = kernel_operator(kernel, x)  # another operator in the same process is unaffected
    torch.testing.assert_close(b._matmul(v).detach(), ref)
    assert b.runtime.active and len(calls) == 2


def test_without_pykeops_everything_imports_and_falls_back():
    """pykeops blocked: registration and formulas need no pykeops; a product warns and uses torch."""
    code = textwrap.dedent(
        """
        import sys, warnings
        sys.modules["pykeops"] = None  # import pykeops -> ImportError
        import torch, gpytorch
        import gpkern.kernels, gpkern.linalg.dispatch
        from gpkern.linalg.keops import KeOpsFallbackWarning, kernel_operator
        torch.set_default_dtype(torch.float64)
        k = gpytorch.kernels.ScaleKernel(gpytorch.kernels.RBFKernel())
        x = torch.randn(20, 2)
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            out = kernel_operator(k, x)._matmul(torch.ones(20, 1))
        assert any(issubclass(r.category, KeOpsFallbackWarning) for r in w)
        torch.testing.assert_close(out.detach(), (k(x).to_dense() @ torch.ones(20, 1)).detach())
        print("ok")
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "KEOPS_VERBOSE": "0"}
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-2000:]


def test_an_iterative_model_shares_one_fallback_state_across_its_operators(monkeypatch):
    from gpkern.models.iterative import IterativeGP

    calls = []

    def failing(formula, x1, x2, theta, rhs):
        calls.append(1)
        raise KeOpsCompileError("simulated: g++ not found")

    monkeypatch.setattr(keops.operator, "keops_matmul", failing)
    model = IterativeGP(gpytorch.kernels.ScaleKernel(gpytorch.kernels.RBFKernel()), backend="keops")
    x, v = _x(30), torch.randn(30, 2, dtype=torch.float64)
    with pytest.warns(KeOpsFallbackWarning):
        model.operator(x)._matmul(v)
    with warnings.catch_warnings():
        warnings.simplefilter("error", KeOpsFallbackWarning)
        out = model.operator(x)._matmul(v)  # a new operator of the same model: straight to torch
    assert len(calls) == 1 and model.keops_runtime.failure is not None
    torch.testing.assert_close(out.detach(), (model.kernel(x).to_dense() @ v).detach())
