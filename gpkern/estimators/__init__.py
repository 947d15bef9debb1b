"""scikit-learn estimators: validate input, call a model from :mod:`gpkern.models`, store results."""

from gpkern.estimators.gp_regressor import GPRegressor

__all__ = ["GPRegressor"]
from gpkern.estimators.scale_mixture import (  # noqa: E402
    ScaleMixtureClassifier,
    ScaleMixtureRegressor,
    StudentTProcessRegressor,
)

__all__ += ["StudentTProcessRegressor", "ScaleMixtureRegressor", "ScaleMixtureClassifier"]
