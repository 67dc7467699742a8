"""Sphinx configuration of the flask_loyalty documentation.

Sphinx (not MkDocs) because autodoc renders the API reference from the
package's own docstrings and type hints, and ``-W`` turns every warning into
a build failure; MyST lets the guides be written in Markdown.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent / "_ext"))
sys.path.insert(0, str(Path(__file__).parent.parent))

project = "flask_loyalty"
author = "flask_loyalty developers"
copyright = "2026, flask_loyalty developers"
extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "myst_parser", "loyalty_config", "loyalty_screenshots"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3
exclude_patterns = ["_build"]
html_theme = "alabaster"
html_static_path = ["_static"]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "undoc-members": False}
suppress_warnings = ["myst.xref_missing"]
nitpicky = False
