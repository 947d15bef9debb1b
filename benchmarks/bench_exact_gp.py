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

Data: Friedman #1 (d = 5, noise sd 1, 1000 held-out points) and modeldata ``concrete``
(d = 8, 1030 rows: training sizes up to 800, the remaining rows held out).

Reported per library: wall and CPU (process) time of fit + predict, marginal-likelihood
evaluations, final log marginal likelihood (exact, original units; GPyTorch's includes its
constant mean), held-out RMSE and mean log predictive density (noise included), the speed
ratio peer wall time / gpkern wall time (> 1: gpkern faster), and time-to-quality: wall seconds
from the start of ``fit`` until the log marginal likelihood first came within 0.1 nats of the
best final value any library reached ("-" if never). GPyTorch's tutorial trace holds its own
CG/Lanczos estimates above 800 points.

Run: ``python benchmarks/bench_exact_gp.py [--quick] [--sizes 200 500 ...] [--data friedman
concrete]``.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("KEOPS_VERBOSE", "0")

CONCRETE_MAX_N = 800


def _data(name: str, n: int, seed: int = 0):
    from gpkern.datasets import load_concrete, make_friedman

    if name == "friedman":
        X, y = make_friedman(n + 1000, noise=1.0, random_state=seed)
    else:
        X, y = load_concrete()
        order = np.random.default_rng(seed).permutation(len(y))
        X, y = X[order], y[order]
    return X[:n], y[:n], X[n:], y[n:]


def _initial_lengthscale(Xtr) -> np.ndarray:
    from gpkern.estimators.gp_regressor import default_kernel

    kernel = default_kernel(torch.as_tensor(Xtr, dtype=torch.float64))
    return kernel.base_kernel.lengthscale.detach().numpy().ravel()


def _metrics(mean, var_y, yte):
    rmse = float(np.sqrt(np.mean((mean - yte) ** 2)))
    mlpd = float(np.mean(-0.5 * ((yte - mean) ** 2 / var_y + np.log(2 * np.pi * var_y))))
    return rmse, mlpd


class _Trace:
    """(seconds since start, value) of every marginal-likelihood evaluation."""

    def __init__(self):
        self.start = time.perf_counter()
        self.points: list[tuple[float, float]] = []

    def add(self, value: float) -> None:
        self.points.append((time.perf_counter() - self.start, value))


def run_gpkern(Xtr, ytr, Xte, yte):
    import gpkern.models.exact as exact
    from gpkern.estimators import GPRegressor

    original = exact.ExactGP.log_marginal_likelihood
    trace = _Trace()

    def traced(self, X, Y, **kwargs):
        value = original(self, X, Y, **kwargs)
        trace.add(float(value.detach()))
        return value

    exact.ExactGP.log_marginal_likelihood = traced
    try:
        cpu, trace.start = time.process_time(), time.perf_counter()
        gp = GPRegressor(random_state=0).fit(Xtr, ytr)
        mean = gp.predict(Xte)
        lpd = float(gp.log_predictive_density(Xte, yte).mean())
        wall, cpu = time.perf_counter() - trace.start, time.process_time() - cpu
    finally:
        exact.ExactGP.log_marginal_likelihood = original
    offset = len(ytr) * float(np.log(gp._y_std).sum())
    points = [(t, v - offset) for t, v in trace.points[1:]]  # the first is the start-up check
    rmse = float(np.sqrt(np.mean((mean - yte) ** 2)))
    return dict(wall=wall, cpu=cpu, evals=len(points), lml=gp.log_marginal_likelihood_value_,
                rmse=rmse, lpd=lpd, trace=points)


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
        cpu, trace.start = time.process_time(), time.perf_counter()
        gp.fit(Xtr, ytr)
        # WhiteKernel's diagonal is part of predict's std at new points: the predictive of y.
        mean, std = gp.predict(Xte, return_std=True)
        wall, cpu = time.perf_counter() - trace.start, time.process_time() - cpu
    finally:
        GaussianProcessRegressor.log_marginal_likelihood = original
    offset = len(ytr) * float(np.log(gp._y_train_std))
    points = [(t, v - offset) for t, v in trace.points[:-1]]  # the last re-evaluates the optimum
    lml = float(gp.log_marginal_likelihood_value_) - offset
    return dict(wall=wall, cpu=cpu, evals=len(points), lml=lml, **_named(_metrics(mean, std**2, yte)),
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
    cpu, trace.start = time.process_time(), time.perf_counter()
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
    paused_wall, paused_cpu = time.perf_counter(), time.process_time()
    with exact:  # the final value, exactly, outside the timing
        lml = float(mll(model(X), y).detach()) * n - offset
    paused_wall = time.perf_counter() - paused_wall
    paused_cpu = time.process_time() - paused_cpu
    model.eval()
    likelihood.eval()
    with torch.no_grad(), gpytorch.settings.fast_pred_var():
        pred = likelihood(model(torch.tensor(Xte)))
        mean = pred.mean.numpy() * sd + mu
        var = pred.variance.numpy() * sd**2
    wall = time.perf_counter() - trace.start - paused_wall
    cpu = time.process_time() - cpu - paused_cpu
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


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[200, 500, 1000, 2000, 5000])
    parser.add_argument("--data", nargs="+", default=["friedman", "concrete"],
                        choices=["friedman", "concrete"])
    parser.add_argument("--quick", action="store_true", help="n = 200 and 500 only")
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).parent / "results" / "exact_gp.md")
    args = parser.parse_args(argv)
    sizes = [200, 500] if args.quick else args.sizes
    from tqdm.auto import tqdm

    RUNNERS["gpkern"](*_data("friedman", 50))  # imports and first-call costs out of the table
    rows = []
    cases = [(d, n) for d in args.data for n in sizes if d != "concrete" or n <= CONCRETE_MAX_N]
    for name, n in tqdm(cases, desc="cases"):
        data = _data(name, n)
        rows.append((name, n, {lib: fn(*data) for lib, fn in RUNNERS.items()}))

    lines = [
        "# Exact GP regression: gpkern vs scikit-learn vs GPyTorch",
        "",
        f"Date {datetime.date.today()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads); "
        f"load average {os.getloadavg()[0]:.1f} at the end. Fit + predict; every library starts "
        "from gpkern's default hyperparameters. Ratio = peer wall time / gpkern wall time (> 1: "
        "gpkern faster); time-to-quality = wall seconds until the log marginal likelihood was "
        "within 0.1 nats of the best final value of any library. "
        "Produced by `python benchmarks/bench_exact_gp.py`.",
        "",
        "| data | n | library | evals | wall (s) | CPU (s) | ratio | to quality (s) "
        "| final LML | held-out RMSE | mean log pred. density |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, n, res in rows:
        best = max(r["lml"] for r in res.values())
        base = res["gpkern"]["wall"]
        for lib, r in res.items():
            ttq = time_to_quality(r["trace"], best - 0.1)
            lines.append(
                f"| {name} | {n} | {lib} | {r['evals']} | {r['wall']:.2f} | {r['cpu']:.2f} "
                f"| {r['wall'] / base:.2f} | {'-' if ttq is None else f'{ttq:.2f}'} "
                f"| {r['lml']:.2f} | {r['rmse']:.4f} | {r['lpd']:.4f} |"
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return args.out


if __name__ == "__main__":
    main()
