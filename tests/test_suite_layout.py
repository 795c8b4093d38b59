"""The test suite's own layout: shared builders live in the ``helpers`` package (importable through
pytest's ``pythonpath`` option, not ``sys.path`` edits), the defenses are named in one registry
(``helpers/defenses.py``), and integration tests share one file prefix."""

from __future__ import annotations

import ast
import pathlib

import helpers
from helpers.defenses import DEFENSES

TESTS = pathlib.Path(__file__).resolve().parent
DEFENSE_CLASS_NAMES = {cls.__name__ for cls in DEFENSES.values()}


def test_every_module_beside_the_tests_is_a_test_or_the_conftest():
    others = [p.name for p in TESTS.glob("*.py") if not p.name.startswith("test_")]
    assert others == ["conftest.py"], f"move shared builders into tests/helpers/: {sorted(others)}"


def test_the_helpers_package_is_found_without_path_edits():
    assert pathlib.Path(helpers.__file__).parent == TESTS / "helpers"
    edits = []
    for path in sorted(TESTS.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            target = node.func if isinstance(node, ast.Call) else None
            if (
                isinstance(target, ast.Attribute)
                and target.attr in {"insert", "append"}
                and ast.unparse(target.value) == "sys.path"
            ):
                edits.append(f"{path.relative_to(TESTS)}:{node.lineno}")
    assert not edits, f"sys.path edited in {edits}: add the folder to pytest's pythonpath instead"


def defense_tables(path: pathlib.Path) -> list[str]:
    """Module-level dicts whose values name two or more defense classes."""
    tables = []
    for node in ast.parse(path.read_text(), filename=str(path)).body:
        value = node.value if isinstance(node, (ast.Assign, ast.AnnAssign)) else None
        if isinstance(value, ast.Dict):
            named = {n.id for v in value.values for n in ast.walk(v) if isinstance(n, ast.Name)}
            if len(named & DEFENSE_CLASS_NAMES) >= 2:
                tables.append(f"{path.relative_to(TESTS)}:{node.lineno}")
    return tables


def test_the_defenses_are_named_in_one_registry():
    registry = TESTS / "helpers" / "defenses.py"
    assert defense_tables(registry), "the check no longer recognises the registry's table"
    others = [t for p in sorted(TESTS.rglob("*.py")) if p != registry for t in defense_tables(p)]
    assert not others, f"name -> defense tables outside helpers/defenses.py: {others}"


def test_integration_tests_share_one_prefix():
    assert not sorted(p.name for p in TESTS.glob("test_integrations_*.py"))
