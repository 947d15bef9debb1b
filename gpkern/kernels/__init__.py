"""GPyTorch kernels: they compose with ``+``, ``*``, ``ScaleKernel`` and drop into GPyTorch models."""

from gpkern.kernels.feature_map import FeatureMapKernel
from gpkern.kernels.gsmp import GSMPKernel
from gpkern.kernels.multiple import LinearMultipleKernel
from gpkern.kernels.nngp.kernel import NNGPKernel
from gpkern.kernels.random_features import RandomFeatureKernel
from gpkern.kernels.spectral import GaussianSpectralMixtureKernel, StudentTSpectralMixtureKernel

__all__ = [
    "FeatureMapKernel",
    "GSMPKernel",
    "GaussianSpectralMixtureKernel",
    "LinearMultipleKernel",
    "NNGPKernel",
    "RandomFeatureKernel",
    "StudentTSpectralMixtureKernel",
]
