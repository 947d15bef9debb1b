"""scikit-learn estimators: validate input, call a model from :mod:`gpkern.models`, store results."""

from gpkern.estimators.gp_regressor import GPRegressor

__all__ = ["GPRegressor"]

from gpkern.estimators.multiple_kernel import MultipleKernelRegressor  # noqa: E402

__all__ += ["MultipleKernelRegressor"]
