"""Dense Cholesky against preconditioned CG + stochastic Lanczos on the same dense kernel matrix.

Where should ``backend="auto"`` leave the dense Cholesky path for an iterative one while the
kernel matrix still fits in memory? Both paths maximise the log marginal likelihood of
``GPRegressor``'s default model (scaled ARD RBF, learned noise, default start) with its L-BFGS:

* ``dense``: :class:`gpkern.models.exact.ExactGP`, one Cholesky per evaluation, closed-form
  gradient;
* ``iterative``: :class:`gpkern.models.iterative.IterativeGP`'s estimator (batched
  preconditioned CG for :math:`y^\\top A^{-1} y` and the probe solves, stochastic Lanczos
  quadrature for :math:`\\log|A|`, randomly pivoted Cholesky preconditioner, default
  :class:`~gpkern.models.iterative.IterativeSettings`) with its products taken with the stored
  dense kernel matrix, to the end;
* ``iterative+exact``: the same, then a second L-BFGS run on the exact likelihood from its
  optimum (to remove the estimate's Monte Carlo error from the optimum reached).

Reported per n: CPU seconds of one evaluation with its gradient at the start (median of
``--repeats``) and the CG iterations it took; then, for full fits (``--fit-sizes``), CPU seconds
of the optimisation, evaluations, and the accuracy of the optimum reached: the exact log
marginal likelihood at the final hyperparameters and held-out RMSE and mean log predictive
density of the exact posterior there (Friedman #1, d = 5, 1000 held-out points).

Run: ``python benchmarks/bench_dense_iterative.py [--sizes 2000 5000 10000]
[--fit-sizes 2000 5000]``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from gpkern.datasets import make_friedman
from gpkern.estimators import GPRegressor
from gpkern.estimators.gp_regressor import default_kernel
from gpkern.models.exact import ExactGP, kernel_matrix
from gpkern.models.iterative import IterativeGP

RESULTS = Path(__file__).parent / "results"


class _DenseOperator:
    """The products :class:`IterativeGP` takes, with a stored (differentiable) kernel matrix."""

    def __init__(self, K: torch.Tensor) -> None:
        self.K = K

    def _matmul(self, V: torch.Tensor) -> torch.Tensor:
        return self.K @ V

    def detach(self) -> _DenseOperator:
        return _DenseOperator(self.K.detach())

    def columns(self, index: torch.Tensor) -> torch.Tensor:
        return self.K[:, index]

    def _diagonal(self) -> torch.Tensor:
        return self.K.diagonal()


class DenseIterativeGP(IterativeGP):
    """IterativeGP's estimator on the dense kernel matrix; after ``exact = True`` the exact
    likelihood; conditions by one Cholesky."""

    exact = False

    def operator(self, X, X2=None):
        if X2 is None:
            return _DenseOperator(kernel_matrix(self.kernel, X))
        return super().operator(X, X2)

    def log_marginal_likelihood(self, X, Y, *, warn=False):
        if self.exact:
            return ExactGP.log_marginal_likelihood(self, X, Y, warn=warn)
        return super().log_marginal_likelihood(X, Y, warn=warn)

    def posterior(self, X, Y, *, warn=True):
        return ExactGP.posterior(self, X, Y, warn=warn)


def _model(path: str, X: torch.Tensor):
    kernel = default_kernel(X)
    if path == "dense":
        return ExactGP(kernel, noise=0.1).double()
    return DenseIterativeGP(kernel, 0.1, True, backend="torch").double()


def _cpu(fn):
    start = time.process_time()
    out = fn()
    return time.process_time() - start, out


def per_evaluation(n: int, repeats: int) -> dict:
    X, y, _, _ = _split(n)
    Xt = torch.as_tensor((X - X.mean(0)) / X.std(0))
    Yt = torch.as_tensor((y - y.mean()) / y.std())[:, None]
    out = {}
    for path in ("dense", "iterative"):
        model = _model(path, Xt)
        times = []
        for _ in range(repeats):
            model.zero_grad()
            seconds, _ = _cpu(lambda m=model: m.log_marginal_likelihood(Xt, Yt).backward())
            times.append(seconds)
        out[path] = dict(cpu=float(np.median(times)),
                         cg_iter=getattr(model, "last_cg_iterations", None))
    return out


def _split(n: int):
    X, y = make_friedman(n + 1000, noise=1.0, random_state=0)
    return X[:n], y[:n], X[n:], y[n:]


def _counting(path: str, counter: dict):
    """A ``_make_model`` whose model counts its marginal-likelihood evaluations."""

    def make(Xt):
        model = _model(path, Xt)
        original = model.log_marginal_likelihood

        def counted(*args, **kwargs):
            counter["evals"] += 1
            counter["exact_evals"] += bool(getattr(model, "exact", False))
            return original(*args, **kwargs)

        model.log_marginal_likelihood = counted
        return model

    return make


def full_fit(n: int) -> dict:
    X, y, Xte, yte = _split(n)
    out = {}
    for path in ("dense", "iterative", "iterative+exact"):
        gp = GPRegressor(random_state=0)
        counter = {"evals": 0, "exact_evals": 0}
        gp._make_model = _counting(path, counter)
        rounds = 2 if path == "iterative+exact" else 1
        seconds, _ = _cpu(lambda gp=gp, rounds=rounds: gp._fit_marginal_likelihood(
            X, y, lambda Xt, gen: gp._make_model(Xt), n_rounds=rounds,
            between_rounds=lambda model, Xt, gen: setattr(model, "exact", True)))
        # The exact marginal likelihood and posterior at the hyperparameters reached.
        exact = GPRegressor(kernel=gp.kernel_, noise=gp.noise_, optimizer=None).fit(X, y)
        mean = exact.predict(Xte)
        out[path] = dict(
            cpu=seconds, **counter, lml=float(exact.log_marginal_likelihood_value_),
            rmse=float(np.sqrt(np.mean((mean - yte) ** 2))),
            lpd=float(exact.log_predictive_density(Xte, yte).mean()),
        )
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[2000, 5000, 10000])
    parser.add_argument("--fit-sizes", type=int, nargs="*", default=[2000, 5000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS / "dense_iterative.partial.json")
    args = parser.parse_args(argv)
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    for n in args.sizes:
        results[f"eval-{n}"] = dict(per_evaluation(n, args.repeats), load=os.getloadavg()[0])
        args.out.write_text(json.dumps(results, indent=1))
        print(n, results[f"eval-{n}"], flush=True)
    for n in args.fit_sizes:
        results[f"fit-{n}"] = dict(full_fit(n), load=os.getloadavg()[0])
        args.out.write_text(json.dumps(results, indent=1))
        print(n, results[f"fit-{n}"], flush=True)
    return results


if __name__ == "__main__":
    main()
