"""The dispatch rule for grids, and the import structure of gpkern.linalg (no cycles)."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from gpkern.estimators import GridGPRegressor
from gpkern.linalg.dispatch import choose_grid_backend

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_grid_rule():
    assert choose_grid_backend(12, 12) == "kronecker"
    assert choose_grid_backend(10, 12) == "kronecker-partial"
    assert choose_grid_backend(12, 12, distinct=False) == "dense"  # repeated points
    assert choose_grid_backend(5, None) == "dense"  # no grid
    assert choose_grid_backend(100, 10_000, min_fill=0.05) == "dense"  # too sparse
    assert choose_grid_backend(600, 10_000, min_fill=0.05) == "kronecker-partial"
    assert choose_grid_backend(100, 100, max_cells=99) == "dense"  # too large


def test_grid_estimator_follows_the_rule():
    """GridGPRegressor's backend_ is choose_grid_backend's answer for its detected grid."""
    rng = np.random.default_rng(0)
    x1, x2 = np.linspace(0, 1, 6), np.linspace(0, 2, 5)
    mesh = np.stack(np.meshgrid(x1, x2, indexing="ij"), -1).reshape(-1, 2)
    y = np.sin(3 * mesh[:, 0]) + mesh[:, 1] + 0.05 * rng.standard_normal(30)
    keep = rng.permutation(30)[:20]
    backends = []
    for X, Y, kwargs in [
        (mesh, y, {}),
        (mesh[keep], y[keep], {}),
        (mesh[keep], y[keep], {"min_fill": 0.9}),
        (mesh, y, {"max_grid_size": 29}),
    ]:
        gp = GridGPRegressor(optimizer=None, noise=0.1, **kwargs).fit(X, Y)
        rule = choose_grid_backend(len(X), 30, max_cells=gp.max_grid_size, min_fill=gp.min_fill)
        assert gp.backend_ == rule
        backends.append(gp.backend_)
    assert backends == ["kronecker", "kronecker-partial", "dense", "dense"]


def _linalg_modules() -> list[str]:
    base = ROOT / "gpkern" / "linalg"
    mods = []
    for path in sorted(base.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        mods.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return mods


@pytest.mark.slow
def test_every_linalg_module_imports_first_in_a_fresh_interpreter():
    """Imported first, each module must load: an import cycle would fail for one of them."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "KEOPS_VERBOSE": "0"}
    failed, modules = {}, _linalg_modules()
    for module in modules:  # one at a time: concurrent pykeops imports race on its cache
        res = subprocess.run(
            [sys.executable, "-c", f"import {module}"],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )
        if res.returncode != 0:
            failed[module] = res.stderr[-1000:]
    assert "gpkern.linalg.keops.registry" in modules and "gpkern.linalg.dispatch" in modules
    assert not failed, failed
