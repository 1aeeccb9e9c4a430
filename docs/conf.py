"""Sphinx configuration for the implicitnet documentation.

Build with ``sphinx-build -W -b html docs docs/_build/html`` (see ``contributing.md``).
Nothing here reaches the network, at build time or when a reader opens a page:
intersphinx is enabled with an empty mapping, and MathJax is served from the built site
itself (copied there from the ``sphinx-mathjax-offline`` package of the ``docs`` extra),
never from a CDN.
"""

from __future__ import annotations

import os
from pathlib import Path

import implicitnet

# -- Project -------------------------------------------------------------------------

project = "implicitnet"
author = "The implicitnet developers"
copyright = "the implicitnet developers"
release = implicitnet.__version__
version = ".".join(release.split(".")[:2])

# -- General -------------------------------------------------------------------------

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "sphinx-mathjax-offline",  # MathJax 3 from the package index, copied into _static
    "numpydoc",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
templates_path = ["_templates"]
exclude_patterns = ["_build", "_templates", "Thumbs.db", ".DS_Store"]
default_role = "code"  # `x` in docstrings is an argument name, as in numpydoc style

# -- MyST (Markdown pages) -----------------------------------------------------------

myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3
myst_dmath_double_inline = True

# -- Mathematics: MathJax bundled with the site --------------------------------------
# `sphinx-mathjax-offline` copies MathJax into ``_static/mathjax`` of the built site;
# the path below points the pages at that copy (relative to ``_static``), so formulas
# render without a network. tests/test_docs.py checks that no page loads a remote script.

mathjax_path = "mathjax/tex-chtml.js"

# -- API reference -------------------------------------------------------------------

autosummary_generate = True
autosummary_imported_members = True
autodoc_typehints = "none"  # the numpydoc Parameters section says it, once
autodoc_default_options = {"member-order": "bysource"}
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

# -- intersphinx: no network at build time -------------------------------------------
# An empty mapping keeps the build offline. To link to other projects' docs, download
# their ``objects.inv`` by hand and point IMPLICITNET_INTERSPHINX_DIR at the folder:
# ``python.inv``, ``numpy.inv``, ``scipy.inv`` there are used as local inventories.

intersphinx_mapping: dict[str, tuple[str, str | None]] = {}
_INV_DIR = os.environ.get("IMPLICITNET_INTERSPHINX_DIR")
if _INV_DIR:
    for _name, _url in {
        "python": "https://docs.python.org/3",
        "numpy": "https://numpy.org/doc/stable",
        "scipy": "https://docs.scipy.org/doc/scipy",
    }.items():
        _inv = Path(_INV_DIR) / f"{_name}.inv"
        if _inv.is_file():
            intersphinx_mapping[_name] = (_url, str(_inv))
intersphinx_timeout = 1

# -- HTML ----------------------------------------------------------------------------

html_theme = "pydata_sphinx_theme"
html_title = f"implicitnet {release}"
html_static_path: list[str] = []
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "secondary_sidebar_items": ["page-toc"],
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version"],
}
html_show_sourcelink = False
