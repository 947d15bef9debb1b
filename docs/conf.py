"""Sphinx configuration for gpkern's documentation."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "docs" / "_ext"))
sys.path.insert(0, str(ROOT / "scripts"))
os.environ.setdefault("KEOPS_VERBOSE", "0")
os.environ.setdefault("PYKEOPS_VERBOSE", "0")
os.environ.setdefault("MPLBACKEND", "Agg")

from make_intersphinx_inventories import INVENTORIES  # noqa: E402

import gpkern  # noqa: E402

project = "gpkern"
author = "gpkern developers"
copyright = "2026, gpkern developers"
version = release = gpkern.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "sphinx.ext.intersphinx",
    "sphinx.ext.viewcode",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
    "matplotlib.sphinxext.plot_directive",
    "api_pages",
    "benchmark_pages",
]
# MyST renders the benchmark reports (Markdown); without it they are shown as plain text.
if importlib.util.find_spec("myst_parser"):
    extensions.append("myst_parser")

# The API pages are written by docs/_ext/api_pages.py; autosummary only renders their tables.
autosummary_generate = False
autodoc_default_options = {"show-inheritance": False}
autodoc_typehints = "none"
autodoc_member_order = "groupwise"
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

# A reference to a gpkern object that does not exist is an error; other projects' objects link
# when the shipped inventories know them and render as code otherwise.
nitpicky = True
nitpick_ignore_regex = [(r"py:.*", r"(?!gpkern\b).*")]

# No network at build time: the inventories are shipped (scripts/make_intersphinx_inventories.py).
intersphinx_mapping = {
    project_name: (url, str(ROOT / "docs" / "_intersphinx" / f"{project_name}.inv"))
    for project_name, (url, _) in INVENTORIES.items()
}

# MathJax is served with the site, so formulas render offline.
mathjax_path = "mathjax/tex-svg-full.js"

# Benchmark reports are Markdown files in benchmarks/results/.
myst_enable_extensions = ["dollarmath"]
myst_heading_anchors = 3
suppress_warnings = ["myst.header"]

templates_path = ["_templates"]
exclude_patterns = [
    "_build",
    "auto_examples/*.ipynb",
    "auto_examples/*.py",
    "auto_examples/*.zip",
    "api/modules/*.inc",
]
html_theme = "pydata_sphinx_theme"
html_title = f"gpkern {release}"
html_static_path = ["_static"]
html_css_files = ["gpkern.css"]
toc_object_entries_show_parents = "hide"
html_theme_options = {
    "navigation_with_keys": False,
    "header_links_before_dropdown": 6,
    "show_toc_level": 2,
    "navbar_align": "left",
    "secondary_sidebar_items": ["page-toc"],
}
html_sidebars = {"index": []}

# The landing page and the getting-started page run their snippets and show the figure.
plot_include_source = True
plot_html_show_source_link = False
plot_html_show_formats = False
plot_formats = [("png", 100)]
plot_rcparams = {"figure.figsize": (7.0, 3.2), "figure.dpi": 100}

# Examples whose file name starts with plot_ are executed (they must be fast); the others are
# rendered as code with a committed thumbnail (docs/_static/thumbnails/). GPKERN_DOCS_NO_GALLERY=1
# renders without executing anything (quick checks).
sphinx_gallery_conf = {
    "examples_dirs": str(ROOT / "examples"),
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "plot_gallery": "False" if os.environ.get("GPKERN_DOCS_NO_GALLERY") else "True",
    "download_all_examples": False,
    "remove_config_comments": True,
    "within_subsection_order": "gallery_order.example_order",
    "doc_module": ("gpkern",),
    "backreferences_dir": "gen_modules/backreferences",
    "reference_url": {"gpkern": None},
    "min_reported_time": 10,
    # Its execution-times page loads jQuery and DataTables from CDNs: the docs must work offline.
    "write_computation_times": False,
}
