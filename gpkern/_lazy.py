"""Lazy re-exports for package ``__init__`` modules (PEP 562).

A package lists its public names once, each with the submodule that defines it; the submodule is
imported on first access, so ``import gpkern.models`` stays cheap and cannot create import
cycles between sibling modules.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping


def lazy_exports(
    package: str, exports: Mapping[str, tuple[str, ...]]
) -> tuple[list[str], Callable[[str], object], Callable[[], list[str]]]:
    """``__all__``, ``__getattr__`` and ``__dir__`` for ``package``.

    Parameters
    ----------
    package : str
        The package's ``__name__``.
    exports : mapping of str to tuple of str
        Submodule (relative to ``package``) to the public names it defines.

    Examples
    --------
    >>> all_, getattr_, dir_ = lazy_exports("gpkern.linalg", {"cholesky": ("robust_cholesky",)})
    >>> all_, getattr_("robust_cholesky").__name__
    (['robust_cholesky'], 'robust_cholesky')
    """
    where = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str) -> object:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{where[name]}"), name)

    def __dir__() -> list[str]:
        return sorted(where)

    return sorted(where), __getattr__, __dir__
