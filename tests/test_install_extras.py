"""docs/install.md's extras table matches setup.cfg (what users read, what pip installs)."""

import configparser
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _extras_from_setup_cfg() -> dict[str, set[str]]:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg", encoding="utf-8")
    extras = {}
    for name, value in cfg["options.extras_require"].items():
        reqs = [line.strip() for line in value.splitlines() if line.strip()]
        extras[name] = {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower() for r in reqs}
    return extras


def _extras_from_install_page() -> dict[str, str]:
    text = (ROOT / "docs" / "install.md").read_text(encoding="utf-8")
    section = text.split("## Extras", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and re.fullmatch(r"`[a-z_-]+`", cells[0]):
            rows[cells[0].strip("`")] = cells[1].lower()
    return rows


def test_install_page_lists_every_extra_with_its_packages():
    extras = _extras_from_setup_cfg()
    rows = _extras_from_install_page()
    assert set(rows) == set(extras), "docs/install.md extras table and setup.cfg extras differ"
    for name, packages in extras.items():
        listed = {p.strip() for p in rows[name].split(",")}
        assert listed == packages, f"extra {name!r}: install page {listed}, setup.cfg {packages}"
