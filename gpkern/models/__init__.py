"""Probabilistic models on torch tensors (no numpy, no scikit-learn).

Every public name of the submodules is reachable from here (imported on first use).
"""

from gpkern._lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "classification": ("SparseScaleMixtureClassifier", "inverse_gamma_kl"),
        "dkm": (
            "DKM",
            "NNGPGramKernel",
            "SparseDKM",
            "gaussian_kl",
            "relu_gram_map",
            "se_gram_map",
        ),
        "exact": ("ExactGP", "ExactPosterior", "GaussianNoise", "gaussian_log_density", "kernel_matrix"),
        "grid": ("AxisSplit", "GridGP", "GridPosterior", "ProductAxisKernel", "split_axis_kernels"),
        "iterative": ("IterativeGP", "IterativePosterior", "IterativeSettings"),
        "multiple_kernel": ("SCAResult", "lmk_objective", "sca_fit", "surrogate_minimize"),
        "pde": (
            "SPECTRA",
            "GridCollocation",
            "SpectralGridPrior",
            "lag_vectors",
            "toeplitz_derivatives",
            "uniform_grid",
        ),
        "scale_mixture": (
            "Burr12",
            "InverseGammaScale",
            "ScaleMixtureGP",
            "ScaleMixturePosterior",
            "StudentTProcess",
            "WeightedScale",
            "make_scale_prior",
            "multivariate_t_log_likelihood",
            "student_t_log_density",
            "student_t_variance",
        ),
        "sparse": ("SparseGP", "SparsePosterior", "collapsed_bound"),
        "training": (
            "BoundHit",
            "OptimizeResult",
            "minimize",
            "minimize_with_restarts",
            "optimize",
            "parameters_at_bounds",
            "perturb_hyperparameters",
            "warn_at_bounds",
            "warn_if_unconverged",
        ),
    },
)
