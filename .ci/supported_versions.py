"""The Hugging Face stack spard supports: setup.cfg's bounds for transformers, peft, trl and
accelerate, which must be the same in every extra that lists a package (docs/install.md has them
as a table, tests/test_install_extras.py checks that it matches).

``python .ci/supported_versions.py`` prints pip constraints pinning each package to its lower
bound; ``.ci/setup --lowest`` installs with them for the lowest-versions part of ``.ci/run``.
"""

from __future__ import annotations

import configparser
import pathlib
import re

PACKAGES = ("transformers", "peft", "trl", "accelerate")
SETUP_CFG = pathlib.Path(__file__).resolve().parent.parent / "setup.cfg"


def bounds(setup_cfg: pathlib.Path = SETUP_CFG) -> dict[str, tuple[str, str]]:
    """Package -> (lowest supported version, first version excluded), read from every extra."""
    cfg = configparser.ConfigParser()
    cfg.read(setup_cfg, encoding="utf-8")
    found: dict[str, tuple[str, str]] = {}
    for extra, value in cfg["options.extras_require"].items():
        for req in filter(None, map(str.strip, value.splitlines())):
            name = re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0].lower()
            if name not in PACKAGES:
                continue
            match = re.fullmatch(rf"{name}>=([\w.]+),<([\w.]+)", req)
            if match is None:
                raise ValueError(f"setup.cfg [{extra}] {req!r}: write it as {name}>=LOW,<HIGH")
            if found.setdefault(name, match.groups()) != match.groups():
                raise ValueError(f"setup.cfg: {name} has other bounds in [{extra}]")
    missing = [p for p in PACKAGES if p not in found]
    if missing:
        raise ValueError(f"setup.cfg: no extra bounds {', '.join(missing)}")
    return {p: found[p] for p in PACKAGES}


if __name__ == "__main__":
    print("\n".join(f"{name}=={low}" for name, (low, _) in bounds().items()))
