"""``spag_optim`` and ``dpp_select`` are independent: neither imports the other, and the JSONL
reading both need lives in ``spard_io``, which imports neither.

Every import statement of every module is checked, including the ones inside functions, so a
lazy import cannot hide a dependency that a plain ``import spag_optim`` would not trigger.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
FORBIDDEN = {
    "spag_optim": {"dpp_select"},
    "dpp_select": {"spag_optim"},
    "spard_io": {"spag_optim", "dpp_select"},
}


def _imported_packages(path: pathlib.Path) -> set[str]:
    """Top-level names of the absolute imports in ``path`` (relative imports stay inside)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def _offending(package: str) -> dict[str, set[str]]:
    found = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        bad = _imported_packages(path) & FORBIDDEN[package]
        if bad:
            found[str(path.relative_to(ROOT))] = bad
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_none_of_the_others(package):
    assert list((ROOT / package).rglob("*.py")), f"no modules found under {package}/"
    assert _offending(package) == {}


def test_the_check_sees_an_import_inside_a_function(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from dpp_select.greedy import greedy_dpp\n"
                      "import spag_optim.functional as F\nfrom . import sibling\n")
    assert _imported_packages(module) == {"dpp_select", "spag_optim"}
