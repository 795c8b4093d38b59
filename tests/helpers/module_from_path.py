"""A module loaded from a file outside the packages and the tests (``.ci/``, ``docs/_ext/``),
without editing ``sys.path``."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

__all__ = ["module_from_path"]


def module_from_path(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
