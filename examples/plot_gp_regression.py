"""
GP regression on a motorcycle crash
===================================

Exact GP regression with :class:`gpkern.estimators.GPRegressor` on MASS ``mcycle`` (head
acceleration after a simulated crash), compared with scikit-learn's
``GaussianProcessRegressor`` with an RBF + white-noise kernel. Both maximise the log marginal
likelihood; the plot shows each posterior mean with a band of two standard deviations.
"""

import matplotlib.pyplot as plt
import numpy as np
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel

from gpkern.datasets import load_mcycle
from gpkern.estimators import GPRegressor

X, y = load_mcycle()
grid = np.linspace(X.min(), X.max(), 300)[:, None]

gp = GPRegressor(n_restarts=2, random_state=0).fit(X, y)
mean, std = gp.predict(grid, return_std=True)

sk = GaussianProcessRegressor(
    ConstantKernel() * RBF(length_scale=10.0) + WhiteKernel(), normalize_y=True, random_state=0
).fit(X, y)
sk_mean, sk_std = sk.predict(grid, return_std=True)

fig, ax = plt.subplots(figsize=(8, 4.5))
ax.scatter(X[:, 0], y, s=10, c="k", label="data")
ax.plot(grid[:, 0], mean, label=f"gpkern (log p(y) = {gp.log_marginal_likelihood():.1f})")
ax.fill_between(grid[:, 0], mean - 2 * std, mean + 2 * std, alpha=0.2)
ax.plot(grid[:, 0], sk_mean, "--", label="scikit-learn")
ax.set_xlabel("time after impact (ms)")
ax.set_ylabel("acceleration (g)")
ax.legend()
fig.tight_layout()
fig.savefig("gp_regression.png", dpi=110)
