"""
Three regimes of infinitely deep kernel classifiers
===================================================

Radhakrishnan, Belkin & Uhler show that, as the depth of a wide network grows, the classifier
:math:`\\operatorname{sign}(y^\\top K^{-1} k_*)` of its NTK becomes one of three rules, decided by the
normalised dual activation :math:`\\xi`: the 1-nearest-neighbour rule when
:math:`\\xi'(0) = 0`, the majority vote for ReLU, and otherwise a vote weighted by
:math:`\\|x - z\\|^{-\\alpha}`; the "optimal" duals make :math:`\\alpha` the sphere's dimension,
which is Bayes consistent. Here two classes on the unit circle (normalised Dirichlet samples,
Bayes error 0.24) are classified by :class:`gpkern.estimators.KernelClassifier` with
:class:`~gpkern.kernels.nngp.infinite_depth.InfiniteDepthKernel`; each deep kernel is compared
with the rule it should become.
"""

import warnings

import matplotlib.pyplot as plt
import numpy as np
from sklearn.neighbors import KNeighborsClassifier

from gpkern.estimators import KernelClassifier
from gpkern.kernels.nngp.infinite_depth import InfiniteDepthKernel, dual_activation, regime

rng = np.random.default_rng(0)


def sample(n):
    y = (rng.uniform(size=n) < 0.4).astype(int)
    s = np.where(y[:, None] == 1, rng.dirichlet([1, 2], n), rng.dirichlet([2, 1], n))
    return s / np.linalg.norm(s, axis=1, keepdims=True), y


X, y = sample(100)
Xt, yt = sample(500)
D = np.linalg.norm(Xt[:, None] - X[None], axis=-1)
rules = {
    "1-NN": KNeighborsClassifier(1).fit(X, y).predict(Xt),
    "majority vote": np.full(len(Xt), np.bincount(y).argmax()),
    "singular vote (alpha = 1)": (((2 * y - 1)[None] / D).sum(1) > 0).astype(int),
}
kernels = [
    ("xi = rho^2, depth 18", dual_activation("poly", coeffs={2: 1.0}), 18, "1-NN"),
    ("ReLU, depth 3000", dual_activation("relu"), 3000, "majority vote"),
    ("optimal2, depth 20", dual_activation("optimal2"), 20, "singular vote (alpha = 1)"),
]
labels, err, agree = [], [], []
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    for name, dual, depth, rule in kernels:
        pred = KernelClassifier(InfiniteDepthKernel(dual, depth=depth)).fit(X, y).predict(Xt)
        labels.append(f"{name}\n({regime(dual)[0]})")
        err.append((pred != yt).mean())
        agree.append((pred == rules[rule]).mean())

fig, ax = plt.subplots(figsize=(8, 4))
pos = np.arange(len(labels))
ax.bar(pos - 0.2, err, 0.4, label="test error")
ax.bar(pos + 0.2, agree, 0.4, label="agreement with the limiting rule")
ax.axhline(0.24, color="k", ls="--", lw=1, label="Bayes error 0.24")
ax.set_xticks(pos, labels, fontsize=8)
ax.set_ylim(0, 1.05)
ax.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3)
fig.tight_layout()
fig.savefig("nngp_infinite_depth_regimes.png", dpi=110)
print("nngp_infinite_depth_regimes.png")
