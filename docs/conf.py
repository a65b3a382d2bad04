"""Sphinx configuration of rnnext's documentation (built in CI with warnings as errors:
``sphinx-build -W -b html docs build/docs``)."""

# rnnext is imported as installed (or built in place): run sphinx-build, not `python -m sphinx`, from the
# repository root, where `-m` would put the uncompiled source tree first on sys.path.

project = "rnnext"
author = "the rnnext developers"
copyright = "2026, the rnnext developers"
extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.viewcode", "myst_parser"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
myst_heading_anchors = 3
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_typehints = "description"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
html_theme = "alabaster"
exclude_patterns = ["_build"]
