"""The course as an instructor grades it: an nbgrader course folder, and its exercises read from the notebooks.

The course is a four-week module (docs/course.md is its syllabus): ``WEEKS`` names each
week's assignment and the numbered notebooks it holds (``notebooks/01_autograd.ipynb`` ...).
Those are nbgrader *source* notebooks: each exercise is a function (or a class) in a solution
cell (between ``### BEGIN SOLUTION`` and ``### END SOLUTION``), followed by a test cell whose
hidden tests (between ``### BEGIN HIDDEN TESTS`` and ``### END HIDDEN TESTS``) come first and
whose visible tests follow; its points are the test cell's. A *written* question is one
manually graded answer cell (``written``): the model answer and its rubric, which the release
replaces by nbgrader's stub and an instructor grades by the rubric.

``make_exercises(DIR)`` (what ``make exercises`` runs) makes ``DIR`` an nbgrader course folder::

    DIR/nbgrader_config.py         the course's settings: its id, the per-cell time limit, quick mode
    DIR/source/week1/              one assignment per week (WEEKS): its notebooks, as nbgrader reads them
    DIR/release/week1/             the student version: no solution, no hidden test, no output
    DIR/gradebook.db

Regenerating some assignments (``names=``) leaves the others as they were. The instructor
goes on from there with nbgrader's own commands, run in ``DIR`` (``nbgrader autograde``,
``nbgrader generate_feedback`` ...).

``student_version(nb)`` is what the release holds, made in this process (the docs site shows
it), and ``HiddenTests`` runs the hidden tests of one notebook in this process, against the
reference solutions or against others given as source text -- how the tests check that each
mistake of their catalogue fails its exercise's hidden test, and only that one.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import types
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"

# [text](target) and ![alt](target), the target without spaces; an optional "title" after it
LINK = re.compile(r"(!?\[[^\]]*\]\()([^)\s]+)((?:\s+\"[^\"]*\")?\))")
EXERCISE_ID = re.compile(r"^ex(\d+)_(\d+)_")  # grade_id "ex3_2_lora_grads" is exercise 3.2
HIDDEN = re.compile(r"^[ \t]*### BEGIN HIDDEN TESTS[ \t]*\n(.*?)^[ \t]*### END HIDDEN TESTS[ \t]*$", re.S | re.M)
SOLUTION_MARK = re.compile(r"^[ \t]*### (BEGIN|END) SOLUTION[ \t]*\n?", re.M)

# The course folder's nbgrader_config.py. The time limit is per cell: a cell still running
# after it is interrupted, its exercise scores 0 and the notebook goes on (nbgrader's
# Execute preprocessor). Quick mode: the exercises' tests do not depend on how long a
# notebook trains, and in quick mode the slowest cell of the course takes a few seconds.
NBGRADER_CONFIG = '''\
# nbgrader's settings for the minilora course, written by `make exercises` (docs/course.md).
# Run nbgrader's commands in this folder.
import os

c = get_config()  # noqa: F821 (nbgrader defines it)
c.CourseDirectory.course_id = "minilora"
# a cell still running after this many seconds is interrupted: its exercise scores 0 and
# grading goes on with the next cell (an endless loop costs one time limit, not the run)
c.Execute.timeout = {timeout}
# grade in quick mode: the same code with fewer training steps; no exercise's test depends
# on how long a notebook trains (set MINILORA_QUICK=0 before running nbgrader to grade in full)
os.environ.setdefault("MINILORA_QUICK", "1")
'''
CELL_TIMEOUT = 60  # seconds; the slowest course cell in quick mode (the capstone's ablation) takes about 15 s on a laptop CPU


# The module's weekly assignments, in order: name -> its notebooks, in the order they are read
# (docs/course.md gives each week's objectives, points and hours).
WEEKS = {
    "week1": ("01_autograd", "02_transformer"),  # the engine and the transformer
    "week2": ("03_lora_by_hand", "04_lora_layer"),  # LoRA by hand, then as a layer in a model
    "week3": ("05_training_and_files", "06_adapters_in_practice", "07_intrinsic_rank"),  # train it, ship it, why it works
    "week4": ("08_dora", "09_qlora", "10_capstone"),  # beyond LoRA, and the capstone
}


def course_notebooks(folder: Path = NOTEBOOKS) -> list:
    """The numbered course notebooks, in order: ``01_autograd.ipynb`` ... (the claim notebooks have no number)."""
    return sorted(folder.glob("[0-9][0-9]_*.ipynb"))


def assignments(folder: Path = NOTEBOOKS) -> dict:
    """The course's nbgrader assignments, one per week, in order: name -> the paths of its notebooks."""
    return {week: [folder / f"{stem}.ipynb" for stem in stems] for week, stems in WEEKS.items()}


# --- the exercises of a source notebook ---------------------------------------------------


