"""
An exact GP split across two processes
======================================

The distributed backend splits the training rows of an exact GP across the processes of a
``torch.distributed`` job: each process computes its row block of every kernel-matrix product,
and conjugate gradients, stochastic Lanczos quadrature and the pivoted-Cholesky preconditioner
sum their per-row terms across processes. The answer does not depend on the number of
processes.

Here two local processes compute the log marginal likelihood, its gradient and the posterior
of a GP on 600 noisy points, and this process computes the same with
:class:`~gpkern.models.iterative.IterativeGP`. The two processes are this very script started
again with the environment ``torchrun`` would give them
(:func:`gpkern.distributed.group.start_local_ranks`; gloo on 127.0.0.1), which is what
``torchrun --nproc-per-node 2 plot_distributed_gp.py --rank-job OUT`` would do. Both sides
use the row-blocked torch operator so that the example needs no KeOps compilation;
``GPRegressor(backend="distributed")`` runs the same model on KeOps (see the "Scaling out"
user guide page).
"""

import os
import sys
import tempfile

import gpytorch
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from gpkern.distributed import group
from gpkern.distributed.model import DistributedGP
from gpkern.models.iterative import IterativeGP, IterativeSettings

torch.set_default_dtype(torch.float64)


def problem():
    g = torch.Generator().manual_seed(0)
    X = torch.rand(600, 1, generator=g) * 10
    y = torch.sin(X[:, 0]) + 0.3 * torch.cos(3 * X[:, 0]) + 0.2 * torch.randn(600, generator=g)
    return X, y[:, None], torch.linspace(-1, 11, 200)[:, None]


def build(model_class, **kwargs):
    kernel = gpytorch.kernels.ScaleKernel(gpytorch.kernels.RBFKernel())
    kernel.base_kernel.lengthscale = 0.8
    settings = IterativeSettings(seed=0, preconditioner_rank=64, variance_rank=64)
    return model_class(kernel, noise=0.04, settings=settings, backend="torch", **kwargs).double()


def fit_and_predict(model, X, Y, Xs):
    lml = model.log_marginal_likelihood(X, Y)
    lml.backward()
    grad = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    mean, var = model.posterior(X, Y).predict(Xs)
    return float(lml.detach()), grad.numpy(), mean[:, 0].numpy(), var.sqrt().numpy()


def rank_job(out):
    """One of the processes: the same whole data, its own rows of every vector."""
    info = group.init_from_env(timeout=60)
    try:
        X, Y, Xs = problem()
        group.check_agreement(X.shape[0], X.shape[1], X.dtype, Y.shape[1])
        model = build(DistributedGP)
        lml, grad, mean, std = fit_and_predict(model, X, Y, Xs)
        if info.rank == 0:  # every process holds the same results
            np.savez(out, lml=lml, grad=grad, mean=mean, std=std,
                     sent=model.comm.bytes_communicated)
    finally:
        group.destroy(info)


if sys.argv[1:2] == ["--rank-job"]:  # one of the two processes started below
    torch.set_num_threads(1)
    rank_job(sys.argv[2])
    raise SystemExit(0)

import gpkern  # noqa: E402

out = os.path.join(tempfile.mkdtemp(), "two_processes.npz")
root = os.path.dirname(os.path.dirname(gpkern.__file__))
env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
# This script's path: sys.argv[0] both as a script and in the docs' gallery (no __file__ there).
script = os.path.abspath(sys.argv[0])
procs = group.start_local_ranks([sys.executable, script, "--rank-job", out], 2, env=env)
codes = group.wait_local_ranks(procs, deadline=120)  # a stuck process is killed, never waited on
assert codes == [0, 0], f"the processes exited with {codes}"
two = np.load(out)
lml2, grad2, mean2, std2 = float(two["lml"]), two["grad"], two["mean"], two["std"]

X, Y, Xs = problem()
lml1, grad1, mean1, std1 = fit_and_predict(build(IterativeGP), X, Y, Xs)
print(f"log marginal likelihood: 1 process {lml1:.10f}, 2 processes {lml2:.10f}")
print(f"largest relative gradient difference: {np.abs(grad2 - grad1).max() / np.abs(grad1).max():.1e}")
print(f"largest mean difference: {np.abs(mean2 - mean1).max():.1e}; "
      f"bytes each process communicated: {int(two['sent']):,}")

fig, ax = plt.subplots(figsize=(8, 4))
ax.plot(X[:, 0], Y[:, 0], ".", color="0.6", ms=3, label="600 training points")
ax.plot(Xs[:, 0], mean2, color="C0", label="posterior mean, 2 processes")
ax.fill_between(Xs[:, 0], mean2 - 2 * std2, mean2 + 2 * std2, color="C0", alpha=0.2,
                label="± 2 sd, 2 processes")
ax.plot(Xs[:, 0], mean1, "--", color="C3", label="posterior mean, 1 process")
ax.set_title(f"log p(y): {lml2:.6f} (2 processes), {lml1:.6f} (1 process)")
ax.legend(loc="lower left", fontsize=8)
fig.tight_layout()
plt.show()
