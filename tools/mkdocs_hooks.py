"""MkDocs hooks: the site is the repository as it is, README, docs/ and notebooks/, with no nav list to keep.

``mkdocs build --strict`` (``make docs``) runs ``on_config`` first, which

1. stages the pages into a temporary folder, laid out as in the repository, so that every
   relative link written for GitHub works unchanged: README.md becomes the home page
   (``index.md``), docs/**/*.md and notebooks/*.ipynb keep their paths (notebooks are
   rendered by mkdocs-jupyter: the claim reports with their committed outputs, the course
   notebooks as students receive them -- nbgrader's student version, no solution, no
   hidden test, no output); and copies MathJax (the ``jupyter-server-mathjax`` package's
   copy: the site typesets its equations offline) to ``assets/mathjax/``;
2. turns every relative link to a file of the repository that is not a page -- source code
   (``../minilora/tensor.py``), tests, pyproject.toml, a folder (``minilora/peft``) -- into a
   link to a generated HTML page (``minilora/tensor.py.html``) that shows that file,
   highlighted by Pygments with an anchor per line (a folder: the list of its files). The site so holds the code it links to and
   works offline; MkDocs checks these links like any other (the pages are files of the site);
3. builds the nav from the pages it found, in name order within SECTIONS: Home, the Course
   (docs/course.md and the numbered notebooks), the claims with their reports, and how
   minilora works (the other docs). A new page needs no edit anywhere.

A link to something that does not exist is left as written: in a Markdown page MkDocs
reports it (a warning, which ``--strict`` turns into a failed build); in a notebook, which
MkDocs does not check, this hook reports it the same way.
"""

from __future__ import annotations

import fnmatch
import html
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path, PurePosixPath

import nbformat
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import TextLexer, get_lexer_for_filename
from pygments.util import ClassNotFound

from minilora.course import LINK, student_version

log = logging.getLogger("mkdocs.hooks.minilora")

ROOT = Path(__file__).resolve().parent.parent
IMAGES = {".png", ".jpg", ".jpeg", ".gif", ".svg", ".pdf"}
COURSE = "notebooks/[0-9][0-9]_*.ipynb"  # the course notebooks: shown as students receive them
# The nav's sections, in order: (title, patterns of the pages it holds); a page goes in the first that matches
SECTIONS = [
    ("Course", ["docs/course.md", COURSE]),
    ("Claims and reports", ["docs/claims.md", "docs/report/*.md", "notebooks/*.ipynb"]),
    ("How minilora works", ["docs/*.md"]),
]
MATHJAX = "assets/mathjax"  # where the site's copy of MathJax lies (mkdocs.yml loads it on every page)

_staged: list = []  # temporary folders of this process's builds, removed after each build


def pages() -> list:
    """The site's pages as repository paths: README.md, docs/**/*.md, notebooks/*.ipynb."""
    docs = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").rglob("*.md"))
    notebooks = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "notebooks").glob("*.ipynb"))
    return ["README.md"] + docs + notebooks


def site_path(repo_path: str) -> str:
    """Where a page lies in the staged docs folder: README.md is the home page."""
    return "index.md" if repo_path == "README.md" else repo_path


def _is_text(path: Path) -> bool:
    """A file to show as code: UTF-8 without NUL bytes, under 1 MB."""
    if path.stat().st_size > 1_000_000:
        return False
    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return b"\0" not in data


