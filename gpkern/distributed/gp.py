r"""Command line for exact GP regression on several processes or machines.

Every rank reads the whole training set (:math:`n \times d`, small next to the kernel matrix),
fits :class:`~gpkern.estimators.GPRegressor` with ``backend="distributed"`` (training rows
partitioned across ranks, CG and stochastic Lanczos on the row-partitioned kernel operator) and
predicts the test points; rank 0 writes the predictive means and standard deviations and the
fitted hyperparameters. One machine, ``P`` processes::

    torchrun --nproc-per-node P -m gpkern.distributed.gp --data train.npz --test test.npz \
        --out pred.npz

Several machines (the same command on each, ``--node-rank`` or a c10d rendezvous)::

    torchrun --nnodes N --nproc-per-node P --rdzv-backend c10d --rdzv-endpoint HOST:29400 \
        --rdzv-id job1 -m gpkern.distributed.gp --data train.npz --test test.npz --out pred.npz

Without ``torchrun``: ``python -m gpkern.distributed.gp ...`` runs one process, and
``--nproc P`` starts ``P`` local processes with torchrun's environment. With CUDA each rank
computes on ``cuda:LOCAL_RANK`` (nccl); otherwise on CPUs (gloo).

Inputs: ``--data`` is an ``.npz`` with arrays ``X`` (n, d) and ``y`` (n,) or (n, t);
``--test`` an ``.npz`` with ``X_test`` or ``X`` (m, d) (default: the data file's ``X_test``, if
any). Outputs: ``--out`` (``.npz``) holds ``mean`` and ``std`` (m,) or (m, t), ``noise``,
``log_marginal_likelihood`` and every kernel hyperparameter as ``kernel.<name>`` (constrained
values, standardised input units when ``X`` is standardised, the default); a JSON summary
with the same numbers goes next to it (``--out`` with suffix ``.json``).

Bad files, missing arrays and mismatched shapes are reported before any process-group work;
ranks given different data are refused by :func:`gpkern.distributed.group.check_agreement`;
a rank that dies or hangs ends the others within ``--timeout`` seconds.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path

import gpytorch
import numpy as np
import torch

from gpkern.distributed import group as pg

__all__ = ["KERNELS", "build_kernel", "hyperparameters", "load_inputs", "main"]

#: Kernel names the command line accepts.
KERNELS = ("rbf", "matern", "nngp")


def build_kernel(name: str, d: int, nu: float = 2.5, depth: int = 2) -> gpytorch.kernels.Kernel | None:
    r"""The command line's kernels, for standardised inputs of dimension ``d``.

    ``"rbf"`` returns ``None``: :class:`~gpkern.estimators.GPRegressor`'s default scaled ARD
    RBF kernel. ``"matern"`` is a scaled ARD Matérn kernel of smoothness ``nu``, length-scales
    starting at :math:`\sqrt d` (the default RBF's start for unit-spread features), both in log
    space. ``"nngp"`` is the NNGP kernel of a ReLU network with ``depth`` hidden layers and
    learnable weight and bias variances.

    Parameters
    ----------
    name : {"rbf", "matern", "nngp"}
        Kernel family.
    d : int
        Number of features.
    nu : {0.5, 1.5, 2.5}, default=2.5
        Matérn smoothness.
    depth : int, default=2
        Hidden layers of the NNGP network.

    Returns
    -------
    gpytorch.kernels.Kernel or None

    Examples
    --------
    >>> from gpkern.distributed.gp import build_kernel
    >>> type(build_kernel("matern", 3)).__name__
    'ScaleKernel'
    """
    from gpkern.kernels.constraints import log_positive

    if name == "rbf":
        return None
    if name == "matern":
        if nu not in (0.5, 1.5, 2.5):
            raise ValueError(f"nu must be 0.5, 1.5 or 2.5, got {nu!r}.")
        base = gpytorch.kernels.MaternKernel(nu=nu, ard_num_dims=d, lengthscale_constraint=log_positive())
        kernel = gpytorch.kernels.ScaleKernel(base, outputscale_constraint=log_positive()).double()
        kernel.base_kernel.lengthscale = torch.full((1, d), math.sqrt(d), dtype=torch.float64)
        return kernel
    if name == "nngp":
        from gpkern.kernels.nngp import Dense, Relu, serial
        from gpkern.kernels.nngp.kernel import NNGPKernel

        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
            raise ValueError(f"depth must be an integer >= 1, got {depth!r}.")
        layers = [Dense(1.0, 0.1)]
        for _ in range(depth):
            layers += [Relu(), Dense(1.0, 0.1)]
        return NNGPKernel(serial(*layers), learn_variances=True).double()
    raise ValueError(f"kernel must be one of {', '.join(KERNELS)}, got {name!r}.")


def hyperparameters(kernel: gpytorch.kernels.Kernel) -> dict[str, np.ndarray]:
    """Every parameter of ``kernel`` by name, through its constraint where it has one.

    ``raw_lengthscale`` behind a positivity constraint is reported as ``lengthscale``, the
    value the kernel uses; unconstrained parameters keep their name and value.

    Examples
    --------
    >>> import gpytorch
    >>> from gpkern.distributed.gp import hyperparameters
    >>> sorted(hyperparameters(gpytorch.kernels.ScaleKernel(gpytorch.kernels.RBFKernel())))
    ['base_kernel.lengthscale', 'outputscale']
    """
    out = {}
    for name, param, constraint in kernel.named_parameters_and_constraints():
        if constraint is not None:
            head, _, leaf = name.rpartition(".")
            leaf = leaf[4:] if leaf.startswith("raw_") else leaf
            name, value = (f"{head}.{leaf}" if head else leaf), constraint.transform(param)
        else:
            value = param
        out[name] = value.detach().cpu().numpy().copy()
    return out


def _array(path: Path, arrays, keys: tuple[str, ...], what: str) -> np.ndarray:
    for key in keys:
        if key in arrays:
            try:
                return np.asarray(arrays[key], dtype=np.float64)
            except (TypeError, ValueError):
                raise ValueError(f"{path}: array {key!r} ({what}) is not numeric.") from None
    raise ValueError(
        f"{path} has no array {' or '.join(repr(k) for k in keys)} ({what}); it has: "
        f"{', '.join(sorted(arrays)) or 'nothing'}. Write it with np.savez(path, X=X, y=y)."
    )


def load_inputs(
    data: str | os.PathLike, test: str | os.PathLike | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Read and check the command line's inputs; every problem raises before any work.

    Parameters
    ----------
    data : path
        ``.npz`` with ``X`` (n, d), ``y`` (n,) or (n, t), optionally ``X_test`` (m, d).
    test : path, optional
        ``.npz`` with ``X_test`` or ``X`` (m, d); overrides the data file's ``X_test``.

    Returns
    -------
    X : ndarray of shape (n, d)
    y : ndarray of shape (n,) or (n, t)
    X_test : ndarray of shape (m, d) or None

    Raises
    ------
    ValueError
        A missing or unreadable file, a missing array, wrong shapes, NaN or inf.
    """
    def read(path):
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"{path}: no such file.")
        try:
            with np.load(path, allow_pickle=False) as f:
                return path, {k: f[k] for k in f.files}
        except Exception as err:
            raise ValueError(f"{path}: not a readable .npz file ({type(err).__name__}: {err}).") from None

    path, arrays = read(data)
    X = _array(path, arrays, ("X",), "training inputs")
    y = _array(path, arrays, ("y",), "training targets")
    X_test = None
    if test is not None:
        tpath, tarrays = read(test)
        X_test = _array(tpath, tarrays, ("X_test", "X"), "test inputs")
    elif "X_test" in arrays:
        tpath, X_test = path, _array(path, arrays, ("X_test",), "test inputs")
    if X.ndim != 2 or X.shape[0] < 2:
        raise ValueError(f"{path}: X must have shape (n, d) with n >= 2, got {X.shape}.")
    if y.ndim not in (1, 2) or y.shape[0] != X.shape[0]:
        raise ValueError(f"{path}: y has shape {y.shape} but X has {X.shape[0]} rows.")
    for name, a in (("X", X), ("y", y)):
        if not np.isfinite(a).all():
            raise ValueError(f"{path}: {name} contains NaN or inf.")
    if X_test is not None:
        if X_test.ndim != 2 or X_test.shape[1] != X.shape[1]:
            raise ValueError(
                f"{tpath}: test inputs must have shape (m, {X.shape[1]}) like X, got {X_test.shape}."
            )
        if not np.isfinite(X_test).all():
            raise ValueError(f"{tpath}: test inputs contain NaN or inf.")
    return X, y, X_test


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m gpkern.distributed.gp",
        description="Exact GP regression with training rows partitioned across processes "
        "(torchrun or --nproc); rank 0 writes predictions and hyperparameters.",
    )
    ap.add_argument("--data", required=True, help=".npz with X (n, d), y (n,) or (n, t)[, X_test]")
    ap.add_argument("--test", default=None, help=".npz with X_test or X (m, d)")
    ap.add_argument("--out", required=True, help="output .npz (a .json summary is written next to it)")
    ap.add_argument("--kernel", choices=KERNELS, default="rbf")
    ap.add_argument("--nu", type=float, default=2.5, help="Matérn smoothness (0.5, 1.5, 2.5)")
    ap.add_argument("--depth", type=int, default=2, help="hidden layers of the NNGP network")
    ap.add_argument("--noise", type=float, default=None, help="fixed noise variance (default: learned)")
    ap.add_argument("--optimizer", choices=("lbfgs", "adam", "none"), default="lbfgs")
    ap.add_argument("--max-iter", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0, help="probe vectors and restarts")
    ap.add_argument("--cg-tol", type=float, default=None, help="training CG tolerance")
    ap.add_argument("--preconditioner-rank", type=int, default=None)
    ap.add_argument("--num-probes", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=None, help="test points per prediction batch")
    ap.add_argument("--timeout", type=float, default=None,
                    help=f"seconds before a dead or hung rank fails the others "
                    f"(default ${pg.TIMEOUT_ENV} or {pg.DEFAULT_TIMEOUT:g})")
    ap.add_argument("--nproc", type=int, default=None, help="local processes to start (not under torchrun)")
    ap.add_argument("--verbose", action="store_true", help="progress bars on rank 0")
    return ap


