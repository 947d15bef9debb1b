"""Row-split exact GPs on torch.distributed against the single-process iterative GP.

With 1, 2 and 3 local gloo processes, :class:`DistributedGP` must give the log marginal
likelihood, its gradient with respect to every hyperparameter, and the predictive means and
variances of :class:`IterativeGP` with the same settings and seed (same pivots, same probes) to
1e-8 relative in float64; the reference is computed here, in the pytest process, and the
processes only return numbers.
"""

from __future__ import annotations

import threading

import gpytorch
import numpy as np
import pytest
import torch

from _distributed_harness import run_group, run_here
from conftest import keops_compiles
from gpkern.distributed.partition import row_partition
from gpkern.models.iterative import IterativeGP, IterativeSettings

RTOL = 1e-8
KERNELS = ("rbf", "matern", "nngp", "nngp_learned")
SETTINGS = dict(
    cg_tol=1e-12,
    max_cg_iter=200,
    num_probes=4,
    lanczos_iter=10,
    preconditioner_rank=12,
    eval_cg_tol=1e-10,
    eval_preconditioner_rank=24,
    variance_rank=12,
    variance_directions=8,
    batch_size=10,
    seed=3,
)


def _data(n=70, m=23, d=2, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.uniform(-2, 2, (n, d))
    Y = np.stack([np.sin(2 * X[:, 0]) + X[:, 1] ** 2 / 4, np.cos(X[:, 1])], 1)
    Y = Y + 0.1 * rng.standard_normal((n, 2))
    Xs = rng.uniform(-2.5, 2.5, (m, d))
    return torch.as_tensor(X), torch.as_tensor(Y), torch.as_tensor(Xs)


def _kernel(name: str, d: int = 2) -> gpytorch.kernels.Kernel:
    if name == "rbf":
        base = gpytorch.kernels.RBFKernel(ard_num_dims=d)
        base.lengthscale = torch.tensor([[0.8, 1.3]])
    elif name == "deep":  # a learned input map: gradients also flow through the inputs
        from gpkern.kernels import FeatureMapKernel

        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(d, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2))
        inner = gpytorch.kernels.ScaleKernel(gpytorch.kernels.RBFKernel())
        return FeatureMapKernel(net, inner).double()
    elif name == "nngp_learned":  # first-layer variances enter every per-point operand
        from gpkern.kernels.nngp import Dense, Relu, serial
        from gpkern.kernels.nngp.kernel import NNGPKernel

        arch = serial(Dense(1.0, 0.1), Relu(), Dense(1.0, 0.1), Relu(), Dense(1.0, 0.1))
        return NNGPKernel(arch, learn_variances=True).double()
    elif name == "matern":
        base = gpytorch.kernels.MaternKernel(nu=2.5)
        base.lengthscale = 0.9
    else:
        from gpkern.kernels.nngp.dense_network import DenseNetworkKernel

        layers = [("dense", 1.3, 0.2), ("relu",), ("dense", 1.1, 0.3), ("relu",), ("dense", 1.0, 0.1)]
        base = DenseNetworkKernel(layers, n_features=d)
    kernel = gpytorch.kernels.ScaleKernel(base)
    kernel.outputscale = 1.5
    return kernel.double()


def _evaluate(model, X, Y, Xs, exact: bool) -> dict:
    """Log marginal likelihood, its gradient per named parameter, and predictions."""
    model.zero_grad()
    lml = model.log_marginal_likelihood(X, Y)
    lml.backward()
    grads = {name: p.grad.detach().clone().numpy() for name, p in model.named_parameters()}
    posterior = model.posterior(X, Y)
    mean, var = posterior.predict(Xs)
    out = dict(lml=float(lml.detach()), grads=grads, mean=mean.numpy(), var=var.numpy())
    if exact:
        out["exact_var"] = posterior.predict(Xs, exact_variance=True)[1].numpy()
        out["cov"] = posterior.predict(Xs[:7], full_cov=True)[1].numpy()
    return out


