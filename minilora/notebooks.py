"""Run the notebooks: ``python -m minilora.notebooks --execute-in-place`` (what ``make notebooks`` does).

Each notebook is executed in a fresh kernel, in full mode unless MINILORA_QUICK=1,
and its outputs are saved back into the file -- the outputs that are committed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def execute(path: Path, timeout: int = 7200) -> None:
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    nbformat.write(nb, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--execute-in-place", action="store_true", help="run each notebook and save its outputs")
    parser.add_argument("names", nargs="*", help="notebook names (default: all)")
    args = parser.parse_args(argv)
    paths = [NOTEBOOKS / (n if n.endswith(".ipynb") else n + ".ipynb") for n in args.names] or sorted(NOTEBOOKS.glob("*.ipynb"))
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        parser.error(f"no such notebook: {', '.join(missing)}")
    if not args.execute_in_place:
        print("\n".join(str(p) for p in paths))
        return 0
    for path in paths:
        print(f"running {path.name} ...", flush=True)
        execute(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
