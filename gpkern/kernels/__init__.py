"""GPyTorch kernels: they compose with ``+``, ``*``, ``ScaleKernel`` and drop into GPyTorch models."""

__all__: list[str] = []

from gpkern.kernels.gsmp import GSMPKernel  # noqa: E402
from gpkern.kernels.multiple import LinearMultipleKernel  # noqa: E402

__all__ += ["GSMPKernel", "LinearMultipleKernel"]