def _model(cls, name, backend, **kwargs):
    return cls(
        _kernel(name), noise=0.05, settings=IterativeSettings(**SETTINGS), backend=backend, **kwargs
    ).double()


def _distributed_worker(rank, world_size, names, backend, extras=False) -> dict:
    from gpkern.distributed.model import DistributedGP

    X, Y, Xs = _data()
    results = {}
    for name in names:
        model = _model(DistributedGP, name, backend)
        model.comm.reset()
        results[name] = _evaluate(model, X, Y, Xs, exact=name == "rbf")
        results[name]["bytes"] = model.comm.bytes_communicated
    if extras:  # one group of processes serves the other tests too (each start costs seconds)
        model = _model(DistributedGP, "rbf", backend, exchange="all_gather")
        results["rbf_all_gather"] = _evaluate(model, X, Y, Xs, exact=True)
        results["deep"] = _evaluate(_model(DistributedGP, "deep", backend), X, Y, Xs, exact=False)
        try:
            model.log_marginal_likelihood(X[: world_size - 1], Y[: world_size - 1])
        except ValueError as exc:
            results["too_few_rows"] = str(exc)
        results["products"] = {e: _product(e) for e in ("broadcast", "all_gather")}
        results["regressor"] = _regressor_worker()
    return results


_RUNS: dict[int, list] = {}


def _run(world_size: int) -> list:
    if world_size == 1 and 1 not in _RUNS:
        _RUNS[1] = [run_here(_distributed_worker, KERNELS, "torch")]
    if world_size not in _RUNS:
        _RUNS[world_size] = run_group(_distributed_worker, world_size, KERNELS, "torch", True)
    return _RUNS[world_size]


def _reference(name, backend="torch") -> dict:
    X, Y, Xs = _data()
    return _evaluate(_model(IterativeGP, name, backend), X, Y, Xs, exact=name == "rbf")


def _assert_same(got: dict, want: dict) -> None:
    assert got["lml"] == pytest.approx(want["lml"], rel=RTOL)
    assert set(got["grads"]) == set(want["grads"]) and len(want["grads"]) >= 2
    # Relative to the whole gradient: some entries are zero up to rounding (a translation-
    # invariant kernel on learned features does not see the last layer's bias).
    scale = max(np.abs(g).max() for g in want["grads"].values())
    assert scale > 0  # a gradient of zeros would make the check vacuous
    for key, g in want["grads"].items():
        np.testing.assert_allclose(got["grads"][key], g, rtol=RTOL, atol=RTOL * scale)
    for key in ("mean", "var", "exact_var", "cov"):
        if key in want:
            scale = np.abs(want[key]).max()
            np.testing.assert_allclose(got[key], want[key], rtol=RTOL, atol=RTOL * scale)


@pytest.fixture(scope="module")
def references() -> dict:
    return {name: _reference(name) for name in KERNELS + ("deep",)}


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_distributed_gp_equals_single_process(world_size, references):
    for rank, res in enumerate(_run(world_size)):
        for name in KERNELS:
            _assert_same(res[name], references[name])
        if world_size > 1:
            _assert_same(res["rbf_all_gather"], references["rbf"])
            _assert_same(res["deep"], references["deep"])
            assert "cannot be split across" in res.get("too_few_rows", "no error")
        for name in KERNELS:
            if world_size == 1:  # the single-process computation itself, not a rounding of it
                assert res[name]["lml"] == references[name]["lml"]
                for key in ("mean", "var"):
                    np.testing.assert_array_equal(res[name][key], references[name][key])
            # One process communicates nothing; several exchange at least the n b payload
            # of every kernel product.
            assert (res[name]["bytes"] == 0) == (world_size == 1), (rank, name)


def test_the_comparison_tells_seeds_apart():
    # Vacuity guard for the comparison above: a changed seed must change the numbers.
    X, Y, Xs = _data()
    a = _evaluate(_model(IterativeGP, "rbf", "torch"), X, Y, Xs, exact=False)
    model = IterativeGP(
        _kernel("rbf"), noise=0.05, settings=IterativeSettings(**{**SETTINGS, "seed": 4}),
        backend="torch",
    ).double()
    b = _evaluate(model, X, Y, Xs, exact=False)
    with pytest.raises(AssertionError):
        _assert_same(b, a)


