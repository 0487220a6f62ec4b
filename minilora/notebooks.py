"""Run the notebooks, and make the course's student versions.

``python -m minilora.notebooks --execute-in-place`` (what ``make notebooks`` does): each
notebook is executed in a fresh kernel, in full mode unless MINILORA_QUICK=1, and its
outputs are saved back into the file -- the outputs that are committed.

``python -m minilora.notebooks --exercises DIR [NAMES]`` (what ``make exercises`` does):
``DIR`` becomes the course's nbgrader folder, one assignment per course notebook, with the
student versions in ``DIR/release/`` (``minilora.course``; docs/course.md). Naming
notebooks regenerates only their assignments.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from minilora.course import NOTEBOOKS, assignments, make_exercises


def execute(path: Path, timeout: int = 7200) -> None:
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    nbformat.write(nb, path)


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
        chosen = [name for name, notebooks in assignments().items() if set(notebooks) & set(paths)]
        if args.names and not chosen:
            parser.error(f"no course notebook among {', '.join(args.names)}; the course has {', '.join(assignments())}")
        release = make_exercises(args.exercises, chosen if args.names else None)
        print(f"the course folder {release.parent} (nbgrader_config.py, source/, release/); student versions:")
        print("\n".join(f"  {p.relative_to(release)}" for name in chosen for p in sorted((release / name).glob("*.ipynb"))))
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
