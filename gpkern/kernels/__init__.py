"""GPyTorch kernels: they compose with ``+``, ``*``, ``ScaleKernel`` and drop into GPyTorch models."""

__all__: list[str] = []
from gpkern.kernels.spectral import GaussianSpectralMixtureKernel, StudentTSpectralMixtureKernel  # noqa: E402

__all__ += ["GaussianSpectralMixtureKernel", "StudentTSpectralMixtureKernel"]
