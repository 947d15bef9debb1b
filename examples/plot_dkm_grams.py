"""
Deep kernel machines learn their Gram matrices
==============================================

A deep kernel machine (DKM) with two layers is fitted to a 1-D step-like function. Its learned
Gram matrices :math:`G_1, G_2` are shown next to the NNGP prior Grams
:math:`K(G_0), K(K(G_0))` at the same hyperparameters: the NNGP's representation is fixed by
the kernel, while the DKM's moves away from it to fit the data; the third column shows the
change. The hyperparameters are the NNGP's (fitted by its marginal likelihood, then held), so
the change is the learned representation alone. With widths ratio 1 it is large (up to about
0.6 of the Grams' scale): both layers turn the NNGP's banded Grams into two blocks, the points
left and right of the step, which the fixed NNGP kernel cannot do; it shrinks as the widths
ratio grows. The last panel compares the two predictive means. Inputs are sorted, so the Gram
matrices are ordered by ``x``.
"""

import warnings

import gpytorch
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from gpkern.estimators import DKMRegressor, GPRegressor
from gpkern.models.dkm import NNGPGramKernel

torch.set_num_threads(1)
rng = np.random.default_rng(0)
X = np.sort(rng.uniform(-3, 3, 60))[:, None]
y = np.tanh(4 * X[:, 0]) + 0.1 * rng.standard_normal(60)
grid = np.linspace(-3.5, 3.5, 300)[:, None]

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    dkm = DKMRegressor(kernel="se", n_layers=2, widths_ratio=1.0, max_iter=40, random_state=0).fit(
        X, y
    )
    nngp = GPRegressor(
        kernel=gpytorch.kernels.ScaleKernel(NNGPGramKernel("se", n_layers=2)), random_state=0
    ).fit(X, y)

fig = plt.figure(figsize=(15, 6.4))
grid_spec = fig.add_gridspec(2, 4)
for layer in range(2):
    prior, learned = dkm.prior_grams_[layer], dkm.grams_[layer]
    vmax = max(learned.max(), prior.max())
    diff = learned - prior
    panels = [
        (prior, f"NNGP prior Gram $K^{layer + 1}(G_0)$", "viridis", 0, vmax),
        (learned, f"learned DKM Gram $G_{layer + 1}$", "viridis", 0, vmax),
        (
            diff,
            f"$G_{layer + 1} - K^{layer + 1}(G_0)$",
            "RdBu_r",
            -abs(diff).max(),
            abs(diff).max(),
        ),
    ]
    for col, (img, title, cmap, lo, hi) in enumerate(panels):
        a = fig.add_subplot(grid_spec[layer, col])
        im = a.imshow(img, vmin=lo, vmax=hi, cmap=cmap)
        a.set_title(title, fontsize=10)
        a.set_xticks([])
        a.set_yticks([])
        fig.colorbar(im, ax=a, fraction=0.046)
ax = fig.add_subplot(grid_spec[:, 3])
ax.scatter(X[:, 0], y, s=8, c="k", label="data")
mean, std = dkm.predict(grid, return_std=True)
ax.plot(grid[:, 0], mean, c="tab:blue", label="DKM")
ax.fill_between(grid[:, 0], mean - 2 * std, mean + 2 * std, color="tab:blue", alpha=0.2)
ax.plot(grid[:, 0], nngp.predict(grid), c="tab:orange", ls="--", label="NNGP")
ax.set_title("predictive mean")
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig("dkm_grams.png", dpi=110)
print("dkm_grams.png")
