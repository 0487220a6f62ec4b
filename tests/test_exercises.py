"""The course's exercises, checked in this process (docs/course.md; tests/test_course.py grades them with nbgrader).

The course notebooks (notebooks/01_autograd.ipynb ...) are nbgrader source notebooks: each
exercise is a named function in a *solution* cell, followed by a test cell whose hidden
tests come first and whose visible tests follow.

* ``minilora.exercises``' checks say what went wrong in the exercise's words.
* Every exercise is marked in nbgrader's format, has hidden tests, and its student version
  (made by nbgrader's own preprocessors, as the release is) holds no solution, no hidden
  test, and no import of a function its hidden tests forbid.
* The hidden tests run here, in this process, one notebook's set-up cell at a time: the
  reference solutions pass them all; nbgrader's stub fails each, by name; and each mistake
  of the catalogue (tests/course_mistakes.py) fails its own exercise's hidden test, with
  its message, and no other exercise's.
"""

import ast
import contextlib
import importlib
import io
import re
import warnings

import nbformat
import numpy as np
import pytest

from course_mistakes import MISTAKES, by_exercise
from minilora.course import (
    WEEKS,
    HiddenTests,
    Written,
    assignments,
    course_notebooks,
    exercise_number,
    exercises,
    hidden_part,
    is_written,
    nbgrader,
    setup_cell,
    student_version,
    without_markers,
    written,
)
from minilora.exercises import ExerciseError, check, check_true, fail, forbid, result_of

COURSE = course_notebooks()
EXPECTED = ["01_autograd", "02_transformer", "03_lora_by_hand", "04_lora_layer", "05_training_and_files",
            "06_adapters_in_practice", "07_intrinsic_rank", "08_dora", "09_qlora", "10_capstone"]


def unsolved():
    raise NotImplementedError()  # nbgrader's stub


# --- the checks' messages ---------------------------------------------------------------------


@pytest.mark.parametrize("compute, message", [
    (unsolved, "exercise 9.1 f is not solved yet (its function still raises NotImplementedError); expected: twice x"),
    (lambda: [[2.0, 4.0]], "exercise 9.1 f: expected twice x; got shape (1, 2) instead of (2,) (the same number of values"),
    (lambda: [2.0, 5.0], "exercise 9.1 f: expected twice x; 1 of 2 values are off (largest difference 1,"),
    (lambda: [2.0, float("nan")], "exercise 9.1 f: expected twice x; got NaN or infinite values"),
    (lambda: {"a": 1}, "exercise 9.1 f: expected twice x; got a dict, not numbers"),
    (lambda: [4.0, 8.0], "exercise 9.1 f: x four times, not twice; expected twice x"),
    (lambda: np.ones(2) @ np.ones(3), "exercise 9.1 f: f raised ValueError: matmul: Input operand 1 has a mismatch"),
    (lambda: undefined_function(), "exercise 9.1 f: name 'undefined_function' is not defined -- did the cell that defines f run?"),  # noqa: F821
])
def test_check_names_the_exercise_and_what_it_expected(compute, message):
    with pytest.raises(ExerciseError) as err:
        check("9.1 f", compute, [2.0, 4.0], expects="twice x", mistakes={"x four times, not twice": [4.0, 8.0]})
    assert str(err.value).startswith(message), str(err.value)
    assert isinstance(err.value, AssertionError)  # nbgrader counts it as a failed test


def test_the_expected_shape_is_said_once():
    with pytest.raises(ExerciseError) as err:
        check("9.1 f", lambda: np.zeros((3, 2)), np.zeros((2, 3)), expects="a matrix of shape (N, out) = (2, 3)")
    assert str(err.value) == "exercise 9.1 f: expected a matrix of shape (N, out) = (2, 3); got shape (3, 2) (transposed?)"


def test_check_passes_a_solution(capsys):
    check("9.1 f", lambda: [2.0, 4.0 + 1e-9], [2.0, 4.0], expects="twice x", mistakes={"x": [1.0, 2.0]})
    check_true("9.2 g", lambda: True, expects="a property")
    assert capsys.readouterr().out == "exercise 9.1 f: passed\nexercise 9.2 g: passed\n"
    with pytest.raises(ExerciseError, match="exercise 9.2 g: expected a property; the result does not have that property"):
        check_true("9.2 g", lambda: False, expects="a property")
    with pytest.raises(ExerciseError, match="exercise 9.2 g is not solved yet"):
        check_true("9.2 g", unsolved, expects="a property")