class Stager:
    """Copies pages into ``out`` with their links rewritten, and writes the code pages they need."""

    def __init__(self, out: Path, notebook_suffix: str):
        self.out = out
        self.page_paths = set(pages())
        self.notebook_suffix = notebook_suffix  # what a link from a notebook to a page ends in (".html")
        self.generated: set = set()

    def target(self, page: str, link: str, in_notebook: bool) -> str | None:
        """The rewritten link, or None to leave it as written (a URL, an anchor, not a repository path)."""
        if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", link) or link.startswith(("#", "/")):
            return None
        path_part, hash_, anchor = link.partition("#")
        here = PurePosixPath(page).parent
        resolved = Path(os.path.normpath(ROOT / here / path_part))
        if ROOT != resolved and ROOT not in resolved.parents:
            return None
        repo_path = resolved.relative_to(ROOT).as_posix() if resolved != ROOT else "."
        if not resolved.exists():
            if in_notebook:
                log.warning("Doc file '%s' contains a link '%s', but the target is not found.", page, link)
            return None
        if repo_path == ".":  # the repository itself: the home page
            dest = "index.md" if not in_notebook else "index" + self.notebook_suffix
        elif repo_path in self.page_paths:
            dest = site_path(repo_path)
            if in_notebook:  # MkDocs does not rewrite links inside a notebook's HTML: give the page's URL
                dest = str(PurePosixPath(dest).with_suffix(self.notebook_suffix))
        elif resolved.is_dir():
            dest = self.folder_page(repo_path)
        elif resolved.suffix.lower() in IMAGES or not _is_text(resolved):
            dest = self.copy(repo_path)
        else:
            dest = self.code_page(repo_path)
            anchor = re.sub(r"^L(\d+)$", r"L-\1", anchor)  # GitHub's line anchor #L12 is Pygments' #L-12
        return os.path.relpath(dest, site_path(page).rpartition("/")[0] or ".") + (hash_ + anchor)

    def rewrite(self, page: str, text: str, in_notebook: bool = False) -> str:
        def one(match):
            new = self.target(page, match.group(2), in_notebook)
            return match.group(0) if new is None else match.group(1) + new + match.group(3)

        return LINK.sub(one, text)

    def copy(self, repo_path: str) -> str:
        dest = self.out / repo_path
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / repo_path, dest)
        return repo_path

    def code_page(self, repo_path: str) -> str:
        """A standalone HTML page showing the file ``repo_path``, highlighted by Pygments, each
        line with an anchor (``#L-12``; a link's ``#L12``, GitHub's form, is rewritten to it); returns its path. Plain HTML, not a MkDocs page: the
        pages stay out of the search index and the build stays fast."""
        page = repo_path + ".html"
        if page not in self.generated:
            self.generated.add(page)
            path = ROOT / repo_path
            try:
                lexer = get_lexer_for_filename(path.name)
            except ClassNotFound:
                lexer = TextLexer()
            text = path.read_text(encoding="utf-8", errors="replace")
            formatter = HtmlFormatter(linenos="table", lineanchors="L", anchorlinenos=True, wrapcode=True)
            body = highlight(text, lexer, formatter)
            self.write_html(page, repo_path, f"<style>{formatter.get_style_defs('.highlight')}</style>\n{body}")
        return page

    def folder_page(self, repo_path: str) -> str:
        """A standalone HTML page listing the files of the folder ``repo_path``, each linked to its code page."""
        page = f"{repo_path}/index.html"
        if page not in self.generated:
            self.generated.add(page)
            items = []
            for child in sorted((ROOT / repo_path).iterdir()):
                if child.name.startswith((".", "__pycache__")) or child.suffix == ".pyc":
                    continue
                child_path = child.relative_to(ROOT).as_posix()
                if child_path in self.page_paths:  # a page of the site (a notebook): its page, not its source
                    dest = str(PurePosixPath(site_path(child_path)).with_suffix(".html"))
                elif child.is_dir():
                    dest = self.folder_page(child_path)
                elif _is_text(child):
                    dest = self.code_page(child_path)
                else:  # a checkpoint's weights: listed with its size, not copied into the site
                    items.append(f"<li><code>{html.escape(child.name)}</code> ({child.stat().st_size:,} bytes)</li>")
                    continue
                name = html.escape(child.name + ("/" if child.is_dir() else ""))
                items.append(f'<li><a href="{os.path.relpath(dest, repo_path)}"><code>{name}</code></a></li>')
            self.write_html(page, repo_path + "/", "<ul>\n" + "\n".join(items) + "\n</ul>")
        return page

    def write_html(self, page: str, title: str, body: str) -> None:
        home = os.path.relpath("index.html", PurePosixPath(page).parent.as_posix())
        doc = (f'<!doctype html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)} - minilora</title>'
               '<style>body{font-family:sans-serif;margin:1.5em} pre{margin:0} td.linenos{padding-right:1em;'
               'text-align:right;user-select:none} td.linenos a{color:#999;text-decoration:none}</style></head>\n'
               f'<body><p><a href="{home}">minilora</a> / <code>{html.escape(title)}</code></p>\n{body}\n</body></html>\n')
        (self.out / page).parent.mkdir(parents=True, exist_ok=True)
        (self.out / page).write_text(doc, encoding="utf-8")

    def stage(self) -> None:
        for repo_path in sorted(self.page_paths):
            dest = self.out / site_path(repo_path)
            dest.parent.mkdir(parents=True, exist_ok=True)
            if repo_path.endswith(".ipynb"):
                nb = nbformat.read(ROOT / repo_path, as_version=4)
                if fnmatch.fnmatch(repo_path, COURSE):
                    nb = student_version(nb)
                for cell in nb.cells:
                    if cell.cell_type == "markdown":
                        cell.source = self.rewrite(repo_path, cell.source, in_notebook=True)
                nbformat.write(nb, dest)
            else:
                dest.write_text(self.rewrite(repo_path, (ROOT / repo_path).read_text(encoding="utf-8")), encoding="utf-8")
        shutil.copytree(mathjax_folder(), self.out / MATHJAX)
        (self.out / MATHJAX / "config" / "local").mkdir()
        shutil.copyfile(Path(__file__).with_name("mathjax-local.js"), self.out / MATHJAX / "config" / "local" / "minilora.js")
        shutil.copyfile(Path(__file__).with_name("mathjax-config.js"), self.out / "assets" / "mathjax-config.js")


def mathjax_folder() -> Path:
    """MathJax 2.7 as the jupyter-server-mathjax package ships it (Jupyter's offline copy; its
    LICENSE, Apache 2.0, is in the folder). Version 2 is what nbconvert's notebook pages configure."""
    import jupyter_server_mathjax

    return Path(jupyter_server_mathjax.__file__).parent / "static"


def section(repo_path: str) -> str:
    """The title of the nav section that holds a page (SECTIONS)."""
    for title, patterns in SECTIONS:
        if any(fnmatch.fnmatch(repo_path, pattern) for pattern in patterns):
            return title
    raise ValueError(f"{repo_path} matches no section of the nav (tools/mkdocs_hooks.py, SECTIONS)")


def nav() -> list:
    """Home, then the SECTIONS in order, each page titled by MkDocs (its first heading), in name order."""
    sections: dict = {title: [] for title, _ in SECTIONS}
    for repo_path in pages()[1:]:
        sections[section(repo_path)].append(site_path(repo_path))
    return [{"Home": "index.md"}] + [{title: entries} for title, entries in sections.items() if entries]


def on_config(config):
    if config["use_directory_urls"]:
        raise ValueError("mkdocs.yml: use_directory_urls must be false (links inside notebooks are rewritten to .html pages)")
    out = Path(tempfile.mkdtemp(prefix="minilora-site-"))
    _staged.append(out)
    Stager(out, ".html").stage()
    config["docs_dir"] = str(out)
    config["nav"] = nav()
    return config


def on_post_build(config):
    while _staged:
        shutil.rmtree(_staged.pop(), ignore_errors=True)
