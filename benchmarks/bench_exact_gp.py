"""Exact GP regression: gpkern vs scikit-learn vs a plain GPyTorch ExactGP, side by side.

All three fit a scaled ARD RBF kernel with learned Gaussian noise on the same data (Friedman #1,
5 features, noise sd 1, targets standardised by each library's own option) and predict 1000
held-out points:

* gpkern ``GPRegressor()``: L-BFGS (strong Wolfe) on the exact log marginal likelihood, default
  settings (max_iter=100, one start).
* scikit-learn ``GaussianProcessRegressor(C * RBF(ARD) + WhiteKernel, normalize_y=True)``:
  L-BFGS-B with analytic gradients, one start.
* GPyTorch ``ExactGP`` with ``ScaleKernel(RBFKernel(ARD))`` and ``GaussianLikelihood``: Adam,
  lr 0.1, 100 iterations (the GPyTorch tutorial's recipe), GPyTorch's default settings (CG and
  Lanczos above 800 points), targets standardised by hand.

Reported: fit + predict wall time, held-out RMSE and mean log predictive density (noise
included, original units), and the speed ratio peer time / gpkern time (> 1: gpkern faster).

Run: ``python benchmarks/bench_exact_gp.py [--quick] [--sizes 500 2000 5000]``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("KEOPS_VERBOSE", "0")


def _data(n: int, seed: int = 0):
    from gpkern.datasets import make_friedman

    X, y = make_friedman(n + 1000, noise=1.0, random_state=seed)
    return X[:n], y[:n], X[n:], y[n:]


def _metrics(mean, var_y, yte):
    rmse = float(np.sqrt(np.mean((mean - yte) ** 2)))
    mlpd = float(np.mean(-0.5 * ((yte - mean) ** 2 / var_y + np.log(2 * np.pi * var_y))))
    return rmse, mlpd


def run_gpkern(Xtr, ytr, Xte, yte):
    from gpkern.estimators import GPRegressor

    start = time.perf_counter()
    gp = GPRegressor(random_state=0).fit(Xtr, ytr)
    mean = gp.predict(Xte)
    lpd = gp.log_predictive_density(Xte, yte)
    elapsed = time.perf_counter() - start
    rmse = float(np.sqrt(np.mean((mean - yte) ** 2)))
    return elapsed, rmse, float(lpd.mean())


def run_sklearn(Xtr, ytr, Xte, yte):
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel

    d = Xtr.shape[1]
    kernel = ConstantKernel() * RBF(length_scale=np.ones(d)) + WhiteKernel(0.1)
    start = time.perf_counter()
    gp = GaussianProcessRegressor(kernel, normalize_y=True, random_state=0).fit(Xtr, ytr)
    # WhiteKernel's diagonal is part of predict's std at new points: this is the predictive of y.
    mean, std = gp.predict(Xte, return_std=True)
    elapsed = time.perf_counter() - start
    return (elapsed, *_metrics(mean, std**2, yte))


def run_gpytorch(Xtr, ytr, Xte, yte, iters: int = 100):
    import gpytorch

    X = torch.tensor(Xtr)
    mu, sd = ytr.mean(), ytr.std()
    y = torch.tensor((ytr - mu) / sd)

    class Model(gpytorch.models.ExactGP):
        def __init__(self, X, y, likelihood):
            super().__init__(X, y, likelihood)
            self.mean = gpytorch.means.ConstantMean()
            self.covar = gpytorch.kernels.ScaleKernel(gpytorch.kernels.RBFKernel(ard_num_dims=X.shape[1]))

        def forward(self, x):
            return gpytorch.distributions.MultivariateNormal(self.mean(x), self.covar(x))

    start = time.perf_counter()
    likelihood = gpytorch.likelihoods.GaussianLikelihood().double()
    model = Model(X, y, likelihood).double()
    model.train()
    likelihood.train()
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    mll = gpytorch.mlls.ExactMarginalLogLikelihood(likelihood, model)
    for _ in range(iters):
        opt.zero_grad()
        loss = -mll(model(X), y)
        loss.backward()
        opt.step()
    model.eval()
    likelihood.eval()
    with torch.no_grad(), gpytorch.settings.fast_pred_var():
        pred = likelihood(model(torch.tensor(Xte)))
        mean = pred.mean.numpy() * sd + mu
        var = pred.variance.numpy() * sd**2
    elapsed = time.perf_counter() - start
    return (elapsed, *_metrics(mean, var, yte))


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 2000, 5000])
    parser.add_argument("--quick", action="store_true", help="n = 200 and 500 only")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "exact_gp.md")
    args = parser.parse_args(argv)
    sizes = [200, 500] if args.quick else args.sizes
    from tqdm.auto import tqdm

    rows = []
    for n in tqdm(sizes, desc="sizes"):
        data = _data(n)
        res = {name: fn(*data) for name, fn in [("gpkern", run_gpkern), ("scikit-learn", run_sklearn), ("GPyTorch", run_gpytorch)]}
        rows.append((n, res))

    lines = [
        "# Exact GP regression: gpkern vs scikit-learn vs GPyTorch",
        "",
        f"Date {datetime.date.today()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores (load average {os.getloadavg()[0]:.1f} at the end; on a 2-core "
        f"machine a load near 2 is this benchmark alone), torch {torch.__version__}. "
        "Friedman #1 (d = 5, noise sd 1), 1000 held-out points; fit + predict time. "
        "Ratio = peer time / gpkern time (> 1 means gpkern is faster). "
        "Produced by `python benchmarks/bench_exact_gp.py`.",
        "",
        "| n | library | time (s) | ratio | held-out RMSE | mean log pred. density |",
        "|---|---|---|---|---|---|",
    ]
    for n, res in rows:
        base = res["gpkern"][0]
        for name, (t, rmse, mlpd) in res.items():
            ratio = "1.00" if name == "gpkern" else f"{t / base:.2f}"
            lines.append(f"| {n} | {name} | {t:.2f} | {ratio} | {rmse:.4f} | {mlpd:.4f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return args.out


if __name__ == "__main__":
    main()
