"""Sphinx configuration for the factorlens documentation (``make docs``).

The site is built offline: no intersphinx, no remote theme assets. The API reference is read
from the numpydoc docstrings by ``sphinx.ext.napoleon``; the README and the architecture notes
are copied in as Markdown (links re-pointed) and read by myst-parser.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # the package also when it is not installed

import factorlens  # noqa: E402


def write_cli_reference(path: Path) -> None:
    """Write the CLI reference page from the parser itself (every command's ``--help``)."""
    import argparse
    import os

    from factorlens.cli import build_parser

    os.environ["COLUMNS"] = "100"  # argparse wraps help at the terminal's width
    parser = build_parser()
    text = [
        "# Command-line reference",
        "",
        "Generated from the parser when the docs are built: what `factorlens --help` and",
        "`factorlens COMMAND --help` print.",
        "",
        "```text",
        parser.format_help().rstrip(),
        "```",
    ]
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, command in sub.choices.items():
        text += ["", f"## factorlens {name}", "", "```text", command.format_help().rstrip(), "```"]
    path.write_text("\n".join(text) + "\n")


def write_linked_copy(source: Path, path: Path, links: dict[str, str]) -> None:
    """Copy a Markdown page from outside ``docs/`` into it, its relative links re-pointed.

    The README links ``docs/guide.md`` and ``benchmarks/RESULTS.md`` as GitHub shows them;
    in the site those pages are ``guide.md`` and ``results.md`` beside the copy.
    """
    text = source.read_text()
    for old, new in links.items():
        text = text.replace(f"]({old}", f"]({new}")
    path.write_text(text)


DOCS = Path(__file__).resolve().parent
write_cli_reference(DOCS / "cli.md")
write_linked_copy(
    ROOT / "README.md",
    DOCS / "readme.md",
    {"docs/": "", "benchmarks/RESULTS.md": "results.md"},
)
write_linked_copy(ROOT / "benchmarks" / "RESULTS.md", DOCS / "results.md", {})

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

# MyST: the Markdown pages' headings get anchors (the README links into the guide's)
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