def nbgrader(cell) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {})


def is_written(cell) -> bool:
    """A manually graded answer (nbgrader's solution cell that is also a grade cell): a written question."""
    return bool(nbgrader(cell).get("solution") and nbgrader(cell).get("grade"))


def exercise_number(cell) -> str:
    """"ex3_2_lora_grads" -> "3.2"."""
    grade_id = nbgrader(cell).get("grade_id", "")
    match = EXERCISE_ID.match(grade_id)
    if not match:
        raise ValueError(f"grade_id {grade_id!r} does not name an exercise as exN_M_name")
    return f"{match[1]}.{match[2]}"


def hidden_part(source: str) -> str:
    """The code between a test cell's hidden-test markers ('' if it has none)."""
    return "".join(match.group(1) for match in HIDDEN.finditer(source))


def without_markers(source: str) -> str:
    """A solution cell as a student would write it: the reference, without nbgrader's markers."""
    return SOLUTION_MARK.sub("", source)


@dataclass
class Exercise:
    number: str  # "1.2"
    solution: str  # the solution cell's source, with nbgrader's markers
    tests: list  # the sources of its autograded test cells
    points: float = 0.0  # its test cells' points together

    @property
    def hidden(self) -> str:
        return "".join(hidden_part(t) for t in self.tests)


def exercises(path) -> list:
    """The autograded exercises of a source notebook, in order (the written questions are ``written``'s)."""
    import nbformat

    found = {}
    for cell in nbformat.read(path, as_version=4).cells:
        if is_written(cell):
            continue
        if nbgrader(cell).get("solution") and cell.cell_type == "code":
            found[exercise_number(cell)] = Exercise(exercise_number(cell), cell.source, [])
        elif nbgrader(cell).get("grade"):
            exercise = found[exercise_number(cell)]
            exercise.tests.append(cell.source)
            exercise.points += float(nbgrader(cell)["points"])
    return list(found.values())


RUBRIC = re.compile(r"^\*\*Rubric \((\d+) points\)\.\*\*.*", re.S | re.M)  # "**Rubric (5 points).**" to the cell's end


@dataclass
class Written:
    """A written question: its manually graded answer cell, the model answer followed by its rubric."""

    number: str  # "3.4"
    answer: str  # the cell's source in the source notebook
    points: float

    @property
    def rubric(self) -> str:
        """The rubric: from "**Rubric (N points).**" to the end of the answer cell."""
        match = RUBRIC.search(self.answer)
        if not match:
            raise ValueError(f"written question {self.number}: its answer cell has no '**Rubric (N points).**'")
        return match.group(0).strip()


def written(path) -> list:
    """The written questions of a source notebook, in order."""
    import nbformat

    return [Written(exercise_number(cell), cell.source, float(nbgrader(cell)["points"]))
            for cell in nbformat.read(path, as_version=4).cells if is_written(cell)]


def setup_cell(path) -> str:
    """The notebook's first code cell (its imports and settings), IPython's %magics left out."""
    import nbformat

    first = next(c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")
    return "".join(line for line in first.source.splitlines(keepends=True) if not line.lstrip().startswith("%"))


class HiddenTests:
    """The hidden tests of one source notebook, run in this process.

    The notebook's set-up cell runs once, in a fresh module (registered in ``sys.modules``,
    as a notebook's namespace is). ``run(solutions)`` defines every exercise's function --
    the reference, or the source given for its number -- and runs each exercise's hidden
    tests after it, in order, as grading does; it returns ``{number: None (passed) or the
    exception}``. The hidden tests are written so that each needs only the set-up and its own
    exercise's function."""

    def __init__(self, path):
        self.path = Path(path)
        self.exercises = exercises(self.path)
        self.module = types.ModuleType(f"_course_{self.path.stem}")
        sys.modules[self.module.__name__] = self.module
        exec(compile(setup_cell(self.path), f"{self.path.name}: set-up", "exec"), vars(self.module))

    def run(self, solutions: dict | None = None) -> dict:
        namespace, results = vars(self.module), {}
        for exercise in self.exercises:
            source = (solutions or {}).get(exercise.number, exercise.solution)
            exec(compile(source, f"{self.path.name}: exercise {exercise.number}", "exec"), namespace)
        for exercise in self.exercises:
            try:
                exec(compile(exercise.hidden, f"{self.path.name}: hidden tests of {exercise.number}", "exec"), namespace)
            except Exception as err:  # noqa: BLE001 -- what grading would record for this exercise
                results[exercise.number] = err
            else:
                results[exercise.number] = None
        return results

    def close(self) -> None:
        sys.modules.pop(self.module.__name__, None)


# --- the student version ------------------------------------------------------------------


def student_version(nb):
    """The notebook as nbgrader's release makes it: each solution replaced by nbgrader's stub,
    the hidden tests removed, every output cleared (``nb`` is left as it was)."""
    import copy

    from nbgrader.preprocessors import ClearHiddenTests, ClearMarkScheme, ClearOutput, ClearSolutions

    nb, resources = copy.deepcopy(nb), {}
    for step in (ClearSolutions(), ClearHiddenTests(), ClearMarkScheme(), ClearOutput()):
        nb, resources = step.preprocess(nb, resources)
    return nb


def release_links(text: str, notebook: str, folder_of: dict) -> str:
    """Markdown links of a course notebook as they must read in the course folder, where the
    repository is not: a link to another course notebook goes to it in its assignment's folder
    (``../week1/02_transformer.ipynb``; the file alone within one week); a link to any other
    file of the repository becomes its text, naming the file. ``folder_of``: notebook stem -> its
    assignment."""

    def one(match):
        target = match.group(2)
        if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target) or target.startswith(("#", "/")):
            return match.group(0)  # a URL or an anchor
        path_part, hash_, anchor = target.partition("#")
        resolved = PurePosixPath(os.path.normpath(f"notebooks/{path_part}"))
        stem = resolved.stem if resolved.parent.as_posix() == "notebooks" and resolved.suffix == ".ipynb" else None
        if stem in folder_of:
            here, there = folder_of[notebook], folder_of[stem]
            new = resolved.name if here == there else f"../{there}/{resolved.name}"
            return match.group(1) + new + hash_ + anchor + match.group(3)
        text = match.group(1)[match.group(1).index("[") + 1:-2]
        named = resolved.as_posix() if resolved.as_posix() != "." else "minilora's repository"
        return text if named in text.strip("`") else f"{text} (`{named}` in minilora's repository)"

    return LINK.sub(one, text)


