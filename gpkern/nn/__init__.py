"""Neural-network layers built from kernels: scalable neural network kernel (SNNK) layers."""

from gpkern.nn.snnk import SNNKLayer

__all__ = ["SNNKLayer"]
