"""docs/install.md's extras table matches setup.cfg (what users read, what pip installs)."""

import configparser
import re
from pathlib import Path

import pytest

from helpers.module_from_path import module_from_path

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


def _supported_versions():
    """``.ci/supported_versions.py``, which pins CI's lowest-versions run."""
    return module_from_path(ROOT / ".ci" / "supported_versions.py")


def test_the_hugging_face_stack_is_bounded_below_and_above_as_the_install_page_says():
    bounds = _supported_versions().bounds()
    assert set(bounds) == {"transformers", "peft", "trl", "accelerate"}
    text = (ROOT / "docs" / "install.md").read_text(encoding="utf-8")
    section = text.split("## Supported versions", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] in bounds:
            rows[cells[0]] = (cells[1], cells[3])
    assert rows == {name: (low, f"`>={low},<{high}`") for name, (low, high) in bounds.items()}


def test_a_package_bounded_only_below_or_differently_in_two_extras_is_refused(tmp_path):
    read = _supported_versions().bounds
    cfg = tmp_path / "setup.cfg"
    pinned = "transformers>=5.3.0,<6\n    peft>=0.10.0,<1\n    accelerate>=1.3.0,<2"
    cfg.write_text(f"[options.extras_require]\nhf =\n    {pinned}\nintegrations =\n    trl>=0.16\n")
    with pytest.raises(ValueError, match=r"\[integrations\] 'trl>=0.16': write it as trl>=LOW"):
        read(cfg)
    cfg.write_text(
        f"[options.extras_require]\nhf =\n    {pinned}\n    trl>=0.16.0,<2\n"
        "examples =\n    peft>=0.11.0,<1\n"
    )
    with pytest.raises(ValueError, match=r"peft has other bounds in \[examples\]"):
        read(cfg)
