"""
High-frequency 1-D Poisson equation with a GP solver
====================================================

Solve :math:`u'' = f` on :math:`[0, 1]` with :math:`u(x) = \\sin(100 x)` (about 16 periods)
using :class:`gpkern.pde.GPPDESolver` with a Student-t spectral mixture prior (GP-HM-StM).
The figure shows the solution against the truth, the pointwise error, and the spectrum:
the 30 initial components, the learned weights, and the few that survive pruning, which sit
at the solution's frequency :math:`100 / 2\\pi \\approx 15.9` cycles per unit.
"""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from gpkern.pde import GPPDESolver, Poisson

torch.set_num_threads(1)
problem = Poisson.from_solution(lambda X: torch.sin(100.0 * X[:, 0]), domain=[(0.0, 1.0)])
solver = GPPDESolver(spectrum="student_t", grid_size=300, max_iter=15, random_state=0).fit(problem)

x = np.linspace(0.0, 1.0, 2000)
u = solver.predict(x[:, None])
truth = np.sin(100.0 * x)
err = np.linalg.norm(u - truth) / np.linalg.norm(truth)

fig, ax = plt.subplots(1, 3, figsize=(15, 4))
ax[0].plot(x, truth, "k-", lw=3, alpha=0.3, label="truth")
ax[0].plot(x, u, "r--", lw=1, label="GP-HM-StM")
ax[0].set_xlim(0.0, 0.3)
ax[0].set_title(f"solution (zoom), relative L2 error {err:.1e}")
ax[0].legend()
ax[1].semilogy(x, np.abs(u - truth) + 1e-16)
ax[1].set_title("pointwise error")
ax[2].stem(solver.frequencies_init_[0], solver.weights_init_[0], linefmt="C7-", markerfmt="C7o", basefmt=" ", label="initial")
ax[2].stem(solver.frequencies_all_[0], solver.weights_all_[0], linefmt="C0-", markerfmt="C0.", basefmt=" ", label="learned")
ax[2].stem(solver.frequencies_[0], solver.weights_[0], linefmt="C3-", markerfmt="C3D", basefmt=" ", label="kept after pruning")
ax[2].axvline(100.0 / (2 * np.pi), color="k", ls=":", label="true frequency")
ax[2].set_yscale("log")
ax[2].set_ylim(1e-8, 2.0)
ax[2].set_xlabel("frequency (cycles per unit)")
ax[2].set_title("spectral mixture weights")
ax[2].legend(fontsize=8)
fig.tight_layout()
fig.savefig("pde_poisson_1d.png", dpi=80)
print("pde_poisson_1d.png")