def _options(ns) -> dict:
    backend_options = {
        key: value
        for key, value in (("cg_tol", ns.cg_tol), ("preconditioner_rank", ns.preconditioner_rank),
                           ("num_probes", ns.num_probes), ("batch_size", ns.batch_size),
                           ("seed", ns.seed))
        if value is not None
    }
    return dict(
        noise=ns.noise, normalize_y=True, normalize_X=True,
        optimizer=None if ns.optimizer == "none" else ns.optimizer, max_iter=ns.max_iter,
        random_state=ns.seed, backend_options=backend_options,
    )


def _fit_and_write(ns, X, y, X_test, info: pg.GroupInfo) -> dict:
    from gpkern.estimators import GPRegressor

    pg.check_agreement(X.shape[0], X.shape[1], X.dtype, 1 if y.ndim == 1 else y.shape[1],
                       timeout=info.timeout)
    if X_test is not None:  # the test set is sharded too: every rank must hold the same one
        pg.check_agreement(X_test.shape[0], X_test.shape[1], X_test.dtype,
                           1 if y.ndim == 1 else y.shape[1], timeout=info.timeout, what="test")
    gp = GPRegressor(
        kernel=build_kernel(ns.kernel, X.shape[1], ns.nu, ns.depth), backend="distributed",
        device=info.device, verbose=ns.verbose and info.rank == 0, **_options(ns),
    )
    t0 = time.perf_counter()
    gp.fit(X, y)
    fit_s = time.perf_counter() - t0
    # Collective with an iterative backend (computed on first access): every rank asks.
    lml = float(gp.log_marginal_likelihood_value_)
    mean = std = None
    predict_s = 0.0
    if X_test is not None:
        t0 = time.perf_counter()
        mean, std = gp.predict(X_test, return_std=True)
        predict_s = time.perf_counter() - t0
    hyper = hyperparameters(gp.kernel_)
    summary = {
        "kernel": ns.kernel, "n_train": int(X.shape[0]), "n_features": int(X.shape[1]),
        "n_outputs": 1 if y.ndim == 1 else int(y.shape[1]),
        "n_test": 0 if X_test is None else int(X_test.shape[0]),
        "world_size": info.world_size, "backend": info.backend, "device": str(info.device),
        "noise": float(gp.noise_), "log_marginal_likelihood": lml, "n_iter": int(gp.n_iter_),
        "fit_seconds": fit_s, "predict_seconds": predict_s,
        "X_mean": np.asarray(gp.X_mean_).tolist(), "X_scale": np.asarray(gp.X_scale_).tolist(),
        "hyperparameters": {k: v.tolist() for k, v in hyper.items()},
    }
    if info.rank == 0:
        arrays = {f"kernel.{k}": v for k, v in hyper.items()}
        arrays.update(noise=np.float64(gp.noise_), log_marginal_likelihood=np.float64(lml),
                      X_mean=np.asarray(gp.X_mean_), X_scale=np.asarray(gp.X_scale_),
                      world_size=np.int64(info.world_size))
        if mean is not None:
            arrays.update(mean=np.asarray(mean), std=np.asarray(std))
        out = Path(ns.out)
        np.savez(out, **arrays)
        out.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _run_rank(ns, X, y, X_test) -> int:
    try:
        info = pg.init_from_env(ns.timeout)
    except (RuntimeError, pg.RendezvousError) as err:
        print(f"gpkern.distributed.gp rank {os.environ.get('RANK', '?')}: {type(err).__name__}: "
              f"{err}", file=sys.stderr, flush=True)
        return 1
    code = 0
    try:
        if info.rank != 0:  # every rank computes the same fit: rank 0 speaks for all
            warnings.simplefilter("ignore")
        with pg.guard("the distributed fit's collectives", timeout=info.timeout,
                      convert=pg.is_communication_error):
            summary = _fit_and_write(ns, X, y, X_test, info)
        if info.rank == 0:
            print(
                f"gpkern.distributed.gp: {summary['world_size']} rank(s), n={summary['n_train']}, "
                f"kernel {summary['kernel']}, log marginal likelihood "
                f"{summary['log_marginal_likelihood']:.6g}, noise {summary['noise']:.4g}, fit "
                f"{summary['fit_seconds']:.2f} s; wrote {ns.out}", flush=True,
            )
    except Exception as err:
        print(f"gpkern.distributed.gp rank {info.rank}: {type(err).__name__}: {err}",
              file=sys.stderr, flush=True)
        code = 1
    finally:
        pg.destroy(info)  # a broken group left to the interpreter's exit aborts the process
    return code


