"""The documentation site builds, offline, with no broken internal link, and has every page.

``mkdocs build --strict`` (what ``make docs`` runs) fails on a link to a page, file or
anchor that does not exist; tools/mkdocs_hooks.py stages README, docs/ and notebooks/,
builds the nav from them, and turns links to source files into pages of highlighted code.
External links are not followed (CI is offline). One build, shared by the tests below.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

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