def test_an_interrupted_exercise_and_a_wrong_tuple_are_told_apart():
    def interrupted():
        raise KeyboardInterrupt  # what the grader's per-cell time limit sends
    with pytest.raises(ExerciseError, match="exercise 9.3 h was interrupted before it finished .* an endless loop"):
        result_of("9.3 h", interrupted, expects="a pair")
    with pytest.raises(ExerciseError, match=r"exercise 9.3 h: return a tuple \(y, P\); got a list of 3 items"):
        result_of("9.3 h", lambda: [1, 2, 3], expects="a pair", parts=("y", "P"))
    assert result_of("9.3 h", lambda: (1, 2), expects="a pair", parts=("y", "P")) == (1, 2)


def forbidden_twice(x):
    return np.sum(x) * 2


def student_function(grad):  # a student's function, using a name its cell imported
    return unbroadcast_imported_here(grad, (1,))


from minilora.tensor import unbroadcast as unbroadcast_imported_here  # noqa: E402 -- as a student's cell would


def test_forbid_swaps_a_function_wherever_it_is_bound_and_puts_it_back():
    engine = importlib.import_module("minilora.tensor")  # the module (minilora.tensor is also the function)
    original, backward = engine.unbroadcast, engine.Tensor.backward
    for call in (student_function, lambda grad: engine.unbroadcast(grad, (1,))):
        with pytest.raises(ExerciseError, match="exercise 9.4 must not call unbroadcast: the exercise is to write it yourself"):
            with forbid("9.4", engine.unbroadcast):
                call(np.ones(3))
    with pytest.raises(ExerciseError, match="exercise 9.4 must not call Tensor.backward"):
        with forbid("9.4", engine.Tensor.backward):
            engine.Tensor(np.ones(2), requires_grad=True).sum().backward()
    with pytest.raises(ExerciseError, match=r"exercise 9.4: must not call model\(x\)"):  # caught and swallowed: still found
        with forbid("9.4", (forbidden_twice, "model(x)")):
            with contextlib.suppress(ExerciseError):
                forbidden_twice(np.ones(2))
    assert engine.unbroadcast is original and unbroadcast_imported_here is original and forbidden_twice(np.ones(2)) == 4.0
    assert engine.Tensor.backward is backward
    with pytest.raises(ValueError, match="is not a function of a module or a class"):
        forbid("9.4", lambda: 0)
    with pytest.raises(ExerciseError, match="exercise 9.5: the order"):
        fail("9.5", "the order")


# --- the notebooks, as nbgrader reads them ------------------------------------------------------


def test_the_course_is_there():
    assert [p.stem for p in COURSE] == EXPECTED


def test_each_week_is_an_assignment_and_the_weeks_hold_the_course_in_order():
    weeks = assignments()
    assert list(weeks) == list(WEEKS) and 3 <= len(weeks) <= 4
    assert [p for notebooks in weeks.values() for p in notebooks] == COURSE  # each notebook once, in order
    points = {week: sum(e.points for p in paths for e in exercises(p)) + sum(w.points for p in paths for w in written(p))
              for week, paths in weeks.items()}
    assert all(20 <= total <= 30 for total in points.values()), points  # weeks of comparable weight (docs/course.md)


@pytest.mark.parametrize("path", COURSE, ids=[p.stem for p in COURSE])
def test_exercises_are_marked_in_nbgraders_format(path):
    cells = nbformat.read(path, as_version=4).cells
    solutions = [c for c in cells if nbgrader(c).get("solution") and not is_written(c)]
    tests = [c for c in cells if nbgrader(c).get("grade")]
    assert len(solutions) + len([c for c in cells if is_written(c)]) >= 2, f"{path.name}: a course notebook has a few exercises"
    ids = [nbgrader(c)["grade_id"] for c in solutions + tests]
    assert len(ids) == len(set(ids)), f"{path.name}: grade_ids must be unique: {ids}"
    chapter = path.name[:2].lstrip("0")
    for cell in solutions:
        number = exercise_number(cell)
        assert number.split(".")[0] == chapter, f"{path.name}: exercise {number} belongs to another notebook"
        assert "### BEGIN SOLUTION" in cell.source and "### END SOLUTION" in cell.source
        assert cell.source.lstrip().startswith(("def ", "class ")), f"exercise {number}: the solution must be a named function or class"
        own_tests = [t for t in tests if exercise_number(t) == number and not is_written(t)]
        assert own_tests, f"{path.name}: exercise {number} has no autograded test cell"
        for t in own_tests:
            assert f'"{number} ' in t.source, f"exercise {number}: its test must check under the exercise's number"
            assert cells.index(t) > cells.index(cell), f"exercise {number}: the test comes after the solution"
            # hidden tests first: when grading, a wrong answer's feedback is their diagnosis
            assert t.source.startswith("### BEGIN HIDDEN TESTS"), f"exercise {number}: its test cell must start with hidden tests"
            assert hidden_part(t.source).strip(), f"exercise {number}: its hidden tests are empty"
        assert nbgrader(cell)["schema_version"] == 3 and nbgrader(own_tests[0])["points"] > 0
    last_code = [c for c in cells if c.cell_type == "code"][-1]
    assert "assert" in last_code.source, f"{path.name}: the last code cell must assert what the notebook shows"