def main(argv: list[str] | None = None) -> int:
    """Run the command line (see the module docstring); returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    ap = _parser()
    ns = ap.parse_args(argv)
    try:
        pg.resolve_timeout(ns.timeout)
        build_kernel(ns.kernel, 1, ns.nu, ns.depth)
        X, y, X_test = load_inputs(ns.data, ns.test)
    except ValueError as err:
        ap.error(str(err))
    if not Path(ns.out).resolve().parent.is_dir():
        ap.error(f"--out: the folder {Path(ns.out).resolve().parent} does not exist.")
    if ns.nproc is not None and (ns.nproc < 1 or pg.torchrun_env_present()):
        ap.error("--nproc must be >= 1" if ns.nproc < 1 else
                 "--nproc cannot be used under torchrun (it sets the number of processes).")
    if pg.torchrun_env_present():
        return _run_rank(ns, X, y, X_test)
    if ns.nproc is not None and ns.nproc > 1:
        rest, skip = [], False
        for a in argv:  # the same command without --nproc, once per rank
            if skip:
                skip = False
            elif a == "--nproc":
                skip = True
            elif not a.startswith("--nproc="):
                rest.append(a)
        threads = int(os.environ.get("OMP_NUM_THREADS", 1))
        procs = pg.start_local_ranks([sys.executable, "-m", "gpkern.distributed.gp", *rest],
                                     ns.nproc, threads=threads)
        codes = pg.wait_local_ranks(procs, deadline=None)
        failed = [(r, c) for r, c in enumerate(codes) if c]
        if failed:
            print("gpkern.distributed.gp: " + ", ".join(
                f"rank {r} exited with status {c}" for r, c in failed), file=sys.stderr)
        return 1 if failed else 0
    # One process: a one-rank job on a loopback rendezvous, the same code path as torchrun's.
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(pg.free_port()))
    return _run_rank(ns, X, y, X_test)


if __name__ == "__main__":
    raise SystemExit(main())
