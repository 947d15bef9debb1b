"""
Sparse spectrum of Mauna Loa CO2 with a GSMP linear multiple kernel
===================================================================

:class:`gpkern.estimators.MultipleKernelRegressor` with the grid spectral mixture product
(GSMP) kernel learns non-negative weights over a fixed grid of spectral components by
successive convex approximation; most weights end exactly at zero. Trained on the first 70%
of the monthly Mauna Loa CO2 series (Stat2Data ``CO2Hawaii``, 1988-2017), it extrapolates the
remaining nine years. Left: the extrapolation with a band of two predictive standard
deviations. Right: the learned sparse spectrum (weight per grid frequency, one marker per
bandwidth); the yearly cycle and its harmonic stand out.
"""

import matplotlib.pyplot as plt
import numpy as np

from gpkern.datasets import load_co2
from gpkern.estimators import MultipleKernelRegressor

X, y = load_co2()
n_train = int(0.7 * len(y))
reg = MultipleKernelRegressor(n_components=31, max_iter=100, random_state=0)
reg.fit(X[:n_train], y[:n_train])
mean, std = reg.predict(X, return_std=True)
std = np.sqrt(std**2 + reg.noise_ * reg._y_std[0] ** 2)  # predictive: noise included
mse = np.mean((mean[n_train:] - y[n_train:]) ** 2)

fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4))
ax.plot(X[:, 0], y, "k.", ms=3, label="observed")
ax.plot(X[:, 0], mean, "C0", label=f"GSMP-LMK (test MSE {mse:.2f} ppm$^2$)")
ax.fill_between(X[:, 0], mean - 2 * std, mean + 2 * std, color="C0", alpha=0.25)
ax.axvline(X[n_train, 0], color="gray", ls="--", lw=1)
ax.set(xlabel="year", ylabel="CO$_2$ (ppm)", title="Extrapolation of the last 30%")
ax.legend(loc="upper left")

means = reg.kernel_.means[:, 0].numpy()
bws = reg.kernel_.bandwidths[:, 0].numpy()
w = reg.weights_
for i, b in enumerate(np.unique(bws)):
    sel = bws == b
    bx.stem(means[sel], w[sel], linefmt=f"C{i}-", markerfmt=f"C{i}o", basefmt=" ",
            label=f"bandwidth {b:.2g} / year")
bx.set(xlabel="frequency (cycles / year)", ylabel=r"weight $\theta_a$",
       title=f"Learned spectrum: {(w > 0).sum()} of {w.size} weights non-zero")
bx.set_yscale("symlog", linthresh=1e-3)
bx.legend()
fig.tight_layout()
fig.savefig("lmk_co2.png", dpi=100)
print("lmk_co2.png")
