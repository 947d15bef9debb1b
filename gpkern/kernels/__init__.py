"""GPyTorch kernels: they compose with ``+``, ``*``, ``ScaleKernel`` and drop into GPyTorch models."""

__all__: list[str] = []

from gpkern.kernels.nngp.kernel import NNGPKernel  # noqa: E402

__all__ += ["NNGPKernel"]
