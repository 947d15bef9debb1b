"""A/B timing of one KeOps kernel product: gpkern against GPyTorch's KeOps kernels.

A single timed product on a shared machine can be off by several percent, so this script
alternates the two libraries ``repeats`` times on the same inputs (after one untimed warm-up
each, which also compiles the formulas) and reports the medians of the process CPU time of
``K @ V`` with 16 right-hand sides, for the kernels and inputs of ``bench_keops.py``'s matvec
rows (gpkern: :class:`gpkern.linalg.keops.operator.KernelOperator`; GPyTorch: ``kernel(X) @ V``).

Run: ``python benchmarks/bench_keops_ab.py --n 10000 --repeats 9 --kernels rbf matern52 periodic``.
Prints one line per kernel; it writes nothing (quote the line in the results file it supports).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
    import bench_keops as bench

    from gpkern.linalg.keops import kernel_operator

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--kernels", nargs="+", default=list(bench.KERNELS), choices=bench.KERNELS)
    args = parser.parse_args()
    torch.set_default_dtype(torch.float64)
    X = torch.rand(args.n, bench.D, generator=torch.Generator().manual_seed(0)) * 6 - 3
    V = torch.randn(args.n, 16, generator=torch.Generator().manual_seed(1))
    for name in args.kernels:
        ours = bench._peer_kernel(name)
        peer = bench._peer_kernel(name, keops_peer=True)
        peer.load_state_dict(ours.state_dict())
        op = kernel_operator(ours, X, backend="keops")
        products = {
            "gpkern": lambda op=op: op._matmul(V),
            "gpytorch": lambda peer=peer: peer(X) @ V,
        }
        cpu = {lib: [] for lib in products}
        with torch.no_grad():
            for product in products.values():
                product()
            for _ in range(args.repeats):
                for lib, product in products.items():
                    start = time.process_time()
                    product()
                    cpu[lib].append(time.process_time() - start)
        med = {lib: statistics.median(v) for lib, v in cpu.items()}
        print(
            f"{name} n={args.n} repeats={args.repeats} torch threads={torch.get_num_threads()}: "
            f"median CPU s gpkern {med['gpkern']:.3f}, GPyTorch {med['gpytorch']:.3f}, "
            f"ratio GPyTorch/gpkern {med['gpytorch'] / med['gpkern']:.3f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
