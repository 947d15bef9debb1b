"""NNGP / NTK kernel time: gpkern against neural-tangents (JAX) and Monte Carlo of finite nets.

Cases (issue 5): a 4-layer ReLU MLP on n = 4000 inputs of dimension 100, and a 3-layer
convolutional net with global average pooling on n = 500 images of 8 x 8 x 3, NNGP and NTK.

neural-tangents 0.6.5 needs an old JAX and numpy < 2, so it cannot share a process with gpkern
(numpy 2); it runs in its own virtual environment, in subprocesses interleaved with gpkern's
(gpkern, peer, gpkern, peer, ...) so that both see the same machine load. Set it up with::

    python3.11 -m venv /work/venvs/nt
    /work/venvs/nt/bin/pip install "jax[cpu]==0.4.30" jaxlib==0.4.30 "numpy<2" \
        neural-tangents==0.6.5 tf2jax==0.3.6

Both sides use one CPU thread (``torch.set_num_threads(1)``; XLA with its Eigen thread pool
off) and float64; each worker times its kernel after a small warm-up call (JIT tracing for
JAX). Values are compared as max |K_gpkern - K_nt| / max |K_nt|. The Monte Carlo row times the
empirical NNGP of finite networks (width 512, 32 draws) on a 300-point subset and reports its
error against the exact kernel.

Run ``python benchmarks/bench_nngp.py`` (or ``--quick`` for a smoke run); the table goes to
``benchmarks/results/nngp.md``.
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
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
NT_PYTHON = os.environ.get("NT_PYTHON", "/work/venvs/nt/bin/python")

W, B = 1.5, 0.1


def make_inputs(case: str, n: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    if case == "mlp":
        return rng.normal(size=(n, 100))
    return rng.normal(size=(n, 3, 8, 8))  # NCHW


# -- workers ------------------------------------------------------------------------------------
def gpkern_worker(case: str, kind: str, path: str, out: str) -> None:
    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(ROOT))
    from gpkern.kernels.nngp import Conv, Dense, GlobalAvgPool, Relu, serial

    if case == "mlp":
        arch = serial(*[m for _ in range(4) for m in (Dense(W, B), Relu())], Dense(1.0, 0.0))
    else:
        arch = serial(*[m for _ in range(3) for m in (Conv(3, W_std=W, b_std=B), Relu())], GlobalAvgPool(), Dense(1.0, 0.0))
    x = torch.from_numpy(np.load(path))
    arch.kernel(x[:8], kind=kind)  # no compilation in gpkern; warms allocator and imports
    t = time.perf_counter()
    K = arch.kernel(x, kind=kind)
    dt = time.perf_counter() - t
    np.save(out, K.numpy())
    print(json.dumps({"time": dt}))


NT_WORKER = r"""
import json, sys, time, os
import numpy as np
import jax
jax.config.update("jax_enable_x64", True)
import neural_tangents as nt
from neural_tangents import stax
case, kind, path, out = sys.argv[1:5]
W, B = 1.5, 0.1
x = np.load(path)
if case == "mlp":
    layers = [l for _ in range(4) for l in (stax.Dense(1, W_std=W, b_std=B), stax.Relu())]
    _, _, kf = stax.serial(*layers, stax.Dense(1, W_std=1.0, b_std=0.0))
    fn = jax.jit(kf, static_argnames="get")
    call = lambda a: fn(a, None, get=kind)
else:
    x = x.transpose(0, 2, 3, 1)
    layers = [l for _ in range(3) for l in (stax.Conv(1, (3, 3), padding="SAME", W_std=W, b_std=B), stax.Relu())]
    _, _, kf = stax.serial(*layers, stax.GlobalAvgPool(), stax.Dense(1, W_std=1.0, b_std=0.0))
    fn = nt.batch(kf, batch_size=50, store_on_device=False)
    call = lambda a: fn(a, None, kind)
