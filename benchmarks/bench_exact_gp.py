"""Exact GP regression: gpkern vs scikit-learn vs GPyTorch, side by side, from the same start.

Every library fits a scaled ARD RBF kernel with learned Gaussian noise, targets standardised,
starting from gpkern's default initial hyperparameters (length-scales :math:`\\sqrt{d}` times
each feature's median pairwise distance, output scale 1, noise 0.1 in standardised units):

* gpkern ``GPRegressor()``: default settings (L-BFGS on the exact log marginal likelihood).
* scikit-learn ``GaussianProcessRegressor(C * RBF(ARD) + WhiteKernel, normalize_y=True)``:
  L-BFGS-B with analytic gradients, one start.
* GPyTorch, tutorial recipe: ``ExactGP`` with a constant mean, Adam (lr 0.1, 100 steps),
  GPyTorch's default settings (CG and Lanczos above 800 points).
* GPyTorch, converged: the same model, L-BFGS (strong Wolfe) until the loss stops moving, with
  Cholesky at every size (``max_cholesky_size``), so that its optimum is the exact one.

Data: Friedman #1 (d = 5, noise sd 1, 1000 held-out points), ggplot2 ``diamonds`` (log price
from 9 features, the categorical ones integer-coded; 53,940 rows shuffled once, the last 1000
held out, training sets are the first n) and modeldata ``concrete`` (d = 8, 1030 rows: training
sizes up to 800, the remaining rows held out).

Reported per library: wall and CPU time (process and child processes) of fit + predict,
marginal-likelihood evaluations, final log marginal likelihood (exact, original units;
GPyTorch's includes its
constant mean), held-out RMSE and mean log predictive density (noise included), the speed
ratio peer CPU time / gpkern CPU time (> 1: gpkern faster; CPU rather than wall time because
the benchmark may share its machine), and time-to-quality: CPU seconds
from the start of ``fit`` until the log marginal likelihood first came within 0.1 nats of the
best final value any library reached ("-" if never; "n/a" for GPyTorch's tutorial recipe above
800 points, whose trace holds its own CG / Lanczos estimates, not the exact value).

Every (data, n, library) result is stored as it finishes in
``results/exact_gp-<data>-<n>-<library>.partial.json`` (git-ignored) and reused by later runs,
so a long run can be split across invocations (``--libraries``, ``--sizes``) and the report
rebuilt from the stored cells with ``--report-only``. ``--max-n LIBRARY=N`` skips a library
above N points; the report then lists the cell as not run.

Run: ``python benchmarks/bench_exact_gp.py [--quick] [--sizes 200 500 ...] [--data friedman
diamonds concrete] [--libraries gpkern scikit-learn ...] [--max-n scikit-learn=5000]
[--report-only]``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("KEOPS_VERBOSE", "0")

CONCRETE_MAX_N = 800
#: GPyTorch's default max_cholesky_size: above it its losses are CG / Lanczos estimates.
GPYTORCH_CHOLESKY_MAX_N = 800
N_TEST = 1000
RESULTS = Path(__file__).parent / "results"


def _diamonds():
    from gpkern.datasets import integer_codes, load_rdataset

    frame = integer_codes(load_rdataset("ggplot2", "diamonds"))
    return frame.drop(columns="price").to_numpy(float), np.log(frame["price"].to_numpy(float))


def _data(name: str, n: int, seed: int = 0):
    from gpkern.datasets import load_concrete, make_friedman

    if name == "friedman":
        X, y = make_friedman(n + N_TEST, noise=1.0, random_state=seed)
        return X[:n], y[:n], X[n:], y[n:]
    X, y = _diamonds() if name == "diamonds" else load_concrete()
    order = np.random.default_rng(seed).permutation(len(y))
    X, y = X[order], y[order]
    if name == "concrete":
        return X[:n], y[:n], X[n:], y[n:]
    return X[:n], y[:n], X[-N_TEST:], y[-N_TEST:]


def _initial_lengthscale(Xtr) -> np.ndarray:
    from gpkern.estimators.gp_regressor import default_kernel

    kernel = default_kernel(torch.as_tensor(Xtr, dtype=torch.float64))
    return kernel.base_kernel.lengthscale.detach().numpy().ravel()


def _metrics(mean, var_y, yte):
    rmse = float(np.sqrt(np.mean((mean - yte) ** 2)))
    mlpd = float(np.mean(-0.5 * ((yte - mean) ** 2 / var_y + np.log(2 * np.pi * var_y))))
    return rmse, mlpd


def _cpu_time() -> float:
    """CPU seconds of this process and its finished children (KeOps compiles in children)."""
    children = os.times()
    return time.process_time() + children.children_user + children.children_system


class _Trace:
    """(CPU seconds since start, value) of every marginal-likelihood evaluation."""

    def __init__(self):
        self.start = time.perf_counter()
        self.cpu_start = _cpu_time()
        self.points: list[tuple[float, float]] = []

    def add(self, value: float) -> None:
        self.points.append((_cpu_time() - self.cpu_start, value))


def run_gpkern(Xtr, ytr, Xte, yte):
    import gpkern.models.exact as exact
    import gpkern.models.iterative as iterative
    from gpkern.estimators import GPRegressor

    originals = exact.ExactGP.log_marginal_likelihood, iterative.IterativeGP.log_marginal_likelihood
    trace = _Trace()

    def traced(self, X, Y, **kwargs):
        value = originals[0](self, X, Y, **kwargs)
        trace.add(float(value.detach()))
        return value

    def traced_estimate(self, X, Y, **kwargs):  # a stochastic estimate: counted, not a value
        value = originals[1](self, X, Y, **kwargs)
        trace.add(math.nan)
        return value

    exact.ExactGP.log_marginal_likelihood = traced
    iterative.IterativeGP.log_marginal_likelihood = traced_estimate
    try:
        trace.start, trace.cpu_start = time.perf_counter(), _cpu_time()
        cpu = trace.cpu_start
        gp = GPRegressor(random_state=0).fit(Xtr, ytr)
        mean = gp.predict(Xte)
        lpd = float(gp.log_predictive_density(Xte, yte).mean())
        wall, cpu = time.perf_counter() - trace.start, _cpu_time() - cpu
    finally:
        exact.ExactGP.log_marginal_likelihood, iterative.IterativeGP.log_marginal_likelihood = (
            originals
        )
    offset = len(ytr) * float(np.log(gp._y_std).sum())
    # A dense model's first evaluation is the start-up check, not the optimiser's.
    points = trace.points[0 if getattr(gp._model, "iterative", False) else 1 :]
    points = [(t, v - offset) for t, v in points]
    estimates = sum(math.isnan(v) for _, v in points)
    rmse = float(np.sqrt(np.mean((mean - yte) ** 2)))
    return dict(wall=wall, cpu=cpu, evals=len(points), lml=gp.log_marginal_likelihood_value_,
                rmse=rmse, lpd=lpd, trace=points,
                evals_note=f"{estimates}+{len(points) - estimates}" if estimates else None)


def run_sklearn(Xtr, ytr, Xte, yte):
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel

    kernel = ConstantKernel(1.0) * RBF(length_scale=_initial_lengthscale(Xtr)) + WhiteKernel(0.1)
    gp = GaussianProcessRegressor(kernel, normalize_y=True, random_state=0)
    original = GaussianProcessRegressor.log_marginal_likelihood
    trace = _Trace()

    def traced(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        trace.add(float(out[0] if isinstance(out, tuple) else out))
        return out

    GaussianProcessRegressor.log_marginal_likelihood = traced
    try:
        trace.start, trace.cpu_start = time.perf_counter(), _cpu_time()
        cpu = trace.cpu_start
        gp.fit(Xtr, ytr)
        # WhiteKernel's diagonal is part of predict's std at new points: the predictive of y.
        mean, std = gp.predict(Xte, return_std=True)
        wall, cpu = time.perf_counter() - trace.start, _cpu_time() - cpu
    finally:
        GaussianProcessRegressor.log_marginal_likelihood = original
    offset = len(ytr) * float(np.log(gp._y_train_std))
    points = [(t, v - offset) for t, v in trace.points[:-1]]  # the last re-evaluates the optimum
    lml = float(gp.log_marginal_likelihood_value_) - offset
    return dict(wall=wall, cpu=cpu, evals=len(points), lml=lml,
                **_named(_metrics(mean, std**2, yte)),
                trace=points)


def _named(metrics):
    return dict(rmse=metrics[0], lpd=metrics[1])


def run_gpytorch(Xtr, ytr, Xte, yte, converged: bool = False, iters: int = 100):
    import gpytorch

    X = torch.tensor(Xtr)
    mu, sd = ytr.mean(), ytr.std()
    y = torch.tensor((ytr - mu) / sd)
    n = len(ytr)
    offset = n * math.log(sd)

    class Model(gpytorch.models.ExactGP):
        def __init__(self, X, y, likelihood):
            super().__init__(X, y, likelihood)
            self.mean = gpytorch.means.ConstantMean()
            self.covar = gpytorch.kernels.ScaleKernel(
                gpytorch.kernels.RBFKernel(ard_num_dims=X.shape[1])
            )

        def forward(self, x):
            return gpytorch.distributions.MultivariateNormal(self.mean(x), self.covar(x))

    exact = gpytorch.settings.max_cholesky_size(10**9)
    trace = _Trace()
    trace.start, trace.cpu_start = time.perf_counter(), _cpu_time()
    cpu = trace.cpu_start
    likelihood = gpytorch.likelihoods.GaussianLikelihood().double()
    model = Model(X, y, likelihood).double()
    model.covar.base_kernel.lengthscale = torch.as_tensor(_initial_lengthscale(Xtr)).view(1, -1)
    model.covar.outputscale = 1.0
    likelihood.noise = 0.1
    model.train()
    likelihood.train()
    mll = gpytorch.mlls.ExactMarginalLogLikelihood(likelihood, model)

    def loss_fn():
        loss = -mll(model(X), y)
        trace.add(-float(loss.detach()) * n - offset)
        return loss

    if converged:
        opt = torch.optim.LBFGS(model.parameters(), lr=1.0, max_iter=200, max_eval=300,
                                tolerance_grad=1e-9, tolerance_change=1e-9,
                                line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = loss_fn()
            loss.backward()
            return loss

        with exact:
            opt.step(closure)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=0.1)
        for _ in range(iters):
            opt.zero_grad()
            loss = loss_fn()
            loss.backward()
            opt.step()
    paused_wall, paused_cpu = time.perf_counter(), _cpu_time()
    with exact:  # the final value, exactly, outside the timing
        lml = float(mll(model(X), y).detach()) * n - offset
    paused_wall = time.perf_counter() - paused_wall
    paused_cpu = _cpu_time() - paused_cpu
    model.eval()
    likelihood.eval()
    with torch.no_grad(), gpytorch.settings.fast_pred_var():
        pred = likelihood(model(torch.tensor(Xte)))
        mean = pred.mean.numpy() * sd + mu
        var = pred.variance.numpy() * sd**2
    wall = time.perf_counter() - trace.start - paused_wall
    cpu = _cpu_time() - cpu - paused_cpu
    return dict(wall=wall, cpu=cpu, evals=len(trace.points), lml=lml,
                **_named(_metrics(mean, var, yte)), trace=trace.points)


RUNNERS = {
    "gpkern": run_gpkern,
    "scikit-learn": run_sklearn,
    "GPyTorch (Adam 100)": run_gpytorch,
    "GPyTorch (L-BFGS, converged)": lambda *d: run_gpytorch(*d, converged=True),
}


def time_to_quality(trace, target: float) -> float | None:
    return next((t for t, value in trace if value >= target), None)


def _cell_path(name: str, n: int, lib: str) -> Path:
    slug = "".join(c if c.isalnum() else "-" for c in lib.lower()).strip("-")
    return RESULTS / f"exact_gp-{name}-{n}-{slug}.partial.json"


def _run_cell(name: str, n: int, lib: str) -> dict:
    load = os.getloadavg()[0]
    try:
        result = RUNNERS[lib](*_data(name, n))
    except Exception as exc:  # a peer failing is a result: the table says so
        result = dict(failed=f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
    result.update(load_start=load, load_end=os.getloadavg()[0], threads=torch.get_num_threads(),
                  date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes"))
    _cell_path(name, n, lib).write_text(json.dumps(result))
    return result


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def report(names, sizes, libs) -> list[str]:
    """Markdown table of every stored cell of ``names`` x ``sizes`` x ``libs``."""
    lines = [
        "| data | n | library | evals | wall (s) | CPU (s) | load | ratio (CPU) "
        "| to quality (s) | final LML | held-out RMSE | mean log pred. density |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in names:
        for n in sizes:
            res = {lib: json.loads(_cell_path(name, n, lib).read_text())
                   for lib in libs if _cell_path(name, n, lib).exists()}
            if not res:
                continue
            best = max((r["lml"] for r in res.values() if "lml" in r), default=math.nan)
            base = res.get("gpkern", {}).get("cpu")
            for lib in libs:
                if lib not in res:
                    lines.append(f"| {name} | {n} | {lib} | not run |  |  |  |  |  |  |  |  |")
                    continue
                r = res[lib]
                if "failed" in r:
                    lines.append(f"| {name} | {n} | {lib} | failed: {r['failed']} "
                                 "|  |  |  |  |  |  |  |  |")
                    continue
                ttq = time_to_quality(r["trace"], best - 0.1)
                estimated = lib == "GPyTorch (Adam 100)" and n > GPYTORCH_CHOLESKY_MAX_N
                ratio = None if base is None else r["cpu"] / base
                lines.append(
                    f"| {name} | {n} | {lib} | {r.get('evals_note') or r['evals']} "
                    f"| {r['wall']:.2f} | {r['cpu']:.2f} "
                    f"| {r['load_start']:.1f}-{r['load_end']:.1f} | {_fmt(ratio, '.2f')} "
                    f"| {'n/a' if estimated else _fmt(ttq, '.2f')} | {r['lml']:.2f} "
                    f"| {r['rmse']:.4f} | {r['lpd']:.4f} |"
                )
    return lines


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+",
                        default=[200, 500, 1000, 2000, 5000, 10000])
    parser.add_argument("--data", nargs="+", default=["friedman", "diamonds"],
                        choices=["friedman", "diamonds", "concrete"])
    parser.add_argument("--libraries", nargs="+", default=list(RUNNERS), choices=list(RUNNERS))
    parser.add_argument("--max-n", nargs="*", default=[], metavar="LIBRARY=N",
                        help="skip LIBRARY above N training points")
    parser.add_argument("--quick", action="store_true", help="n = 200 and 500 only")
    parser.add_argument("--rerun", action="store_true", help="ignore stored cells")
    parser.add_argument("--report-only", action="store_true", help="table of the stored cells")
    parser.add_argument("--out", type=Path, help="also write the table to this file")
    args = parser.parse_args(argv)
    sizes = [200, 500] if args.quick else args.sizes
    caps = {k: int(v) for k, v in (item.rsplit("=", 1) for item in args.max_n)}
    sizes_of = {d: [n for n in sizes if d != "concrete" or n <= CONCRETE_MAX_N] for d in args.data}
    if not args.report_only:
        from tqdm.auto import tqdm

        RESULTS.mkdir(parents=True, exist_ok=True)
        RUNNERS["gpkern"](*_data("friedman", 50))  # imports and first-call costs out of the table
        cases = [(d, n, lib) for d in args.data for n in sizes_of[d] for lib in args.libraries
                 if n <= caps.get(lib, n) and (args.rerun or not _cell_path(d, n, lib).exists())]
        for name, n, lib in tqdm(cases, desc="cells"):
            _run_cell(name, n, lib)
    stored = [json.loads(p.read_text()) for p in RESULTS.glob("exact_gp-*.partial.json")]
    threads = sorted({r["threads"] for r in stored}) or [torch.get_num_threads()]
    lines = [
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
        f"{torch.__version__}, {'/'.join(map(str, threads))} thread(s). Fit + predict; every "
        "library "
        "starts from gpkern's default hyperparameters. load = 1-minute load average at the start "
        "and end of the cell; ratio = peer CPU time / gpkern CPU time (> 1: gpkern faster); "
        "to quality = CPU seconds until the log marginal likelihood was within 0.1 nats of the "
        "best final value of any library. Produced by `python benchmarks/bench_exact_gp.py`.",
        "",
        *report(args.data, sorted(set(sizes)), RUNNERS),
    ]
    if args.out is not None:
        args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
