"""Sphinx configuration: the API reference is generated from the docstrings (autodoc + napoleon).

Build (warnings are errors, as in CI): ``python -m sphinx -W --keep-going -b html docs docs/_build``.
"""

import contextlib
import io
import os
import sys

sys.path.insert(0, os.path.abspath(".."))  # document this checkout, not an installed copy

project = "spard"
author = "spard contributors"
copyright = "spard contributors"
release = "0.1.0"

extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon"]
exclude_patterns = ["_build"]
# The docstrings are Google style ("Args:", "Returns:") with Sphinx roles (:class:, :math:).
napoleon_google_docstring = True
napoleon_numpy_docstring = False
autodoc_default_options = {"members": True, "member-order": "bysource", "show-inheritance": True}
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented"  # types join the "Args:" text, no bare lists
autodoc_inherit_docstrings = False  # torch.optim's docstrings are not this project's reference
html_theme = "alabaster"
html_theme_options = {"description": "Safety projection and relevance-diversity DPP selection"}


def _write_cli_help() -> None:
    """``dpp-select --help`` as the CLI page shows it, regenerated on every build."""
    from dpp_select.cli import main

    os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal width; make the page stable
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        main(["--help"])
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_generated", "dpp-select-help.txt")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(out.getvalue())


_write_cli_help()
