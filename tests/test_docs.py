"""What the documentation says, checked: every Python snippet runs, links stay inside the
repository, the README's line count of ``backward`` holds, and CITATION.cff is valid.

Snippets: each fenced ```python block of README.md and docs/*.md is one test, named by
file and line (``README.md:34``), run as written in a fresh namespace with a temporary
folder as the working directory. A block meant as a fragment (an excerpt of a function,
pseudo-code with shapes) says so with the line ``<!-- fragment -->`` right before it; it is
skipped under its name with the reason, so ``pytest -rs`` lists every fragment.
"""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
FRAGMENT = "<!-- fragment -->"


def markdown_files() -> list:
    return [ROOT / "README.md"] + sorted((ROOT / "docs").rglob("*.md"))


def python_blocks(path: Path) -> list:
    """``(line, source, is_fragment)`` for each ```python block; ``line`` is the fence's (1-based)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        fence = re.match(r"^(\s*)(`{3,}|~{3,})\s*(python|py)\s*$", lines[i])
        if not fence:
            i += 1
            continue
        indent, marks = fence.group(1), fence.group(2)
        body, j = [], i + 1
        while j < len(lines) and lines[j].strip() != marks:
            body.append(lines[j][len(indent):] if lines[j].startswith(indent) else lines[j])
            j += 1
        previous = lines[i - 1].strip() if i > 0 else ""
        blocks.append((i + 1, "\n".join(body) + "\n", previous == FRAGMENT))
        i = j + 1
    return blocks


SNIPPETS = [(path, *block) for path in markdown_files() for block in python_blocks(path)]


def _name(path: Path, line: int) -> str:
    return f"{path.relative_to(ROOT)}:{line}"


@pytest.mark.parametrize("path, line, source, fragment", SNIPPETS, ids=[_name(p, n) for p, n, *_ in SNIPPETS])
def test_snippet_runs(path, line, source, fragment, tmp_path, monkeypatch):
    name = _name(path, line)
    if fragment:
        pytest.skip(f"{name} is marked {FRAGMENT}")
    monkeypatch.chdir(tmp_path)  # whatever the snippet writes lands here
    monkeypatch.setenv("MPLBACKEND", "Agg")
    code = compile(source, name, "exec")  # a traceback points at the file and the block's line
    exec(code, {"__name__": "__main__"})


def test_snippets_were_found():
    assert any(p.name == "README.md" for p, *_ in SNIPPETS), "the README's 'Use it' block was not found"


def test_a_fragment_marker_precedes_a_python_block():
    """A ``<!-- fragment -->`` line followed by anything but a ```python fence marks nothing:
    the block it was meant for would run (or the marker is stale)."""
    stray = []
    for path in markdown_files():
        lines = path.read_text(encoding="utf-8").splitlines()
        for i, text in enumerate(lines):
            if text.strip() == FRAGMENT:
                following = lines[i + 1].strip() if i + 1 < len(lines) else ""
                if not re.match(r"^(`{3,}|~{3,})\s*(python|py)$", following):
                    stray.append(f"{_name(path, i + 1)} (followed by {following!r})")
    assert not stray, f"{FRAGMENT} must stand right before a ```python fence: {stray}"


# ---------------------------------------------------------------------------
# nothing points outside the repository
# ---------------------------------------------------------------------------


def tracked_text_files() -> list:
    """The repository's text files: what git tracks, or (no git) every file outside hidden and build folders."""
    suffixes = {".md", ".py", ".ipynb", ".toml", ".cfg", ".yml", ".yaml", ".txt", ".cff"}
    try:
        names = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        skip = {"site", "build", "dist", "__pycache__"}
        names = [p.relative_to(ROOT).as_posix() for p in ROOT.rglob("*")
                 if not any(part.startswith(".") or part in skip for part in p.relative_to(ROOT).parts)]
    return [ROOT / f for f in names if Path(f).suffix in suffixes and (ROOT / f).is_file()]


LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_no_file_refers_to_a_path_outside_the_repository():
    """Relative links in Markdown (and Markdown cells) resolve inside the repository, and no
    file names the source article's path outside it (claims are listed in docs/claims.md)."""
    outside = []
    for path in tracked_text_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        if re.search(r"shared[/\\]seed", text):  # the source article's folder, outside the repository
            outside.append(f"{path.relative_to(ROOT)}: names the article's folder outside the repository")
        if path.suffix in (".md", ".ipynb"):
            for target in LINK.findall(text):
                if re.match(r"^[a-z]+:", target) or target.startswith("#"):
                    continue  # a URL or an anchor
                resolved = (path.parent / target.split("#")[0]).resolve()
                if ROOT not in resolved.parents and resolved != ROOT:
                    outside.append(f"{path.relative_to(ROOT)}: links to {target}")
    assert not outside, "paths outside the repository: " + "; ".join(outside)


# ---------------------------------------------------------------------------
# the README's "backward in 40 lines"
# ---------------------------------------------------------------------------


