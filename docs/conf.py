"""Sphinx configuration: guide pages in reStructuredText and Markdown (MyST); the API reference is
generated from the docstrings (autodoc + napoleon).

Build (warnings are errors, as in CI): ``python -m sphinx -W --keep-going -b html docs docs/_build``.
"""

import contextlib
import io
import os
import sys

sys.path.insert(0, os.path.abspath(".."))  # document this checkout, not an installed copy
sys.path.insert(0, os.path.abspath("_ext"))  # this site's own extensions

project = "spard"
author = "spard contributors"
copyright = "spard contributors"
release = "0.1.0"

# mathml: formulas as MathML written at build time (readable offline, no MathJax);
# attribute_docstrings: must follow napoleon, whose listener it wraps.
extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "attribute_docstrings",
    "mathml",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}  # guide pages are Markdown (MyST)
# attrs_block: a {.class} line before a block, for the wide result tables (nowrap in tables.css).
myst_enable_extensions = ["attrs_block"]
html_math_renderer = "mathml"
exclude_patterns = ["_build", "_generated", "_ext"]  # generated pages are included, not built alone
# The docstrings are Google style ("Args:", "Returns:") with Sphinx roles (:class:, :math:).
napoleon_google_docstring = True
napoleon_numpy_docstring = False
autodoc_default_options = {"members": True, "member-order": "bysource", "show-inheritance": True}
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented"  # types join the "Args:" text, no bare lists
autodoc_inherit_docstrings = False  # torch.optim's docstrings are not this project's reference
add_function_parentheses = False  # a linked name reads as written: no "()" added
html_theme = "furo"
html_title = "spard"
html_static_path = ["_static"]
html_css_files = ["mathml.css", "tables.css"]


def _write_generated(name: str, text: str) -> None:
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_generated", name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def _write_cli_help() -> None:
    """``dpp-select --help`` as the CLI page shows it, regenerated on every build."""
    from dpp_select.cli import main

    os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal width; make the page stable
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        main(["--help"])
    _write_generated("dpp-select-help.txt", out.getvalue())


_write_cli_help()
