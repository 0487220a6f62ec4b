"""Every notebook runs, in quick mode, and ends by asserting what it shows.

The notebooks are committed with the outputs of a full run; here each is executed
from scratch with MINILORA_QUICK=1 (smaller sizes, same code path), in a fresh
kernel, so a notebook that no longer matches the library fails the suite.

The course notebooks (01_autograd ... 10_capstone) are run once, by nbgrader: grading the
reference solutions in tests/test_course.py executes each of them in quick mode and
checks that every cell runs, the last (which asserts what the notebook shows) included.
"""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from minilora.course import course_notebooks

NOTEBOOKS = sorted(set((Path(__file__).parent.parent / "notebooks").glob("*.ipynb")) - set(course_notebooks()))


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/ holds no notebook"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_in_quick_mode(path, tmp_path, monkeypatch):
    monkeypatch.setenv("MINILORA_QUICK", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(path, as_version=4)
    last_code = [c for c in nb.cells if c.cell_type == "code"][-1]
    assert "assert" in last_code.source, f"{path.name}: the last code cell must assert what the notebook shows"
    client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
