"""Strong scaling of the row-partitioned exact GP (``gpkern.distributed``) and its cost model.

For each size ``n`` and each number of processes ``P`` (local gloo processes on 127.0.0.1, one
torch thread each, started by :func:`gpkern.distributed.group.launch`), every rank builds the
same problem (scaled RBF kernel, ``d = 3``, float64, KeOps backend) and times, after a warm-up
at small ``n`` that compiles every KeOps formula:

* matvec: one product :math:`K V` with :math:`b = 1 + s` columns (the training solve's width,
  ``s`` probes), each rank holding its rows of :math:`V`;
* solve: the randomly pivoted Cholesky preconditioner (rank ``k``) and a preconditioned CG
  solve :math:`(K + \\sigma^2 I)^{-1} y` to relative residual 1e-6;
* training step: the log marginal likelihood estimate and its gradient (CG with ``1 + s``
  columns, stochastic Lanczos, one differentiable product), as one optimiser step needs.

Reported per ``(n, P)``: wall time (the slowest rank), CPU time per rank, payload bytes each
rank communicated (per product and per CG iteration, from ``Collectives.bytes_communicated``),
CG iterations, and the peak resident memory of each rank (``ru_maxrss``).

The cost model (see the report) is fitted on the measured points and checked on the largest
size, then used to predict one training step on 1,000,000 points on ``P`` machines.

Run (the full run takes about an hour on 2 cores; use an idle machine)::

    python benchmarks/bench_distributed.py            # n = 20,000 and 50,000; P = 1, 2
    python benchmarks/bench_distributed.py --quick    # n = 1,500 and 3,000: a smoke test
    python benchmarks/bench_distributed.py --device cuda --procs 1   # the single-GPU rows

Writes ``benchmarks/results/distributed.md`` (``--quick``: ``distributed_quick.md``) and a JSON
file with every rank's numbers next to it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import resource
import statistics
import time

import numpy as np
import torch

torch.set_default_dtype(torch.float64)
torch.set_num_threads(1)

import gpytorch  # noqa: E402

from gpkern.distributed import group as pg  # noqa: E402

RESULTS = os.path.join(os.path.dirname(__file__), "results")
D = 3  # input dimension
NOISE = 0.05
# Cost-model assumptions for machines we did not measure: an Ethernet link and the latency of
# one small collective; compute constants come from the measurements.
BANDWIDTH = 10e9 / 8  # bytes per second (10 Gbit/s)
LATENCY = 50e-6  # seconds per collective


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _problem(n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    X = torch.rand(n, D, generator=g) * 4 - 2
    f = torch.sin(2 * X[:, 0]) * torch.cos(X[:, 1]) + 0.3 * X[:, 2]
    y = f + math.sqrt(NOISE) * torch.randn(n, generator=g)
    return X.to(device), y[:, None].to(device)


def _model(cfg: dict, device: torch.device):
    from gpkern.distributed.model import DistributedGP
    from gpkern.models.iterative import IterativeSettings

    kernel = gpytorch.kernels.ScaleKernel(gpytorch.kernels.RBFKernel(ard_num_dims=D))
    kernel.base_kernel.lengthscale = 0.7
    settings = IterativeSettings(cg_tol=cfg["cg_tol"], num_probes=cfg["probes"],
                                 preconditioner_rank=cfg["rank"], max_cg_iter=1000, seed=0)
    return DistributedGP(kernel, noise=NOISE, settings=settings, backend="keops").double().to(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    torch.distributed.barrier()


class _Clock:
    """Wall and CPU seconds of a block, the ranks synchronised on both ends."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def __enter__(self):
        _sync(self.device)
        self.t, self.c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        _sync(self.device)
        self.wall, self.cpu = time.perf_counter() - self.t, time.process_time() - self.c


