"""
Out-of-distribution entropy: scale-mixture versus GP classifier
===============================================================

:class:`gpkern.estimators.ScaleMixtureClassifier` trained on scikit-learn's digits without the
classes 7, 8 and 9, with the inverse-gamma scale prior and with :math:`\\sigma^2 = 1` fixed
(``prior=None``: the plain sparse variational GP classifier). The histograms compare the
predictive entropy on held-out digits of the training classes with that on the unseen
classes; the legend gives the AUROC of entropy as an out-of-distribution score.

This example trains two classifiers for a few hundred Adam steps (about a minute on a laptop
CPU), so the documentation renders it without executing it.
"""

import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import load_digits
from sklearn.metrics import roc_auc_score

from gpkern.estimators import ScaleMixtureClassifier

X, y = load_digits(return_X_y=True)
X = X / 16.0
held = np.isin(y, [7, 8, 9])
X_in, y_in, X_out = X[~held], y[~held], X[held]
idx = np.random.default_rng(0).permutation(len(y_in))
train, test = idx[: int(0.8 * len(idx))], idx[int(0.8 * len(idx)) :]

fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
bins = np.linspace(0, np.log(7), 30)
for ax, (name, prior) in zip(axes, [("GP (sigma^2 = 1)", None), ("scale mixture (IG prior)", "inverse_gamma")]):
    clf = ScaleMixtureClassifier(prior=prior, n_inducing=100, max_iter=300, random_state=0)
    clf.fit(X_in[train], y_in[train])
    h_in, h_out = clf.predictive_entropy(X_in[test]), clf.predictive_entropy(X_out)
    auroc = roc_auc_score(np.r_[np.zeros(len(h_in)), np.ones(len(h_out))], np.r_[h_in, h_out])
    acc = (clf.predict(X_in[test]) == y_in[test]).mean()
    ax.hist(h_in, bins=bins, alpha=0.6, density=True, label="digits 0-6 (test)")
    ax.hist(h_out, bins=bins, alpha=0.6, density=True, label="digits 7-9 (unseen)")
    ax.set_title(f"{name}\naccuracy {acc:.3f}, AUROC {auroc:.3f}")
    ax.set_xlabel("predictive entropy (nats)")
axes[0].set_ylabel("density")
axes[0].legend()
fig.tight_layout()
fig.savefig("scale_mixture_ood.png", dpi=110)
print("scale_mixture_ood.png")
