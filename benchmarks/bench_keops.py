"""KeOps backend: kernel matvec, fit + predict, memory, against GPyTorch's KeOps kernels and dense torch.

Every configuration runs in its own subprocess (``--worker``), which reports wall time, process
CPU time, peak resident memory (``resource.getrusage(RUSAGE_SELF).ru_maxrss``: the whole
process, Python, torch and pykeops included) and held-out RMSE, so memory figures never mix.
gpkern and GPyTorch configurations alternate so both see the same machine load.  KeOps compiles
into a cache folder private to this benchmark, warmed by a small run of every configuration
first, so compile time is not counted.

Data: y = sin(2 x_1) cos(x_2) + 0.5 x_3 + 0.1 noise, x uniform in [-3, 3]^3, 2,000 held-out
points.  Matvec rows: the three kernels both libraries have (scaled ARD RBF, Matérn 5/2,
periodic), 16 right-hand sides.  Fit rows (ScaleKernel(RBF, ARD)): hyperparameters start
from a dense GP fitted on a random 2,000-point subset (the same start for every library), then
``--fit-iters`` Adam steps (lr 0.05) on the exact marginal likelihood of all n points with the
same linear_operator settings (CG tolerance, probe vectors, Lanczos iterations, preconditioner
rank), then prediction of means and variances at the held-out points.  NNGP row: the documented
recipe (docs/user_guide/scaling.rst), hyperparameters on the subset, conditioning on all n.

Run:  /work/main/.venv/bin/python benchmarks/bench_keops.py [--quick]
Writes benchmarks/results/keops.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
D = 3
N_TEST = 2000
TRAIN = dict(cg_tol=0.01, max_cg_iter=100, num_probes=15, lanczos_iter=10, preconditioner_rank=256)
EVAL = dict(
    eval_cg_tol=0.01,
    max_eval_cg_iter=100,
    eval_preconditioner_rank=1024,
    variance_rank=32,
    variance_directions=8,
    batch_size=2000,
)
#: NNGP conditioning with the noise learned on the subset (0.012 in normalised units): CG needs
#: 39 / 9 / 5 iterations at preconditioner rank 256 / 1024 / 2048 on 10,000 points, 12 / 6 at
#: 1024 / 2048 on 20,000 (dense study); rank 1536 keeps the factor (8 n r bytes) at 1.2 GB for
#: 100,000 points.
EVAL_NNGP = dict(EVAL, max_eval_cg_iter=200, eval_preconditioner_rank=1536, variance_rank=256)
KERNELS = ("rbf", "matern52", "periodic")
#: Dense-GP subset that initialises every fit (and learns the NNGP recipe's hyperparameters).
SUBSET = 2000


def make_data(n: int, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    X = rng.uniform(-3, 3, (n + N_TEST, D))
    f = np.sin(2 * X[:, 0]) * np.cos(X[:, 1]) + 0.5 * X[:, 2]
    y = f + 0.1 * rng.standard_normal(n + N_TEST)
    return X[:n], y[:n], X[n:], f[n:]


def _settings(train: bool, ev: dict = EVAL):
    import gpytorch
    import linear_operator

    from gpkern.models.iterative import IterativeSettings

    cfg = IterativeSettings(**TRAIN, **ev)
    ctx = [*cfg.context().contexts]
    if not train:
        ctx += [
            gpytorch.settings.eval_cg_tolerance(ev["eval_cg_tol"]),
            linear_operator.settings.cg_tolerance(ev["eval_cg_tol"]),
            linear_operator.settings.max_cg_iterations(ev["max_eval_cg_iter"]),
            gpytorch.settings.max_cg_iterations(ev["max_eval_cg_iter"]),
            gpytorch.settings.max_root_decomposition_size(
                ev["variance_rank"] + ev["variance_directions"]
            ),
        ]
    return ctx


class _Many:
    def __init__(self, ctx):
        self.ctx = ctx

    def __enter__(self):
        for c in self.ctx:
            c.__enter__()

    def __exit__(self, *a):
        for c in reversed(self.ctx):
            c.__exit__(*a)


def _peer_kernel(name: str, keops_peer: bool = False):
    """The matvec kernels, as gpytorch kernels (``keops_peer``: GPyTorch's KeOps twin)."""
    import gpytorch

    mod = gpytorch.kernels.keops if keops_peer else gpytorch.kernels
    if name == "rbf":
        base = mod.RBFKernel(ard_num_dims=D)
    elif name == "matern52":
        base = mod.MaternKernel(nu=2.5, ard_num_dims=D)
    elif name == "periodic":
        base = mod.PeriodicKernel()
    else:
        raise ValueError(name)
    return gpytorch.kernels.ScaleKernel(base).double()


def worker(cfg: dict) -> dict:
    import resource

    import numpy as np
    import torch

    torch.set_default_dtype(torch.float64)
    sys.path.insert(0, ROOT)

    n, lib, task = cfg["n"], cfg["lib"], cfg["task"]
    X, y, Xt, ft = make_data(n)
    out = {}
    t0, c0 = time.perf_counter(), time.process_time()
    if task == "matvec":
        Xq = torch.as_tensor(X)
        V = torch.randn(n, 16, generator=torch.Generator().manual_seed(0))
        kern = _peer_kernel(cfg.get("kernel", "rbf"))
        with torch.no_grad():
            if lib == "gpkern":
                from gpkern.linalg.keops import kernel_operator

                op = kernel_operator(kern, Xq, backend="keops")
                t0, c0 = time.perf_counter(), time.process_time()
                r = op._matmul(V)
            elif lib == "gpytorch":
                kg = _peer_kernel(cfg.get("kernel", "rbf"), keops_peer=True)
                kg.load_state_dict(kern.state_dict())
                t0, c0 = time.perf_counter(), time.process_time()
                r = kg(Xq) @ V
            else:
                t0, c0 = time.perf_counter(), time.process_time()
                r = kern(Xq).to_dense() @ V
        out["checksum"] = float(r[:5].sum())
    elif task == "nngp":
        out.update(_nngp_gpkern(X, y, Xt, ft) if lib == "gpkern" else _nngp_dense(X, y, Xt, ft))
    else:  # fit: subset start (not timed), then the n-point fit and prediction (timed)
        start = _subset_start(X, y)
        t0, c0 = time.perf_counter(), time.process_time()
        if lib == "gpkern":
            out.update(_fit_gpkern(cfg, start, X, y, Xt, ft))
        elif lib == "gpytorch":
            out.update(_fit_gpytorch(cfg, start, X, y, Xt, ft))
        else:
            from gpkern.estimators import GPRegressor

            gp = GPRegressor(
                kernel=start["kernel"], optimizer="adam", max_iter=cfg["iters"], backend="dense"
            ).fit(X, y)
            mean = gp.predict(Xt)
            out["rmse"] = float(np.sqrt(np.mean((mean - ft) ** 2)))
    out["time_s"] = time.perf_counter() - t0
    out["cpu_s"] = time.process_time() - c0
    out["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return out


def _subset_start(X, y) -> dict:
    """Hyperparameters of a dense GP (scaled ARD RBF) on a random subset: every fit's start."""
    import numpy as np

    from gpkern.estimators import GPRegressor

    idx = np.random.default_rng(0).choice(len(X), min(len(X), SUBSET), replace=False)
    sub = GPRegressor(backend="dense", random_state=0).fit(X[idx], y[idx])
    k = sub.kernel_
    return {
        "kernel": k,
        "lengthscale": k.base_kernel.lengthscale.detach().tolist(),
        "outputscale": float(k.outputscale),
    }


def _fit_gpkern(cfg, start, X, y, Xt, ft):
    import numpy as np

    from gpkern.estimators import GPRegressor

    opts = {**TRAIN, **EVAL}
    gp = GPRegressor(
        kernel=start["kernel"],
        optimizer="adam",
        max_iter=cfg["iters"],
        backend="keops",
        backend_options=opts,
    )
    t0 = time.perf_counter()
    gp.fit(X, y)
    t_fit = time.perf_counter()
    mean, std = gp.predict(Xt, return_std=True)
    return {
        "rmse": float(np.sqrt(np.mean((mean - ft) ** 2))),
        "mean_std": float(std.mean()),
        "cg_iter": gp._posterior.n_iter,
        "fit_s": t_fit - t0,
        "predict_s": time.perf_counter() - t_fit,
        "noise": float(gp.noise_),
    }


#: NNGP benchmark: layers of the 2-ReLU-layer network.
NNGP_LAYERS = [("dense", 1.5, 0.5), ("relu",), ("dense", 1.5, 0.5), ("relu",), ("dense", 1.5, 0.5)]
#: Dense reference of the NNGP row: the same hyperparameters, conditioned on this many points.
NNGP_DENSE_N = 5000


def _nngp_subset_hyperparameters(X, y):
    """Output scale and noise of ScaleKernel(NNGP) learned by a dense GP on a random subset."""
    import gpytorch
    import numpy as np

    from gpkern.estimators import GPRegressor
    from gpkern.kernels.nngp import DenseNetworkKernel

    idx = np.random.default_rng(0).choice(len(X), min(len(X), SUBSET), replace=False)
    kernel = gpytorch.kernels.ScaleKernel(DenseNetworkKernel(NNGP_LAYERS, D))
    sub = GPRegressor(kernel=kernel, backend="dense", random_state=0).fit(X[idx], y[idx])
    return sub.kernel_, sub.noise_


def _nngp_gpkern(X, y, Xt, ft):
    """The documented recipe: learn on a random subset with the dense backend, then condition
    on all n points with the KeOps backend."""
    import numpy as np

    from gpkern.estimators import GPRegressor

    t0 = time.perf_counter()
    kernel, noise = _nngp_subset_hyperparameters(X, y)
    t_sub = time.perf_counter() - t0
    gp = GPRegressor(
        kernel=kernel,
        noise=noise,
        optimizer=None,
        backend="keops",
        backend_options={**TRAIN, **EVAL_NNGP},
        verbose=True,
    )
    t0 = time.perf_counter()
    gp.fit(X, y)
    t_fit = time.perf_counter() - t0
    mean, std = gp.predict(Xt, return_std=True)
    return {
        "rmse": float(np.sqrt(np.mean((mean - ft) ** 2))),
        "mean_std": float(std.mean()),
        "cg_iter": gp._posterior.n_iter,
        "subset_fit_s": t_sub,
        "condition_s": t_fit,
        "predict_s": time.perf_counter() - t0 - t_fit,
        "noise": noise,
        "outputscale": float(kernel.outputscale),
    }


def _nngp_dense(X, y, Xt, ft):
    import numpy as np

    from gpkern.estimators import GPRegressor

    kernel, noise = _nngp_subset_hyperparameters(X, y)
    m = min(len(X), NNGP_DENSE_N)
    gp = GPRegressor(kernel=kernel, noise=noise, optimizer=None, backend="dense").fit(X[:m], y[:m])
    mean = gp.predict(Xt)
    return {"rmse": float(np.sqrt(np.mean((mean - ft) ** 2))), "n_dense": m}


def _fit_gpytorch(cfg, start, X, y, Xt, ft):
    import gpytorch
    import linear_operator
    import numpy as np
    import torch

    precond_error = None
    Xq, Xtq = torch.as_tensor(X), torch.as_tensor(Xt)
    mu, sd = y.mean(), y.std()
    yq = torch.as_tensor((y - mu) / sd)

    class Model(gpytorch.models.ExactGP):
        def __init__(self):
            lik = gpytorch.likelihoods.GaussianLikelihood(
                noise_constraint=gpytorch.constraints.GreaterThan(1e-6)
            )
            super().__init__(Xq, yq, lik)
            self.covar = gpytorch.kernels.ScaleKernel(
                gpytorch.kernels.keops.RBFKernel(ard_num_dims=D)
            )

        def forward(self, x):
            return gpytorch.distributions.MultivariateNormal(
                torch.zeros(x.shape[0], dtype=x.dtype), self.covar(x)
            )

    t_start = time.perf_counter()
    model = Model().double()
    model.covar.base_kernel.lengthscale = torch.tensor(start["lengthscale"])
    model.covar.outputscale = start["outputscale"]
    model.likelihood.noise = 0.1  # gpkern's estimator also starts a learned noise at 0.1
    mll = gpytorch.mlls.ExactMarginalLogLikelihood(model.likelihood, model)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    model.train()
    ctx = _settings(True)
    try:
        with _Many(ctx):
            torch.manual_seed(0)
            -mll(model(Xq), yq)  # probe: GPyTorch's KeOps kernels give no diagonal...
    except TypeError as exc:
        # ... so its pivoted-Cholesky preconditioner fails: run it unpreconditioned.
        precond_error = str(exc)[:80]
        ctx = ctx + [linear_operator.settings.max_preconditioner_size(0)]
    with _Many(ctx):
        for i in range(cfg["iters"]):
            torch.manual_seed(i)
            opt.zero_grad()
            loss = -mll(model(Xq), yq)
            loss.backward()
            opt.step()
    t_train = time.perf_counter()
    model.eval()
    out = {"train_s": t_train - t_start}
    with (
        torch.no_grad(),
        _Many(_settings(False, EVAL)),
        linear_operator.settings.max_preconditioner_size(0),
        gpytorch.settings.fast_pred_var(),
    ):
        pred = model(Xtq)
        mean = pred.mean.numpy() * sd + mu
        out["rmse"] = float(np.sqrt(np.mean((mean - ft) ** 2)))
        try:
            out["mean_std"] = float((pred.variance.clamp_min(0).sqrt() * sd).mean())
        except TypeError as exc:  # its KeOps kernels give no diagonal (see the notes)
            out["variance_error"] = str(exc)[:80]
    notes = []
    if precond_error:
        notes.append(
            "GPyTorch trained unpreconditioned: its pivoted Cholesky raised " + precond_error
        )
    if "variance_error" in out:
        notes.append("its predictive variances raised " + out["variance_error"] + " (mean only)")
    if notes:
        out["note"] = "; ".join(notes)
    return out


def run(cfg: dict, cache: str, timeout: float) -> dict:
    env = dict(os.environ, KEOPS_CACHE_FOLDER=cache, PYTHONPATH=ROOT)
    try:
        proc = subprocess.run(
            [sys.executable, __file__, "--worker", json.dumps(cfg)],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout:.0f} s"}
    for line in proc.stdout.splitlines()[::-1]:
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1][:200]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run at small n")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "keops.md"))
    parser.add_argument("--sizes", type=int, nargs="*", default=[10_000, 50_000, 100_000])
    parser.add_argument("--fit-sizes", type=int, nargs="*", default=[10_000, 50_000, 100_000])
    parser.add_argument("--fit-iters", type=int, default=3, help="Adam steps of each fit")
    parser.add_argument(
        "--nngp-n", type=int, nargs="*", default=[100_000], help="n of the NNGP run"
    )
    parser.add_argument(
        "--gpytorch-fit-max-n",
        type=int,
        default=50_000,
        help="largest n at which GPyTorch's (unpreconditioned) fit is attempted",
    )
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per gpkern run")
    parser.add_argument(
        "--gpytorch-timeout", type=float, default=1800.0, help="seconds per GPyTorch or dense run"
    )
    parser.add_argument(
        "--resume",
        nargs="*",
        default=[],
        help="markdown files written by interrupted runs of this same script and code: their raw "
        "rows are kept and their configurations not run again",
    )
    parser.add_argument(
        "--table-only",
        action="store_true",
        help="write the table from the --resume rows without running anything",
    )
    parser.add_argument("--header-note", help="a sentence for the table's header (how it was run)")
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(json.loads(args.worker))), flush=True)
        return

    sizes = [2000, 4000] if args.quick else args.sizes
    fit_sizes = [2500] if args.quick else args.fit_sizes
    fit_iters = 2 if args.quick else args.fit_iters
    nngp_sizes = [3000] if args.quick else args.nngp_n
    if args.table_only:
        kind = {"NNGP": 0, "fit": 1, "matvec": 2}

        def order(row):
            name = row["task"]
            kernel = next((i for i, k in enumerate(KERNELS) if f" {k} " in name), 0)
            return (kind.get(name.split()[0], 3), row["n"], kernel)

        rows = sorted(_resumed(args.resume, keep_errors=True), key=order)
        write_table(rows, args, time.time(), os.getloadavg(), done=True)
        return
    cache = os.environ.get("GPKERN_BENCH_KEOPS_CACHE") or tempfile.mkdtemp(
        prefix="gpkern-bench-keops-"
    )
    start = time.time()
    load_before = os.getloadavg()
    # Warm the KeOps cache (compilation is per formula and right-hand-side width, not per n).
    for lib in ("gpkern", "gpytorch"):
        for kernel in KERNELS if sizes else ():
            run({"n": 500, "lib": lib, "task": "matvec", "kernel": kernel}, cache, 600)
        if fit_sizes:
            run({"n": 500, "lib": lib, "task": "fit", "iters": 1}, cache, 600)
    if nngp_sizes:
        run({"n": 500, "lib": "gpkern", "task": "nngp"}, cache, 600)

    rows = _resumed(args.resume)
    done_keys = {(r["task"], r["n"], r["lib"]) for r in rows}

    def record(task, n, lib, cfg, limit, note=""):
        if (task, n, lib) in done_keys:
            return
        res = run(cfg, cache, limit)
        rows.append({"task": task, "n": n, "lib": lib, "note": note, **res})
        print(task, n, lib, res, flush=True)
        write_table(rows, args, start, load_before)  # partial tables survive an interruption

    def limit(lib):
        return args.timeout if lib == "gpkern" else args.gpytorch_timeout

    # Headline rows first: an interrupted run still has the NNGP and fit evidence.
    for n in nngp_sizes:
        task = f"NNGP (2 ReLU layers): learn on {SUBSET:,}, condition on n + predict"
        record(task, n, "gpkern", {"n": n, "lib": "gpkern", "task": "nngp"}, args.timeout)
        record(
            task,
            n,
            "dense",
            {"n": n, "lib": "dense", "task": "nngp"},
            args.gpytorch_timeout,
            note=f"dense on the first {NNGP_DENSE_N:,}",
        )

    fit_task = f"fit (subset start + {fit_iters} Adam steps on all n) + predict"
    for n in fit_sizes:
        for lib in ("gpkern", "gpytorch") + (("dense",) if n <= 10_000 else ()):
            if lib == "gpytorch" and n > args.gpytorch_fit_max_n:
                if (fit_task, n, lib) not in done_keys:
                    rows.append(
                        {
                            "task": fit_task,
                            "n": n,
                            "lib": lib,
                            "note": "not run: unpreconditioned (its pivoted Cholesky needs a "
                            "diagonal its KeOps kernels lack), its cost exceeds this run's "
                            f"budget (--gpytorch-fit-max-n {args.gpytorch_fit_max_n:,})",
                            "error": "not run (see notes)",
                        }
                    )
                continue
            cfg = {"n": n, "lib": lib, "task": "fit", "iters": fit_iters}
            record(fit_task, n, lib, cfg, limit(lib))

    for n in sizes:
        for kernel in KERNELS:
            for lib in ("gpkern", "gpytorch") + (("dense",) if n <= 10_000 else ()):
                cfg = {"n": n, "lib": lib, "task": "matvec", "kernel": kernel}
                record(f"matvec {kernel} (16 rhs)", n, lib, cfg, limit(lib))
    write_table(rows, args, start, load_before, done=True)


