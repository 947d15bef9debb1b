"""Infinite-width network kernels (NNGP and NTK) of composed architectures.

>>> from gpkern.kernels.nngp import serial, Dense, Relu
>>> arch = serial(Dense(W_std=1.5, b_std=0.1), Relu(), Dense(W_std=1.0, b_std=0.0))
"""

from gpkern.kernels.nngp.architecture import FanInSum, FanOut, parallel, serial
from gpkern.kernels.nngp.conv import AvgPool, Conv, Flatten, GlobalAvgPool
from gpkern.kernels.nngp.dense_network import DenseNetworkKernel
from gpkern.kernels.nngp.layers import (
    ABRelu,
    Dense,
    Elementwise,
    Erf,
    Gelu,
    LayerNorm,
    LeakyRelu,
    Relu,
)

__all__ = [
    "serial",
    "parallel",
    "FanOut",
    "FanInSum",
    "Dense",
    "Conv",
    "AvgPool",
    "GlobalAvgPool",
    "Flatten",
    "Relu",
    "LeakyRelu",
    "ABRelu",
    "Erf",
    "Gelu",
    "Elementwise",
    "LayerNorm",
    "DenseNetworkKernel",
]
