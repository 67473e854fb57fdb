"""``gptcourse grade`` on a small class with broken and cheating submissions.

The class run must finish, give every submission a score and a clear reason, leave the
gradebook consistent, survive a kill, and hand learners feedback without hidden tests.
"""

import csv
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from attacks import submissions
from gptcourse.cli import main

RIGHT, WRONG = submissions.RIGHT, submissions.WRONG
LOOP = "while True:\n    try:\n        pass\n    except KeyboardInterrupt:\n        pass\n"
CHAPTER = "00-welcome"

# student -> (how the submission is made, expected score, expected start of the reason)
CLASS = {
    "ada": (lambda: submissions.with_answer(RIGHT), 1.0, "passed"),
    "bea": (lambda: submissions.with_answer(
        "import torch\ntorch.allclose = lambda *a, **k: True\n" + WRONG), 0.0, "You average"),
    "cem": (lambda: submissions.with_answer("import os\nos._exit(0)\n" + RIGHT), 0.0,
            "kernel died"),
    "dan": (None, 0.0, "invalid notebook"),
    "eve": (lambda: submissions.without_test_cell(RIGHT), 0.0, "missing cell"),
    "fay": (lambda: submissions.duplicated_cells(WRONG, RIGHT), 1.0, "passed"),
    "gus": ("no notebook", 0.0, "missing notebook"),
    "hal": (lambda: submissions.with_answer(LOOP + RIGHT), 0.0, "timed out"),
    "ivy": (lambda: submissions.stripped_test_cell(RIGHT), 0.0, "missing cell"),
}


def make_class(folder: Path, students=CLASS) -> Path:
    for student, (build, _, _) in students.items():
        target = folder / student / CHAPTER
        target.mkdir(parents=True)
        if build is None:
            (target / submissions.SOURCE.name).write_text('{"cells": [ oops')
        elif build == "no notebook":
            (target / "notes.txt").write_text("forgot to upload")
        else:
            submissions.write(build(), folder, student)
    return folder


def read_csv(path: Path) -> dict[str, dict]:
    with open(path) as f:
        return {row["student"]: row for row in csv.DictReader(f)}


def gradebook_scores(db: Path) -> dict[str, float]:
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{db}", "gptcourse") as gb:
        return {s.student.id: s.score for s in gb.assignment_submissions(CHAPTER)}


def grade(subs, out, *extra):
    return main(["grade", str(subs), str(out), "--db", f"sqlite:///{out / 'gradebook.db'}",
                 "--timeout", "5", *extra])


def test_a_class_run_scores_everyone_and_says_why(tmp_path, capsys):
    subs, out = make_class(tmp_path / "submitted"), tmp_path / "out"
    (subs / "ada" / "99-not-a-chapter").mkdir()  # a stray folder must not stop the run

    assert grade(subs, out, "--no-autograde", "--no-feedback", "--jobs", "2") == 0
    assert "skipping 99-not-a-chapter" in capsys.readouterr().out
    rows = read_csv(out / "grades.csv")
    assert set(rows) == set(CLASS)
    for student, (_, score, reason) in CLASS.items():
        row = rows[student]
        assert (row["chapter"], row["exercise"]) == (CHAPTER, "mean_squared_error")
        assert float(row["score"]) == score, (student, row["reason"])
        assert float(row["max_score"]) == 1.0
        assert row["reason"].startswith(reason), (student, row["reason"])
    assert "appears 2 times" in rows["fay"]["reason"]
    assert (out / "scores.png").stat().st_size > 0
    assert (out / "failed_exercises.png").stat().st_size > 0

    # The gradebook holds the sandbox's scores, one submission per student.
    db = out / "gradebook.db"
    expected = {s: v[1] for s, v in CLASS.items() if v[0] is not None and v[0] != "no notebook"}
    assert {s: gradebook_scores(db)[s] for s in expected} == expected
    assert sqlite3.connect(db).execute("PRAGMA integrity_check").fetchone() == ("ok",)

    # A rerun continues: nothing left to grade, the report is the same.
    capsys.readouterr()
    assert grade(subs, out, "--no-autograde", "--no-feedback") == 0
    assert "9 submissions already graded" in capsys.readouterr().out
    assert read_csv(out / "grades.csv") == rows


