"""`gptcourse check PATH`: a learner's own report, one line per exercise and a total."""

import shutil

import nbformat
import pytest

from gptcourse import release
from gptcourse.cli import main
from gptcourse.selfcheck import graded_exercises

ROOT = release.find_course_root()
# Autograding covers every chapter; the learner's check is exercised on the welcome chapter
# and on self-attention (several exercises), which is enough for a chapter-independent tool.
CHAPTERS = [c for c in release.chapters(ROOT) if c in ("00-welcome", "03-self-attention")]


def _check(path, capsys, *extra):
    code = main(["check", str(path), *extra])
    out = capsys.readouterr().out
    return code, out.strip().splitlines()


def test_solution_passes_every_exercise(tmp_path, capsys, monkeypatch):
    source = release.chapter_notebook("00-welcome", ROOT)
    monkeypatch.chdir(tmp_path)

    code, lines = _check(source, capsys)

    exercises = graded_exercises(nbformat.read(source, as_version=4))
    assert code == 0, lines
    for exercise in exercises:
        assert any(line.split()[:2] == [exercise.id, "passed"] for line in lines), lines
    assert lines[-1].startswith(f"Total: {len(exercises)} of {len(exercises)} exercises passed")


@pytest.mark.notebooks
@pytest.mark.parametrize("chapter", CHAPTERS)
def test_untouched_student_notebook_names_each_unattempted_exercise(chapter, tmp_path, capsys,
                                                                    monkeypatch):
    # A copy far from the course folder, checked from yet another directory.
    student = release.chapter_notebook(chapter, ROOT, release.RELEASE_DIR)
    copy = tmp_path / "downloads" / student.name
    copy.parent.mkdir()
    shutil.copy(student, copy)
    monkeypatch.chdir(tmp_path)

    code, lines = _check(copy, capsys)

    exercises = graded_exercises(nbformat.read(student, as_version=4))
    assert code != 0
    for exercise in exercises:
        line = next(line for line in lines if line.split()[0] == exercise.id)
        assert "not attempted" in line, line
    assert lines[-1].startswith(f"Total: 0 of {len(exercises)} exercises passed")
    assert copy.read_bytes() == student.read_bytes(), "the learner's file must not change"


def _cell(kind, source, grade_id=None, points=1):
    cell = nbformat.v4.new_code_cell(source)
    if kind == "answer":
        cell.metadata["nbgrader"] = {"grade": False, "grade_id": grade_id, "locked": False,
                                     "schema_version": 3, "solution": True, "task": False}
    elif kind == "test":
        cell.metadata["nbgrader"] = {"grade": True, "grade_id": grade_id, "locked": True,
                                     "points": points, "schema_version": 3, "solution": False,
                                     "task": False}
    return cell


def test_each_kind_of_outcome_is_reported(tmp_path, capsys):
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        _cell("code", "import torch"),
        # a classic mistake: the check names it
        _cell("answer", "def mean_squared_error(p, t):\n    return ((p - t) ** 2).sum()",
              "mean_squared_error"),
        _cell("test", "from gptcourse.checks import check\n"
                      "check('mean_squared_error', mean_squared_error)",
              "test_mean_squared_error", points=2),
        # an answer cell that does not even parse
        _cell("answer", "def broken(x:\n    return x", "broken"),
        _cell("test", "assert broken(1) == 1", "test_broken"),
        # an answer cell the learner deleted
        _cell("test", "assert missing(1) == 1", "test_missing"),
        # the untouched stub
        _cell("answer", "def stub(x):\n    raise NotImplementedError()", "stub"),
        _cell("test", "stub(1)", "test_stub"),
        # a correct one
        _cell("answer", "def double(x):\n    return 2 * x", "double"),
        _cell("test", "assert double(2) == 4", "test_double"),
        # a cell over the time limit is interrupted and the run goes on
        _cell("test", "import time\ntime.sleep(600)", "test_slow"),
        # the kernel dies: every later check is reported, not lost
        _cell("test", "import os\nos._exit(1)", "test_exits"),
        _cell("test", "assert True", "test_after"),
    ]
    path = tmp_path / "mixed.ipynb"
    nbformat.write(nb, path)

    code, lines = _check(path, capsys, "--timeout", "20")

    by_id = {line.split()[0]: line for line in lines[:-1]}
    assert code == 1
    assert "failed" in by_id["mean_squared_error"]
    assert "divide by the number of elements" in by_id["mean_squared_error"]
    assert "failed: your answer cell raised SyntaxError" in by_id["broken"]
    assert "not attempted" in by_id["missing"] and "not defined" in by_id["missing"]
    assert "not attempted" in by_id["stub"]
    assert by_id["double"].split()[1] == "passed"
    assert "failed" in by_id["slow"] and "longer than 20 s" in by_id["slow"]
    assert "failed" in by_id["exits"] and "kernel died" in by_id["exits"]
    assert "kernel died" in by_id["after"]
    assert lines[-1] == "Total: 1 of 8 exercises passed (1 of 9 points)"


def test_invalid_json_gives_one_clear_line(tmp_path, capsys):
    path = tmp_path / "broken.ipynb"
    path.write_text('{"cells": [')

    code, lines = _check(path, capsys)

    assert code == 2
    assert len(lines) == 1
    assert "not a notebook" in lines[0] and "invalid JSON" in lines[0]


def test_notebook_from_elsewhere_gives_one_clear_line(tmp_path, capsys):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("print('hello')")]
    path = tmp_path / "foreign.ipynb"
    nbformat.write(nb, path)

    code, lines = _check(path, capsys)

    assert code == 2
    assert lines == [f"gptcourse check: {path} is not a notebook of this course: it has no "
                     "graded exercises (nbgrader test cells named test_<exercise>)"]


@pytest.mark.parametrize("content, reason", [
    ('{"cells": [], "nbformat": 4, "nbformat_minor": 5, "metadata": 3}', "not a valid notebook"),
    ("[1, 2]", "no 'cells'"),
    ("", "invalid JSON"),
])
def test_malformed_notebooks_give_one_clear_line(tmp_path, capsys, content, reason):
    path = tmp_path / "odd.ipynb"
    path.write_text(content)

    code, lines = _check(path, capsys)

    assert code == 2
    assert len(lines) == 1 and reason in lines[0], lines


def test_missing_file_gives_one_clear_line(tmp_path, capsys):
    code, lines = _check(tmp_path / "nowhere.ipynb", capsys)

    assert code == 2
    assert lines == [f"gptcourse check: {tmp_path / 'nowhere.ipynb'}: no such file"]


def test_a_failing_cell_outside_the_exercises_is_noted_once_every_check_passes(tmp_path,
                                                                               capsys):
    nb = nbformat.read(release.chapter_notebook("00-welcome", ROOT), as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("raise ValueError('the demo needs a 2-D table')"))
    path = tmp_path / "welcome.ipynb"
    nbformat.write(nb, str(path))

    code, lines = _check(path, capsys)

    assert code == 0, lines
    assert any("other cells raised errors" in line for line in lines), lines
    assert any("ValueError: the demo needs a 2-D table" in line for line in lines), lines
    code_cells = sum(c.cell_type == "code" for c in nb.cells)
    assert any(f"code cell {code_cells} raised" in line for line in lines), lines


def test_no_note_while_an_exercise_is_unfinished(tmp_path, capsys):
    source = ROOT / "notebooks" / "03-self-attention" / "self_attention.ipynb"
    code, lines = _check(source, capsys)
    assert code != 0 and not any("other cells raised" in line for line in lines), lines
