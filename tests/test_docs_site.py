"""The README is the front door and the docs site carries the reference (issue: README <= 200 lines,
the two set-up commands first, no docs page sending the reader back to the README)."""

import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from helpers.module_from_path import module_from_path

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


# --- The built site: API names link to their entries, nothing raw, a figure, upright words ------

ROLE_NAMES = "func|class|meth|mod|attr|exc|data|obj|doc|ref|math|term"
#: A role left as text: RST's ":func:" (in Markdown it renders as text before a code span) or
#: MyST's "{func}" (in reStructuredText likewise).
RAW_ROLE = re.compile(rf":(?:py:)?(?:{ROLE_NAMES}):|\{{(?:py:)?(?:{ROLE_NAMES})\}}")
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"}
UNSEEN = {"pre", "script", "style", "math"}  # code blocks and formulas are not prose
HEADINGS = {"h1", "h2", "h3", "h4", "h5", "h6"}  # a title names, it does not send elsewhere


class _Page(HTMLParser):
    """A built page's prose text (outside code, code blocks and formulas) and its inline code
    spans, each with whether it sits inside a link."""

    def __init__(self) -> None:
        super().__init__()
        self.open: list[str] = []
        self.prose: list[str] = []
        self.code: list[tuple[str, bool]] = []
        self._span: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag in VOID:
            return
        self.open.append(tag)
        inline = "literal" in (dict(attrs).get("class") or "").split()
        if tag == "code" and inline and self._span is None and not UNSEEN & set(self.open):
            self._span = []

    def handle_endtag(self, tag):
        if tag not in self.open:
            return
        while self.open.pop() != tag:
            pass
        if tag == "code" and self._span is not None and "code" not in self.open:
            if not HEADINGS & set(self.open):
                self.code.append(("".join(self._span), "a" in self.open))
            self._span = None

    def handle_data(self, data):
        if self._span is not None:
            self._span.append(data)
        elif not UNSEEN & set(self.open):
            self.prose.append(data)


def _api_names(site: Path) -> set[str]:
    """Every documented object and module, by full name and by its name inside its module."""
    ids, modules = set(), set()
    for page in (site / "api").glob("*.html"):
        text = page.read_text(encoding="utf-8")
        ids |= set(re.findall(r'<dt class="sig sig-object py" id="([\w.]+)"', text))
        modules |= set(re.findall(r'id="module-([\w.]+)"', text))
    names = ids | modules
    for full in ids:
        module = max((m for m in modules if full.startswith(m + ".")), key=len, default=None)
        if module:
            names.add(full[len(module) + 1 :])
    return names


def _problems(html: str, api_names: set[str]) -> list[str]:
    """Raw roles in the prose, and inline code naming an API object (``calibrate_tau``,
    ``SafetyBatches.from_pairs(pairs, tok)``) outside a link."""
    page = _Page()
    page.feed(html)
    found = [f"raw role {m!r}" for m in RAW_ROLE.findall("".join(page.prose))]
    for text, linked in page.code:
        name = re.fullmatch(r"\s*([A-Za-z_][\w.]*)(\(.*\))?\s*", text, re.S)
        if name and name[1] in api_names and not linked:
            found.append(f"unlinked {text!r}")
    return found


def test_the_page_check_finds_raw_roles_and_unlinked_api_names():
    literal = '<code class="docutils literal notranslate"><span class="pre">{}</span></code>'
    call = literal.format('calibrate_tau(model,</span> <span class="pre">safe)')
    page = (
        f"<h2>About {literal.format('calibrate_tau')}</h2><p>Call {call}, then "
        f'<a href="api.html#x">{literal.format("SafetyBatches")}</a>; :func:'
        f"{literal.format('select')}, {{class}}{literal.format('tau')} and "
        f"{literal.format('tau')}.<br></p><pre>calibrate_tau() :func:</pre>"
    )
    names = {"calibrate_tau", "SafetyBatches", "select"}
    assert _problems(page, names) == [
        "raw role ':func:'",
        "raw role '{class}'",
        "unlinked 'calibrate_tau(model, safe)'",
        "unlinked 'select'",
    ]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    for module in ("sphinx", "myst_parser", "furo"):
        pytest.importorskip(module)
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = ["-q", "-b", "html", "-d", str(out / "doctrees"), "docs", str(out / "html")]
    subprocess.run([sys.executable, "-m", "sphinx", *args], cwd=ROOT, env=env, check=True)
    return out / "html"


def _narrative_pages(site: Path) -> list[Path]:
    generated = {"genindex.html", "search.html", "py-modindex.html"}
    return sorted(p for p in site.glob("*.html") if p.name not in generated)


def test_every_api_name_in_the_guide_pages_links_to_its_entry(site):
    names = _api_names(site)
    assert {"SPAGOptimizer", "spag_optim.SPAGOptimizer", "select", "dpp_select.engine"} <= names
    pages = _narrative_pages(site)
    assert {"quickstart.html", "integrations.html", "results.html"} <= {p.name for p in pages}
    found = {p.name: _problems(p.read_text(encoding="utf-8"), names) for p in pages}
    assert {page: problems for page, problems in found.items() if problems} == {}
    for page in (site / "api").glob("*.html"):  # docstrings: no raw role either
        assert not RAW_ROLE.findall("".join(_prose(page))), page.name


def _prose(page: Path) -> list[str]:
    parsed = _Page()
    parsed.feed(page.read_text(encoding="utf-8"))
    return parsed.prose


def test_quick_start_shows_the_loop_and_the_trainer_and_integrations_link_the_api(site):
    entry = 'href="api/spag_optim.html#spag_optim.integrations.trainer.SPAGTrainer"'
    quickstart = (site / "quickstart.html").read_text(encoding="utf-8")
    assert "optimizer.step()" in "".join(_prose_and_code(quickstart)) and entry in quickstart
    integrations = (site / "integrations.html").read_text(encoding="utf-8")
    assert entry in integrations and integrations.count('href="api/') >= 10


def _prose_and_code(html: str) -> list[str]:
    return re.findall(r">([^<]+)<", html)


def test_the_results_page_opens_with_the_sweep_figure_and_a_short_table(site):
    html = (site / "results.html").read_text(encoding="utf-8")
    opening = html.split("<h1>", 1)[1].split("<h2>", 1)[0]
    assert '<img alt="ASR per method' in opening and 'src="_images/defense_sweep.png"' in opening
    assert (site / "_images" / "defense_sweep.png").stat().st_size > 10_000
    assert opening.count("<table") == 1 and opening.count("<tr") == 4  # header + three methods


def test_word_subscripts_render_upright_and_index_pairs_stay_italic(site):
    upright_word_scripts = module_from_path(
        ROOT / "docs" / "_ext" / "mathml.py"
    ).upright_word_scripts
    assert upright_word_scripts(r"\eta_{safe} x_{ij}^{max}") == (
        r"\eta_{\mathrm{safe}} x_{ij}^{\mathrm{max}}"
    )
    letters_as_variables = re.compile(r"<mrow>\s*(?:<mi>[A-Za-z]</mi>\s*){3,}</mrow>")
    pages = [*site.glob("*.html"), *(site / "api").glob("*.html")]
    assert [p.name for p in pages if letters_as_variables.search(p.read_text("utf-8"))] == []
    assert "<mi>safe</mi>" in (site / "algorithm.html").read_text(encoding="utf-8")
