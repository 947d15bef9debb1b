"""Optimal sampling: weighted least squares from DPP designs, and DPP-chosen inducing points.

Part A, the setting of Nouy & Michel (arXiv 2312.14057): :math:`\\mu` uniform on
:math:`[-1, 1]^d`, orthonormal Legendre polynomials of total degree (d = 1: m = 10, 20, 50, 100;
d = 5: m = 21, 56, 126), three targets per dimension (smooth: Runge's function; non-smooth: a
kink; and the slowly decaying expansion :math:`\\sum_j \\phi_j/(j+1)^2`). For each design the
weighted least-squares fit (weights m / k_m) is compared with the best approximation
:math:`\\Pi_m f` (the L2(mu) projection): by orthogonality
:math:`\\|f - \\hat f\\|^2 = \\|f - \\Pi_m f\\|^2 + \\|\\hat c - c\\|^2`, so only the projection
coefficients :math:`c` and the best error :math:`e_m` are needed (the expansion stops at degree 399 in 1-D, total
degree 6 in 5-D) (exact for the expansion,
composite Gauss-Legendre quadrature in 1-D, least squares on 50,000 uniform points with the
error on 50,000 more in 5-D). Designs:

* ``iid optimal``: n i.i.d. points of the optimal density k_m/m mu;
* ``volume``: volume-rescaled sampling (one projection DPP + n - m i.i.d. optimal points);
* ``DPP``: the union of n/m independent projection DPPs;
* stopping rule ``||G - I|| <= 1/2``, checked after each block of m points: repeated projection
  DPPs (``sample_repeated_dpp``), i.i.d. optimal blocks, and a DPP followed by i.i.d. blocks.

Reported: mean (and median) over repetitions of the ratio error / best error against n/m, and
the mean n/m at which the stopping rule fires with the error ratio there.

Part B, inducing points for sparse GP regression (Titsias' collapsed bound,
``SparseGPRegressor``) on real data sets shipped offline, inputs and targets standardised, the
kernel (scaled ARD RBF) and noise fixed at an exact GP fit on 1000 training points: held-out
RMSE and mean log predictive density against the number m of inducing points for the uniform,
k-means, greedy-variance, RPCholesky and k-DPP choices; the gap between the exact log marginal
likelihood and the collapsed bound on a training subsample (per point); scikit-learn's
``Nystroem`` (uniform landmarks, the kernel's length-scales folded into the inputs) + ``Ridge``
(alpha = noise / outputscale, the same posterior mean as a subset-of-regressors GP), and
GPyTorch's SGPR (``InducingPointKernel`` from k-means points and the same starting
hyperparameters, Adam lr 0.01 for 50 iterations as in GPyTorch's SGPR tutorial).

Run: ``python benchmarks/bench_sampling.py [--reps 60] [--reps-5d 30] [--skip-ls]
[--skip-inducing] [--datasets ames wage computers wa_churn diamonds] [--inducing-m 16 32 ...]
[--seeds 2]`` (diamonds, 20,000 training points, is not in the default list, to keep the default
run near half an hour on two cores). A skipped part is tabulated from the JSON of an earlier
run; the hand-written section after "## Reading the results" survives reruns.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import math
import os
import platform
import time
import warnings
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("KEOPS_VERBOSE", "0")

RESULTS = Path(__file__).parent / "results"
READING_HEADING = "## Reading the results"
RATIOS = (1, 2, 3, 5, 10)
DELTA = 0.5
REFERENCE_STOP = {10: (4.3, 11.6), 20: (5.3, 16.9)}  # m: (repeated DPP, i.i.d. blocks), n/m


# --------------------------------------------------------------------------- part A: targets
def targets(d: int):
    """``{name: f}`` with ``f(x) -> (n,)``; the expansion's coefficients are known exactly."""
    from gpkern.sampling import LegendreBasis

    big = LegendreBasis(399 if d == 1 else 6, dim=d)
    coef = 1.0 / (torch.arange(big.m, dtype=torch.float64) + 2.0) ** 2  # j = 0, 1, ...
    if d == 1:  # Clenshaw on P_j with the orthonormal scaling folded into the coefficients
        scaled = (coef * torch.sqrt(2.0 * torch.arange(big.m) + 1.0)).numpy()

        def expansion(x):
            return torch.from_numpy(np.polynomial.legendre.legval(x[:, 0].numpy(), scaled))
    else:

        def expansion(x):
            return big(x) @ coef

    if d == 1:
        runge = ("1/(1+25x^2)", lambda x: 1.0 / (1.0 + 25.0 * x[:, 0] ** 2))
        kink = ("|x|", lambda x: x[:, 0].abs())
    else:
        runge = ("1/(1+25|x|^2/d)", lambda x: 1.0 / (1.0 + 25.0 * (x**2).sum(1) / d))
        kink = ("|x_1+...+x_d|/sqrt(d)", lambda x: x.sum(1).abs() / math.sqrt(d))
    return dict([runge, kink, ("sum_j phi_j/(j+1)^2", expansion)]), coef


