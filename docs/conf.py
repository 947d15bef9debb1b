"""Sphinx configuration for gpkern's documentation."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("KEOPS_VERBOSE", "0")
os.environ.setdefault("PYKEOPS_VERBOSE", "0")

import gpkern  # noqa: E402

project = "gpkern"
author = "gpkern developers"
copyright = "2026, gpkern developers"
version = release = gpkern.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.mathjax",
    "sphinx.ext.intersphinx",
    "sphinx.ext.viewcode",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
]

# scikit-learn generates set_*_request methods whose docstrings cite its own glossary.
autodoc_default_options = {
    "members": True,
    "show-inheritance": False,
    "exclude-members": "set_fit_request, set_predict_request, set_score_request, "
    "set_output, set_transform_request, set_partial_fit_request",
}
autodoc_typehints = "none"
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False
nitpicky = False

intersphinx_mapping = {}  # no network at build time

templates_path = ["_templates"]
exclude_patterns = ["_build", "auto_examples/*.ipynb", "auto_examples/*.py", "auto_examples/*.zip"]
html_theme = "pydata_sphinx_theme"
html_title = f"gpkern {release}"
html_static_path = ["_static"]
html_theme_options = {"navigation_with_keys": False}

# Examples whose file name starts with plot_ are executed (they must be fast); the others are
# rendered as code. GPKERN_DOCS_NO_GALLERY=1 renders without executing anything (quick checks).
sphinx_gallery_conf = {
    "examples_dirs": str(ROOT / "examples"),
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "plot_gallery": "False" if os.environ.get("GPKERN_DOCS_NO_GALLERY") else "True",
    "download_all_examples": False,
    "remove_config_comments": True,
    "within_subsection_order": "FileNameSortKey",
}
