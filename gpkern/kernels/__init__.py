"""GPyTorch kernels: they compose with ``+``, ``*``, ``ScaleKernel`` and drop into GPyTorch models."""

from gpkern.kernels.feature_map import FeatureMapKernel
from gpkern.kernels.random_features import RandomFeatureKernel

__all__: list[str] = []
__all__ += ["FeatureMapKernel", "RandomFeatureKernel"]