def _phases(model, X: torch.Tensor, Y: torch.Tensor, cfg: dict, device: torch.device) -> dict:
    """Time the three phases on one problem (collective: every rank calls it)."""
    from gpkern.distributed.partition import row_partition
    from gpkern.linalg.cg import pcg
    from gpkern.linalg.rpcholesky import rp_cholesky
    from gpkern.models.iterative import _LowRankPreconditioner

    n, comm = X.shape[0], model.comm
    rows = row_partition(n, comm.world_size)[comm.rank]
    out = {}
    op = model.operator(X).detach()
    V = torch.randn(n, 1 + cfg["probes"], generator=torch.Generator().manual_seed(1))[rows]
    V = V.to(device)
    walls, cpus = [], []
    for _ in range(cfg["repeats"]):
        with _Clock(device) as clk:
            op._matmul(V)
        walls.append(clk.wall)
        cpus.append(clk.cpu)
    out.update(matvec_wall=statistics.median(walls), matvec_cpu=statistics.median(cpus),
               matvec_bytes=op.last_product_bytes, rss_matvec_mb=_rss_mb())

    # Preconditioned solve, as the posterior's (b = 1).
    reduce = model._reduce
    with _Clock(device) as clk:
        F, _ = rp_cholesky(op.columns, op._diagonal(), min(cfg["rank"], n),
                           generator=torch.Generator().manual_seed(0), rows=rows, reduce=reduce)
        pre = _LowRankPreconditioner(F, NOISE, X.dtype, reduce)
    out.update(precond_wall=clk.wall, precond_cpu=clk.cpu)
    before = comm.bytes_communicated
    with _Clock(device) as clk:
        res = pcg(lambda W: op._matmul(W).add_(W, alpha=NOISE), Y[rows], pre, tol=1e-6,
                  max_iter=1000, reduce=reduce)
    out.update(solve_wall=clk.wall, solve_cpu=clk.cpu, solve_iters=int(res.n_iter),
               solve_bytes_per_iter=(comm.bytes_communicated - before) / max(1, res.n_iter),
               rss_solve_mb=_rss_mb())
    del F, pre, res

    # One training step: the estimate and its gradient.
    model.zero_grad()
    before = comm.bytes_communicated
    with _Clock(device) as clk:
        lml = model.log_marginal_likelihood(X, Y)
        lml.backward()
    out.update(step_wall=clk.wall, step_cpu=clk.cpu, step_iters=int(model.last_cg_iterations),
               step_bytes=comm.bytes_communicated - before, lml=float(lml.detach()),
               rss_step_mb=_rss_mb())
    model.zero_grad()
    return out


def _rank_worker(rank: int, world: int, init_method: str, n: int, cfg: dict) -> dict:
    device = torch.device(cfg["device"])
    info = pg.init_group(init_method, rank, world, timeout=cfg["timeout"])
    try:
        rss_start = _rss_mb()
        model = _model(cfg, device)
        # Warm-up on a small problem: compiles every KeOps formula the phases use.
        _phases(model, *_problem(max(300, 8 * world), device), {**cfg, "repeats": 1}, device)
        out = _phases(model, *_problem(n, device), cfg, device)
        out.update(rank=rank, rss_start_mb=rss_start,
                   cuda_peak_mb=(torch.cuda.max_memory_allocated(device) / 2**20
                                 if device.type == "cuda" else None))
        return out
    finally:
        pg.destroy(info)


def run_point(n: int, P: int, cfg: dict) -> dict:
    outs = pg.launch(_rank_worker, P, (n, cfg), deadline=cfg["deadline"], threads=1)
    bad = [(r, o) for r, o in enumerate(outs) if o[0] != "ok"]
    if bad:
        raise RuntimeError(f"n={n}, P={P}: ranks failed: {bad}")
    ranks = [v for _, v in outs]
    agg = {"n": n, "P": P, "ranks": ranks}
    for key in ("matvec", "precond", "solve", "step"):
        agg[f"{key}_wall"] = max(r[f"{key}_wall"] for r in ranks)
        agg[f"{key}_cpu"] = statistics.mean(r[f"{key}_cpu"] for r in ranks)
    for key in ("matvec_bytes", "solve_bytes_per_iter", "step_bytes", "solve_iters", "step_iters"):
        agg[key] = max(r[key] for r in ranks)
    agg["rss_mb"] = max(max(r[k] for k in ("rss_matvec_mb", "rss_solve_mb", "rss_step_mb"))
                        for r in ranks)
    agg["rss_start_mb"] = max(r["rss_start_mb"] for r in ranks)
    agg["lml"] = ranks[0]["lml"]
    agg["cuda_peak_mb"] = ranks[0]["cuda_peak_mb"]
    return agg


