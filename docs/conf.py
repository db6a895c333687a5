"""Sphinx configuration: MyST Markdown pages, the API reference from the docstrings (autodoc + napoleon).

Build (strict, as CI does): ``sphinx-build -W --keep-going -b html docs docs/_build/html``, with the package
installed (``pip install -e ".[docs]"``): autodoc imports the installed ``unsplit``.
"""
import unsplit

project = "unsplit"
author = "the unsplit authors"
copyright = "2026, the unsplit authors"
release = unsplit.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "sphinx.ext.mathjax",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
myst_enable_extensions = ["dollarmath", "colon_fence", "deflist"]
myst_heading_anchors = 3
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}
napoleon_google_docstring = True
napoleon_numpy_docstring = False

html_theme = "furo"
html_title = f"unsplit {release}"
html_static_path = ["_static"]
