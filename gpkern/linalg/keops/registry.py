r"""The registry: which :class:`~gpkern.linalg.keops.formula.KernelFormula` a kernel becomes.

Every kernel module registers its own formula next to its class::

    from gpkern.linalg.keops.registry import register_formula

    @register_formula(MyKernel)
    def _my_formula(kernel, d):  # d: input dimension, or None when unknown
        return MyFormula(kernel)

Lookup walks the kernel's method resolution order, so a subclass inherits its parent's formula
unless registered with ``inherit=False`` (GPyTorch's ``RBFKernelGrad`` subclasses ``RBFKernel``
but is not the RBF kernel). Nothing here imports pykeops or the kernel modules: a kernel is
registered once its module is imported, which happens before any instance exists. GPyTorch's
own kernels are registered at the bottom of this module.
"""

from __future__ import annotations

from collections.abc import Callable

import gpytorch
import torch

from gpkern.linalg.keops.formula import (
    KernelFormula,
    _ActiveDims,
    _Combine,
    _Linear,
    _Periodic,
    _Scale,
    _SpectralMixture,
    _Stationary,
)

__all__ = [
    "kernel_formula",
    "operator_formula",
    "register_formula",
    "register_input_map",
    "register_layer",
]

FormulaBuilder = Callable[[gpytorch.kernels.Kernel, "int | None"], KernelFormula]
InputMapSplit = Callable[
    [gpytorch.kernels.Kernel],
    "tuple[Callable[[torch.Tensor], torch.Tensor], gpytorch.kernels.Kernel | None]",
]

_FORMULAS: dict[type, tuple[FormulaBuilder, bool]] = {}
_INPUT_MAPS: dict[type, InputMapSplit] = {}
_LAYERS: dict[type, Callable[[object, dict], tuple]] = {}


def _check_class(cls: type, base: type | None = None) -> None:
    if not isinstance(cls, type) or (base is not None and not issubclass(cls, base)):
        expected = "a class" if base is None else f"a subclass of {base.__module__}.{base.__name__}"
        raise TypeError(f"register expects {expected}, got {cls!r}.")


def register_formula(
    kernel_class: type, builder: FormulaBuilder | None = None, *, inherit: bool = True
):
    r"""Register the KeOps formula of ``kernel_class`` (a function or a decorator).

    Parameters
    ----------
    kernel_class : type
        A ``gpytorch.kernels.Kernel`` subclass.
    builder : callable ``(kernel, d) -> KernelFormula``, optional
        Builds the formula of one kernel instance; ``d`` is the input dimension seen by the
        kernel (after ``active_dims``), or None when unknown. It may raise ``TypeError`` for
        instances without a formula (e.g. an unsupported Matérn :math:`\nu`). Omit it to use
        ``register_formula(kernel_class)`` as a decorator.
    inherit : bool, default=True
        Whether subclasses of ``kernel_class`` use the same builder.

    Returns
    -------
    builder, or a decorator that registers and returns it

    Examples
    --------
    >>> import gpytorch
    >>> from gpkern.linalg.keops import kernel_formula
    >>> from gpkern.linalg.keops.formula import _Stationary
    >>> class MyRBF(gpytorch.kernels.RBFKernel):
    ...     pass
    >>> _ = register_formula(MyRBF, lambda kernel, d: _Stationary(kernel, "rbf", d))
    >>> type(kernel_formula(MyRBF())).__name__
    '_Stationary'
    """
    _check_class(kernel_class, gpytorch.kernels.Kernel)
    if builder is None:

        def decorator(fn: FormulaBuilder) -> FormulaBuilder:
            return register_formula(kernel_class, fn, inherit=inherit)

        return decorator
    _FORMULAS[kernel_class] = (builder, bool(inherit))
    return builder


