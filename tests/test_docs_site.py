"""The README is the front door and the docs site carries the reference (issue: README <= 200 lines,
the two set-up commands first, no docs page sending the reader back to the README)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
TWO_COMMANDS = [
    "bash .ci/setup && .venv/bin/python examples/quickstart.py",
    "bash .ci/setup && .venv/bin/python -m pytest -q tests",
]


def _docs_pages() -> list[Path]:
    pages = [*(ROOT / "docs").rglob("*.rst"), *(ROOT / "docs").rglob("*.md")]
    return sorted(p for p in pages if "_build" not in p.parts)


def test_readme_is_a_front_door_of_at_most_200_lines():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; move reference material to docs/"


def test_readme_opens_with_the_two_commands_ci_runs():
    text = README.read_text(encoding="utf-8")
    first_block = text.split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [line.split("#", 1)[0].strip() for line in first_block.splitlines()]
    assert commands == TWO_COMMANDS
    ci_run = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    test_command = TWO_COMMANDS[1].split("&& ", 1)[1]
    assert f"\n{test_command}\n" in ci_run, ".ci/run must run the README's test command verbatim"


def test_no_docs_page_sends_the_reader_to_the_readme():
    offenders = [
        str(p.relative_to(ROOT))
        for p in _docs_pages()
        if "readme" in p.read_text(encoding="utf-8").lower()
    ]
    assert not offenders, f"docs pages that refer to the README: {offenders}"


def test_readme_links_point_at_files_in_the_repository():
    text = README.read_text(encoding="utf-8")
    targets = {t.split("#", 1)[0] for t in re.findall(r"\]\(([^)\s]+)\)", text)}
    missing = sorted(t for t in targets if "://" not in t and t and not (ROOT / t).exists())
    assert not missing, f"README links to files that do not exist: {missing}"
