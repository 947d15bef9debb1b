"""`python -m gpkern.distributed.gp` / `torchrun -m gpkern.distributed.gp`: input checks before
any process-group work, the output files, and agreement with the single-process KeOps fit."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import gpytorch
import numpy as np
import pytest
import torch
import torch.distributed as dist

from _distributed_harness import kill_rank_and_wait, local_ranks
from conftest import keops_compiles
from gpkern.distributed import gp as cli
from gpkern.distributed import group

ROOT = Path(__file__).resolve().parents[1]
needs_core = pytest.mark.skipif(
    importlib.util.find_spec("gpkern.distributed.model") is None,
    reason="GPRegressor(backend='distributed') (gpkern.distributed.model) is not on this branch",
)
needs_keops = pytest.mark.skipif(not keops_compiles(), reason="needs pykeops and a C++ compiler")


def _data(tmp_path, n=160, d=2, m=12, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.uniform(-2, 2, (n, d))
    y = np.sin(2 * X[:, 0]) + 0.3 * X[:, 1] + 0.1 * rng.standard_normal(n)
    X_test = rng.uniform(-2, 2, (m, d))
    np.savez(tmp_path / "train.npz", X=X, y=y)
    np.savez(tmp_path / "test.npz", X_test=X_test)
    return X, y, X_test


def _fails(capsys, argv, match):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert match in err, err
    assert not dist.is_initialized()  # refused before any process-group work


def test_bad_inputs_are_refused_before_any_process_group_work(tmp_path, capsys, monkeypatch):
    X, y, X_test = _data(tmp_path)
    out = str(tmp_path / "out.npz")
    train, test = str(tmp_path / "train.npz"), str(tmp_path / "test.npz")
    _fails(capsys, ["--data", str(tmp_path / "none.npz"), "--out", out], "none.npz: no such file")
    np.savez(tmp_path / "noy.npz", X=X, target=y)
    _fails(capsys, ["--data", str(tmp_path / "noy.npz"), "--out", out],
           "has no array 'y' (training targets); it has: X, target")
    (tmp_path / "junk.npz").write_text("not a zip")
    _fails(capsys, ["--data", str(tmp_path / "junk.npz"), "--out", out], "not a readable .npz")
    np.savez(tmp_path / "rows.npz", X=X, y=y[:-1])
    _fails(capsys, ["--data", str(tmp_path / "rows.npz"), "--out", out],
           f"y has shape ({len(y) - 1},) but X has {len(y)} rows")
    Xn = X.copy()
    Xn[3, 1] = np.nan
    np.savez(tmp_path / "nan.npz", X=Xn, y=y)
    _fails(capsys, ["--data", str(tmp_path / "nan.npz"), "--out", out], "X contains NaN or inf")
    np.savez(tmp_path / "wide.npz", X=np.hstack([X_test, X_test]))
    _fails(capsys, ["--data", train, "--test", str(tmp_path / "wide.npz"), "--out", out],
           "test inputs must have shape (m, 2) like X, got (12, 4)")
    _fails(capsys, ["--data", train, "--out", str(tmp_path / "no" / "out.npz")], "does not exist")
    _fails(capsys, ["--data", train, "--out", out, "--kernel", "matern", "--nu", "2.0"],
           "nu must be 0.5, 1.5 or 2.5")
    _fails(capsys, ["--data", train, "--out", out, "--timeout", "0"], "positive number of seconds")
    _fails(capsys, ["--data", train, "--out", out, "--kernel", "laplace"], "invalid choice")
    for var, value in (("RANK", "0"), ("WORLD_SIZE", "2")):
        monkeypatch.setenv(var, value)
    _fails(capsys, ["--data", train, "--test", test, "--out", out, "--nproc", "2"],
           "--nproc cannot be used under torchrun")
    assert not (tmp_path / "out.npz").exists()


def test_load_inputs_reads_the_test_set_from_either_file(tmp_path):
    X, y, X_test = _data(tmp_path)
    Xa, ya, Ta = cli.load_inputs(tmp_path / "train.npz", tmp_path / "test.npz")
    np.testing.assert_array_equal(Xa, X)
    np.testing.assert_array_equal(ya, y)
    np.testing.assert_array_equal(Ta, X_test)
    assert cli.load_inputs(tmp_path / "train.npz")[2] is None
    np.savez(tmp_path / "all.npz", X=X, y=np.stack([y, -y], 1), X_test=X_test[:3])
    _, Y2, T2 = cli.load_inputs(tmp_path / "all.npz")
    assert Y2.shape == (len(y), 2) and T2.shape == (3, 2)


def test_hyperparameters_are_the_constrained_values():
    kernel = gpytorch.kernels.ScaleKernel(gpytorch.kernels.RBFKernel(ard_num_dims=2)).double()
    kernel.outputscale = 2.5
    kernel.base_kernel.lengthscale = torch.tensor([[0.3, 4.0]], dtype=torch.float64)
    h = cli.hyperparameters(kernel)
    assert set(h) == {"outputscale", "base_kernel.lengthscale"}
    np.testing.assert_allclose(h["outputscale"], 2.5, rtol=1e-12)
    np.testing.assert_allclose(h["base_kernel.lengthscale"], [[0.3, 4.0]], rtol=1e-12)


def test_build_kernel():
    assert cli.build_kernel("rbf", 3) is None  # GPRegressor's default kernel
    m = cli.build_kernel("matern", 4, nu=1.5)
    assert m.base_kernel.nu == 1.5
    np.testing.assert_allclose(m.base_kernel.lengthscale.detach(), np.full((1, 4), 2.0))
    x = torch.randn(5, 3, dtype=torch.float64)
    K = cli.build_kernel("nngp", 3, depth=1)(x).to_dense().detach()
    assert torch.allclose(K, K.T) and torch.linalg.eigvalsh(K).min() > -1e-10
    with pytest.raises(ValueError, match="depth"):
        cli.build_kernel("nngp", 3, depth=0)
    with pytest.raises(ValueError, match="kernel must be one of"):
        cli.build_kernel("laplace", 3)


# -- against the single-process KeOps fit (needs the distributed backend) -----------------------
def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
            "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


# CG to convergence, with a preconditioner well below full rank: with the default tolerance, or
# a factor of rank n that makes CG stop after one or two iterations, the number of iterations
# (and so the estimate) can jump with the rounding of the sums, and L-BFGS then takes another
# path (seen with rank >= n: log marginal likelihoods 95.4 and 71.1 after two iterations).
COMMON = ["--optimizer", "lbfgs", "--max-iter", "8", "--seed", "0", "--timeout", "120",
          "--cg-tol", "1e-10", "--preconditioner-rank", "8"]


def _reference(X, y, X_test, kernel):
    from gpkern.estimators import GPRegressor

    gp = GPRegressor(kernel=cli.build_kernel(kernel, X.shape[1]), normalize_X=True,
                     optimizer="lbfgs", max_iter=8, random_state=0, backend="keops",
                     backend_options={"seed": 0, "cg_tol": 1e-10, "preconditioner_rank": 8}).fit(X, y)
    mean, std = gp.predict(X_test, return_std=True)
    return gp, mean, std


def _compare(path, gp, mean, std, world_size):
    out = np.load(path)
    summary = json.loads(Path(path).with_suffix(".json").read_text())
    assert int(out["world_size"]) == summary["world_size"] == world_size
    np.testing.assert_allclose(out["mean"], mean, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(out["std"], std, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(out["noise"], gp.noise_, rtol=1e-6)
    np.testing.assert_allclose(out["log_marginal_likelihood"], gp.log_marginal_likelihood_value_,
                               rtol=1e-6)
    for name, value in cli.hyperparameters(gp.kernel_).items():
        np.testing.assert_allclose(out[f"kernel.{name}"], value, rtol=1e-6)
        np.testing.assert_allclose(summary["hyperparameters"][name], value, rtol=1e-6)
    assert math.isclose(summary["log_marginal_likelihood"], float(out["log_marginal_likelihood"]))


@pytest.mark.slow  # KeOps compiles its formulas: about 2 minutes on a busy 2-core machine
@needs_core
@needs_keops
def test_two_local_processes_match_the_single_process_keops_fit(tmp_path):
    X, y, X_test = _data(tmp_path)
    gp, mean, std = _reference(X, y, X_test, "rbf")
    cmd = [sys.executable, "-m", "gpkern.distributed.gp", "--data", str(tmp_path / "train.npz"),
           "--test", str(tmp_path / "test.npz"), "--out", str(tmp_path / "p2.npz"),
           "--nproc", "2", *COMMON]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "gpkern.distributed.gp: 2 rank(s)" in proc.stdout
    _compare(tmp_path / "p2.npz", gp, mean, std, 2)


@pytest.mark.slow
@needs_core
@needs_keops
@pytest.mark.parametrize(("kernel", "launcher"), [("rbf", "python"), ("matern", "torchrun"),
                                                  ("nngp", "torchrun")])
def test_one_and_three_processes_match_the_single_process_keops_fit(tmp_path, kernel, launcher):
    X, y, X_test = _data(tmp_path)
    gp, mean, std = _reference(X, y, X_test, kernel)
    args = ["--data", str(tmp_path / "train.npz"), "--test", str(tmp_path / "test.npz"),
            "--out", str(tmp_path / "out.npz"), "--kernel", kernel, *COMMON]
    if launcher == "python":
        cmd, world = [sys.executable, "-m", "gpkern.distributed.gp", *args], 1
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
               "3", "-m", "gpkern.distributed.gp", *args]
        world = 3
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    _compare(tmp_path / "out.npz", gp, mean, std, world)


@pytest.mark.slow
@needs_core
def test_killed_rank_ends_the_command_line_on_every_rank(tmp_path):
    """SIGKILL one of three ranks while they fit: the others exit non-zero with a clear error
    within the timeout (plus start-up), whatever phase they were in."""
    _data(tmp_path, n=3000, d=3)
    timeout = 15  # the rendezvous waits as long: start-up takes seconds on a busy machine
    args = ["-m", "gpkern.distributed.gp", "--data", str(tmp_path / "train.npz"), "--test",
            str(tmp_path / "test.npz"), "--out", str(tmp_path / "out.npz"), "--max-iter", "100",
            "--timeout", str(timeout)]
    procs = group.start_local_ranks([sys.executable, *args], 3, env=_env(),
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with local_ranks(procs):
        time.sleep(30)  # start-up and the rendezvous; the fit itself takes much longer
        assert all(p.poll() is None for p in procs), [p.poll() for p in procs]
        codes, elapsed = kill_rank_and_wait(procs, 1, deadline=timeout + 60)
    assert codes[1] == -signal.SIGKILL
    for r in (0, 2):
        err = procs[r].stderr.read()
        assert codes[r] == 1, (r, codes, err[-2000:])
        assert f"gpkern.distributed.gp rank {r}:" in err
        assert "RankFailureError" in err or "timeout" in err.lower(), err[-2000:]
    assert elapsed < timeout + 60
    assert not (tmp_path / "out.npz").exists()