def register_input_map(kernel_class: type, split: InputMapSplit) -> InputMapSplit:
    r"""Register a kernel :math:`k(x, x') = k_0(h(x), h(x'))` whose map :math:`h` runs in torch.

    ``split(kernel)`` returns ``(h, k_0)``: the map ``(n, d) -> (n, p)`` (applied to the
    ``active_dims`` of ``kernel``) and the base kernel (None: the dot product of features). Such
    a kernel has a KeOps path only as the outermost kernel (:func:`operator_formula`).
    """
    _check_class(kernel_class, gpytorch.kernels.Kernel)
    _INPUT_MAPS[kernel_class] = split
    return split


def register_layer(layer_class: type, translate: Callable[[object, dict], tuple]):
    """Register how an NNGP layer class becomes a layer tuple of
    :func:`~gpkern.linalg.keops.network.dense_network`.

    ``translate(layer, stds)`` returns the tuple; ``stds`` is this layer's ``{"W_std", "b_std"}``
    override if it is a dense layer (possibly empty), otherwise to be ignored. Subclasses
    inherit the translation.
    """
    _check_class(layer_class)
    _LAYERS[layer_class] = translate
    return translate


def _lookup(table: dict, obj) -> object | None:
    for cls in type(obj).__mro__:
        if cls in table:
            return table[cls]
    return None


def _formula_builder(kernel) -> FormulaBuilder | None:
    for cls in type(kernel).__mro__:
        entry = _FORMULAS.get(cls)
        if entry is not None and (entry[1] or cls is type(kernel)):
            return entry[0]
    return None


def layer_translation(layer) -> Callable[[object, dict], tuple] | None:
    """The registered translation of ``layer``'s class (or of a parent class), or None."""
    return _lookup(_LAYERS, layer)


def registered_layers() -> list[str]:
    """Names of the NNGP layer classes with a registered translation (for messages)."""
    return sorted(cls.__name__ for cls in _LAYERS)


def has_input_map(kernel: gpytorch.kernels.Kernel) -> bool:
    """Whether ``kernel`` registered an input map (:func:`register_input_map`)."""
    return _lookup(_INPUT_MAPS, kernel) is not None


def kernel_formula(kernel: gpytorch.kernels.Kernel, n_features: int | None = None) -> KernelFormula:
    """Translate a GPyTorch kernel into a :class:`KernelFormula` through the registry.

    Registered here: ``RBFKernel``, ``MaternKernel`` (nu 1/2, 3/2, 5/2), ``RQKernel``,
    ``PeriodicKernel``, ``SpectralMixtureKernel``, ``LinearKernel``, ``ScaleKernel``, sums and
    products (``AdditiveKernel``, ``ProductKernel``, ``k1 + k2``, ``k1 * k2``); gpkern's kernel
    modules register their own (spectral, GSMP, NNGP, dense-network kernels). ``active_dims`` are
    honoured; hyperparameters must not be batched.

    Parameters
    ----------
    kernel : gpytorch.kernels.Kernel
    n_features : int, optional
        Input dimension. When given, stationary kernels scale the inputs once per point instead
        of once per pair (faster reductions); the formula then expects inputs of this width.

    Raises
    ------
    TypeError
        If a part of the kernel has no KeOps formula (register one with
        :func:`register_formula`, or use ``backend="dense"``) or has batched hyperparameters.
    """
    d = n_features if kernel.active_dims is None else len(kernel.active_dims)
    formula = _node(kernel, d)
    return (
        formula if kernel.active_dims is None else _ActiveDims(formula, kernel.active_dims.tolist())
    )


def _node(kernel: gpytorch.kernels.Kernel, d: int | None = None) -> KernelFormula:
    if len(kernel.batch_shape) > 0:
        raise TypeError(
            f"{type(kernel).__name__} has batch_shape {tuple(kernel.batch_shape)}; the KeOps backend "
            "supports non-batched kernels only (use backend='dense')."
        )
    builder = _formula_builder(kernel)
    if builder is not None:
        return builder(kernel, d)
    if has_input_map(kernel):
        raise TypeError(
            f"a {type(kernel).__name__} has a KeOps path only as the outermost kernel (its map "
            "runs before the reduction): put ScaleKernel, sums and products into its base_kernel."
        )
    raise TypeError(
        f"{type(kernel).__name__} has no KeOps formula: register one with "
        "gpkern.linalg.keops.register_formula, or use backend='dense'. Registered: "
        f"{', '.join(sorted(cls.__name__ for cls in _FORMULAS))}."
    )


