"""
Exact GP regression on 100,000 points with KeOps
================================================

The KeOps backend never stores the :math:`n \\times n` kernel matrix: conjugate gradients and
stochastic Lanczos quadrature only need kernel-matrix products, which KeOps computes with
memory linear in :math:`n`. On a CPU one product with 100,000 points still takes about a minute,
so this example learns the hyperparameters on a 5,000-point subset (dense backend) and then
conditions an exact GP on all 100,000 points with ``backend="keops"`` (progress bars on), and
predicts means and standard deviations in batches. On a GPU, fit on everything directly.

This example is not executed by the documentation build (it takes several minutes on a CPU);
its thumbnail shows the measured memory of one KeOps product against a dense kernel matrix
(``benchmarks/results/keops.md``).
"""

# sphinx_gallery_thumbnail_path = "_static/thumbnail_keops_100k.png"

import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from gpkern.estimators import GPRegressor

rng = np.random.default_rng(0)
n = 100_000
X = rng.uniform(-3, 3, (n, 2))
f = np.sin(2 * X[:, 0]) * np.cos(X[:, 1])
y = f + 0.2 * rng.standard_normal(n)

# Hyperparameters from a subset: exact dense GP, L-BFGS.
subset = rng.choice(n, 5000, replace=False)
small = GPRegressor(backend="dense", max_iter=50, random_state=0).fit(X[subset], y[subset])

# Exact GP on all points with the learned kernel and noise: CG with a pivoted-Cholesky
# preconditioner, predictions in batches; memory stays linear in n.
start = time.perf_counter()
big = GPRegressor(
    kernel=small.kernel_,
    noise=small.noise_,
    optimizer=None,
    backend="keops",
    verbose=True,
    backend_options={"eval_cg_tol": 1e-3, "variance_rank": 64, "batch_size": 2500},
).fit(X, y)
grid = np.stack(np.meshgrid(np.linspace(-3, 3, 100), np.linspace(-3, 3, 100)), -1).reshape(-1, 2)
mean, std = big.predict(grid, return_std=True)
elapsed = time.perf_counter() - start

truth = np.sin(2 * grid[:, 0]) * np.cos(grid[:, 1])
fig, axes = plt.subplots(1, 2, figsize=(9, 4))
for ax, img, title in zip(axes, (mean, std), ("posterior mean", "posterior sd")):
    im = ax.imshow(img.reshape(100, 100), extent=(-3, 3, -3, 3), origin="lower")
    ax.set_title(title)
    fig.colorbar(im, ax=ax)
fig.suptitle(
    f"exact GP on {n:,} points (KeOps, {big._posterior.n_iter} CG iterations, {elapsed:.0f} s); "
    f"RMSE to truth {np.sqrt(np.mean((mean - truth) ** 2)):.4f}",
    fontsize=9,
)
fig.tight_layout()
fig.savefig("keops_100k.png", dpi=100)
print("keops_100k.png")