def test_row_partition_is_contiguous_and_balanced():
    for n in range(0, 12):
        for p in range(1, 5):
            parts = row_partition(n, p)
            assert len(parts) == p and parts[0].start == 0 and parts[-1].stop == n
            assert all(a.stop == b.start for a, b in zip(parts, parts[1:]))
            sizes = [s.stop - s.start for s in parts]
            assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
    with pytest.raises(ValueError, match="world_size"):
        row_partition(5, 0)


def _product(exchange) -> tuple:
    from gpkern.distributed.operator import Collectives, DistributedKernelOperator

    X, _, _ = _data(n=50)
    comm = Collectives()
    op = DistributedKernelOperator(
        _kernel("rbf"), X, comm=comm, backend="torch", exchange=exchange
    )
    V = torch.arange(50 * 3, dtype=torch.float64).reshape(50, 3)[op.rows] / 100
    return op._matmul(V).detach().numpy(), op.last_product_bytes, op.rows


@pytest.mark.parametrize("world_size", [2, 3])
@pytest.mark.parametrize("exchange", ["broadcast", "all_gather"])
def test_operator_rows_and_communication(exchange, world_size):
    results = [res["products"][exchange] for res in _run(world_size)]
    X, _, _ = _data(n=50)
    V = torch.arange(50 * 3, dtype=torch.float64).reshape(50, 3) / 100
    dense = (_kernel("rbf")(X).to_dense() @ V).detach().numpy()  # independent dense product
    rows = np.concatenate([out for out, _, _ in results])
    np.testing.assert_allclose(rows, dense, rtol=1e-12)
    sizes = [r.stop - r.start for _, _, r in results]
    for _, nbytes, _ in results:
        # Broadcast: every source block once (n b float64 numbers); all_gather: P padded blocks
        # of the largest size, counted once as this process's contribution.
        assert nbytes == (8 * 50 * 3 if exchange == "broadcast" else 8 * max(sizes) * 3)
    assert sizes == [s.stop - s.start for s in row_partition(50, world_size)]


def _regressor_worker() -> dict:
    import gpkern.linalg.dispatch as dispatch
    from gpkern.estimators import GPRegressor

    # pykeops reported unavailable: both fits run the KeOps path's torch twin (no compile).
    dispatch.keops_available = lambda dtype=torch.float64: (False, "simulated")
    return _regressor_fit(GPRegressor, "distributed")


def _regressor_fit(cls, backend) -> dict:
    import warnings

    X, Y, Xs = _data(n=60)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gp = cls(
            kernel=_kernel("rbf"), backend=backend, backend_options=SETTINGS, max_iter=4,
            random_state=0,
        ).fit(X.numpy(), Y[:, 0].numpy())
        mean, std = gp.predict(Xs.numpy(), return_std=True)
    return dict(mean=mean, std=std, noise=gp.noise_, lml=gp.log_marginal_likelihood_value_)


def test_regressor_distributed_equals_keops_backend(monkeypatch):
    import gpkern.linalg.dispatch as dispatch
    from gpkern.estimators import GPRegressor

    monkeypatch.setattr(dispatch, "keops_available", lambda dtype=torch.float64: (False, "simulated"))
    want = _regressor_fit(GPRegressor, "keops")
    for got in [res["regressor"] for res in _run(2)]:
        assert got["lml"] == pytest.approx(want["lml"], rel=1e-7)
        assert got["noise"] == pytest.approx(want["noise"], rel=1e-7)
        np.testing.assert_allclose(got["mean"], want["mean"], rtol=1e-7, atol=1e-9)
        np.testing.assert_allclose(got["std"], want["std"], rtol=1e-7, atol=1e-9)