@functools.lru_cache
def _gauss_legendre(n: int):
    return np.polynomial.legendre.leggauss(n)


def reference(basis, funcs: dict, coef_expansion: torch.Tensor, seed: int = 12345):
    """Projection coefficients ``(m, T)`` and best-approximation errors ``(T,)`` of the targets."""
    names = list(funcs)
    d = basis.dim
    C = torch.zeros(basis.m, len(names), dtype=torch.float64)
    err = torch.zeros(len(names), dtype=torch.float64)
    if d == 1:
        t, w = _gauss_legendre(1000)
        # two halves so that the kink at 0 is a node boundary; mu has density 1/2 on [-1, 1]
        x = torch.tensor(np.concatenate([(t - 1) / 2, (t + 1) / 2]))[:, None]
        w = torch.tensor(np.concatenate([w, w]) / 4)
        Phi = basis(x)
        F = torch.stack([funcs[k](x) for k in names], 1)
        C = Phi.T @ (w[:, None] * F)
        err = torch.sqrt((w[:, None] * (F - Phi @ C) ** 2).sum(0))
    else:
        gen = torch.Generator().manual_seed(seed)
        x_fit, x_err = basis.sample_measure(50_000, gen), basis.sample_measure(50_000, gen)
        F_fit = torch.stack([funcs[k](x_fit) for k in names], 1)
        C = torch.linalg.lstsq(basis(x_fit), F_fit).solution
        F_err = torch.stack([funcs[k](x_err) for k in names], 1)
        err = torch.sqrt(((F_err - basis(x_err) @ C) ** 2).mean(0))
    j = names.index("sum_j phi_j/(j+1)^2")  # exact: orthonormal expansion truncated at m
    C[:, j] = coef_expansion[: basis.m]
    err[j] = torch.sqrt((coef_expansion[basis.m :] ** 2).sum())
    return names, C, err


def _ratios(x, F, basis, C, err) -> np.ndarray:
    """Error / best error of the weighted least-squares fit of every target at points ``x``."""
    from gpkern.sampling import weighted_least_squares

    try:
        fit = weighted_least_squares(x, F, basis)
    except ValueError:  # singular design (possible for i.i.d. points at n = m)
        return np.full(F.shape[1], np.inf)
    gap = ((fit.coef - C) ** 2).sum(0)
    return torch.sqrt(1.0 + gap / err**2).numpy()


def _values(funcs: dict, names: list[str], x: torch.Tensor) -> torch.Tensor:  # (n, T)
    return torch.stack([funcs[k](x) for k in names], 1)