def test_the_written_questions_have_a_model_answer_and_a_rubric_that_the_release_leaves_out():
    found = {w.number: (path, w) for path in COURSE for w in written(path)}
    assert len(found) >= 2, "the course has at least two manually graded written questions"
    for number, (path, question) in found.items():
        assert number.split(".")[0] == path.name[:2].lstrip("0"), f"question {number} belongs to another notebook"
        assert question.answer.startswith("**Model answer"), f"question {number}: the cell opens with the model answer"
        rubric = question.rubric
        assert f"({question.points:g} points)" in rubric.splitlines()[0], f"question {number}: the rubric's total is the cell's points"
        items = [int(p) for p in re.findall(r"^- (\d+) points?:", rubric, flags=re.M)]
        assert sum(items) == question.points, f"question {number}: its rubric's items give {sum(items)} of {question.points}"
        student = student_version(nbformat.read(path, as_version=4))
        assert not any("Model answer" in c.source or "**Rubric" in c.source for c in student.cells)
    with pytest.raises(ValueError, match=r"written question 9.9: its answer cell has no '\*\*Rubric \(N points\).\*\*'"):
        Written("9.9", "**Model answer.** x", 1.0).rubric


def code_names(source: str, attributes: bool = True) -> set:
    """Every name a cell imports, and (``attributes``) every attribute it reads (``ir.energy_share`` -> energy_share)."""
    tree = ast.parse("".join(line for line in source.splitlines(True) if not line.lstrip().startswith("%")))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {alias.name.split(".")[-1] for alias in node.names} | {alias.asname for alias in node.names if alias.asname}
        elif isinstance(node, ast.Attribute) and attributes:
            names.add(node.attr)
    return names


def forbidden(hidden: str) -> set:
    """The names of the functions a hidden test forbids (its ``forbid(...)`` calls: F.softmax -> softmax)."""
    names = set()
    for node in ast.walk(ast.parse(hidden)):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "forbid":
            for arg in node.args[1:]:
                target = arg.elts[0] if isinstance(arg, ast.Tuple) else arg
                names.add(target.attr if isinstance(target, ast.Attribute) else target.id)
    return names