# warm-up compiles for the timed shapes (the full input for jit, one 50-row batch for nt.batch)
np.asarray(call(x[:50] if case != "mlp" else x))
t = time.perf_counter()
K = np.asarray(call(x))
dt = time.perf_counter() - t
np.save(out, K)
print(json.dumps({"time": dt}))
"""


def _run(cmd: list[str], env: dict) -> float:
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise RuntimeError(f"{cmd[:2]} failed:\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])["time"]


def monte_carlo_row(n: int) -> dict:
    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "tests"))
    from nngp_finite_nets import empirical_nngp

    from gpkern.kernels.nngp import Dense, Relu, serial

    arch = serial(*[m for _ in range(4) for m in (Dense(W, B), Relu())], Dense(1.0, 0.0))
    x = torch.from_numpy(make_inputs("mlp", n))
    t = time.perf_counter()
    K = arch.kernel(x)
    t_exact = time.perf_counter() - t
    t = time.perf_counter()
    mean, _ = empirical_nngp(arch, x, 512, 32, torch.Generator().manual_seed(0), chunk=8)
    t_mc = time.perf_counter() - t
    err = float((mean - K).abs().max() / K.abs().max())
    return {"n": n, "t_exact": t_exact, "t_mc": t_mc, "err": err}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, one repeat")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--cnn-n", type=int, default=500, help="images for the CNN case (multiple of 50)")
    ap.add_argument("--worker", nargs=4, metavar=("CASE", "KIND", "IN", "OUT"), help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "nngp.md"))
    args = ap.parse_args()
    if args.worker:
        gpkern_worker(*args.worker)
        return

    sizes = {"mlp": 500, "cnn": 50} if args.quick else {"mlp": 4000, "cnn": args.cnn_n}
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
               TF_CPP_MIN_LOG_LEVEL="3")
    have_nt = Path(NT_PYTHON).exists()
    rows = []
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        nt_script = Path(tmp) / "nt_worker.py"
        nt_script.write_text(NT_WORKER)
        for case, n in sizes.items():
            xin = Path(tmp) / f"{case}.npy"
            np.save(xin, make_inputs(case, n))
            for kind in ("nngp", "ntk"):
                tg, tn = [], []
                for _ in range(1 if args.quick else args.repeats):
                    kg, kn = Path(tmp) / "kg.npy", Path(tmp) / "kn.npy"
                    tg.append(_run([sys.executable, __file__, "--worker", case, kind, str(xin), str(kg)], env))
                    if have_nt:
                        tn.append(_run([NT_PYTHON, str(nt_script), case, kind, str(xin), str(kn)], env))
                row = {"case": case, "n": n, "kind": kind, "gpkern": min(tg)}
                if have_nt:
                    Kg, Kn = np.load(kg), np.load(kn).reshape(n, n)
                    row.update(nt=min(tn), rel=float(np.abs(Kg - Kn).max() / np.abs(Kn).max()))
                rows.append(row)
                print(row, flush=True)
    mc = monte_carlo_row(100 if args.quick else 300)
    print(mc, flush=True)
    load_after = os.getloadavg()
    write_table(rows, mc, args, have_nt, load_before, load_after)


def write_table(rows, mc, args, have_nt, load_before, load_after) -> None:
    import torch

    lines = [
        "# NNGP / NTK kernels: gpkern vs neural-tangents",
        "",
        f"Date: {datetime.date.today().isoformat()}. Machine: 2-core CPU "
        f"(load average before/after: {load_before[0]:.1f} / {load_after[0]:.1f}); "
        f"{platform.processor() or platform.machine()}. torch {torch.__version__}, one thread per side, "
        "float64. neural-tangents 0.6.5 with jax 0.4.30 in its own venv, run in interleaved "
        "subprocesses (see the script's docstring)." + (" Quick run." if args.quick else ""),
        "",
        "| architecture | n | kernel | gpkern (s) | neural-tangents (s) | speed-up | max rel. diff |",
        "|---|---|---|---|---|---|---|",
    ]
    names = {"mlp": "4-layer ReLU MLP, d = 100", "cnn": "3-layer CNN + global avg pool, 8x8x3"}
    for r in rows:
        if have_nt:
            lines.append(
                f"| {names[r['case']]} | {r['n']} | {r['kind'].upper()} | {r['gpkern']:.2f} | {r['nt']:.2f} | "
                f"{r['nt'] / r['gpkern']:.2f}x | {r['rel']:.1e} |"
            )
        else:
            lines.append(f"| {names[r['case']]} | {r['n']} | {r['kind'].upper()} | {r['gpkern']:.2f} | n/a | n/a | n/a |")
    if not args.quick and args.cnn_n != 500:
        lines += [
            "",
            f"The CNN case ran with n = {args.cnn_n} (``--cnn-n {args.cnn_n}``), not the issue's 500: on "
            "the shared machine the n = 500 run (cost grows as n^2 on both sides) projected to about "
            "30 minutes. For scale, /work/shared/PAPERS.md records neural-tangents at 63 s (NNGP) / "
            "113 s (NTK) for n = 500 on this CPU under lighter load.",
        ]
    lines += [
        "",
        f"Monte Carlo of finite nets (same MLP, width 512, 32 random initialisations, n = {mc['n']}): "
        f"{mc['t_mc']:.2f} s with max relative error {mc['err']:.1e}, against {mc['t_exact']:.3f} s "
        "for the exact kernel.",
        "",
    ]
    Path(args.out).write_text("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
