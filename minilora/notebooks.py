"""Run the notebooks, and make the course's student versions.

``python -m minilora.notebooks --execute-in-place`` (what ``make notebooks`` does): each
notebook is executed in a fresh kernel, in full mode unless MINILORA_QUICK=1, and its
outputs are saved back into the file -- the outputs that are committed.

``python -m minilora.notebooks --exercises DIR`` (what ``make exercises`` does): the
numbered course notebooks (``notebooks/01_autograd.ipynb`` ...) are nbgrader source
notebooks; nbgrader's ``generate_assignment`` writes their student versions -- solutions
replaced by nbgrader's stub, outputs cleared -- to ``DIR/release/minilora-course/``.
``DIR`` is an nbgrader course directory (``source/``, ``release/``, ``gradebook.db``), so
an instructor can go on from there with nbgrader's other commands (docs/course.md).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
ASSIGNMENT = "minilora-course"  # the nbgrader assignment that holds the course notebooks


def execute(path: Path, timeout: int = 7200) -> None:
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    nbformat.write(nb, path)


def course_notebooks(folder: Path = NOTEBOOKS) -> list:
    """The numbered course notebooks, in order: ``01_autograd.ipynb`` ... (the claim notebooks have no number)."""
    return sorted(folder.glob("[0-9][0-9]_*.ipynb"))


def make_exercises(out: str | os.PathLike, notebooks=None) -> Path:
    """Student versions of the course notebooks, made with nbgrader; returns the folder holding them.

    ``out`` becomes an nbgrader course directory: the notebooks are copied to
    ``out/source/minilora-course/`` and ``nbgrader generate_assignment`` writes the student
    versions to ``out/release/minilora-course/`` (earlier versions there are replaced).
    """
    try:
        import nbgrader  # noqa: F401
    except ImportError:
        raise RuntimeError("making the exercises needs nbgrader: pip install -e '.[course]' (make exercises does)") from None
    root = Path(out).resolve()
    notebooks = course_notebooks() if notebooks is None else [Path(p) for p in notebooks]
    if not notebooks:
        raise ValueError(f"no course notebook (NN_name.ipynb) in {NOTEBOOKS}")
    source, release = root / "source" / ASSIGNMENT, root / "release" / ASSIGNMENT
    for folder in (source, release):
        shutil.rmtree(folder, ignore_errors=True)
    source.mkdir(parents=True)
    for path in notebooks:
        shutil.copy2(path, source / path.name)
    # nbgrader runs `alembic` (its database migrations) as a program: the venv's bin/ must be on PATH
    env = dict(os.environ, PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))
    command = [sys.executable, "-m", "nbgrader", "generate_assignment", ASSIGNMENT, "--force",
               f"--CourseDirectory.root={root}"]
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"nbgrader generate_assignment failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return release


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--execute-in-place", action="store_true", help="run each notebook and save its outputs")
    parser.add_argument("--exercises", metavar="DIR", help="write the course's student versions (nbgrader) under DIR")
    parser.add_argument("names", nargs="*", help="notebook names (default: all)")
    args = parser.parse_args(argv)
    paths = [NOTEBOOKS / (n if n.endswith(".ipynb") else n + ".ipynb") for n in args.names] or sorted(NOTEBOOKS.glob("*.ipynb"))
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        parser.error(f"no such notebook: {', '.join(missing)}")
    if args.exercises:
        course = [p for p in paths if p in course_notebooks()] if args.names else None
        release = make_exercises(args.exercises, course)
        print(f"student versions in {release}:")
        print("\n".join(f"  {p.name}" for p in sorted(release.glob("*.ipynb"))))
        return 0
    if not args.execute_in_place:
        print("\n".join(str(p) for p in paths))
        return 0
    for path in paths:
        print(f"running {path.name} ...", flush=True)
        execute(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
