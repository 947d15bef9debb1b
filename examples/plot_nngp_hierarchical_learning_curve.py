"""
Teacher-student learning curves with hierarchical CNN kernels
=============================================================

Cagnetta, Favero & Wyart show that a deep convolutional network whose filters do not overlap
(a tree) learns a target built from the same hierarchy much faster than a shallow network. The
teacher here is a Gaussian process with the NTK of a tree CNN with filters (2, 2, 2, 2) on
signals of length 16 (every input patch on its sphere); the students are ridgeless kernel
regressions with the same tree kernel and with a shallow (one hidden layer, filter 16 = fully
connected) kernel. The test error falls as a power of the number of training points P, with a
steeper slope for the matched, hierarchical student.
"""

import matplotlib.pyplot as plt
import numpy as np
import torch

from gpkern.kernels.nngp.hierarchical import hierarchical_kernel
from gpkern.linalg.cholesky import robust_cholesky

torch.manual_seed(0)
d, teacher_filters = 16, (2, 2, 2, 2)
P_list = [16, 32, 64, 128, 256, 512]
n_test, n_seeds = 400, 3
students = {"tree CNN (2, 2, 2, 2)": (2, 2, 2, 2), "shallow (16)": (16,)}
errors = {name: np.zeros((n_seeds, len(P_list))) for name in students}

for seed in range(n_seeds):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(max(P_list) + n_test, d, generator=g, dtype=torch.float64)
    K = hierarchical_kernel(X, None, teacher_filters, kind="ntk")
    L, _ = robust_cholesky(K, initial_jitter=1e-10, warn=False)
    f = L @ torch.randn(K.shape[0], generator=g, dtype=torch.float64)
    Xte, fte = X[-n_test:], f[-n_test:]
    for name, filters in students.items():
        Kall = hierarchical_kernel(X, None, filters, kind="ntk")
        for j, P in enumerate(P_list):
            Ktr = Kall[:P, :P] + 1e-8 * torch.eye(P, dtype=torch.float64)
            pred = Kall[-n_test:, :P] @ torch.linalg.solve(Ktr, f[:P])
            errors[name][seed, j] = ((pred - fte) ** 2).mean().item()

fig, ax = plt.subplots(figsize=(6, 4))
for name, err in errors.items():
    m = err.mean(0)
    slope = np.polyfit(np.log(P_list[2:]), np.log(m[2:]), 1)[0]
    ax.loglog(P_list, m, "o-", label=f"{name}: slope {slope:.2f}")
ax.set_xticks(P_list, [str(p) for p in P_list])
ax.minorticks_off()
ax.set_xlabel("training points P")
ax.set_ylabel("test mean squared error")
ax.set_title("teacher: GP with the tree-CNN NTK, filters (2, 2, 2, 2)", fontsize=9)
ax.legend()
fig.tight_layout()
fig.savefig("nngp_hierarchical_learning_curve.png", dpi=110)
print("nngp_hierarchical_learning_curve.png")
