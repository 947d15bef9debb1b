"""Random designs for least squares and kernel methods: optimal i.i.d. sampling, projection DPPs,
k-DPPs and volume-rescaled sampling, with weighted least squares on orthonormal bases."""

from gpkern.sampling.bases import (
    Basis,
    CallableBasis,
    LegendreBasis,
    ProductBasis,
    TrigonometricBasis,
)
from gpkern.sampling.christoffel import (
    inverse_christoffel,
    optimal_density,
    optimal_weights,
    sample_optimal,
)
from gpkern.sampling.dpp import sample_finite_projection_dpp, sample_kdpp, sample_projection_dpp
from gpkern.sampling.generator import as_generator
from gpkern.sampling.inducing import (
    INDUCING_METHODS,
    InducingPoints,
    select_inducing,
)
from gpkern.sampling.least_squares import (
    WeightedLeastSquaresResult,
    gram_deviation,
    weighted_gram,
    weighted_least_squares,
)
from gpkern.sampling.volume import sample_repeated_dpp, sample_volume_rescaled

__all__ = [
    "Basis",
    "INDUCING_METHODS",
    "InducingPoints",
    "CallableBasis",
    "LegendreBasis",
    "ProductBasis",
    "TrigonometricBasis",
    "WeightedLeastSquaresResult",
    "as_generator",
    "gram_deviation",
    "inverse_christoffel",
    "optimal_density",
    "optimal_weights",
    "sample_finite_projection_dpp",
    "sample_kdpp",
    "sample_optimal",
    "sample_projection_dpp",
    "sample_repeated_dpp",
    "sample_volume_rescaled",
    "select_inducing",
    "weighted_gram",
    "weighted_least_squares",
]
