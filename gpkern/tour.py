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


def _gp_rbf():
    from gpkern.estimators import GPRegressor

    return GPRegressor(n_restarts=2, random_state=0)


def _student_t_process():
    from gpkern.estimators import StudentTProcessRegressor

    return StudentTProcessRegressor(n_restarts=2, random_state=0)


#: (name, factory) pairs; each factory returns an unfitted regressor with the GPRegressor surface.
REGRESSORS: list[tuple[str, Callable[[], object]]] = [
    ("GP (ARD RBF)", _gp_rbf),
]
REGRESSORS.append(("Student-t process (ARD RBF)", _student_t_process))

#: Functions ``section(quick: bool) -> list[dict]``; rows have the keys of :class:`TourResult`.
SECTIONS: list[Callable[[bool], list[dict]]] = []


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
        ax.fill_between(grid[:, 0], mean - 2 * std, mean + 2 * std, color=line.get_color(), alpha=0.15)
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
