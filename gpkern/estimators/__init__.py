"""scikit-learn estimators: validate input, call a model from :mod:`gpkern.models`, store results."""

from gpkern.estimators.gp_regressor import GPRegressor

__all__ = ["GPRegressor"]
from gpkern.estimators.dkm import DKMClassifier, DKMRegressor  # noqa: E402

__all__ += ["DKMRegressor", "DKMClassifier"]