def _resumed(paths: list, keep_errors: bool = False) -> list:
    """Rows of earlier runs, one per configuration (measured in several files: the last one).

    Rows with an error (failed or skipped configurations) are dropped so that a resumed run
    tries them again, unless ``keep_errors`` (``--table-only``, which runs nothing)."""
    unique = {}
    for row in (r for path in paths for r in _resumed_rows(path, keep_errors)):
        key = (row["task"], row["n"], row["lib"])
        unique.pop(key, None)
        unique[key] = row
    return list(unique.values())


def _resumed_rows(path: str, keep_errors: bool = False) -> list:
    """Raw rows of an earlier (interrupted) output of this script, marked as resumed.

    Only the first block of raw rows is read: in ``benchmarks/results/keops.md`` the blocks
    after it belong to older runs with other settings."""
    rows, inside = [], False
    with open(path) as fh:
        for line in fh:
            if line.startswith("```"):
                if inside:
                    break
                inside = True
                continue
            if inside and line.startswith("{"):
                row = json.loads(line)
                if keep_errors or "error" not in row:
                    row.setdefault("resumed", True)
                    rows.append(row)
    return rows


def write_table(rows, args, start, load_before, done: bool = False) -> None:
    import torch

    by = {}
    for r in rows:
        by[(r["task"], r["n"], r["lib"])] = r
    lines = [
        "# KeOps backend benchmark",
        "",
        f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC. Machine: 2-core CPU"
        + (
            ""
            if args.table_only
            else f" (load average {load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after)"
        )
        + "; "
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, no GPU. "
        + (
            "Table written from earlier runs' rows (--table-only)."
            if args.table_only
            else f"{'Total benchmark time' if done else 'PARTIAL (still running), elapsed'} "
            f"{time.time() - start:.0f} s{' (--quick)' if args.quick else ''}."
        ),
        "",
        f"Settings (both libraries): training {TRAIN}; conditioning {EVAL}; NNGP conditioning "
        f"{EVAL_NNGP} (GPyTorch: same CG tolerance and iteration cap, LOVE root size = "
        f"variance_rank + variance_directions). float64, D = {D}, {N_TEST} held-out points. "
        "Peak memory is the whole process's ru_maxrss (Python + torch + pykeops baseline "
        "included). RMSE is against the noise-free function. Times are wall clock with the "
        "process CPU time beside them; on a loaded machine the CPU ratio is the fair one.",
        *(["", args.header_note] if args.header_note else []),
        "",
        "| task | n | gpkern time (s) | gpkern CPU (s) | GPyTorch KeOps time (s) | GPyTorch CPU (s) | ratio GPyTorch/gpkern (wall) | ratio (CPU) | dense time (s) | gpkern peak MB | GPyTorch peak MB | dense peak MB | gpkern RMSE | GPyTorch RMSE | dense RMSE |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    seen, notes = [], []
    for r in rows:
        key = (r["task"], r["n"])
        if key in seen:
            continue
        seen.append(key)
        g, p, d = (by.get((*key, lib), {}) for lib in ("gpkern", "gpytorch", "dense"))

        def f(res, name, fmt="{:.2f}"):
            if not res:
                return "—"
            if "error" in res:
                return res["error"][:40]
            return fmt.format(res[name]) if name in res else "—"

        ratio = f"{p['time_s'] / g['time_s']:.2f}" if "time_s" in g and "time_s" in p else "—"
        cpu_ratio = f"{p['cpu_s'] / g['cpu_s']:.2f}" if "cpu_s" in g and "cpu_s" in p else "—"
        if p.get("note"):
            notes.append(f"{key[0]}, n = {key[1]:,}: {p['note']}")
        lines.append(
            f"| {key[0]} | {key[1]:,} | {f(g, 'time_s')} | {f(g, 'cpu_s')} | {f(p, 'time_s')} | "
            f"{f(p, 'cpu_s')} | {ratio} | {cpu_ratio} | {f(d, 'time_s')} | "
            f"{f(g, 'peak_mb', '{:.0f}')} | {f(p, 'peak_mb', '{:.0f}')} | {f(d, 'peak_mb', '{:.0f}')} | "
            f"{f(g, 'rmse', '{:.4f}')} | {f(p, 'rmse', '{:.4f}')} | {f(d, 'rmse', '{:.4f}')} |"
        )
    if any(r.get("resumed") for r in rows):
        notes.append(
            'Rows marked `"resumed": true` were measured by an earlier, interrupted invocation '
            "of this script on the same machine (`--resume`; the header says which code)."
        )
    lines += ["", *[f"- {n}" for n in notes]]
    lines += ["", "Raw rows:", "", "```", *[json.dumps(r) for r in rows], "```", ""]
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        fh.write("\n".join(lines))
    if done:
        print("wrote", args.out)


if __name__ == "__main__":
    main()
