"""The documentation site builds, offline, with no broken internal link, has every page, and typesets its math.

``mkdocs build --strict`` (what ``make docs`` runs) fails on a link to a page, file or
anchor that does not exist; tools/mkdocs_hooks.py stages README, docs/ and notebooks/,
builds the nav from them (the Course first, the claims apart), shows the course notebooks
as students receive them, copies MathJax into the site, and turns links to source files
into pages of highlighted code. External links are not followed (CI is offline). One
build, shared by the tests below; the last opens a course page in headless Chromium
(Debian's package, installed by the test as root, as CI runs) and checks that its
equations are typeset.
"""

import functools
import os
import re
import shutil
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import nbformat
import pytest

from minilora.course import course_notebooks, student_version

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import mkdocs_hooks  # noqa: E402


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1", PYTHONPATH=str(ROOT))
    # run from a temporary folder, so that mkdocs-jupyter's cache (.cache/ under the working
    # directory) is not written into the repository
    build = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
                            "--site-dir", str(out)], cwd=tmp_path_factory.mktemp("cwd"), env=env, capture_output=True, text=True)
    problems = [line for line in build.stdout.splitlines() + build.stderr.splitlines()
                if line.startswith(("WARNING", "ERROR")) or "Error" in line]
    assert build.returncode == 0, "mkdocs build --strict failed:\n" + "\n".join(problems or [build.stderr[-3000:]])
    return out


def test_the_site_builds_without_a_broken_link(site):
    assert (site / "index.html").exists()


def test_every_page_is_built_and_in_the_nav(site):
    home = (site / "index.html").read_text(encoding="utf-8")
    for repo_path in mkdocs_hooks.pages():
        built = Path(mkdocs_hooks.site_path(repo_path)).with_suffix(".html").as_posix()
        assert (site / built).exists(), f"{repo_path} has no page in the site ({built})"
        assert f'href="{built}"' in home, f"{repo_path} is missing from the nav"