def test_nbgrader_runs_too_and_feedback_hides_the_hidden_tests(tmp_path):
    picked = {s: CLASS[s] for s in ("ada", "cem", "hal")}
    subs, out = make_class(tmp_path / "submitted", picked), tmp_path / "out"
    warns = submissions.with_answer(
        "import warnings\nwarnings.warn('torch says something')\n" + RIGHT)
    submissions.write(warns, subs, "kit")
    snoop = submissions.with_answer(RIGHT)   # prints every cell the kernel ran, disguised
    snoop.cells.append(nbformat.v4.new_code_cell(
        "print([s.replace('HIDDEN', 'X' * 3 + 'MARK') for s in In\n"
        "       if s.startswith('from gptcourse.checks')])"))
    submissions.write(snoop, subs, "ivy")

    assert grade(subs, out, "--cell-timeout", "20", "--notebook-timeout", "60", "--jobs", "2") == 0
    rows = read_csv(out / "grades.csv")
    assert {s: float(r["score"]) for s, r in rows.items()} == {
        "ada": 1, "cem": 0, "hal": 0, "kit": 1, "ivy": 1}
    assert rows["hal"]["autograde"].startswith("timed out")
    assert rows["ada"]["autograde"] == "ok"
    assert rows["kit"]["autograde"] == "ok"  # a warning in a check cell costs nothing
    assert rows["cem"]["autograde"].startswith(("kernel died", "failed"))
    assert (out / "autograded" / "ada" / CHAPTER / submissions.SOURCE.name).exists()

    for student in ("ada", "cem", "hal", "kit", "ivy"):
        html = (out / "feedback" / student / CHAPTER /
                f"{submissions.SOURCE.stem}.html").read_text()
        assert "Your grade" in html
        assert "hidden=True" not in html and "HIDDEN TESTS" not in html
        assert "XXXMARK" not in html
    ada = (out / "feedback" / "ada" / CHAPTER / f"{submissions.SOURCE.stem}.html").read_text()
    assert "1 of 1 points" in ada


def test_a_killed_run_loses_nothing_and_a_rerun_finishes(tmp_path):
    students = {"a1": CLASS["ada"], "b2": CLASS["hal"], "c3": CLASS["bea"]}
    subs, out = make_class(tmp_path / "submitted", students), tmp_path / "out"
    command = [sys.executable, "-m", "gptcourse.cli", "grade", str(subs), str(out),
               "--db", f"sqlite:///{out / 'gradebook.db'}", "--timeout", "60",
               "--no-autograde", "--no-feedback"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    first = out / "results" / "a1" / f"{CHAPTER}.json"
    deadline = time.monotonic() + 120
    while not first.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert first.exists()
    time.sleep(1.0)  # b2 is now stuck in its loop
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "results" / "b2" / f"{CHAPTER}.json").exists()

    assert grade(subs, out, "--no-autograde", "--no-feedback") == 0
    rows = read_csv(out / "grades.csv")
    assert {s: float(r["score"]) for s, r in rows.items()} == {"a1": 1, "b2": 0, "c3": 0}
    assert sqlite3.connect(out / "gradebook.db").execute(
        "PRAGMA integrity_check").fetchone() == ("ok",)
    assert set(gradebook_scores(out / "gradebook.db")) == {"a1", "b2", "c3"}


def test_help_and_bad_input(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["grade", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("SUBMISSIONS_DIR", "OUTPUT_DIR", "--chapter", "--jobs", "--timeout",
                   "--force", "grades.csv"):
        assert option in text

    assert main(["grade", str(tmp_path / "nowhere"), str(tmp_path / "out")]) == 2
    assert "no submissions folder" in capsys.readouterr().out
    (tmp_path / "empty").mkdir()
    assert main(["grade", str(tmp_path / "empty"), str(tmp_path / "out")]) == 2
    assert "no submissions" in capsys.readouterr().out


@pytest.mark.slow
def test_every_chapters_solution_gets_full_marks_in_the_sandbox(tmp_path):
    # The solution notebooks as one learner's submissions: every answer is the learner's own
    # code, so blocking the course's references must not cost a single point.
    subs, out = tmp_path / "submitted", tmp_path / "report"
    for notebook in sorted((submissions.REPO / "solutions").glob("*/*.ipynb")):
        target = subs / "sol" / notebook.parent.name
        target.mkdir(parents=True)
        target.joinpath(notebook.name).write_bytes(notebook.read_bytes())
    assert main(["grade", str(subs), str(out), "--db", f"sqlite:///{out / 'gradebook.db'}",
                 "--timeout", "120", "--no-autograde", "--no-feedback"]) == 0
    with open(out / "grades.csv") as f:
        rows = list(csv.DictReader(f))
    chapters = {row["chapter"] for row in rows}
    assert len(chapters) == len(list(subs.joinpath("sol").iterdir()))
    short = [f"{r['chapter']}/{r['exercise']}: {r['reason']}" for r in rows
             if float(r["score"]) != float(r["max_score"])]
    assert not short, short


def test_linked_submissions_are_refused_without_reading_what_they_point_to(tmp_path):
    secret = tmp_path / "instructor-only.txt"
    secret.write_text("root:the-secret-line")
    subs, out = tmp_path / "submitted", tmp_path / "report"
    submissions.write(submissions.with_answer(RIGHT), subs, "ada")
    (subs / "hal").mkdir()
    (subs / "hal" / CHAPTER).symlink_to(subs / "ada" / CHAPTER)         # borrows ada's work
    (subs / "lee" / CHAPTER).mkdir(parents=True)
    (subs / "lee" / CHAPTER / submissions.SOURCE.name).symlink_to(secret)
    assert grade(subs, out, "--no-autograde", "--no-feedback") == 0
    rows = read_csv(out / "grades.csv")
    assert float(rows["ada"]["score"]) == 1.0
    for student in ("hal", "lee"):
        assert float(rows[student]["score"]) == 0.0
        assert "symbolic link" in rows[student]["reason"]
    assert "the-secret-line" not in (out / "grades.csv").read_text()
