"""GPyTorch kernels: they compose with ``+``, ``*``, ``ScaleKernel`` and drop into GPyTorch models."""

__all__: list[str] = []
