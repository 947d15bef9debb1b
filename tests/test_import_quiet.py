"""Importing gpkern prints nothing, in any order with gpytorch and pykeops.

pykeops prints a banner on import (no CUDA, ...); gpytorch imports pykeops, so ``import
gpytorch`` alone prints it before gpkern can act. What gpkern owes: it adds nothing to what the
packages imported before it printed, and imported first it keeps them quiet.
"""

import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import gpkern

ROOT = Path(__file__).resolve().parents[1]
SUBMODULES = sorted(
    m.name for m in pkgutil.walk_packages(gpkern.__path__, "gpkern.") if m.name != "gpkern.__main__"
)
IMPORT_ALL = f"import importlib\nfor m in {SUBMODULES!r}:\n    importlib.import_module(m)\n"


def _output(code: str) -> tuple[str, str]:
    env = {k: v for k, v in os.environ.items() if "KEOPS_VERBOSE" not in k}  # CI may set it
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300
    )
    assert run.returncode == 0, run.stderr
    return run.stdout, run.stderr


def test_submodules_are_found():
    assert "gpkern.estimators.gp_regressor" in SUBMODULES and "gpkern.linalg.cholesky" in SUBMODULES


def test_gpkern_first_prints_nothing():
    assert _output("import gpkern\n" + IMPORT_ALL + "import gpytorch, pykeops\n") == ("", "")


def test_gpkern_after_gpytorch_adds_nothing():
    # gpytorch imports pykeops first thing: ``import pykeops`` alone prints the same banner.
    alone = _output("import pykeops\n")
    assert _output("import gpytorch\nimport gpkern\n" + IMPORT_ALL) == alone
