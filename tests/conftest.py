"""Shared test configuration and reference helpers.

The KeOps cache is redirected to a fresh folder per pytest run (and per xdist worker) *before*
anything imports pykeops, so parallel runs never share a half-written cache.
"""

from __future__ import annotations

import os
import tempfile

_keops_dir = tempfile.mkdtemp(prefix=f"gpkern-keops-{os.environ.get('PYTEST_XDIST_WORKER', 'main')}-")
os.environ["KEOPS_CACHE_FOLDER"] = _keops_dir

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_default_dtype(torch.float64)
if os.environ.get("PYTEST_XDIST_WORKER"):
    # One BLAS/OpenMP thread per xdist worker: two workers on two cores, no oversubscription.
    torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def keops_compiles() -> bool:
    """Cheap check (no compilation): a compiler and an importable pykeops. A real compile
    failure then fails the KeOps tests loudly instead of skipping them."""
    import importlib.util
    import shutil

    return shutil.which("g++") is not None and importlib.util.find_spec("pykeops") is not None


def dense_gp_reference(K: np.ndarray, Ks: np.ndarray, Kss: np.ndarray, y: np.ndarray, noise: float):
    """Independent numpy/scipy GP posterior and log marginal likelihood (the test oracle).

    Returns (mean, var_of_f, lml) for ``y`` of shape (n,) under N(0, K + noise I).
    """
    import scipy.linalg as sla

    n = K.shape[0]
    C = K + noise * np.eye(n)
    c, low = sla.cho_factor(C, lower=True)
    alpha = sla.cho_solve((c, low), y)
    mean = Ks @ alpha
    v = sla.solve_triangular(c, Ks.T, lower=True)
    var = np.diag(Kss) - (v * v).sum(0)
    lml = -0.5 * y @ alpha - np.log(np.diag(c)).sum() - 0.5 * n * np.log(2 * np.pi)
    return mean, var, lml