def operator_formula(
    kernel: gpytorch.kernels.Kernel, n_features: int | None = None
) -> tuple[Callable[[torch.Tensor], torch.Tensor] | None, KernelFormula]:
    r"""The input map and the formula that :func:`~gpkern.linalg.keops.operator.kernel_operator` uses.

    A kernel with a registered input map (:func:`register_input_map`, e.g.
    :class:`gpkern.kernels.FeatureMapKernel`, :math:`k(x, x') = k_0(h(x), h(x'))`) cannot be a
    KeOps formula (its network is arbitrary torch code), but its base kernel :math:`k_0` can: the
    network maps the :math:`n` inputs to features once (:math:`O(np)` memory) and the reduction
    runs on the features, with gradients flowing back into the network through the operands. A
    base kernel of None is the dot product :math:`h(x)^\top h(x')`.

    Parameters
    ----------
    kernel : gpytorch.kernels.Kernel
    n_features : int, optional
        Input dimension, passed to :func:`kernel_formula` (not to a feature map's base kernel,
        whose input is the network's output).

    Returns
    -------
    input_map : callable or None
        ``(n, d) -> (n, p)``, None when the formula acts on the inputs themselves.
    formula : KernelFormula

    Raises
    ------
    TypeError
        As :func:`kernel_formula`.
    """
    split = _lookup(_INPUT_MAPS, kernel)
    if split is None:
        return None, kernel_formula(kernel, n_features)
    features, base = split(kernel)
    formula = _Linear(None) if base is None else kernel_formula(base)
    dims = kernel.active_dims

    def input_map(x: torch.Tensor) -> torch.Tensor:  # (n, d) -> (n, p)
        return features(x if dims is None else x[..., dims])

    return input_map, formula


# -----------------------------------------------------------------------------------------------
# GPyTorch's kernels (not ours, so registered here).
# -----------------------------------------------------------------------------------------------
def _matern(kernel: gpytorch.kernels.MaternKernel, d: int | None) -> KernelFormula:
    if float(kernel.nu) not in (0.5, 1.5, 2.5):
        raise TypeError(f"MaternKernel nu={kernel.nu} has no KeOps formula.")
    return _Stationary(kernel, "matern", d)


# RBF, Matérn and RQ by exact class: GPyTorch's derivative kernels subclass them.
register_formula(gpytorch.kernels.RBFKernel, lambda k, d: _Stationary(k, "rbf", d), inherit=False)
register_formula(gpytorch.kernels.MaternKernel, _matern, inherit=False)
register_formula(gpytorch.kernels.RQKernel, lambda k, d: _Stationary(k, "rq", d), inherit=False)
register_formula(gpytorch.kernels.PeriodicKernel, lambda k, d: _Periodic(k, d))
register_formula(gpytorch.kernels.SpectralMixtureKernel, lambda k, d: _SpectralMixture(k))
register_formula(gpytorch.kernels.LinearKernel, lambda k, d: _Linear(k))
register_formula(
    gpytorch.kernels.ScaleKernel, lambda k, d: _Scale(k, kernel_formula(k.base_kernel, d))
)
register_formula(
    gpytorch.kernels.AdditiveKernel,
    lambda k, d: _Combine([kernel_formula(c, d) for c in k.kernels], "sum"),
)
register_formula(
    gpytorch.kernels.ProductKernel,
    lambda k, d: _Combine([kernel_formula(c, d) for c in k.kernels], "product"),
)
