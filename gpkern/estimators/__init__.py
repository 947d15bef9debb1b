"""scikit-learn estimators: validate input, call a model from :mod:`gpkern.models`, store results."""

from gpkern.estimators.dkm import DKMClassifier, DKMRegressor
from gpkern.estimators.gp_regressor import GPRegressor
from gpkern.estimators.grid_gp import GridGPRegressor
from gpkern.estimators.kernel_classifier import KernelClassifier
from gpkern.estimators.least_squares import WeightedLeastSquaresRegressor
from gpkern.estimators.multiple_kernel import MultipleKernelRegressor
from gpkern.estimators.nystroem import NystroemFeatures
from gpkern.estimators.scale_mixture import (
    ScaleMixtureClassifier,
    ScaleMixtureRegressor,
    StudentTProcessRegressor,
)
from gpkern.estimators.sparse_gp import SparseGPRegressor

__all__ = [
    "DKMClassifier",
    "DKMRegressor",
    "GPRegressor",
    "GridGPRegressor",
    "KernelClassifier",
    "MultipleKernelRegressor",
    "NystroemFeatures",
    "ScaleMixtureClassifier",
    "ScaleMixtureRegressor",
    "SparseGPRegressor",
    "StudentTProcessRegressor",
    "WeightedLeastSquaresRegressor",
]