@pytest.mark.parametrize("path", COURSE, ids=[p.stem for p in COURSE])
def test_the_student_version_holds_no_solution_and_no_answer_key(path):
    source = nbformat.read(path, as_version=4)
    student = student_version(source)
    assert [c.source for c in source.cells] != [c.source for c in student.cells]
    assert nbformat.read(path, as_version=4) == source, "student_version changed the notebook it was given"
    for cell in student.cells:
        assert "BEGIN SOLUTION" not in cell.source and "HIDDEN TESTS" not in cell.source
        assert not cell.get("outputs"), f"{path.name}: the student version keeps outputs"
    found = {e.number: e for e in exercises(path)}
    assert all(forbidden(e.hidden) for n, e in found.items() if n not in ("1.1", "1.4", "2.3")), \
        "each exercise that re-implements a library function forbids it"
    student_tests = {exercise_number(c): c.source for c in student.cells if nbgrader(c).get("grade")}
    for number, exercise in found.items():
        # a forbidden library function that shares its name with one the exercise defines (4.2's unmerge) is not the answer
        defined = {node.name for node in ast.walk(ast.parse(without_markers(exercise.solution)))
                   if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
        names = forbidden(exercise.hidden) - defined
        imported = set().union(*(code_names(c.source, attributes=False) for c in student.cells if c.cell_type == "code"))
        # no import of the function being written, and no visible test that computes the answer with it
        assert not names & imported, f"exercise {number}: the student version imports {names & imported}"
        assert not names & code_names(student_tests[number]), f"exercise {number}: a visible test calls {names}"


# --- the hidden tests, in this process ----------------------------------------------------------


@pytest.fixture(scope="module")
def hidden(monkeypatch_module):
    """HiddenTests of each course notebook, set up once (the set-up cells load the base model, the tasks ...)."""
    graders = {}
    yield lambda stem: graders.setdefault(stem, HiddenTests(next(p for p in COURSE if p.stem == stem)))
    for grader in graders.values():
        grader.close()


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINILORA_QUICK", "1")
        mp.setenv("MPLBACKEND", "Agg")
        yield mp


def run_quietly(grader, solutions=None) -> dict:
    # each check prints "passed"; a mistake's overflow warns (the hidden test reports it in words)
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return grader.run(solutions)


@pytest.mark.parametrize("path", COURSE, ids=[p.stem for p in COURSE])
def test_the_reference_solutions_pass_every_hidden_test(path, hidden):
    results = run_quietly(hidden(path.stem))
    assert results and all(err is None for err in results.values()), {n: str(e) for n, e in results.items() if e}


@pytest.mark.parametrize("path", COURSE, ids=[p.stem for p in COURSE])
def test_nbgraders_stub_fails_every_hidden_test_by_name(path, hidden):
    student = student_version(nbformat.read(path, as_version=4))
    stubs = {exercise_number(c): c.source for c in student.cells if nbgrader(c).get("solution") and not is_written(c)}
    assert all("raise NotImplementedError()" in s for s in stubs.values())
    for number, err in run_quietly(hidden(path.stem), stubs).items():
        assert isinstance(err, ExerciseError), f"exercise {number}: {err!r}"
        assert str(err).startswith(f"exercise {number} ") and "is not solved yet" in str(err), str(err)


def test_the_catalogue_has_at_least_two_mistakes_for_every_exercise():
    numbers = [e.number for path in COURSE for e in exercises(path)]
    catalogue = by_exercise()
    assert set(catalogue) == set(numbers), set(catalogue) ^ set(numbers)
    assert all(len(catalogue[n]) >= 2 for n in numbers), {n: len(catalogue[n]) for n in numbers}
    assert len({(m.exercise, m.source, tuple(m.change)) for m in MISTAKES}) == len(MISTAKES), "an entry is there twice"
    assert all(bool(m.source) != bool(m.change) for m in MISTAKES), "an entry is a source or a change, not both"


@pytest.mark.parametrize("mistake", MISTAKES, ids=[f"{m.exercise} {m.what}" for m in MISTAKES])
def test_a_catalogue_mistake_fails_its_exercise_and_only_it(mistake, hidden):
    path = next(p for p in COURSE if p.name.startswith(f"{int(mistake.exercise.split('.')[0]):02d}_"))
    grader = hidden(path.stem)
    reference = next(without_markers(e.solution) for e in grader.exercises if e.number == mistake.exercise)
    handed_in = mistake.solution(reference)
    assert handed_in != reference
    results = run_quietly(grader, {mistake.exercise: handed_in})
    failed = {number: err for number, err in results.items() if err is not None}
    assert list(failed) == [mistake.exercise], {n: f"{type(e).__name__}: {e}" for n, e in failed.items()}
    err = failed[mistake.exercise]
    assert isinstance(err, ExerciseError), f"{type(err).__name__}: {err}"  # in the exercise's words, not the engine's
    assert str(err).startswith(f"exercise {mistake.exercise}") and mistake.message in str(err), str(err)


def test_the_course_guide_lists_the_catalogue():
    text = (COURSE[0].parent.parent / "docs" / "course.md").read_text(encoding="utf-8")
    listed = dict(re.findall(r"^- \*\*(\d+\.\d+)\*\* (.+)$", text, flags=re.M))
    assert listed == {number: "; ".join(m.what for m in found) for number, found in by_exercise().items()}


def test_the_set_up_cell_is_the_first_code_cell_without_magics():
    source = setup_cell(COURSE[1])
    assert "%matplotlib" not in source and source.startswith("import os") and "import numpy as np" in source
