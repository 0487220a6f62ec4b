"""The course's exercises, in both directions (docs/course.md).

The course notebooks (notebooks/01_autograd.ipynb ...) are nbgrader source notebooks:
each exercise is a named function in a *solution* cell (its body between
``### BEGIN SOLUTION`` and ``### END SOLUTION``), followed by autograded *test* cells
that call ``minilora.exercises.check``.

* With the solutions in place, every test cell passes: tests/test_notebooks.py executes
  each course notebook in quick mode, and a failing test cell fails that run.
* Here the student versions are made with nbgrader itself (``make_exercises``, what
  ``make exercises`` runs) and executed: everything before the first exercise must
  still run, and every exercise's test must fail, naming its exercise -- a test that
  passes without a solution could not tell a student anything.
"""

import re

import nbformat
import pytest
from nbclient import NotebookClient

from minilora.exercises import ExerciseError, check, check_true
from minilora.notebooks import course_notebooks, make_exercises

COURSE = course_notebooks()
EXPECTED = ["01_autograd", "02_transformer", "03_lora_by_hand", "04_adapters_in_practice", "05_intrinsic_rank", "06_qlora"]
EXERCISE_ID = re.compile(r"^ex(\d+)_(\d+)_")  # grade_id "ex3_2_lora_grads" is exercise 3.2


def nbgrader(cell) -> dict:
    return cell.metadata.get("nbgrader", {})


def exercise_number(cell) -> str:
    match = EXERCISE_ID.match(nbgrader(cell)["grade_id"])
    assert match, f"grade_id {nbgrader(cell)['grade_id']!r} does not name an exercise as exN_M_name"
    return f"{match[1]}.{match[2]}"


def unsolved():
    raise NotImplementedError()  # nbgrader's stub


@pytest.mark.parametrize("compute, message", [
    (unsolved, "exercise 9.1 f is not solved yet (its function still raises NotImplementedError); expected: twice x"),
    (lambda: [[2.0, 4.0]], "exercise 9.1 f: expected twice x, shape (2,); got shape (1, 2)"),
    (lambda: [2.0, 5.0], "exercise 9.1 f: expected twice x; 1 of 2 values are off (largest difference 1,"),
    (lambda: [2.0, float("nan")], "exercise 9.1 f: expected twice x; got NaN or infinite values"),
    (lambda: {"a": 1}, "exercise 9.1 f: expected twice x; got a dict, not numbers"),
])
def test_check_names_the_exercise_and_what_it_expected(compute, message):
    with pytest.raises(ExerciseError) as err:
        check("9.1 f", compute, [2.0, 4.0], expects="twice x")
    assert str(err.value).startswith(message), str(err.value)
    assert isinstance(err.value, AssertionError)  # nbgrader counts it as a failed test


def test_check_passes_a_solution(capsys):
    check("9.1 f", lambda: [2.0, 4.0 + 1e-9], [2.0, 4.0], expects="twice x")
    check_true("9.2 g", lambda: True, expects="a property")
    assert capsys.readouterr().out == "exercise 9.1 f: passed\nexercise 9.2 g: passed\n"
    with pytest.raises(ExerciseError, match="exercise 9.2 g: expected a property; the result does not have that property"):
        check_true("9.2 g", lambda: False, expects="a property")
    with pytest.raises(ExerciseError, match="exercise 9.2 g is not solved yet"):
        check_true("9.2 g", unsolved, expects="a property")


def test_the_course_is_there():
    assert [p.stem for p in COURSE] == EXPECTED


@pytest.mark.parametrize("path", COURSE, ids=[p.stem for p in COURSE])
def test_exercises_are_marked_in_nbgraders_format(path):
    cells = nbformat.read(path, as_version=4).cells
    solutions = [c for c in cells if nbgrader(c).get("solution")]
    tests = [c for c in cells if nbgrader(c).get("grade")]
    assert len(solutions) >= 2, f"{path.name}: a course notebook has a few exercises, found {len(solutions)}"
    ids = [nbgrader(c)["grade_id"] for c in solutions + tests]
    assert len(ids) == len(set(ids)), f"{path.name}: grade_ids must be unique: {ids}"
    chapter = path.name[:2].lstrip("0")
    for cell in solutions:
        number = exercise_number(cell)
        assert number.split(".")[0] == chapter, f"{path.name}: exercise {number} belongs to another notebook"
        assert "### BEGIN SOLUTION" in cell.source and "### END SOLUTION" in cell.source
        assert cell.source.lstrip().startswith("def "), f"exercise {number}: the solution must be a named function"
        own_tests = [t for t in tests if exercise_number(t) == number]
        assert own_tests, f"{path.name}: exercise {number} has no autograded test cell"
        for t in own_tests:
            assert f'"{number} ' in t.source, f"exercise {number}: its test must check under the exercise's number"
            assert cells.index(t) > cells.index(cell), f"exercise {number}: the test comes after the solution"
        assert nbgrader(cell)["schema_version"] == 3 and nbgrader(own_tests[0])["points"] > 0


@pytest.fixture(scope="module")
def student_versions(tmp_path_factory):
    return make_exercises(tmp_path_factory.mktemp("exercises"))


@pytest.mark.parametrize("path", COURSE, ids=[p.stem for p in COURSE])
def test_student_version_fails_each_exercise_by_name(path, student_versions, tmp_path, monkeypatch):
    student = student_versions / path.name
    assert student.exists(), f"nbgrader made no student version of {path.name}"
    nb = nbformat.read(student, as_version=4)
    assert not any("BEGIN SOLUTION" in c.source for c in nb.cells), "a solution was left in the student version"
    assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), "the student version keeps outputs"
    first = next(i for i, c in enumerate(nb.cells) if nbgrader(c).get("solution"))
    last_test = max(i for i, c in enumerate(nb.cells) if nbgrader(c).get("grade"))
    nb.cells = nb.cells[: last_test + 1]  # what follows the last exercise test is not needed here

    monkeypatch.setenv("MINILORA_QUICK", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    NotebookClient(nb, timeout=600, kernel_name="python3", allow_errors=True,
                   resources={"metadata": {"path": str(tmp_path)}}).execute()

    def errors(cell):
        return [o for o in cell.get("outputs", []) if o.output_type == "error"]

    for i, cell in enumerate(nb.cells[:first]):
        assert not errors(cell), f"{path.name}: cell {i}, before the first exercise, fails: {errors(cell)[0].evalue}"
    for cell in nb.cells:
        if not nbgrader(cell).get("grade"):
            continue
        number = exercise_number(cell)
        found = errors(cell)
        assert found, f"{path.name}: the test of exercise {number} passes without a solution"
        assert found[0].ename == "ExerciseError", f"exercise {number}'s test fails with {found[0].ename}: {found[0].evalue}"
        assert f"exercise {number} " in found[0].evalue and "not solved" in found[0].evalue, found[0].evalue
