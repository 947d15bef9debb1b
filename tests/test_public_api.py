"""gpkern.linalg and gpkern.models re-export every public name of their submodules."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

# Submodules whose names are reached through their own package, not re-exported one level up.
_NOT_REEXPORTED = {"gpkern.linalg.keops"}


@pytest.mark.parametrize("package", ["gpkern.linalg", "gpkern.models"])
def test_package_reexports_every_public_name_of_its_submodules(package):
    pkg = importlib.import_module(package)
    for info in pkgutil.iter_modules(pkg.__path__):
        name = f"{package}.{info.name}"
        if name in _NOT_REEXPORTED:
            continue
        module = importlib.import_module(name)
        missing = [n for n in getattr(module, "__all__", ()) if n not in pkg.__all__]
        internal = {"NOISE_FLOOR_HINT"}  # a message shared by sibling modules only
        assert not set(missing) - internal, f"{name} names {missing} not re-exported by {package}"
    for n in pkg.__all__:
        assert getattr(pkg, n) is not None


def test_keops_names_reexported_from_linalg():
    import gpkern.linalg as linalg
    from gpkern.linalg.keops import kernel_operator

    assert linalg.kernel_operator is kernel_operator
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        linalg.not_a_name  # noqa: B018
