"""
Optimal sampling for least squares: DPPs against i.i.d. points
==============================================================

Weighted least squares in an orthonormal basis :math:`\\phi_1, \\dots, \\phi_m` of polynomials
is quasi-optimal once its points make the weighted Gram matrix :math:`G` close to the identity.
Points drawn i.i.d. from the optimal density :math:`k_m/m` (:math:`k_m = \\sum_j \\phi_j^2`)
need about :math:`m \\log m` of them; a projection DPP draws :math:`m` points with the same
marginal density that repel each other, and unions of a few DPPs
(:func:`gpkern.sampling.sample_repeated_dpp`) reach a stable system with fewer samples.

The first figure shows :math:`m = 55` points in 2-D (Legendre polynomials of total degree 9):
i.i.d. from the optimal density, and a projection DPP, over the density :math:`k_m/m`. The
second fits Runge's function :math:`1/(1 + 25x^2)` on :math:`[-1, 1]` with
:class:`~gpkern.estimators.WeightedLeastSquaresRegressor` (degree 9, :math:`m = 10`) and plots
the mean :math:`L^2` error over repetitions, divided by the best approximation error, against
the number of points per basis function, and counts the points each design needs for a
stable Gram matrix.
"""

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.colors import LogNorm

from gpkern.estimators import WeightedLeastSquaresRegressor
from gpkern.sampling import (
    LegendreBasis,
    gram_deviation,
    optimal_density,
    optimal_weights,
    sample_optimal,
    sample_projection_dpp,
    weighted_gram,
)

# %%
# Points in 2-D
# -------------
# The same number of points, the same marginal density; the DPP's points avoid each other.
basis = LegendreBasis(degree=9, dim=2)
iid = sample_optimal(basis, basis.m, generator=0).numpy()
dpp = sample_projection_dpp(basis, generator=0).numpy()

t = np.linspace(-1, 1, 120)
grid = np.stack(np.meshgrid(t, t), -1).reshape(-1, 2)
density = optimal_density(basis, torch.tensor(grid)).numpy().reshape(120, 120)

fig_points, axes = plt.subplots(1, 2, figsize=(10, 4.6))
for ax, points, title in ((axes[0], iid, "i.i.d. from k_m/m"), (axes[1], dpp, "projection DPP")):
    mesh = ax.pcolormesh(t, t, density, cmap="Greys", shading="auto", norm=LogNorm(), alpha=0.5)
    ax.scatter(points[:, 0], points[:, 1], s=18, c="C3")
    ax.set_aspect("equal")
    ax.set_title(f"{title}, m = {basis.m} points")
fig_points.colorbar(mesh, ax=axes[1], label="optimal density k_m/m (w.r.t. uniform)")
fig_points.savefig("dpp_points.png", dpi=90)

# %%
# Error against the number of points
# ----------------------------------
# The best approximation in :math:`V_m` and every error are computed by Gauss-Legendre
# quadrature (``mu`` is uniform on [-1, 1], density 1/2).


def runge(X):
    return 1.0 / (1.0 + 25.0 * X[:, 0] ** 2)


nodes, w = np.polynomial.legendre.leggauss(400)
w = w / 2
line = LegendreBasis(degree=9)
Phi = line(torch.tensor(nodes)[:, None]).numpy()
coef = Phi.T @ (w * runge(nodes[:, None]))
best = np.sqrt(w @ (runge(nodes[:, None]) - Phi @ coef) ** 2)


def error_ratio(est):
    return np.sqrt(w @ (runge(nodes[:, None]) - est.predict(nodes[:, None])) ** 2) / best


reps, ratios, m = 40, (1, 2, 3, 5, 10), line.m
curves = {}
for sampling in ("uniform", "optimal_iid", "volume"):
    curves[sampling] = [
        np.mean([
            error_ratio(WeightedLeastSquaresRegressor(
                degree=9, sampling=sampling, n_samples=r * m, random_state=seed,
            ).fit_function(runge, domain=(-1.0, 1.0)))
            for seed in range(reps)
        ])
        for r in ratios
    ]
repeated = [
    WeightedLeastSquaresRegressor(degree=9, sampling="repeated_dpp", random_state=seed)
    .fit_function(runge, domain=(-1.0, 1.0))
    for seed in range(reps)
]

# Sphinx-gallery shows the figures open at the end of each cell, so the error curves and the
# sample counts below share one figure and one cell.
fig, (ax, ax_hist) = plt.subplots(1, 2, figsize=(11, 4.6))
for k, (sampling, curve) in enumerate(curves.items()):
    label = "volume (one DPP at n = m)" if sampling == "volume" else sampling
    ax.plot(ratios, curve, "o-", color=f"C{k}", label=label)
ax.plot(np.mean([e.n_samples_ for e in repeated]) / m, np.mean([error_ratio(e) for e in repeated]),
        "*", ms=14, color="C3", label="repeated DPP, ||G - I|| <= 1/2")
ax.set_xscale("log")
ax.set_yscale("log")
ax.set_xlabel("n / m")
ax.set_ylabel("mean L2 error / best error")
ax.set_title(f"Runge's function, degree 9 (m = {m}), {reps} repetitions")
ax.legend()

# How many points reach a stable Gram matrix? Repeated DPPs against blocks of m i.i.d. points
# of the optimal density, both stopped at the first ||G - I||_2 <= 1/2.

gen = torch.Generator().manual_seed(1)
iid_blocks = []
for _ in range(reps):
    x = torch.zeros(0, 1, dtype=torch.float64)
    while True:
        x = torch.cat([x, sample_optimal(line, m, gen)])
        if gram_deviation(weighted_gram(line(x), optimal_weights(line, x))) <= 0.5:
            break
    iid_blocks.append(x.shape[0] / m)
ax = ax_hist
bins = np.arange(0.5, 40.5, 1.0)
ax.hist([e.n_samples_ / m for e in repeated], bins=bins, alpha=0.7, label="repeated DPP")
ax.hist(iid_blocks, bins=bins, alpha=0.7, label="i.i.d. blocks of m")
ax.set_xlabel("n / m at the first ||G - I|| <= 1/2")
ax.set_ylabel("repetitions")
ax.set_title("samples needed for a stable system")
ax.legend()
fig.tight_layout()
fig.savefig("dpp_sampling.png", dpi=90)
