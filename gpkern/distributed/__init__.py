"""Gaussian processes on ``torch.distributed``: one code path from one process to many.

* :mod:`~gpkern.distributed.group` sets up the process group (``torchrun`` environment, timeouts,
  device per rank), checks that ranks agree on their inputs and turns a dead rank into an error.
* :mod:`~gpkern.distributed.partition`, :mod:`~gpkern.distributed.operator` and
  :mod:`~gpkern.distributed.model`: exact GPs with the training rows partitioned across ranks
  (``GPRegressor(backend="distributed")``); :mod:`~gpkern.distributed.gp` is its command line.
* :mod:`~gpkern.distributed.slimkl`: SLIM-KL, consensus ADMM for linear multiple kernels.
"""