# -- cost model ---------------------------------------------------------------------------------
def comm_bytes_per_iter(n: int, P: int, b: int, k: int) -> float:
    """Payload bytes one rank communicates per CG iteration with ``b`` columns: its share of
    the kernel product's broadcasts (``n b`` numbers), the preconditioner's ``F^T V`` (``k b``)
    and the inner products (``3 b``), float64; nothing with one process."""
    return 0.0 if P == 1 else 8.0 * b * (n + k + 3)


def fit_model(points: list[dict], b: int, k: int) -> dict:
    """Per-pair constants from the measured points (least squares through the origin).

    matvec(n, P)  = c_mv * n^2 / P                        (b columns)
    precond(n, P) = c_pc * n k / P + c_pc2 * n k^2 / P    (fitted as one c_pc * n k (1 + k/n0))
    step(n, P)    = precond + (iters + g) * matvec + comm
    """
    x = np.array([p["n"] ** 2 / p["P"] for p in points])
    c_mv = float(x @ np.array([p["matvec_wall"] for p in points]) / (x @ x))
    xp = np.array([p["n"] * k / p["P"] for p in points])
    c_pc = float(xp @ np.array([p["precond_wall"] for p in points]) / (xp @ xp))
    g = statistics.mean(
        (p["step_wall"] - c_pc * p["n"] * k / p["P"]) / (c_mv * p["n"] ** 2 / p["P"]) - p["step_iters"]
        for p in points
    )
    return {"c_mv": c_mv, "c_pc": c_pc, "g": g, "b": b, "k": k}


def predict_step(model: dict, n: int, P: int, iters: float, cores: int = 1,
                 comm: bool = True) -> dict:
    """Seconds of one training step on ``P`` machines of ``cores`` cores each (compute assumed
    to scale over cores), with ``iters`` CG iterations."""
    units = P * cores
    mv = model["c_mv"] * n * n / units
    pc = model["c_pc"] * n * model["k"] / units
    per_iter_comm = 0.0
    if comm and P > 1:
        # Per CG iteration: P broadcasts of the product, 1 all-reduce for F^T V, 3 for CG's sums.
        per_iter_comm = comm_bytes_per_iter(n, P, model["b"], model["k"]) / BANDWIDTH + (P + 4) * LATENCY
    total = pc + (iters + model["g"]) * mv + iters * per_iter_comm
    return {"matvec": mv, "precond": pc, "comm_per_iter": per_iter_comm, "step": total}


# -- report -------------------------------------------------------------------------------------
def _fmt(x: float) -> str:
    return f"{x:.3g}" if x < 1000 else f"{x:,.0f}"