def make_exercises(out, names=None, timeout: int = CELL_TIMEOUT) -> Path:
    """Make (or update) the nbgrader course folder ``out``; returns its ``release/`` folder.

    ``names``: the assignments to (re)generate (default: every week of WEEKS); the others'
    source and release folders are left as they are. ``timeout``: the per-cell time limit
    written into ``nbgrader_config.py``.
    """
    import nbformat

    try:
        import nbgrader  # noqa: F401
    except ImportError:
        raise RuntimeError("making the exercises needs nbgrader: pip install -e '.[course]' (make exercises does)") from None
    course = assignments()
    names = list(course) if names is None else list(names)
    unknown = [n for n in names if n not in course]
    if unknown:
        raise ValueError(f"no assignment {', '.join(map(repr, unknown))}; the course has {', '.join(course)}")
    root = Path(out).resolve()
    root.mkdir(parents=True, exist_ok=True)
    (root / "nbgrader_config.py").write_text(NBGRADER_CONFIG.format(timeout=timeout), encoding="utf-8")
    folder_of = {path.stem: name for name, paths in course.items() for path in paths}
    # nbgrader runs `alembic` (its database migrations) as a program: the venv's bin/ must be on PATH
    env = dict(os.environ, PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))
    for name in names:
        source, release = root / "source" / name, root / "release" / name
        for folder in (source, release):
            shutil.rmtree(folder, ignore_errors=True)
        source.mkdir(parents=True)
        for path in course[name]:
            nb = nbformat.read(path, as_version=4)
            for cell in nb.cells:
                if cell.cell_type == "markdown":
                    cell.source = release_links(cell.source, path.stem, folder_of)
            nbformat.write(nb, source / path.name)
    # `nbgrader generate_assignment NAME` for each, in one process (nbgrader takes ~2 s to start):
    # this module's main, run in the course folder, where nbgrader_config.py is
    done = subprocess.run([sys.executable, "-m", "minilora.course", *names], cwd=root, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"nbgrader generate_assignment failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return root / "release"


def _generate_assignments(names) -> None:
    """nbgrader's generate_assignment for each of ``names``, with the course folder's configuration
    (the working directory's nbgrader_config.py): what ``nbgrader generate_assignment NAME --force`` does."""
    from nbgrader.apps import NbGraderAPI
    from traitlets.config.loader import PyFileConfigLoader

    api = NbGraderAPI(config=PyFileConfigLoader("nbgrader_config.py", path=".").load_config())
    for name in names:
        result = api.generate_assignment(name, force=True)
        if not result["success"]:
            raise SystemExit(f"nbgrader generate_assignment {name} failed:\n{result.get('log', '')}\n{result.get('error', '')}")


__all__ = ["CELL_TIMEOUT", "WEEKS", "Exercise", "HiddenTests", "Written", "assignments", "course_notebooks", "exercises",
           "hidden_part", "is_written", "make_exercises", "release_links", "student_version", "without_markers", "written"]


if __name__ == "__main__":  # make_exercises runs this in the course folder
    _generate_assignments(sys.argv[1:])
