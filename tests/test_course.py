"""The course as an instructor grades it, with nbgrader itself (docs/course.md).

``make_exercises`` makes an nbgrader course folder (``nbgrader_config.py`` with its per-cell
time limit, one assignment per week of ``WEEKS``); regenerating one assignment leaves the
others as they were; the release is the student version (tests/test_exercises.py checks
what it holds) with links that work in the course folder.

Then ``nbgrader autograde`` runs once per assignment on several submissions:

* ``reference``: the reference solutions -- full marks, and every cell of the notebook runs
  (this is also the course notebooks' run in quick mode: tests/test_notebooks.py runs the others);
* ``composite-1``, ``composite-2``: one mistake of the catalogue (tests/course_mistakes.py)
  in every exercise -- zero for each, and the feedback carries each mistake's message;
* ``stuck`` (week 1 only): a syntax error in 2.3 and an endless loop in 2.4 -- those two score 0,
  with the error, and the rest their full marks, the run ending after one per-cell time limit.

The written questions are in the gradebook for an instructor to grade by hand: no automatic
score, their points as the maximum.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbformat
import pytest

from course_mistakes import by_exercise
from minilora.course import (
    CELL_TIMEOUT,
    LINK,
    WEEKS,
    assignments,
    exercise_number,
    exercises,
    is_written,
    make_exercises,
    nbgrader,
    student_version,
    without_markers,
    written,
)

COURSE = assignments()
STUCK_TIMEOUT = 15  # s per cell for the run with the endless loop: week 1's slowest cell takes under 2 s here
STUCK = {"2.3": "def next_token_pairs(ids):\n    return (ids[:, :-1]\n",  # a syntax error
         "2.4": "def cross_entropy(logits, targets):\n    while True:\n        pass\n"}  # an endless loop


def nbgrader_command(root: Path, *args) -> subprocess.CompletedProcess:
    # nbgrader runs `alembic` (its database migrations) as a program: the venv's bin/ must be on PATH
    env = dict(os.environ, PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))
    done = subprocess.run([sys.executable, "-m", "nbgrader", *args], cwd=root, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"nbgrader {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    return make_exercises(tmp_path_factory.mktemp("course")).parent


def test_the_course_folder_has_a_config_and_an_assignment_per_week(course):
    assert list(COURSE) == list(WEEKS)
    config = (course / "nbgrader_config.py").read_text(encoding="utf-8")
    assert f"c.Execute.timeout = {CELL_TIMEOUT}\n" in config and 'c.CourseDirectory.course_id = "minilora"' in config
    for name, notebooks in COURSE.items():
        for path in notebooks:
            assert (course / "source" / name / path.name).exists() and (course / "release" / name / path.name).exists()
    # nbgrader reads the config (without one, every command warns): list the assignments it knows
    listed = nbgrader_command(course, "db", "assignment", "list")
    assert all(name in listed.stdout + listed.stderr for name in COURSE), listed.stdout + listed.stderr


def test_regenerating_one_assignment_leaves_the_others(course):
    def files():
        return {p: (p.stat().st_mtime_ns, p.read_bytes()) for folder in ("source", "release")
                for p in (course / folder).rglob("*") if p.is_file()}

    before = files()
    make_exercises(course, ["week1"])
    after = files()
    assert set(before) == set(after)
    changed = {p.relative_to(course).as_posix() for p in before if before[p][0] != after[p][0]}
    assert changed == {f"{folder}/week1/{stem}.ipynb" for folder in ("source", "release") for stem in WEEKS["week1"]}
    assert all(before[p][1] == after[p][1] for p in before)  # regenerated to the same content
    with pytest.raises(ValueError, match="no assignment 'week-9'; the course has week1, week2, "):
        make_exercises(course, ["week-9"])


def test_the_release_is_the_student_version_with_links_that_work_in_the_course_folder(course):
    for name, notebooks in COURSE.items():
        for path in notebooks:
            release = nbformat.read(course / "release" / name / path.name, as_version=4)
            source = nbformat.read(course / "source" / name / path.name, as_version=4)
            # what the docs site shows (student_version) is what nbgrader released
            assert [c.source for c in release.cells] == [c.source for c in student_version(source).cells]
            for cell in release.cells:
                if cell.cell_type != "markdown":
                    continue
                for match in LINK.finditer(cell.source):
                    target = match.group(2).partition("#")[0]
                    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target) or not target:
                        continue
                    assert (course / "release" / name / target).resolve().exists(), f"{path.name}: a broken link {target}"
                assert "](../docs/" not in cell.source and "](../minilora/" not in cell.source


def submission(release: dict, sources: dict) -> dict:
    """A copy of the release notebook with each solution cell replaced by ``sources[number]`` (a written
    answer, where ``sources`` has none, left as released)."""
    nb = nbformat.from_dict(json.loads(json.dumps(release)))
    for cell in nb.cells:
        if nbgrader(cell).get("solution"):
            cell.source = sources.get(exercise_number(cell), cell.source)
    return nb


def autograde(root: Path, names: list) -> None:
    for name in names:
        timeout = [f"--Execute.timeout={STUCK_TIMEOUT}"] if name == "week1" else []
        nbgrader_command(root, "autograde", name, *timeout)
        nbgrader_command(root, "generate_feedback", name, "--student=composite-1")  # the feedback the test reads


@pytest.fixture(scope="module")
def graded(course):
    """Every assignment autograded (one nbgrader autograde each) and its feedback generated.
    Returns {(student, assignment): {exercise: (score, max score, [messages of its test cells' errors])}},
    the error outputs of the reference submissions' other cells, and the course folder that graded
    each assignment: half of them are graded in a copy of the course folder, at the same time
    (nbgrader grades one notebook at a time, and its gradebook is one SQLite file)."""
    from nbgrader.api import Gradebook

    catalogue = by_exercise()
    students = {}
    for name, notebooks in COURSE.items():
        for path in notebooks:
            release = nbformat.read(course / "release" / name / path.name, as_version=4)
            reference = {e.number: without_markers(e.solution) for e in exercises(path)}
            handed_in = {"reference": {**reference, **{w.number: w.answer for w in written(path)}}}
            for k in (0, 1):
                handed_in[f"composite-{k + 1}"] = {n: catalogue[n][k % len(catalogue[n])].solution(reference[n])
                                                   for n in reference}
            if name == "week1":  # the stuck student hands in 01 as the reference, 02 stuck
                handed_in["stuck"] = {**reference, **{n: s for n, s in STUCK.items() if n in reference}}
            for student, sources in handed_in.items():
                folder = course / "submitted" / student / name
                folder.mkdir(parents=True, exist_ok=True)
                nbformat.write(submission(release, sources), folder / path.name)
                students.setdefault(name, {})[student] = None  # each student once, in order
    halves = {course: list(COURSE)[0::2], course.with_name(course.name + "-copy"): list(COURSE)[1::2]}
    shutil.copytree(course, list(halves)[1])
    with ThreadPoolExecutor(len(halves)) as pool:
        list(pool.map(autograde, halves, halves.values()))
    folder_of = {name: root for root, names in halves.items() for name in names}
    results, errors_elsewhere, manual = {}, {}, {}
    for name, notebooks in COURSE.items():
        with Gradebook(f"sqlite:///{folder_of[name] / 'gradebook.db'}", course_id="minilora") as gradebook:
            for path in notebooks:
                for student in students[name]:
                    grades = gradebook.find_submission_notebook(path.stem, name, student).grades
                    scores = {g.name: (g.auto_score, g.max_score) for g in grades}
                    manual.update({(student, g.name): (g.needs_manual_grade, g.max_score, g.auto_score) for g in grades
                                   if g.name.startswith("ex") and not g.name.endswith("_test")})
                    graded_nb = nbformat.read(folder_of[name] / "autograded" / student / name / path.name, as_version=4)
                    found = results.setdefault((student, name), {})
                    for cell in graded_nb.cells:
                        messages = [o.evalue for o in cell.get("outputs", []) if o.output_type == "error"]
                        if nbgrader(cell).get("grade") and not is_written(cell):
                            score, top = scores[nbgrader(cell)["grade_id"]]
                            found[exercise_number(cell)] = (score, top, messages)
                        elif student == "reference" and messages:
                            errors_elsewhere.setdefault(path.name, []).append(messages)
    return results, errors_elsewhere, folder_of, manual


def test_the_reference_solutions_get_full_marks_and_every_cell_runs(graded):
    results, errors_elsewhere, _, _ = graded
    for name in COURSE:
        for number, (score, top, messages) in results[("reference", name)].items():
            assert score == top > 0 and not messages, f"{name}: exercise {number} scored {score} of {top}: {messages}"
    # the notebooks run to their last cell, which asserts what each shows (quick mode, as grading runs them)
    assert not errors_elsewhere, errors_elsewhere


@pytest.mark.parametrize("student", ["composite-1", "composite-2"])
def test_one_catalogue_mistake_in_every_exercise_scores_zero_with_its_message(graded, student):
    results, _, _, _ = graded
    catalogue = by_exercise()
    k = int(student[-1]) - 1
    for name in COURSE:
        for number, (score, top, messages) in results[(student, name)].items():
            mistake = catalogue[number][k % len(catalogue[number])]
            assert score == 0 < top, f"{student}: exercise {number} ({mistake.what}) scored {score} of {top}"
            assert messages and mistake.message in messages[0], f"{student}, exercise {number}: {messages}"


def test_a_syntax_error_and_an_endless_loop_score_zero_and_the_rest_is_graded(graded):
    results, _, folder_of, _ = graded
    stuck = results[("stuck", "week1")]
    assert all(score == top > 0 for number, (score, top, _) in stuck.items() if number not in STUCK), stuck
    assert stuck["2.3"][0] == 0 and "did the cell that defines next_token_pairs run?" in stuck["2.3"][2][0]
    assert stuck["2.4"][0] == 0 and "exercise 2.4 cross_entropy was interrupted" in stuck["2.4"][2][0], stuck["2.4"]
    graded_nb = nbformat.read(folder_of["week1"] / "autograded" / "stuck" / "week1" / "02_transformer.ipynb", as_version=4)
    solution_errors = [o.ename for c in graded_nb.cells if nbgrader(c).get("grade_id") == "ex2_3_targets"
                       for o in c.outputs if o.output_type == "error"]
    assert solution_errors == ["SyntaxError"]  # shown where the student made it


def test_the_feedback_names_each_mistake(graded):
    catalogue, folder_of = by_exercise(), graded[2]
    for name, notebooks in COURSE.items():
        for path in notebooks:
            page = (folder_of[name] / "feedback" / "composite-1" / name / path.with_suffix(".html").name).read_text(encoding="utf-8")
            text = re.sub(r"<[^>]+>", "", page).replace("&#39;", "'").replace("&quot;", '"').replace("&amp;", "&")
            text = text.replace("&lt;", "<").replace("&gt;", ">")
            for exercise in exercises(path):
                assert catalogue[exercise.number][0].message in text, f"{name}: the feedback misses {exercise.number}"


def test_the_written_questions_wait_for_an_instructors_grade(graded):
    manual = graded[3]
    written_ids = {nbgrader(c)["grade_id"]: nbgrader(c)["points"] for paths in COURSE.values() for p in paths
                   for c in nbformat.read(p, as_version=4).cells if is_written(c)}
    assert len(written_ids) >= 2
    for grade_id, points in written_ids.items():
        # an answer waits for a grade by hand (no automatic score); one left as released is scored 0 by nbgrader itself
        assert manual[("reference", grade_id)] == (True, points, None), manual[("reference", grade_id)]
        assert manual[("composite-1", grade_id)] == (False, points, 0), manual[("composite-1", grade_id)]
