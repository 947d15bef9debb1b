"""Linear algebra: the dense twin (Cholesky) and the structured backends.

Every public name of the submodules is reachable from here (imported on first use).
"""

from gpkern._lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "cg": ("CGResult", "StochasticLogdet", "pcg", "slq_logdet", "stochastic_logdet"),
        "cholesky": (
            "cholesky_logdet",
            "cholesky_solve",
            "gaussian_log_likelihood",
            "mvn_log_likelihood",
            "quadratic_form_and_logdet",
            "robust_cholesky",
        ),
        "dispatch": (
            "DENSE_MAX_N",
            "GridFallbackWarning",
            "KeOpsFallbackWarning",
            "NoKeOpsFormulaWarning",
            "choose_backend",
            "choose_grid_backend",
            "keops_available",
            "warn_fallback",
        ),
        "heap": ("trim_heap",),
        "keops": (
            "KeOpsRuntime",
            "KernelOperator",
            "kernel_formula",
            "kernel_operator",
            "register_formula",
        ),
        "kronecker": (
            "KroneckerAddedDiagOperator",
            "KroneckerOperator",
            "KroneckerSumOperator",
            "RestrictedKronecker",
            "apply_along_mode",
            "kron_dense",
            "kron_diag_solve_logdet",
            "kron_eigh",
            "kron_eigvals",
            "kron_matmul",
            "kron_rotate",
            "kron_solve_logdet",
            "kron_sum_inverse",
            "kron_sum_solve",
            "rowwise_kron_columns",
            "rowwise_kron_matmul",
        ),
        "low_rank": ("LowRankPosterior", "woodbury_log_likelihood"),
        "rpcholesky": ("factor_gram", "factor_matmul", "factor_t_matmul", "rp_cholesky"),
        "toeplitz": (
            "toeplitz_dense",
            "toeplitz_lag_grad",
            "toeplitz_logdet",
            "toeplitz_matmul",
            "toeplitz_solve",
        ),
    },
)
