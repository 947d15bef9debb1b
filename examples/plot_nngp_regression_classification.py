"""
NNGP regression and NTK classification on scikit-learn data sets
================================================================

An infinitely wide ReLU network as a GP prior: :class:`gpkern.kernels.NNGPKernel` inside
:class:`gpkern.estimators.GPRegressor` learns the layers' weight and bias scales by marginal
likelihood on the diabetes data (442 patients, 10 features), and
:class:`gpkern.estimators.KernelClassifier` classifies the breast-cancer data with the NTK of a
deep ReLU network (the infinitely wide network trained to zero loss). Both are compared with a
plain RBF kernel.
"""

import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import load_breast_cancer, load_diabetes
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from gpkern.estimators import GPRegressor, KernelClassifier
from gpkern.kernels import NNGPKernel
from gpkern.kernels.nngp import Dense, Relu, serial

# -- regression: diabetes progression ----------------------------------------------------------
X, y = load_diabetes(return_X_y=True)
Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.3, random_state=0)
scaler = StandardScaler().fit(Xtr)
Xtr, Xte = scaler.transform(Xtr), scaler.transform(Xte)

arch = serial(Dense(1.0, 0.1), Relu(), Dense(1.0, 0.1), Relu(), Dense(1.0, 0.1))
nngp = GPRegressor(kernel=NNGPKernel(arch, learn_variances=True), max_iter=50).fit(Xtr, ytr)
rbf = GPRegressor(max_iter=50).fit(Xtr, ytr)
rows = []
for name, gp in (("NNGP (ReLU, 2 hidden)", nngp), ("RBF", rbf)):
    mean = gp.predict(Xte)
    rmse = np.sqrt(np.mean((mean - yte) ** 2))
    nlpd = -gp.log_predictive_density(Xte, yte).mean()
    rows.append((name, rmse, nlpd))
stds = nngp.kernel_.stds()

# -- classification: breast cancer -----------------------------------------------------------
Xc, yc = load_breast_cancer(return_X_y=True)
Xc_tr, Xc_te, yc_tr, yc_te = train_test_split(Xc, yc, test_size=0.3, random_state=0, stratify=yc)
sc = StandardScaler().fit(Xc_tr)
Xc_tr, Xc_te = sc.transform(Xc_tr), sc.transform(Xc_te)
accs = {}
for depth in (1, 2, 4, 8):
    layers = []
    for _ in range(depth):
        layers += [Dense(1.4, 0.1), Relu()]
    ntk = NNGPKernel(serial(*layers, Dense(1.0, 0.0)), kind="ntk")
    accs[depth] = KernelClassifier(ntk, ridge=1e-3).fit(Xc_tr, yc_tr).score(Xc_te, yc_te)

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
mean = nngp.predict(Xte)
ax1.scatter(yte, mean, s=12, label=f"NNGP: RMSE {rows[0][1]:.1f}, NLPD {rows[0][2]:.2f}")
ax1.scatter(yte, rbf.predict(Xte), s=12, marker="x", label=f"RBF: RMSE {rows[1][1]:.1f}, NLPD {rows[1][2]:.2f}")
lim = [yte.min(), yte.max()]
ax1.plot(lim, lim, "k--", lw=1)
ax1.set_xlabel("observed progression")
ax1.set_ylabel("predicted")
ax1.set_title(f"diabetes (learned W_std = {[round(float(s['W_std'].squeeze()), 2) for s in stds]})", fontsize=9)
ax1.legend(fontsize=8)
ax2.plot(list(accs), list(accs.values()), "o-")
ax2.set_xscale("log", base=2)
ax2.set_xlabel("hidden layers of the ReLU network")
ax2.set_ylabel("test accuracy (NTK classifier)")
ax2.set_title("breast cancer", fontsize=9)
fig.tight_layout()
fig.savefig("nngp_regression_classification.png", dpi=110)
print("nngp_regression_classification.png")