def _code_lines(source: str, name: str) -> int:
    """Lines of code of the function ``name`` in ``source``: no docstring, comment or blank line."""
    tree = ast.parse(source)
    node = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == name)
    lines = source.splitlines()[node.lineno - 1 : node.end_lineno]
    doc = node.body[0]
    skip = set(range(doc.lineno, doc.end_lineno + 1)) if isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant) else set()
    return sum(
        1 for k, text in enumerate(lines, node.lineno)
        if k not in skip and text.strip() and not text.strip().startswith("#")
    )


def test_readme_backward_in_40_lines():
    """README: "backward in 40 lines" -- ``Tensor.backward`` and the topological sort it walks,
    the bookkeeping apart (``_accumulate``, ``_add_slice``, ``_seed_gradient``)."""
    assert "backward in 40 lines" in (ROOT / "README.md").read_text(), "the README no longer says it; drop this test"
    source = (ROOT / "minilora" / "tensor.py").read_text()
    n = _code_lines(source, "backward") + _code_lines(source, "_topological_order")
    assert n <= 40, f"Tensor.backward + _topological_order are {n} lines of code; the README says 40"


# ---------------------------------------------------------------------------
# what a course needs to adopt it
# ---------------------------------------------------------------------------


def test_license_is_mit_as_pyproject_says():
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "the minilora authors" in text
    assert 'license = { text = "MIT" }' in (ROOT / "pyproject.toml").read_text()


def test_citation_cff_has_what_cff_1_2_0_requires():
    """CFF 1.2.0's required keys and types (the schema's ``required``: cff-version, message,
    title, authors), and the version and license pyproject.toml declares."""
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0"
    assert isinstance(cff["message"], str) and cff["message"]
    assert isinstance(cff["title"], str) and cff["title"]
    assert cff["authors"] and all(("name" in a) or ("family-names" in a) for a in cff["authors"])
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f'version = "{cff["version"]}"' in pyproject
    assert cff["license"] == "MIT"
    assert cff.get("type", "software") == "software"
    for ref in cff.get("references", []):
        assert {"type", "title", "authors"} <= set(ref), f"a reference lacks a required key: {ref.get('title')}"


# ---------------------------------------------------------------------------
# docs/claims.md against the code
# ---------------------------------------------------------------------------


def _claim_sections() -> dict:
    """``{number: (key, section text)}`` from docs/claims.md's ``## N. Title (`key`)`` headings."""
    text = (ROOT / "docs" / "claims.md").read_text(encoding="utf-8")
    parts = re.split(r"^## (\d+)\. .*\(`([a-z0-9_]+)`\)\s*$", text, flags=re.M)
    return {int(parts[i]): (parts[i + 1], parts[i + 2]) for i in range(1, len(parts), 3)}


def test_claims_md_lists_every_claim_with_its_number_key_module_and_thresholds():
    from minilora.verify import claim_modules

    sections = _claim_sections()
    claims = claim_modules()
    assert sorted(sections) == sorted(m.NUMBER for m in claims.values()), f"docs/claims.md has sections {sorted(sections)}"
    for key, module in claims.items():
        number, module_name = module.NUMBER, module.__name__
        doc_key, section = sections[number]
        assert doc_key == key, f"docs/claims.md claim {number} is `{doc_key}`, the claim module says `{key}`"
        path = module_name.replace(".", "/") + ".py"
        assert path in section, f"docs/claims.md claim {number} ({key}) does not name {path}"
        constants = {n for n in vars(module) if re.fullmatch(r"[A-Z_]+_(HOLDS|PARTLY)", n)}
        stated = dict(re.findall(r"`([A-Z_]+)` = ([0-9.e+-]+)", section))
        missing = constants - set(stated)
        assert not missing, f"docs/claims.md claim {number} ({key}) does not state {sorted(missing)}"
        for name, value in stated.items():
            assert hasattr(module, name), f"docs/claims.md claim {number}: {module_name} has no {name}"
            assert float(getattr(module, name)) == float(value), (
                f"docs/claims.md claim {number}: {name} = {value}, but {module_name}.{name} = {getattr(module, name)}")


def _words(text: str) -> list:
    return re.findall(r"[a-z0-9]+", text.lower().replace("\u2019", "'"))


def test_no_sentence_of_the_source_article_is_copied():
    """No run of 8 consecutive words of the source article appears in a tracked file: claims are
    restated in our own words. The article is not in the repository; tests/data holds only a hash
    of each of its 8-word runs."""
    import hashlib
    import json

    lines = (ROOT / "tests" / "data" / "article_8word_hashes.txt").read_text().splitlines()
    hashes = {h for h in lines if h and not h.startswith("#")}
    copied = []
    for path in tracked_text_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        if path.suffix == ".ipynb":  # the cells' text, not the JSON around it
            text = "\n".join("".join(c["source"]) for c in json.loads(text)["cells"])
        w = _words(text)
        for i in range(len(w) - 7):
            if hashlib.sha256(" ".join(w[i : i + 8]).encode()).hexdigest()[:16] in hashes:
                copied.append(f"{path.relative_to(ROOT)}: \"{' '.join(w[i:i + 8])} ...\"")
                break
    assert not copied, "sentences of the source article copied (restate them; docs/claims.md): " + "; ".join(copied)
