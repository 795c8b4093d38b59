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
    module.write_text(
        "def f():\n    from dpp_select.greedy import greedy_dpp\n"
        "import spag_optim.functional as F\nfrom . import sibling\n"
    )
    assert _imported_packages(module) == {"dpp_select", "spag_optim"}


# --- No import cycles and no private names across modules -----------------------------------
# Every import statement counts, inside functions too: an import deferred into a function still
# makes the two modules depend on each other, it only hides the cycle from a reader.

PACKAGES = ("dpp_select", "spag_optim", "spard_io")


def _module_files(root: pathlib.Path = ROOT) -> dict[str, pathlib.Path]:
    """Dotted module name -> file, for every module of the three packages under ``root``."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _absolute(node: ast.ImportFrom, module: str, path: pathlib.Path) -> str:
    """The absolute module name an ``ImportFrom`` names, relative ones resolved."""
    if node.level == 0:
        return node.module or ""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str, path: pathlib.Path, modules: dict) -> list[tuple[str, str, int]]:
    """(imported module, name taken from it or "", line) for every import of our modules;
    ``from m import x`` where x is a submodule counts as importing that submodule."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(a.name, "", node.lineno) for a in node.names if a.name in modules]
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(node, module, path)
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                if sub in modules:
                    found.append((sub, "", node.lineno))
                elif source in modules:
                    found.append((source, alias.name, node.lineno))
    return found