class _Stream:
    """Lazily drawn designs for one repetition, with the targets' values at their points:
    i.i.d. optimal points and independent projection DPPs."""

    def __init__(self, basis, values, gen):
        from gpkern.sampling import sample_optimal, sample_projection_dpp

        self.basis, self.values, self.gen = basis, values, gen
        self._iid = torch.zeros(0, basis.dim, dtype=torch.float64)
        self._iid_F = values(self._iid)
        self._dpps: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._sample_optimal, self._sample_dpp = sample_optimal, sample_projection_dpp

    def iid(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._iid.shape[0] < stop:
            more = self._sample_optimal(self.basis, max(stop - self._iid.shape[0], 0), self.gen)
            self._iid = torch.cat([self._iid, more])
            self._iid_F = torch.cat([self._iid_F, self.values(more)])
        return self._iid[start:stop], self._iid_F[start:stop]

    def iid_block(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The k-th block of m i.i.d. points (k >= 1)."""
        m = self.basis.m
        return self.iid((k - 1) * m, k * m)

    def dpp_then_iid_block(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first DPP, then the blocks of m i.i.d. points."""
        return self.dpps(1) if k == 1 else self.iid_block(k - 1)

    def dpps(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        while len(self._dpps) < k:
            x = self._sample_dpp(self.basis, self.gen)
            self._dpps.append((x, self.values(x)))
        return _cat(self._dpps[:k])


def _cat(parts) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def _stop_blocks(blocks, basis, max_blocks: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    """The union of the first k blocks ``(x, F)``, k the first with ||G - I|| <= DELTA."""
    from gpkern.sampling import gram_deviation, optimal_weights, weighted_gram

    S = torch.zeros(basis.m, basis.m, dtype=torch.float64)
    parts = []
    for k in range(1, max_blocks + 1):
        x, F = blocks(k)
        parts.append((x, F))
        S = S + x.shape[0] * weighted_gram(basis(x), optimal_weights(basis, x))
        n = sum(p[0].shape[0] for p in parts)
        if gram_deviation(S / n) <= DELTA:
            break
    return _cat(parts)


def run_least_squares(reps: int, reps_5d: int, seed: int = 0) -> list[dict]:
    from tqdm.auto import tqdm

    from gpkern.sampling import LegendreBasis, sample_repeated_dpp

    settings = [(1, p) for p in (9, 19, 49, 99)] + [(5, p) for p in (2, 3, 4)]
    rows = []
    for d, degree in tqdm(settings, desc="least squares"):
        basis = LegendreBasis(degree, dim=d)
        m = basis.m
        funcs, coef = targets(d)
        names, C, err = reference(basis, funcs, coef)

        values = functools.partial(_values, funcs, names)
        n_rep = reps if d == 1 else reps_5d
        fixed = {(s, r): [] for s in ("iid optimal", "volume", "DPP") for r in RATIOS}
        stop = {s: ([], []) for s in ("repeated DPP", "iid blocks", "DPP + iid blocks")}
        start = time.process_time()
        for rep in range(n_rep):
            gen = torch.Generator().manual_seed(seed + 1000 * rep + degree)
            stream = _Stream(basis, values, gen)
            for r in RATIOS:
                designs = {
                    "iid optimal": stream.iid(0, r * m),
                    "volume": _cat([stream.dpps(1), stream.iid(0, (r - 1) * m)]),
                    "DPP": stream.dpps(r),
                }
                for s, (x, F) in designs.items():
                    fixed[(s, r)].append(_ratios(x, F, basis, C, err))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                x_rep, _ = sample_repeated_dpp(basis, delta=DELTA, max_repeats=200, generator=gen)
            stops = {
                "repeated DPP": (x_rep, values(x_rep)),
                "iid blocks": _stop_blocks(stream.iid_block, basis),
                "DPP + iid blocks": _stop_blocks(stream.dpp_then_iid_block, basis),
            }
            for s, (x, F) in stops.items():
                stop[s][0].append(x.shape[0] / m)
                stop[s][1].append(_ratios(x, F, basis, C, err))
        cpu = time.process_time() - start
        for (s, r), vals in fixed.items():
            v = np.array(vals)  # (reps, T)
            for t, name in enumerate(names):
                rows.append(dict(part="fixed", d=d, m=m, target=name, design=s, n_over_m=r,
                                 mean=float(np.mean(v[:, t])), median=float(np.median(v[:, t])),
                                 best=float(err[t]), reps=n_rep))
        for s, (nm, vals) in stop.items():
            v = np.array(vals)
            for t, name in enumerate(names):
                rows.append(dict(part="stop", d=d, m=m, target=name, design=s,
                                 n_over_m=float(np.mean(nm)), n_over_m_sd=float(np.std(nm)),
                                 mean=float(np.mean(v[:, t])), median=float(np.median(v[:, t])),
                                 best=float(err[t]), reps=n_rep, cpu_s=cpu))
    return rows


def _fmt(x: float) -> str:
    if not np.isfinite(x):
        return "inf"
    return f"{x:.3g}" if x < 1e4 else f"{x:.1e}"


def table_least_squares(rows: list[dict]) -> list[str]:
    lines = []
    fixed = [r for r in rows if r["part"] == "fixed"]
    designs = ("iid optimal", "volume", "DPP")
    for d in sorted({r["d"] for r in fixed}):
        sub = [r for r in fixed if r["d"] == d]
        lines += [
            f"### d = {d}: mean error / best error (median in brackets), {sub[0]['reps']} "
            "repetitions",
            "",
            "inf: some designs gave a numerically singular system (the solver refuses it), "
            "which happens for i.i.d. points at n = m. At n = m the volume-rescaled design is "
            "one DPP, the same draw as the DPP column.",
            "",
            "| target | m | best error | design | "
            + " | ".join(f"n = {r}m" for r in RATIOS) + " |",
            "|---|---|---|---|" + "---|" * len(RATIOS),
        ]
        for target in dict.fromkeys(r["target"] for r in sub):
            for m in sorted({r["m"] for r in sub}):
                for s in designs:
                    cells = []
                    for ratio in RATIOS:
                        rec = next(r for r in sub if r["target"] == target and r["m"] == m
                                   and r["design"] == s and r["n_over_m"] == ratio)
                        cells.append(f"{_fmt(rec['mean'])} ({_fmt(rec['median'])})")
                    lines.append(f"| `{target}` | {m} | {rec['best']:.2e} | {s} | "
                                 + " | ".join(cells) + " |")
        lines.append("")
    stop = [r for r in rows if r["part"] == "stop"]
    lines += [
        f"### Samples to reach ||G - I|| <= {DELTA} (checked after every block of m points)",
        "",
        "n/m: mean ± sd over repetitions; error ratio: mean (median) at the stop, per target. "
        "The reference column is the quick earlier run quoted with the task (repeated DPP / "
        "i.i.d. blocks, d = 1).",
        "",
        "| d | m | design | n/m | reference n/m | " + " | ".join(
            f"ratio `{t}`" for t in dict.fromkeys(r["target"] for r in stop if r["d"] == 1)
        ) + " |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for d in sorted({r["d"] for r in stop}):
        for m in sorted({r["m"] for r in stop if r["d"] == d}):
            for s in ("repeated DPP", "DPP + iid blocks", "iid blocks"):
                recs = [r for r in stop if r["d"] == d and r["m"] == m and r["design"] == s]
                ref = ""
                if d == 1 and m in REFERENCE_STOP and s != "DPP + iid blocks":
                    ref = f"{REFERENCE_STOP[m][0 if s == 'repeated DPP' else 1]}"
                lines.append(
                    f"| {d} | {m} | {s} | {recs[0]['n_over_m']:.2f} ± {recs[0]['n_over_m_sd']:.2f}"
                    f" | {ref} | "
                    + " | ".join(f"{_fmt(r['mean'])} ({_fmt(r['median'])})" for r in recs) + " |"
                )
    lines.append("")
    return lines


def plot_least_squares(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fixed = [r for r in rows if r["part"] == "fixed"]
    stop = [r for r in rows if r["part"] == "stop"]
    dims = sorted({r["d"] for r in fixed})
    fig, axes = plt.subplots(len(dims), 4, figsize=(17, 4 * len(dims)), squeeze=False)
    for i, d in enumerate(dims):
        sub = [r for r in fixed if r["d"] == d]
        m = max(r["m"] for r in sub)
        for j, target in enumerate(dict.fromkeys(r["target"] for r in sub)):
            ax = axes[i, j]
            for k, s in enumerate(("iid optimal", "volume", "DPP")):
                recs = sorted((r for r in sub if r["target"] == target and r["m"] == m
                               and r["design"] == s), key=lambda r: r["n_over_m"])
                ax.plot([r["n_over_m"] for r in recs], [r["mean"] for r in recs], "o-",
                        color=f"C{k}", label=f"{s} (mean)")
                ax.plot([r["n_over_m"] for r in recs], [r["median"] for r in recs], ":",
                        color=f"C{k}", label=f"{s} (median)")
            for k, s in enumerate(("repeated DPP", "DPP + iid blocks", "iid blocks")):
                rec = next(r for r in stop if r["d"] == d and r["m"] == m and r["design"] == s
                           and r["target"] == target)
                ax.plot(rec["n_over_m"], rec["mean"], "*", ms=12, color=f"C{k + 3}",
                        label=f"{s}, stopped at ||G-I||<={DELTA}")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("n / m")
            ax.set_ylabel("error / best error")
            ax.set_title(f"d={d}, m={m}: {target}", fontsize=9)
            if i == 0 and j == 0:
                ax.legend(fontsize=6)
        ax = axes[i, 3]
        for k, s in enumerate(("repeated DPP", "DPP + iid blocks", "iid blocks")):
            recs = sorted({r["m"]: r for r in stop if r["d"] == d and r["design"] == s}.values(),
                          key=lambda r: r["m"])
            ax.errorbar([r["m"] for r in recs], [r["n_over_m"] for r in recs],
                        yerr=[r["n_over_m_sd"] for r in recs], fmt="o-", color=f"C{k + 3}",
                        label=s, capsize=3)
        ax.set_xscale("log")
        ax.set_xlabel("m")
        ax.set_ylabel(f"n / m at ||G - I|| <= {DELTA}")
        ax.set_title(f"d={d}: samples for a stable Gram matrix", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)



# --------------------------------------------------------------------------- part B: data sets
def _rdata_xy(package: str, name: str, target: str, drop=(), log=True):
    from gpkern.datasets import integer_codes, load_rdataset

    frame = load_rdataset(package, name).drop(columns=list(drop))
    frame = frame.loc[:, frame.isna().mean() < 0.05].dropna()  # sparse columns out, then rows
    frame = integer_codes(frame)
    y = frame[target].to_numpy(float)
    return frame.drop(columns=target).to_numpy(float), np.log(y) if log else y


#: name: (description, loader); targets are logged (prices, wages, charges).
DATASETS = {
    "ames": ("modeldata ames, log sale price",
             lambda: _rdata_xy("modeldata", "ames", "Sale_Price")),
    "wage": ("ISLR Wage, log wage",
             lambda: _rdata_xy("ISLR", "Wage", "wage", drop=("logwage",))),
    "computers": ("Ecdat Computers, log price",
                  lambda: _rdata_xy("Ecdat", "Computers", "price")),
    "wa_churn": ("modeldata wa_churn, log total charges",
                 lambda: _rdata_xy("modeldata", "wa_churn", "total_charges")),
    "diamonds": ("ggplot2 diamonds, log price",
                 lambda: _rdata_xy("ggplot2", "diamonds", "price")),
}
DEFAULT_DATASETS = ("ames", "wage", "computers", "wa_churn")
METHODS = ("uniform", "kmeans", "greedy_variance", "rpcholesky", "kdpp")
DPP_FAMILY = ("greedy_variance", "rpcholesky", "kdpp")
PEERS = ("sklearn Nystroem + Ridge", "GPyTorch SGPR (k-means init, Adam)")


def _split(X, y, max_train: int, seed: int = 0):
    idx = np.random.default_rng(seed).permutation(len(y))
    n_test = min(len(y) // 5, 5000)
    test, train = idx[:n_test], idx[n_test:][:max_train]
    mu, sd = X[train].mean(0), X[train].std(0)
    sd = np.where(sd > 0, sd, 1.0)
    ym, ys = y[train].mean(), y[train].std()
    return (X[train] - mu) / sd, (y[train] - ym) / ys, (X[test] - mu) / sd, (y[test] - ym) / ys


def _hyperparameters(X, y, n_fit: int = 1000):
    """Scaled ARD RBF kernel and noise from an exact GP fit on ``n_fit`` training points."""
    from gpkern.estimators import GPRegressor

    gp = GPRegressor(normalize_y=False, max_iter=60, random_state=0).fit(X[:n_fit], y[:n_fit])
    return gp.kernel_, float(gp.noise_)


def _sparse(kernel, noise, m, method, seed, X, y):
    from gpkern.estimators import SparseGPRegressor

    return SparseGPRegressor(kernel=kernel, n_inducing=m, inducing=method, noise=noise,
                             normalize_y=False, optimizer=None, random_state=seed).fit(X, y)


def _nystroem_ridge(kernel, noise, m, seed, Xtr, ytr, Xte):
    from sklearn.kernel_approximation import Nystroem
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline

    ell = kernel.base_kernel.lengthscale.detach().numpy().reshape(-1)
    scale = float(kernel.outputscale.detach())
    model = make_pipeline(Nystroem(kernel="rbf", gamma=0.5, n_components=m, random_state=seed),
                          Ridge(alpha=noise / scale))
    return model.fit(Xtr / ell, ytr).predict(Xte / ell)


def _sgpr(kernel, noise, m, seed, Xtr, ytr, Xte, iters: int = 50):
    import copy

    import gpytorch
    from sklearn.cluster import KMeans

    Z = KMeans(n_clusters=m, random_state=seed, n_init=1).fit(Xtr).cluster_centers_
    X, y = torch.tensor(Xtr), torch.tensor(ytr)

    class SGPR(gpytorch.models.ExactGP):
        def __init__(self, likelihood):
            super().__init__(X, y, likelihood)
            self.mean_module = gpytorch.means.ConstantMean()
            self.base_covar_module = copy.deepcopy(kernel)
            self.covar_module = gpytorch.kernels.InducingPointKernel(
                self.base_covar_module, inducing_points=torch.tensor(Z), likelihood=likelihood
            )

        def forward(self, x):
            return gpytorch.distributions.MultivariateNormal(self.mean_module(x),
                                                             self.covar_module(x))

    # GPyTorch's default noise floor (1e-4) is above some fitted noises (wa_churn's 1e-3 is close)
    likelihood = gpytorch.likelihoods.GaussianLikelihood(
        noise_constraint=gpytorch.constraints.GreaterThan(1e-6)
    ).double()
    likelihood.noise = noise
    model = SGPR(likelihood).double()
    model.train()
    likelihood.train()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    mll = gpytorch.mlls.ExactMarginalLogLikelihood(likelihood, model)
    for _ in range(iters):
        opt.zero_grad()
        loss = -mll(model(X), y)
        loss.backward()
        opt.step()
    model.eval()
    likelihood.eval()
    with torch.no_grad():
        pred = likelihood(model(torch.tensor(Xte)))
        return pred.mean.numpy(), pred.variance.numpy()


def _lpd(y, mean, var) -> float:
    return float(np.mean(-0.5 * ((y - mean) ** 2 / var + np.log(2 * np.pi * var))))


def run_inducing(datasets, ms, seeds: int, max_train: int, n_gap: int, sgpr_max_m: int):
    from tqdm.auto import tqdm

    from gpkern.estimators import GPRegressor

    rows = []
    for name in tqdm(datasets, desc="data sets"):
        X, y = DATASETS[name][1]()
        Xtr, ytr, Xte, yte = _split(X, y, max_train)
        kernel, noise = _hyperparameters(Xtr, ytr)
        n_gap_ = min(n_gap, len(ytr))
        Xg, yg = Xtr[:n_gap_], ytr[:n_gap_]
        exact = GPRegressor(kernel=kernel, noise=noise, optimizer=None, normalize_y=False)
        exact.fit(Xg, yg)
        lml = float(exact.log_marginal_likelihood_value_)
        info = dict(dataset=name, n=len(y), n_train=len(ytr), n_test=len(yte), d=X.shape[1],
                    noise=noise, n_gap=n_gap_)
        for m in tqdm(ms, desc=name, leave=False):
            if m >= n_gap_:
                continue
            for method in METHODS:
                for seed in range(1 if method == "greedy_variance" else seeds):
                    start = time.process_time()
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        gp = _sparse(kernel, noise, m, method, seed, Xtr, ytr)
                        mean = gp.predict(Xte)
                        lpd = float(np.mean(gp.log_predictive_density(Xte, yte)))
                        cpu = time.process_time() - start
                        bound = _sparse(kernel, noise, m, method, seed, Xg, yg).elbo_
                    rows.append(dict(info, m=m, method=method, seed=seed, cpu_s=cpu,
                                     rmse=float(np.sqrt(np.mean((mean - yte) ** 2))), lpd=lpd,
                                     gap=(lml - float(bound)) / n_gap_))
            for seed in range(seeds):
                start = time.process_time()
                mean = _nystroem_ridge(kernel, noise, m, seed, Xtr, ytr, Xte)
                rows.append(dict(info, m=m, method=PEERS[0], seed=seed,
                                 cpu_s=time.process_time() - start,
                                 rmse=float(np.sqrt(np.mean((mean - yte) ** 2))), lpd=None,
                                 gap=None))
            if m <= sgpr_max_m:
                start = time.process_time()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    mean, var = _sgpr(kernel, noise, m, 0, Xtr, ytr, Xte)
                rows.append(dict(info, m=m, method=PEERS[1], seed=0,
                                 cpu_s=time.process_time() - start,
                                 rmse=float(np.sqrt(np.mean((mean - yte) ** 2))),
                                 lpd=_lpd(yte, mean, var), gap=None))
    return rows


def _summarise_inducing(rows):
    """Mean over seeds of every (data set, m, method)."""
    out = {}
    for r in rows:
        out.setdefault((r["dataset"], r["m"], r["method"]), []).append(r)
    summary = {}
    for key, recs in out.items():
        summary[key] = dict(recs[0], seeds=len(recs), **{
            k: (None if recs[0][k] is None else float(np.mean([r[k] for r in recs])))
            for k in ("rmse", "lpd", "gap", "cpu_s")
        })
    return summary


def goal_check(summary, key: str, baselines, tol: float) -> list[tuple[str, str, int, int]]:
    """For each data set and DPP-family rule D: on how many m (of those with m/2 run) is
    ``key``(D, m/2) <= (1 + tol) min over ``baselines`` of ``key``(baseline, m)."""
    out = []
    for ds in dict.fromkeys(k[0] for k in summary):
        ms = sorted({k[1] for k in summary if k[0] == ds})
        for D in DPP_FAMILY:
            hold = total = 0
            for m in ms:
                if m // 2 not in ms or m % 2:
                    continue
                base = min(summary[(ds, m, b)][key] for b in baselines)
                total += 1
                hold += summary[(ds, m // 2, D)][key] <= (1 + tol) * base
            out.append((ds, D, hold, total))
    return out


def table_inducing(rows) -> list[str]:
    summary = _summarise_inducing(rows)
    lines = []
    for ds in dict.fromkeys(k[0] for k in summary):
        recs = [v for k, v in summary.items() if k[0] == ds]
        r0 = recs[0]
        lines += [
            f"### {DATASETS[ds][0]}: n = {r0['n']}, d = {r0['d']} ({r0['n_train']} train, "
            f"{r0['n_test']} test), noise variance {r0['noise']:.3g} (standardised y)",
            "",
            "RMSE and mean log predictive density of y on the test set (standardised units); "
            "RMSE ratio = method / uniform at the same m (< 1: better); gap = (exact log "
            f"marginal likelihood - collapsed bound) / n on {r0['n_gap']} training points; "
            "CPU = selection + fit + prediction (s).",
            "",
            "| m | method | seeds | RMSE | ratio | log density | gap / n | CPU (s) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for m in sorted({r["m"] for r in recs}):
            uni = summary[(ds, m, "uniform")]["rmse"]
            for method in (*METHODS, *PEERS):
                r = summary.get((ds, m, method))
                if r is None:
                    continue
                lpd = "—" if r["lpd"] is None else f"{r['lpd']:.4f}"
                gap = "—" if r["gap"] is None else f"{r['gap']:.4f}"
                lines.append(f"| {m} | {method} | {r['seeds']} | {r['rmse']:.4f} | "
                             f"{r['rmse'] / uni:.3f} | {lpd} | {gap} | {r['cpu_s']:.2f} |")
        lines.append("")
    lines += [
        "### Goal: DPP-family rules reach the uniform / k-means RMSE with half the points",
        "",
        "Number of m in the grid (m >= 32) for which the rule with m/2 points does at least as "
        "well as the baseline with m: RMSE within 1% of min(uniform, k-means); bound gap "
        "at most the uniform's, at most the k-means'.",
        "",
        "| data set | rule | RMSE vs uniform/k-means | gap vs uniform | gap vs k-means |",
        "|---|---|---|---|---|",
    ]
    checks = zip(
        goal_check(summary, "rmse", ("uniform", "kmeans"), 0.01),
        goal_check(summary, "gap", ("uniform",), 0.0),
        goal_check(summary, "gap", ("kmeans",), 0.0),
    )
    lines += [f"| {a[0]} | {a[1]} | {a[2]} of {a[3]} | {b[2]} of {b[3]} | {c[2]} of {c[3]} |"
              for a, b, c in checks]
    lines.append("")
    return lines


def plot_inducing(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = _summarise_inducing(rows)
    datasets = list(dict.fromkeys(k[0] for k in summary))
    fig, axes = plt.subplots(2, len(datasets), figsize=(4.5 * len(datasets), 8), squeeze=False)
    for j, ds in enumerate(datasets):
        for k, method in enumerate((*METHODS, *PEERS)):
            recs = sorted((v for key, v in summary.items() if key[0] == ds and key[2] == method),
                          key=lambda r: r["m"])
            if not recs:
                continue
            style = "o-" if method in METHODS else "s--"
            axes[0, j].plot([r["m"] for r in recs], [r["rmse"] for r in recs], style,
                            color=f"C{k}", label=method)
            gaps = [r for r in recs if r["gap"] is not None]
            if gaps:
                axes[1, j].plot([r["m"] for r in gaps], [max(r["gap"], 1e-6) for r in gaps],
                                style, color=f"C{k}", label=method)
        for ax in axes[:, j]:
            ax.set_xscale("log", base=2)
            ax.set_xlabel("m (inducing points)")
        axes[0, j].set_title(ds)
        axes[0, j].set_ylabel("test RMSE (standardised)")
        axes[1, j].set_yscale("log")
        axes[1, j].set_ylabel("(exact lml - bound) / n")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# --------------------------------------------------------------------------- driver
def _header(args, elapsed: float) -> str:
    return (
        f"Date {datetime.date.today()}, {platform.machine()}, {os.cpu_count()} cores (shared; "
        f"load average {os.getloadavg()[0]:.1f} at the end), torch {torch.__version__}, one "
        f"thread. Produced by `python benchmarks/bench_sampling.py {' '.join(args.argv)}` "
        f"({elapsed:.0f} s)."
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=60, help="repetitions per setting, d = 1")
    parser.add_argument("--reps-5d", type=int, default=30, help="repetitions per setting, d = 5")
    parser.add_argument("--skip-ls", action="store_true",
                        help="skip part A (its table comes from the JSON of an earlier run)")
    parser.add_argument("--skip-inducing", action="store_true",
                        help="skip part B (its table comes from the JSON of an earlier run)")
    parser.add_argument("--datasets", nargs="+", default=list(DEFAULT_DATASETS),
                        choices=list(DATASETS))
    parser.add_argument("--inducing-m", type=int, nargs="+", default=[16, 32, 64, 128, 256, 512])
    parser.add_argument("--seeds", type=int, default=2, help="seeds of the random rules")
    parser.add_argument("--max-train", type=int, default=20000)
    parser.add_argument("--n-gap", type=int, default=1000,
                        help="training points on which the bound is compared with the exact lml")
    parser.add_argument("--sgpr-max-m", type=int, default=256,
                        help="largest m for GPyTorch's SGPR (50 Adam steps of O(n m^2) each)")
    parser.add_argument("--out", type=Path, default=RESULTS / "sampling.md")
    args = parser.parse_args(argv)
    args.argv = [] if argv is None else list(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    rows = []
    start = time.perf_counter()
    lines = [
        "# Optimal sampling: DPP designs for weighted least squares, DPP inducing points",
        "",
    ]
    body = []
    cache = args.out.with_name(args.out.stem + "_least_squares.json")
    if not args.skip_ls:
        rows = run_least_squares(args.reps, args.reps_5d)
        cache.write_text(json.dumps(rows, indent=0))
    elif cache.exists():
        rows = json.loads(cache.read_text())
        body += [f"Part A below is from an earlier run (`{cache.name}`).", ""]
    if rows:
        plot_least_squares(rows, args.out.with_suffix(".svg"))
        body += [
            "## A. Weighted least squares on Legendre polynomials, mu uniform on [-1, 1]^d",
            "",
            f"Plot: [{args.out.with_suffix('.svg').name}]({args.out.with_suffix('.svg').name}).",
            "",
            *table_least_squares(rows),
        ]
    cache_b = args.out.with_name(args.out.stem + "_inducing.json")
    rows_b = []
    if not args.skip_inducing:
        rows_b = run_inducing(args.datasets, args.inducing_m, args.seeds, args.max_train,
                              args.n_gap, args.sgpr_max_m)
        cache_b.write_text(json.dumps(rows_b, indent=0))
    elif cache_b.exists():
        rows_b = json.loads(cache_b.read_text())
        body += ["", f"Part B below is from an earlier run (`{cache_b.name}`).", ""]
    if rows_b:
        plot_b = args.out.with_name(args.out.stem + "_inducing.svg")
        plot_inducing(rows_b, plot_b)
        body += [
            "## B. Inducing points for sparse GP regression (collapsed bound, fixed kernel)",
            "",
            f"Plot: [{plot_b.name}]({plot_b.name}).",
            "",
            *table_inducing(rows_b),
        ]
    lines += [_header(args, time.perf_counter() - start), "", *body]
    if args.out.exists():  # the hand-written reading of the results survives a rerun
        old = args.out.read_text()
        if READING_HEADING in old:
            lines += ["", old[old.index(READING_HEADING):].rstrip()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
