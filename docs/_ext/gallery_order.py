"""Order of the gallery: the user guide's order, basic to advanced; unlisted examples follow."""

from __future__ import annotations

EXAMPLES = (
    "plot_gp_regression.py",
    "plot_student_t_process.py",
    "plot_scale_mixture_ood.py",
    "plot_nngp_regression_classification.py",
    "plot_nngp_infinite_depth_regimes.py",
    "plot_nngp_hierarchical_learning_curve.py",
    "plot_dkm_grams.py",
    "plot_lmk_co2.py",
    "plot_grid_inpainting.py",
    "plot_pde_poisson_1d.py",
    "plot_pde_poisson_2d.py",
    "plot_deep_kernel_features.py",
    "plot_dpp_sampling.py",
    "plot_keops_exact_gp.py",
    "plot_distributed_gp.py",
)


def example_order(filename: str) -> tuple[int, str]:
    """Sort key for sphinx-gallery's ``within_subsection_order``."""
    rank = EXAMPLES.index(filename) if filename in EXAMPLES else len(EXAMPLES)
    return rank, filename
