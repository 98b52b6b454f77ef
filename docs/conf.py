"""Sphinx configuration for the torch-constraints documentation.

Build (warnings are errors, as in CI, where ``tests/test_docs.py`` runs it)::

    python -m sphinx -W --keep-going -b html docs docs/_build/html

Offline by design: links to PyTorch come from a small inventory shipped in
``_intersphinx/torch.inv`` (plain text, one ``name type page`` per line; add a
line for each PyTorch object the pages link to). Set
``TORCH_CONSTRAINTS_DOCS_ONLINE=1`` to try PyTorch's full published inventory
first, with the shipped one as the fallback.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
# Document the checkout these pages belong to, not whatever copy is installed.
sys.path.insert(0, str(DOCS.parent))

import torch_constraints  # noqa: E402

project = "torch-constraints"
author = "torch-constraints developers"
copyright = "torch-constraints developers"
release = torch_constraints.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "_intersphinx", "Thumbs.db", ".DS_Store"]

# Markdown: ```{directive} fences, $math$, and anchors for ## headings.
myst_enable_extensions = ["colon_fence", "dollarmath"]
myst_heading_anchors = 3

# API pages.
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

# Every cross-reference into this package must resolve (a typo is an error);
# references to other projects may stay plain text, and so may type variables
# (one capital letter, such as the ``M`` of ``constrain(module: M, ...) -> M``)
# and private names (a private base class shown by ``:show-inheritance:``).
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(?!torch_constraints\b).*"),
    (r"py:class", r"torch_constraints(\.\w+)*\.[A-Z]"),
    (r"py:.*", r"torch_constraints(\.\w+)*\._\w+(\.\w+)*"),
]

# PyTorch links, deterministic offline (see the module docstring).
TORCH_DOCS = "https://docs.pytorch.org/docs/stable/"
_torch_inventory = str(DOCS / "_intersphinx" / "torch.inv")
intersphinx_mapping = {
    "torch": (
        TORCH_DOCS,
        (None, _torch_inventory)
        if os.environ.get("TORCH_CONSTRAINTS_DOCS_ONLINE") == "1"
        else _torch_inventory,
    ),
}

html_theme = "alabaster"
html_title = f"torch-constraints {release}"
html_static_path = ["_static"]
html_theme_options = {"description": "Keep PyTorch weights inside a feasible set."}