def test_pages_found_include_every_doc_and_notebook():
    found = set(mkdocs_hooks.pages())
    expected = {"README.md"} | {p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").rglob("*.md")}
    expected |= {p.relative_to(ROOT).as_posix() for p in (ROOT / "notebooks").glob("*.ipynb")}
    assert found == expected


def test_links_to_source_files_show_the_code(site):
    home = (site / "index.html").read_text(encoding="utf-8")
    assert 'href="minilora/tensor.py.html"' in home, "the README's link to minilora/tensor.py was not turned into a code page"
    code = (site / "minilora" / "tensor.py.html").read_text(encoding="utf-8")
    assert "def backward" in re.sub(r"<[^>]+>", "", code), "the code page does not show tensor.py"
    assert 'id="L-1"' in code, "the code page has no line anchors"
    assert (site / "minilora" / "peft" / "index.html").exists(), "the README's link to the folder minilora/peft"


def test_a_broken_link_in_a_notebook_is_reported(tmp_path, caplog):
    """MkDocs does not check links inside notebooks; the hook does, and warns (a failure under --strict)."""
    stager = mkdocs_hooks.Stager(tmp_path, ".html")
    with caplog.at_level("WARNING", logger="mkdocs.hooks.minilora"):
        out = stager.rewrite("notebooks/x.ipynb", "[a](../docs/no-such-page.md) [b](../docs/autograd.md)", in_notebook=True)
    assert "no-such-page.md" in caplog.text and "autograd.md" not in caplog.text
    assert out == "[a](../docs/no-such-page.md) [b](../docs/autograd.html)"


def test_links_are_rewritten_to_what_the_site_holds(tmp_path):
    stager = mkdocs_hooks.Stager(tmp_path, ".html")
    text = "[t](../minilora/tensor.py#L12) [f](../minilora/peft) [r](..) [u](https://example.org/x.py) [a](#top)"
    assert stager.rewrite("docs/x.md", text) == (
        "[t](../minilora/tensor.py.html#L-12) [f](../minilora/peft/index.html) [r](../index.md) "
        "[u](https://example.org/x.py) [a](#top)")
    assert (tmp_path / "minilora" / "tensor.py.html").exists() and (tmp_path / "minilora" / "peft" / "index.html").exists()


def test_the_nav_has_the_course_first_and_the_claims_apart():
    sections = [next(iter(entry)) for entry in mkdocs_hooks.nav()]
    assert sections == ["Home", "Course", "Claims and reports", "How minilora works"]
    assert all("/" not in title for title in sections)  # readable names, not folders
    course = mkdocs_hooks.nav()[1]["Course"]
    assert course == ["docs/course.md"] + [p.relative_to(ROOT).as_posix() for p in course_notebooks()]
    claims = mkdocs_hooks.nav()[2]["Claims and reports"]
    assert "docs/claims.md" in claims and "docs/report/full-run.md" in claims
    assert "notebooks/rank_vs_accuracy.ipynb" in claims and not set(claims) & set(course)


def test_course_pages_show_the_notebooks_as_students_receive_them(site):
    for path in course_notebooks():
        page = (site / "notebooks" / path.with_suffix(".html").name).read_text(encoding="utf-8")
        assert "YOUR CODE HERE" in page and "BEGIN SOLUTION" not in page and "HIDDEN TESTS" not in page, path.name
        code_cells = re.findall(r'class="jp-Cell jp-CodeCell([^"]*)"', page)
        assert code_cells and all("jp-mod-noOutputs" in c for c in code_cells), f"{path.name} shows outputs"
    claim_page = (site / "notebooks" / "rank_vs_accuracy.html").read_text(encoding="utf-8")
    code_cells = re.findall(r'class="jp-Cell jp-CodeCell([^"]*)"', claim_page)
    assert not all("jp-mod-noOutputs" in c for c in code_cells) and "<img" in claim_page, \
        "a claim report keeps its committed outputs (its plots)"
    # the folder page of notebooks/ links to the pages, never to a notebook's source (it holds the solutions)
    assert not list((site / "notebooks").glob("*.ipynb.html"))


def test_every_page_loads_mathjax_from_the_site(site):
    for page in [site / "index.html", site / "docs" / "lora.html", site / "notebooks" / "03_lora_by_hand.html"]:
        sources = re.findall(r'<script src="([^"]*MathJax[^"]*)"', page.read_text(encoding="utf-8"))
        assert sources, f"{page.name} does not load MathJax"
        for src in sources:
            assert src and not src.startswith(("http:", "https:", "//")), f"{page.name}: MathJax from {src!r}"
            assert (page.parent / src.partition("?")[0]).exists(), f"{page.name}: {src} is not in the site"
    assert (site / "assets" / "mathjax" / "config" / "local" / "minilora.js").exists()


# --- a course page in a real browser ------------------------------------------------------------

INSTALL = ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]
CHROMIUM = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def chromium():
    """Debian's Chromium: installed here when missing, as root (CI runs as root); without root the
    test is skipped, saying how to install it."""
    found = shutil.which("chromium")
    if found:
        return found
    if os.geteuid() != 0:
        pytest.skip(f"needs Debian's Chromium; as root: apt-get update && {' '.join(INSTALL)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    if subprocess.run(INSTALL, env=env, capture_output=True).returncode != 0:  # no package lists yet: fetch them
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, check=True)
        subprocess.run(INSTALL, env=env, capture_output=True, check=True)
    return shutil.which("chromium")


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def math_in(nb) -> int:
    """How many equations the Markdown cells of a notebook hold: $$...$$ and $...$."""
    text = "\n".join(cell.source for cell in nb.cells if cell.cell_type == "markdown")
    display = re.findall(r"\$\$.+?\$\$", text, flags=re.S)
    return len(display) + len(re.findall(r"\$[^$]+?\$", re.sub(r"\$\$.+?\$\$", "", text, flags=re.S)))


def test_a_course_page_typesets_its_equations_in_chromium(site, chromium, tmp_path):
    path = ROOT / "notebooks" / "03_lora_by_hand.ipynb"
    expected = math_in(student_version(nbformat.read(path, as_version=4)))
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(site)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:  # --virtual-time-budget: the DOM is dumped once MathJax has had time to load and typeset
        url = f"http://127.0.0.1:{server.server_address[1]}/notebooks/{path.stem}.html"
        dom = subprocess.run([chromium, *CHROMIUM, f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=30000",
                              "--dump-dom", url], capture_output=True, text=True, timeout=180).stdout
    finally:
        server.shutdown()
        server.server_close()
    # MathJax 2 keeps each equation's TeX in a <script type="math/tex"> and shows its rendering beside it
    assert expected > 50 and dom.count('<script type="math/tex') == expected, (expected, dom.count("math/tex"))
    assert len(re.findall(r'<span class="MathJax[ "][^>]*id="MathJax-Element-\d+-Frame"', dom)) == expected
    assert "Math Processing Error" not in dom and '<span class="MathJax_Error"' not in dom
    visible = re.sub(r"<[^>]+>", "", re.sub(r"<(script|style)\b.*?</\1>", "", dom, flags=re.S))
    assert "$$" not in visible and "\\frac" not in visible, "raw LaTeX left on the page"
