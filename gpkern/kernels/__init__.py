"""GPyTorch kernels: they compose with ``+``, ``*``, ``ScaleKernel`` and drop into GPyTorch models."""

from gpkern.kernels.feature_map import FeatureMapKernel
from gpkern.kernels.random_features import RandomFeatureKernel

__all__: list[str] = []
__all__ += ["FeatureMapKernel", "RandomFeatureKernel"]

from gpkern.kernels.gsmp import GSMPKernel  # noqa: E402
from gpkern.kernels.multiple import LinearMultipleKernel  # noqa: E402

__all__ += ["GSMPKernel", "LinearMultipleKernel"]
