"""Median process CPU time of one KeOps NNGP product (16 right-hand sides) in the gpkern on the path.

GPyTorch has no NNGP kernel, so this has no peer column: it times the same product in two
gpkern trees (``bench_before_after.sh``). Run: ``python benchmarks/bench_keops_nngp.py 10000 5``.
"""

import statistics
import sys
import time

import gpytorch
import torch

try:
    from gpkern.kernels.nngp import DenseNetworkKernel
except ImportError:  # trees from before DenseNetworkKernel moved to gpkern.kernels
    from gpkern.linalg.keops import DenseNetworkKernel
from gpkern.linalg.keops import kernel_operator

n, repeats = int(sys.argv[1]), int(sys.argv[2])
torch.set_default_dtype(torch.float64)
D = 3
layers = [("dense", 1.5, 0.5), ("relu",), ("dense", 1.5, 0.5), ("relu",), ("dense", 1.5, 0.5)]
X = torch.rand(n, D, generator=torch.Generator().manual_seed(0)) * 6 - 3
V = torch.randn(n, 16, generator=torch.Generator().manual_seed(1))
op = kernel_operator(gpytorch.kernels.ScaleKernel(DenseNetworkKernel(layers, D)), X, backend="keops")
with torch.no_grad():
    op._matmul(V)  # compiles
    times = []
    for _ in range(repeats):
        start = time.process_time()
        op._matmul(V)
        times.append(time.process_time() - start)
print(f"nngp n={n} repeats={repeats}: median CPU s {statistics.median(times):.3f} (min {min(times):.3f})")
