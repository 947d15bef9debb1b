"""Write the intersphinx inventories shipped in docs/_intersphinx/ (the docs build is offline).

The projects' own ``objects.inv`` files cannot be fetched at build time, so this script writes
small inventories for the objects gpkern's documentation refers to, with the URLs of their
public documentation. Each object is also registered under the dotted path where it is defined
(``gpkern`` base classes render as ``gpytorch.kernels.kernel.Kernel`` in "Bases:" lines).

Run ``python scripts/make_intersphinx_inventories.py`` after adding a reference to an external
object that the docs should link, and commit the changed ``.inv`` files.
"""

from __future__ import annotations

import importlib
import zlib
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "docs" / "_intersphinx"

# project -> (base URL, {object: (role, relative URL)}). "$" in a URL stands for the name.
GENERATED = "generated/$.html#$"
SKLEARN = "modules/generated/$.html#$"
INVENTORIES = {
    "torch": (
        "https://docs.pytorch.org/docs/stable/",
        {
            "torch.Tensor": ("class", "tensors.html#$"),
            "torch.Tensor.reshape": ("method", GENERATED),
            "torch.Generator": ("class", GENERATED),
            "torch.device": ("class", "tensor_attributes.html#$"),
            "torch.dtype": ("class", "tensor_attributes.html#$"),
            "torch.nn.Module": ("class", GENERATED),
            "torch.nn.Linear": ("class", GENERATED),
            "torch.nn.Sequential": ("class", GENERATED),
            "torch.optim.LBFGS": ("class", GENERATED),
            "torch.optim.Adam": ("class", GENERATED),
            "torch.tensor_split": ("function", GENERATED),
            "torch.cholesky_solve": ("function", GENERATED),
            "torch.linalg.solve": ("function", GENERATED),
            "torch.linalg.cholesky": ("function", GENERATED),
            "torch.linalg.eigh": ("function", GENERATED),
            "torch.autograd.gradcheck": ("function", "autograd.html"),
            "torch.distributions.kl_divergence": (
                "function",
                "distributions.html#torch.distributions.kl.kl_divergence",
            ),
        },
    ),
    "gpytorch": (
        "https://docs.gpytorch.ai/en/stable/",
        {
            "gpytorch.Module": ("class", "module.html#$"),
            **{
                f"gpytorch.kernels.{name}": ("class", "kernels.html#$")
                for name in (
                    "Kernel",
                    "ScaleKernel",
                    "RBFKernel",
                    "MaternKernel",
                    "PeriodicKernel",
                    "LinearKernel",
                    "RQKernel",
                    "SpectralMixtureKernel",
                    "AdditiveKernel",
                    "ProductKernel",
                )
            },
            "gpytorch.likelihoods.GaussianLikelihood": ("class", "likelihoods.html#$"),
            "gpytorch.models.ExactGP": ("class", "models.html#$"),
            "gpytorch.constraints.Positive": ("class", "constraints.html#$"),
            "gpytorch.constraints.Interval": ("class", "constraints.html#$"),
            "gpytorch.constraints.GreaterThan": ("class", "constraints.html#$"),
        },
    ),
    "linear_operator": (
        "https://linear-operator.readthedocs.io/en/stable/",
        {
            "linear_operator.LinearOperator": ("class", "linear_operator.html#$"),
            "linear_operator.operators.KroneckerProductLinearOperator": (
                "class",
                "composition_decoration_operators.html#$",
            ),
        },
    ),
    "sklearn": (
        "https://scikit-learn.org/stable/",
        {
            **{
                name: ("class", SKLEARN)
                for name in (
                    "sklearn.base.BaseEstimator",
                    "sklearn.base.RegressorMixin",
                    "sklearn.base.ClassifierMixin",
                    "sklearn.exceptions.ConvergenceWarning",
                    "sklearn.gaussian_process.GaussianProcessRegressor",
                    "sklearn.gaussian_process.GaussianProcessClassifier",
                    "sklearn.model_selection.GridSearchCV",
                    "sklearn.pipeline.Pipeline",
                    "sklearn.preprocessing.StandardScaler",
                )
            },
            **{
                name: ("function", SKLEARN)
                for name in (
                    "sklearn.model_selection.cross_val_score",
                    "sklearn.model_selection.train_test_split",
                    "sklearn.base.clone",
                )
            },
            # Labels cited by the docstrings of the methods gpkern's estimators inherit.
            "r2_score": ("std:label", "modules/model_evaluation.html#r2-score"),
            "accuracy_score": ("std:label", "modules/model_evaluation.html#accuracy-score"),
        },
    ),
    "numpy": (
        "https://numpy.org/doc/stable/",
        {
            "numpy.ndarray": ("class", "reference/generated/$.html#$"),
            "numpy.random.Generator": ("class", "reference/random/generator.html#$"),
            "numpy.random.RandomState": ("class", "reference/random/legacy.html#$"),
        },
    ),
    "python": (
        "https://docs.python.org/3/",
        {
            **{
                name: ("exception", "library/exceptions.html#$")
                for name in (
                    "Exception",
                    "Warning",
                    "UserWarning",
                    "RuntimeWarning",
                    "RuntimeError",
                    "ValueError",
                    "TypeError",
                    "FloatingPointError",
                    "ArithmeticError",
                )
            },
            **{
                name: ("class", "library/functions.html#$")
                for name in ("float", "int", "bool", "str", "tuple", "list", "dict", "object")
            },
            "typing.NamedTuple": ("class", "library/typing.html#$"),
            "enum.Enum": ("class", "library/enum.html#$"),
        },
    ),
}


def defining_path(name: str) -> str | None:
    """The ``module.qualname`` under which Python defines the named object, if it differs."""
    module_name, _, attr = name.rpartition(".")
    if not module_name:
        return None
    try:
        value = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError):
        return None
    module, qualname = getattr(value, "__module__", None), getattr(value, "__qualname__", None)
    if not module or not qualname or f"{module}.{qualname}" == name:
        return None
    return f"{module}.{qualname}"


def inventory(project: str, objects: dict[str, tuple[str, str]]) -> bytes:
    lines = []
    for name, (role, url) in sorted(objects.items()):
        uri = url.replace("$", name)
        if ":" in role:
            lines.append(f"{name} {role} -1 {uri} {name.replace('_', ' ')}")
            continue
        lines.append(f"{name} py:{role} 1 {uri} -")
        alias = defining_path(name)
        if alias and alias not in objects:
            lines.append(f"{alias} py:{role} 1 {uri} {name}")
    header = (
        "# Sphinx inventory version 2\n"
        f"# Project: {project}\n"
        "# Version: stable\n"
        "# The remainder of this file is compressed using zlib.\n"
    )
    return header.encode() + zlib.compress(("\n".join(sorted(lines)) + "\n").encode())


def main() -> None:
    OUT.mkdir(exist_ok=True)
    for project, (_, objects) in INVENTORIES.items():
        (OUT / f"{project}.inv").write_bytes(inventory(project, objects))


if __name__ == "__main__":
    main()
