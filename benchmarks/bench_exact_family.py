"""Fit times of the exact-likelihood estimators that share GPRegressor's dense path.

Default ``GPRegressor``, ``StudentTProcessRegressor``, ``ScaleMixtureRegressor``,
``GridGPRegressor`` (scattered points: its dense fallback) and ``MultipleKernelRegressor``
fitted once each on Friedman #1 (d = 5, noise sd 1, ``--n`` training points, 1000 held out).
Prints one JSON line per estimator: CPU and wall seconds of ``fit``, the load average, the
optimiser's ``n_iter_`` and the held-out RMSE. The library is whichever ``gpkern`` imports, so
two versions are compared by running this script under two ``PYTHONPATH`` values.

Run: ``PYTHONPATH=<checkout> python benchmarks/bench_exact_family.py [--n 1000] [--only NAME]``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings

import numpy as np

import gpkern
from gpkern import estimators
from gpkern.datasets import make_friedman

NAMES = [
    "GPRegressor",
    "StudentTProcessRegressor",
    "ScaleMixtureRegressor",
    "GridGPRegressor",
    "MultipleKernelRegressor",
]


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--only", nargs="*", default=NAMES, choices=NAMES)
    args = parser.parse_args(argv)
    X, y = make_friedman(args.n + 1000, noise=1.0, random_state=0)
    Xtr, ytr, Xte, yte = X[: args.n], y[: args.n], X[args.n :], y[args.n :]
    estimators.GPRegressor(random_state=0).fit(Xtr[:50], ytr[:50])  # first-call costs
    rows = []
    for name in args.only:
        est = getattr(estimators, name)(random_state=0)
        load = os.getloadavg()[0]
        cpu, wall = time.process_time(), time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            est.fit(Xtr, ytr)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        rmse = float(np.sqrt(np.mean((est.predict(Xte) - yte) ** 2)))
        row = dict(estimator=name, n=args.n, cpu=round(cpu, 2), wall=round(wall, 2),
                   load=round(load, 1), n_iter=getattr(est, "n_iter_", None),
                   rmse=round(rmse, 4), warnings=sorted({type(w.message).__name__ for w in caught}),
                   gpkern=os.path.dirname(gpkern.__file__))
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


if __name__ == "__main__":
    main()