def _private_uses(module: str, path: pathlib.Path, modules: dict) -> list[str]:
    """``from m import _x`` and ``m._x`` where m is another of our modules."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    bound = {}  # local name -> our module it is bound to
    uses = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in modules and alias.asname:
                    bound[alias.asname] = alias.name
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(node, module, path)
            for alias in node.names:
                if f"{source}.{alias.name}" in modules:
                    bound[alias.asname or alias.name] = f"{source}.{alias.name}"
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            source = _absolute(node, module, path)
            uses += [
                f"{path.name}:{node.lineno} imports {alias.name} from {source}"
                for alias in node.names
                if source in modules
                and source != module
                and _is_private(alias.name)
                and f"{source}.{alias.name}" not in modules
            ]
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in bound
            and _is_private(node.attr)
        ):
            uses.append(f"{path.name}:{node.lineno} uses {bound[node.value.id]}.{node.attr}")
    return uses


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _cycles(package: str, root: pathlib.Path = ROOT) -> list[list[str]]:
    """Every module of ``package`` that reaches itself through imports, with one such path."""
    modules = _module_files(root)
    graph = {
        m: sorted({target for target, _, _ in _imports(m, p, modules) if target != m})
        for m, p in modules.items()
    }
    cycles = []
    for start in (m for m in modules if m.split(".")[0] == package):
        stack, seen = [(start, [start])], set()
        while stack:
            node, trail = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    cycles.append(trail + [start])
                    stack = []
                    break
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, trail + [nxt]))
    return cycles


@pytest.mark.parametrize("package", PACKAGES)
def test_no_module_imports_a_module_that_imports_it_back(package):
    assert _cycles(package) == []


@pytest.mark.parametrize("package", PACKAGES)
def test_no_private_name_is_imported_across_modules(package):
    modules = _module_files()
    found = [
        use
        for m, p in modules.items()
        if m.split(".")[0] == package
        for use in _private_uses(m, p, modules)
    ]
    assert found == []


def test_the_cycle_walk_sees_a_cycle_hidden_in_a_function(tmp_path):
    pkg = tmp_path / "dpp_select"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import helper\n")
    (pkg / "b.py").write_text("def helper():\n    from . import c\n")
    (pkg / "c.py").write_text("import dpp_select.a as a\nx = a._hidden\n")
    modules = _module_files(tmp_path)
    assert ["dpp_select.a", "dpp_select.b", "dpp_select.c", "dpp_select.a"] in _cycles(
        "dpp_select", tmp_path
    )
    assert _private_uses("dpp_select.c", pkg / "c.py", modules) == [
        "c.py:2 uses dpp_select.a._hidden"
    ]


#: The longest a library function may be, docstring excluded: one screen, read at once.
MAX_FUNCTION_LINES = 60


@pytest.mark.parametrize("package", PACKAGES)
def test_no_library_function_is_longer_than_a_screen(package):
    too_long = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            body = node.body
            has_doc = (
                isinstance(body[0], ast.Expr)
                and isinstance(getattr(body[0], "value", None), ast.Constant)
                and isinstance(body[0].value.value, str)
            )
            start = (
                (body[1].lineno if len(body) > 1 else body[0].end_lineno)
                if has_doc
                else body[0].lineno
            )
            length = node.end_lineno - start + 1
            if length > MAX_FUNCTION_LINES:
                too_long.append(
                    f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({length} lines)"
                )
    assert not too_long, too_long


# --- dpp_select's parts: which may import which ----------------------------------------------
# The one-process greedy engine (dpp_select/engine/) knows nothing of processes or of the front
# that calls it; the distribution module builds on the engine; the front (select, greedy_dpp,
# relevance, embedding, diagnostics) chooses between them; the command (dpp_select/cli/) sits on
# top and nothing imports it. The diagram: docs/api/dpp_select.rst.

MAY_IMPORT = {  # part -> the parts its modules may import
    "shared": {"shared"},
    "engine": {"engine", "shared"},
    "distribution": {"distribution", "engine", "shared"},
    "front": {"front", "distribution", "engine", "shared"},
    "command": {"command", "front", "distribution", "shared"},
}


def _part(module: str) -> str:
    if module == "dpp_select._inputs":
        return "shared"
    if module == "dpp_select.distributed":
        return "distribution"
    for prefix, part in (("dpp_select.engine", "engine"), ("dpp_select.cli", "command")):
        if module == prefix or module.startswith(prefix + "."):
            return part
    return "front"


def _uses_torch_distributed(path: pathlib.Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import) and any(
            a.name.startswith("torch.distributed") for a in node.names
        ):
            return True
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("torch.distributed"):
            return True
        if (
            isinstance(node, ast.Attribute)
            and node.attr == "distributed"
            and isinstance(node.value, ast.Name)
            and node.value.id == "torch"
        ):
            return True
    return False


def _layout_violations(root: pathlib.Path = ROOT) -> list[str]:
    modules = _module_files(root)
    found = []
    for module, path in modules.items():
        if module.split(".")[0] != "dpp_select":
            continue
        part = _part(module)
        for target, _, line in _imports(module, path, modules):
            if target.startswith("dpp_select") and _part(target) not in MAY_IMPORT[part]:
                found.append(f"{module}:{line} ({part}) imports {target} ({_part(target)})")
        if part == "engine" and _uses_torch_distributed(path):
            found.append(f"{module} ({part}) uses torch.distributed")
    return found


def test_dpp_select_parts_import_only_the_parts_below_them():
    parts = {_part(m) for m in _module_files() if m.split(".")[0] == "dpp_select"}
    assert parts == set(MAY_IMPORT)
    assert _layout_violations() == []


def test_the_layout_check_sees_the_engine_reaching_for_distribution(tmp_path):
    pkg = tmp_path / "dpp_select"
    (pkg / "engine").mkdir(parents=True)
    for init in (pkg / "__init__.py", pkg / "engine" / "__init__.py"):
        init.write_text("")
    (pkg / "distributed.py").write_text("")
    (pkg / "engine" / "lazy.py").write_text("def f():\n    from ..distributed import agree\n")
    (pkg / "engine" / "kernel.py").write_text("import torch\nrank = torch.distributed.get_rank\n")
    assert _layout_violations(tmp_path) == [
        "dpp_select.engine.kernel (engine) uses torch.distributed",
        "dpp_select.engine.lazy:2 (engine) imports dpp_select.distributed (distribution)",
    ]