def report(points: list[dict], cfg: dict, started: str, load: tuple, path: str) -> str:
    b, k = 1 + cfg["probes"], cfg["rank"]
    sizes = sorted({p["n"] for p in points})
    lines = [
        "# Exact GPs across processes: strong scaling and a cost model",
        "",
        f"Date: {started}; machine: {os.cpu_count()}-core {platform.machine()} "
        f"(load average {load[0]:.1f} at start, {os.getloadavg()[0]:.1f} at end); device "
        f"{cfg['device_name']}; torch {torch.__version__}; one torch thread per process; local "
        f"processes on gloo over 127.0.0.1.",
        "",
        f"Problem: scaled RBF kernel, d = {D}, float64, KeOps backend; b = {b} columns per "
        f"product (target + {cfg['probes']} probes), preconditioner rank k = {k}, training CG "
        f"tolerance {cfg['cg_tol']}, solve tolerance 1e-6. Command: `{cfg['command']}`.",
        "",
        "Wall: the slowest rank; CPU: per rank; bytes: payload each rank sent or received in "
        "collectives; RSS: peak resident memory of the largest rank (including ~"
        f"{_fmt(max(p['rss_start_mb'] for p in points))} MB of Python and torch).",
        "",
        "| n | P | matvec wall (s) | matvec CPU/rank (s) | bytes/product | precond (s) | "
        "solve (s) | solve iters | bytes/CG iter | train step (s) | step iters | step CPU/rank (s) "
        "| peak RSS/rank (MB) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in sorted(points, key=lambda p: (p["n"], p["P"])):
        lines.append(
            f"| {p['n']:,} | {p['P']} | {_fmt(p['matvec_wall'])} | {_fmt(p['matvec_cpu'])} | "
            f"{p['matvec_bytes']:,} | {_fmt(p['precond_wall'])} | {_fmt(p['solve_wall'])} | "
            f"{p['solve_iters']} | {p['solve_bytes_per_iter']:,.0f} | {_fmt(p['step_wall'])} | "
            f"{p['step_iters']} | {_fmt(p['step_cpu'])} | {_fmt(p['rss_mb'])} |"
        )
    lines += ["", "Speed-up from 1 to 2 processes (wall):", ""]
    for n in sizes:
        one = next((p for p in points if p["n"] == n and p["P"] == 1), None)
        two = next((p for p in points if p["n"] == n and p["P"] == 2), None)
        if one and two:
            lines.append(
                f"* n = {n:,}: matvec {one['matvec_wall'] / two['matvec_wall']:.2f}x, solve "
                f"{one['solve_wall'] / two['solve_wall']:.2f}x, training step "
                f"{one['step_wall'] / two['step_wall']:.2f}x."
            )
    # Communication: the formula against the counters.
    lines += [
        "",
        "## Cost model",
        "",
        "Per rank, with n points, P processes, b columns and a rank-k preconditioner:",
        "",
        "* compute per product: c_mv n^2 / P (KeOps evaluates each of the n^2 / P kernel entries "
        "of its row block once per product, for all b columns);",
        "* preconditioner: c_pc n k / P (k pivoted columns of the rank's rows, plus the k x k "
        "factor work);",
        "* communication per CG iteration: 8 b (n + k + 3) bytes in float64 for P > 1 (each rank "
        "receives the other ranks' b-column blocks of the product's right-hand side, the k x b "
        "sum F^T V and 3 b CG sums), in P + 4 collectives; O(n b), independent of P;",
        "* memory per rank: the n x d inputs and the (n/P) x (b + k) vectors and factor, O(n d + "
        "(n/P)(b + k)), never n^2;",
        "* one training step: precond + (iters + g) x product + iters x communication, g the "
        "extra products of the gradient and the Lanczos set-up (fitted).",
        "",
        "Communication, formula against the counters (bytes per CG iteration of the b = 1 solve; "
        "the counters include the solve's set-up sums, spread over its iterations):",
        "",
        "| n | P | counted | 8 b (n + k + 3) |",
        "|---:|---:|---:|---:|",
    ]
    for p in sorted(points, key=lambda p: (p["n"], p["P"])):
        lines.append(f"| {p['n']:,} | {p['P']} | {p['solve_bytes_per_iter']:,.0f} | "
                     f"{comm_bytes_per_iter(p['n'], p['P'], 1, k):,.0f} |")
    fit_on = [p for p in points if p["n"] == sizes[0]]
    check = [p for p in points if p["n"] == sizes[-1]]
    model = fit_model(fit_on, b, k)
    lines += [
        "",
        f"Fitted on n = {sizes[0]:,} (P = 1 and 2): c_mv = {model['c_mv']:.3g} s per kernel entry "
        f"(b = {b} columns, one thread), c_pc = {model['c_pc']:.3g} s per n k entry, g = "
        f"{model['g']:.2f} extra products per step. Checked on n = {sizes[-1]:,} (not used in "
        "the fit), with the measured CG iterations:",
        "",
        "| n | P | quantity | predicted (s) | measured (s) | ratio |",
        "|---:|---:|---|---:|---:|---:|",
    ]
    for p in check:
        pred = predict_step(model, p["n"], p["P"], p["step_iters"], comm=False)
        for name, key, val in (("matvec", "matvec_wall", pred["matvec"]),
                               ("precond", "precond_wall", pred["precond"]),
                               ("train step", "step_wall", pred["step"])):
            lines.append(f"| {p['n']:,} | {p['P']} | {name} | {_fmt(val)} | {_fmt(p[key])} | "
                         f"{p[key] / val:.2f} |")
    iters = max(p["step_iters"] for p in points)
    lines += [
        "",
        f"Prediction for one training step at n = 1,000,000 with {iters} CG iterations (the "
        f"most measured here; harder kernels need more), on P machines of 16 cores each "
        f"(compute assumed to scale over cores), {BANDWIDTH * 8 / 1e9:g} Gbit/s links and "
        f"{LATENCY * 1e6:g} us per collective:",
        "",
        "| P machines | product (s) | comm per CG iter (s) | train step (s) | train step (h) |",
        "|---:|---:|---:|---:|---:|",
    ]
    for P in (1, 8, 32, 128):
        pred = predict_step(model, 1_000_000, P, iters, cores=16)
        lines.append(f"| {P} | {_fmt(pred['matvec'])} | {pred['comm_per_iter']:.3g} | "
                     f"{_fmt(pred['step'])} | {pred['step'] / 3600:.2f} |")
    lines += [
        "",
        "Communication stays below a second per iteration (8 b n bytes, ~128 MB at n = 10^6, "
        "b = 16) while compute falls as 1/P: on CPUs the step is compute-bound up to hundreds "
        "of machines. On GPUs c_mv is two to three orders of magnitude smaller, so the "
        "communication term matters from a few machines on: use nccl over a fast interconnect.",
        "",
    ]
    text = "\n".join(lines)
    with open(path, "w") as fh:
        fh.write(text)
    return text


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="n = 1,500 and 3,000: a smoke test")
    ap.add_argument("--sizes", type=int, nargs="+", default=None)
    ap.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--device", default="cpu", help="cpu, or cuda for the single-GPU rows")
    ap.add_argument("--probes", type=int, default=15)
    ap.add_argument("--rank", type=int, default=256, help="preconditioner rank k")
    ap.add_argument("--cg-tol", type=float, default=0.01)
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--out", default=None)
    ns = ap.parse_args(argv)
    sizes = ns.sizes or ([1500, 3000] if ns.quick else [20_000, 50_000])
    if ns.device.startswith("cuda") and ns.procs != [1]:
        ap.error("the GPU rows are single-process: pass --procs 1")
    name = "distributed_quick" if ns.quick else "distributed"
    if ns.device.startswith("cuda"):
        name += "_gpu"
    out = ns.out or os.path.join(RESULTS, f"{name}.md")
    device_name = (torch.cuda.get_device_name(0) if ns.device.startswith("cuda") else
                   f"CPU ({platform.processor() or platform.machine()})")
    cfg = {"device": ns.device, "device_name": device_name, "probes": ns.probes,
           "rank": ns.rank, "cg_tol": ns.cg_tol, "timeout": 3600.0, "deadline": 6 * 3600.0,
           "repeats": ns.repeats or (3 if ns.quick else 2),
           "command": "python benchmarks/bench_distributed.py"
           + (" --quick" if ns.quick else "") + (f" --device {ns.device}" if ns.device != "cpu" else "")}
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load = os.getloadavg()
    points = []
    for n in sizes:
        for P in ns.procs:
            t0 = time.perf_counter()
            p = run_point(n, P, cfg)
            points.append(p)
            print(f"n={n} P={P}: matvec {p['matvec_wall']:.3g} s, solve {p['solve_wall']:.3g} s "
                  f"({p['solve_iters']} it), step {p['step_wall']:.3g} s ({p['step_iters']} it), "
                  f"{p['solve_bytes_per_iter']:,.0f} B/iter, RSS {p['rss_mb']:.0f} MB "
                  f"[{time.perf_counter() - t0:.0f} s]", flush=True)
    with open(os.path.splitext(out)[0] + ".json", "w") as fh:
        json.dump({"config": cfg, "points": points}, fh, indent=1)
    print(report(points, cfg, started, load, out))


if __name__ == "__main__":
    main()
