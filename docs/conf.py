"""Sphinx configuration for the factorlens documentation (``make docs``).

The site is built offline: no intersphinx, no remote theme assets. The API reference is read
from the numpydoc docstrings by ``sphinx.ext.napoleon``; the README and the architecture notes
are included as Markdown through myst-parser.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # the package also when it is not installed

import factorlens  # noqa: E402

project = "factorlens"
author = "factorlens developers"
copyright = "factorlens developers"
release = version = factorlens.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]
templates_path: list[str] = []

# numpydoc-style docstrings, read by napoleon
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_ivar = True  # Attributes sections as fields: no duplicate object descriptions
napoleon_use_rtype = False

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"show-inheritance": True}

# MyST: the README's and ARCHITECTURE.md's headings get anchors; ``{include}`` reads README.md
myst_heading_anchors = 3

html_theme = "alabaster"
html_title = f"factorlens {release}"
html_theme_options = {
    "description": "Look inside a trained network through a joint factorization lens.",
    "fixed_sidebar": True,
    "page_width": "1100px",
    "sidebar_width": "230px",
}
html_static_path: list[str] = []  # the gallery's PNGs are copied as figures
html_show_sourcelink = False