def test_regressor_distributed_needs_a_process_group():
    from gpkern.estimators import GPRegressor

    X, Y, _ = _data(n=20)
    gp = GPRegressor(backend="distributed")
    with pytest.raises(RuntimeError, match="torchrun"):
        gp.fit(X.numpy(), Y[:, 0].numpy())
    assert not hasattr(gp, "kernel_")


@pytest.mark.skipif(not keops_compiles(), reason="pykeops cannot compile here")
@pytest.mark.parametrize(
    "name",
    [
        "rbf",
        # Compiling their gradient formulas takes minutes (3 for the two-ReLU network).
        pytest.param("matern", marks=pytest.mark.slow),
        pytest.param("nngp", marks=pytest.mark.slow),
    ],
)
def test_distributed_gp_keops_backend(name):
    """Two processes on the real KeOps backend against the single-process KeOps fit."""
    want = _reference(name, backend="keops")  # compiles here, before the processes start
    for res in run_group(_distributed_worker, 2, (name,), "keops", timeout=900):
        _assert_same(res[name], want)
        assert res[name]["bytes"] > 0


class _ThreadSum:
    """An all_reduce among threads (each thread one 'process'), in rank order."""

    def __init__(self, world_size: int) -> None:
        self.barrier = threading.Barrier(world_size, timeout=60)
        self.slots: list = [None] * world_size

    def hook(self, rank: int):
        def reduce(t: torch.Tensor) -> torch.Tensor:
            self.slots[rank] = t.clone()
            self.barrier.wait()
            out = sum(self.slots[1:], self.slots[0].clone())
            self.barrier.wait()  # nobody overwrites a slot before everyone has read it
            return out

        return reduce


def _in_threads(world_size: int, fn) -> list:
    out: list = [None] * world_size
    errors: list = []

    def run(rank):
        try:
            out[rank] = fn(rank)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(r,)) for r in range(world_size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    return out


@pytest.mark.parametrize("world_size", [2, 3])
def test_row_split_hooks_of_pcg_and_rp_cholesky(world_size):
    from gpkern.linalg.cg import pcg
    from gpkern.linalg.rpcholesky import rp_cholesky

    X, _, _ = _data(n=90)
    K = _kernel("matern")(X).to_dense().detach()
    A = K + 0.01 * torch.eye(90)
    B = torch.as_tensor(np.random.default_rng(1).standard_normal((90, 3)))
    F1, piv1 = rp_cholesky(lambda i: K[:, i], K.diagonal(), 30, block_size=8,
                           generator=torch.Generator().manual_seed(5))
    parts = row_partition(90, world_size)
    comm = _ThreadSum(world_size)

    def split(rank):
        rows, reduce = parts[rank], comm.hook(rank)
        F, piv = rp_cholesky(lambda i: K[rows][:, i], K.diagonal(), 30, block_size=8,
                             generator=torch.Generator().manual_seed(5), rows=rows, reduce=reduce)
        res = pcg(lambda V: A[rows] @ torch.cat(_gather(comm, rank, V)), B[rows], tol=1e-12,
                  reduce=reduce)
        return F, piv, res.solution

    out = _in_threads(world_size, split)
    for _, piv, _ in out:
        assert torch.equal(piv, piv1)  # the single-process pivots, on every 'process'
    np.testing.assert_allclose(torch.cat([F for F, _, _ in out]), F1, rtol=0, atol=1e-12)
    X_ = torch.cat([x for _, _, x in out])
    np.testing.assert_allclose(X_, torch.linalg.solve(A, B), rtol=1e-8)  # dense oracle


def _gather(comm: _ThreadSum, rank: int, V: torch.Tensor) -> list:
    # The rows of every 'process' by summing zero-padded blocks (a test-only all_gather).
    sizes = [s.stop - s.start for s in row_partition(90, len(comm.slots))]
    whole = V.new_zeros(sum(sizes), V.shape[1])
    start = sum(sizes[:rank])
    whole[start : start + V.shape[0]] = V
    return [comm.hook(rank)(whole)]
