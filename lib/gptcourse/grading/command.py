"""``gptcourse grade``: grade a class's submissions into a CSV report, plots and feedback.

For every submission ``SUBMISSIONS/<student>/<chapter>/<notebook>.ipynb``:

1. the chapter's graded exercises come from the instructor's source notebook (its check
   cells ``test_<exercise>``), never from the submission;
2. each exercise is scored by the sandbox (:mod:`gptcourse.grading.sandbox`): the answer
   cells run in a fresh, fenced process and their results are compared with the reference
   here, so nothing the learner's code patches can change the verdict;
3. nbgrader autogrades the notebook in a fenced process of its own, for the learner's
   feedback (their check cells' output); its in-notebook verdicts do not count;
4. the sandbox scores go into the gradebook in one step per submission, then a record of
   the submission is written to ``OUTPUT/results``: a rerun skips what is recorded there, so
   a crash or a kill loses nothing already graded.

At the end ``OUTPUT/grades.csv``, two plots and the feedback HTML (without hidden tests) are
written. A broken submission never stops the run; its rows say why it scored 0.
"""

import argparse
import csv
import json
import logging
import os
import queue
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import gptcourse
from gptcourse.grading import isolation
from gptcourse.grading.structure import (
    GradedExercise,
    InvalidNotebook,
    graded_exercises,
    read_notebook,
    submission_cells,
)

log = logging.getLogger(__name__)

HELP = """Grade a class: score every submission in SUBMISSIONS_DIR (nbgrader's layout
SUBMISSIONS_DIR/<student>/<chapter>/<notebook>.ipynb) and write to OUTPUT_DIR: grades.csv
(student, chapter, exercise, score, max_score, reason, autograde), scores.png (histogram of
total scores), failed_exercises.png (most-failed exercises), learners' feedback in
feedback/<student>/<chapter>/ (without hidden tests) and nbgrader's autograded notebooks in
autograded/. Scores come from re-running each learner's answer cells in a fresh,
resource-limited process (with the solutions, the gradebook and other submissions hidden,
when run as root on Linux) and comparing with the course's reference outside it; they are
written into the gradebook. A broken submission scores 0 with a reason and the run goes on.
Rerunning continues where a run stopped (use --force to regrade everything). Exit code: 0
when every submission was graded and recorded, 1 when some could not be, 2 on bad input."""

RESULTS = "results"
CSV_COLUMNS = ["student", "chapter", "exercise", "score", "max_score", "reason", "autograde"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("submissions", type=Path, metavar="SUBMISSIONS_DIR",
                        help="folder of submissions: <student>/<chapter>/<notebook>.ipynb")
    parser.add_argument("output", type=Path, metavar="OUTPUT_DIR",
                        help="folder for grades.csv, plots, feedback and the run's records")
    parser.add_argument("--chapter", action="append", metavar="NN-slug",
                        help="grade only this chapter (repeatable); default: every chapter "
                             "found in SUBMISSIONS_DIR")
    parser.add_argument("--jobs", type=int, default=1, metavar="N",
                        help="submissions graded at the same time (default 1)")
    parser.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                        help="wall-clock bound for one exercise in the sandbox: running the "
                             "answer cells and the checks (default 60)")
    parser.add_argument("--cell-timeout", type=int, default=None, metavar="SECONDS",
                        help="bound for one cell when nbgrader runs the whole notebook; "
                             "training cells need minutes (default: Execute.timeout of the "
                             "course's nbgrader_config.py, else 600)")
    parser.add_argument("--notebook-timeout", type=float, default=1800.0, metavar="SECONDS",
                        help="bound for nbgrader's run of one whole notebook (default 1800)")
    parser.add_argument("--memory", type=float, default=4.0, metavar="GIB",
                        help="address-space limit of every learner process (default 4)")
    parser.add_argument("--db", default=None, metavar="URL",
                        help="gradebook (sqlalchemy URL); default: CourseDirectory.db_url of "
                             "the course's nbgrader_config.py, else OUTPUT_DIR/gradebook.db")
    parser.add_argument("--course-dir", type=Path, default=None, metavar="DIR",
                        help="course folder holding solutions/ (default: found from here)")
    parser.add_argument("--no-autograde", action="store_true",
                        help="skip nbgrader's run of the notebooks (scores are the same; the "
                             "feedback then shows the submission without outputs)")
    parser.add_argument("--no-feedback", action="store_true",
                        help="do not write the learners' feedback HTML")
    parser.add_argument("--force", action="store_true",
                        help="regrade submissions already graded by an earlier run")
    parser.add_argument("--verbose", action="store_true", help="log every step")


@dataclass
class Chapter:
    """A chapter as the grader needs it: exercises, prepared cases, gradebook template."""

    name: str
    stem: str
    exercises: list[GradedExercise]
    checks: dict  # exercise id -> (Exercise, list[Case])
    template_db: Path


@dataclass
class Settings:
    root: Path
    source_dir: str
    course_id: str
    submissions: Path
    output: Path
    db_url: str
    cell_timeout: int
    hide: list[str]
    args: argparse.Namespace
    runners: object = None  # nbgrader_run.Runners, started ahead of the submissions


# --------------------------------------------------------------------------- set-up

def _settings(args: argparse.Namespace) -> Settings:
    from gptcourse.release import CONFIG_FILE, find_course_root, load_course_config

    root = (args.course_dir or find_course_root()).resolve()
    config = load_course_config(root) if (root / CONFIG_FILE).exists() else None
    course = config.CourseDirectory if config is not None else {}
    output = args.output.resolve()
    db_url = args.db or course.get("db_url") or "sqlite:///" + str(output / "gradebook.db")
    cell_timeout = args.cell_timeout
    if cell_timeout is None:
        execute = config.Execute if config is not None else {}
        cell_timeout = int(execute.get("timeout", 600) or 600)
    source_dir = course.get("source_directory", "solutions")

    hide = [str(root / source_dir), str(args.submissions.resolve()), str(output)]
    for key in ("submitted_directory", "autograded_directory", "feedback_directory",
                "solution_directory", "source_with_tests_directory"):
        if key in course:
            hide.append(str(root / course[key]))
    if db_url.startswith("sqlite:///"):
        hide.append(db_url[len("sqlite:///"):])
    # The course's history holds the solutions too, and so does the checkout the library
    # was installed from, when that is another clone.
    library_checkout = Path(gptcourse.__file__).resolve().parents[2]
    hide += [str(root / ".git"), str(library_checkout / ".git"),
             str(library_checkout / source_dir)]
    return Settings(root=root, source_dir=source_dir,
                    course_id=course.get("course_id", "gptcourse"),
                    submissions=args.submissions.resolve(), output=output, db_url=db_url,
                    cell_timeout=cell_timeout, hide=hide, args=args)


def _prepare_chapter(settings: Settings, name: str, work: Path) -> Chapter:
    from nbgrader.api import Gradebook, MissingEntry

    from gptcourse.checks import get_exercise
    from gptcourse.grading.nbgrader_run import make_template
    from gptcourse.release import chapter_notebook

    source = chapter_notebook(name, settings.root, settings.source_dir)
    exercises = graded_exercises(read_notebook(source))
    if not exercises:
        raise ValueError(f"{source} has no graded check cell (grade_id 'test_<exercise>')")
    checks = {}
    for exercise in exercises:
        try:
            registered = get_exercise(exercise.id)
        except KeyError as exc:
            raise ValueError(f"{source}: check cell 'test_{exercise.id}' has no registered "
                             f"exercise: {exc.args[0]}") from None
        # Cases are built here, in the grader, and sent to the sandbox as plain data.
        checks[exercise.id] = (registered, registered.cases() + registered.cases(hidden=True))

    template = make_template(name, source, settings.course_id, work)
    db_path = settings.db_url[len("sqlite:///"):] if settings.db_url.startswith(
        "sqlite:///") else None
    if db_path and not os.path.exists(db_path):
        # A new gradebook starts as the template: the chapter with its cells and points.
        os.makedirs(os.path.dirname(db_path) or ".", exist_ok=True)
        shutil.copy(template, db_path)
        return Chapter(name, source.stem, exercises, checks, template)
    with Gradebook(settings.db_url, settings.course_id) as gb:
        try:
            gb.find_assignment(name)
            known = True
        except MissingEntry:
            known = False
    # TODO(changed chapters): a chapter already in the gradebook keeps the cells it had
    # then; a check cell added to the source later gets no score there (the CSV has it).
    if not known:
        _register_assignment(settings, name, source, work)
    return Chapter(name, source.stem, exercises, checks, template)


def _register_assignment(settings: Settings, name: str, source: Path, work: Path) -> None:
    """Record the chapter, its cells and points in the real gradebook (nbgrader's way)."""
    from nbgrader.converters import GenerateAssignment
    from nbgrader.coursedir import CourseDirectory

    from gptcourse.grading.nbgrader_run import _config

    root = work / f"register-{name}"
    (root / "source" / name).mkdir(parents=True)
    shutil.copy(source, root / "source" / name / source.name)
    config = _config(root, settings.course_id, root / "unused.db")
    config.CourseDirectory.db_url = settings.db_url
    coursedir = CourseDirectory(config=config)
    coursedir.assignment_id = name
    app = GenerateAssignment(coursedir=coursedir, config=config)
    app.log.setLevel(logging.ERROR)
    app.start()


def _discover(settings: Settings) -> list[tuple[str, str]]:
    """(student, chapter) pairs present in the submissions folder, in a stable order."""
    if not settings.submissions.is_dir():
        raise FileNotFoundError(f"no submissions folder {settings.submissions}")
    wanted = settings.args.chapter
    pairs = []
    for student in sorted(p for p in settings.submissions.iterdir() if p.is_dir()):
        for chapter in sorted(p for p in student.iterdir() if p.is_dir()):
            if wanted is None or chapter.name in wanted:
                pairs.append((student.name, chapter.name))
    return pairs


# --------------------------------------------------------------------------- one submission

def _record_path(settings: Settings, student: str, chapter: str) -> Path:
    return settings.output / RESULTS / student / f"{chapter}.json"


def _rows(student: str, chapter: Chapter, reasons: dict, scores: dict, status: str) -> list:
    return [{"student": student, "chapter": chapter.name, "exercise": ex.id,
             "score": scores.get(ex.id, 0.0), "max_score": ex.points,
             "reason": reasons[ex.id], "autograde": status} for ex in chapter.exercises]


def grade_submission(settings: Settings, chapter: Chapter, student: str, sandbox,
                     lock: threading.Lock) -> list[dict]:
    """Score one submission, write its gradebook entry and its record; return its rows."""
    from gptcourse.grading.sandbox import Job, judge

    started = time.perf_counter()
    folder = settings.submissions / student / chapter.name
    path = folder / f"{chapter.stem}.ipynb"
    scores: dict[str, float] = {}
    notebook = None
    status = "skipped"
    linked = next((p for p in (folder.parent, folder, path) if p.is_symlink()), None)
    if linked is not None:
        # A link could lend this learner another's work, or make the grader read any file.
        problem = (f"invalid notebook: {linked.relative_to(settings.submissions)} is a "
                   "symbolic link; submit the notebook file itself")
        reasons = {ex.id: problem for ex in chapter.exercises}
    elif not path.exists():
        present = sorted(p.name for p in folder.glob("*.ipynb"))
        problem = (f"missing notebook: no {chapter.stem}.ipynb in {student}/{chapter.name}"
                   f" (found: {', '.join(present) or 'nothing'})")
        reasons = {ex.id: problem for ex in chapter.exercises}
    else:
        try:
            notebook = read_notebook(path)
        except InvalidNotebook as exc:
            reasons = {ex.id: str(exc) for ex in chapter.exercises}

    if notebook is not None:
        # nbgrader's run of the whole notebook (feedback only) overlaps with the sandbox.
        autograded: dict = {}
        if not settings.args.no_autograde:
            background = threading.Thread(target=lambda: autograded.update(
                zip(("status", "notebook"), _autograde(settings, chapter, student, path,
                                                       sandbox))))
            background.start()

        cells = submission_cells(notebook, chapter.exercises)
        reasons = {}
        for ex in chapter.exercises:
            if ex.id in cells.problems:
                reasons[ex.id] = cells.problems[ex.id]
                continue
            registered, cases = chapter.checks[ex.id]
            job = Job(ex.id, cells.programs[ex.id], cases, registered.blocked,
                      registered.visible.__module__)
            verdict = judge(registered, cases, sandbox.run(job), ex.points)
            scores[ex.id] = verdict.score
            note = cells.notes.get(ex.id)
            reasons[ex.id] = verdict.reason + (f" [{note}]" if note else "")

        log.info("%s/%s: sandbox done after %.1f s", student, chapter.name,
                 time.perf_counter() - started)
        if not settings.args.no_autograde:
            background.join()
            status = autograded.get("status", "failed: the autograder's thread crashed")
            log.info("%s/%s: nbgrader done after %.1f s", student, chapter.name,
                     time.perf_counter() - started)
        if not settings.args.no_feedback:
            rows = _rows(student, chapter, reasons, scores, status)
            _feedback(settings, chapter, student,
                      autograded.get("notebook") or _without_outputs(notebook), rows, lock)
            log.info("%s/%s: feedback done after %.1f s", student, chapter.name,
                     time.perf_counter() - started)

    rows = _rows(student, chapter, reasons, scores, status)
    with lock:
        _write_gradebook(settings, chapter, student, rows)
    _write_record(_record_path(settings, student, chapter.name), rows)
    return rows


def _without_outputs(notebook):
    import copy

    nb = copy.deepcopy(notebook)
    for cell in nb.cells:
        if cell.get("cell_type") == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
    return nb


def _autograde(settings: Settings, chapter: Chapter, student: str, path: Path, sandbox):
    """nbgrader's run of the whole notebook in a scratch course; (status, notebook)."""
    from gptcourse.grading import nbgrader_run

    scratch = Path(tempfile.mkdtemp(prefix="gptcourse-autograde-"))
    try:
        staged = scratch / "submitted" / student / chapter.name
        staged.mkdir(parents=True)
        shutil.copy(path, staged / path.name)
        shutil.copy(chapter.template_db, scratch / nbgrader_run.SCRATCH_DB)
        limits = isolation.Limits(memory_bytes=sandbox.limits.memory_bytes,
                                  cpu_seconds=int(settings.args.notebook_timeout),
                                  file_bytes=sandbox.limits.file_bytes, processes=512)
        spec = {"root": str(scratch), "chapter": chapter.name, "student": student,
                "course_id": settings.course_id, "cell_timeout": settings.cell_timeout,
                # Not the sandbox's uid: its clean-up after each exercise would kill nbgrader.
                "limits": limits.__dict__,
                "uid": (None if sandbox.uid is None
                        else sandbox.uid + isolation.AUTOGRADE_UID_OFFSET),
                "namespaces": sandbox.namespaces, "hide": settings.hide,
                "readonly": isolation.protected_paths(str(settings.root))}
        result = nbgrader_run.autograde(spec, settings.args.notebook_timeout, settings.runners)
        produced = scratch / "autograded" / student / chapter.name / path.name
        notebook = None
        if produced.exists():
            target = settings.output / "autograded" / student / chapter.name / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(produced, target)
            try:
                notebook = read_notebook(target)
            except InvalidNotebook:
                notebook = None
        if notebook is not None and result["status"] == "ok":
            result = _status_from_outputs(notebook, settings.cell_timeout) or result
        status = result["status"] + (f": {result['detail']}" if result["detail"] else "")
        return status, notebook
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _status_from_outputs(notebook, cell_timeout: int) -> dict | None:
    """nbgrader records a cell's timeout or a dead kernel as an error output and goes on."""
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            name = output.get("ename", "") if output.get("output_type") == "error" else ""
            if name == "CellTimeoutError":
                return {"status": "timed out", "detail": f"a cell ran longer than "
                                                         f"{cell_timeout} s"}
            if name == "DeadKernelError":
                return {"status": "kernel died", "detail": "the kernel died in a cell"}
    return None


def _feedback(settings, chapter, student, notebook, rows, lock) -> None:
    from gptcourse.grading.nbgrader_run import write_feedback

    target = settings.output / "feedback" / student / chapter.name / f"{chapter.stem}.html"
    try:
        # nbgrader's converters are not written for several threads at once.
        with lock:
            write_feedback(chapter.template_db, chapter.name, student, settings.course_id,
                           notebook, chapter.stem, rows, target)
    except Exception as exc:  # feedback is a courtesy; the grade is already decided
        log.warning("no feedback for %s/%s: %s", student, chapter.name, exc)


def _write_gradebook(settings: Settings, chapter: Chapter, student: str, rows) -> None:
    """The submission's scores and reasons, committed to the gradebook in one transaction."""
    from nbgrader.api import Gradebook

    scores = {"test_" + r["exercise"]: r["score"] for r in rows}
    comments = {r["exercise"]: r["reason"] for r in rows}
    with Gradebook(settings.db_url, settings.course_id) as gb:
        gb.update_or_create_student(student)
        gb.update_or_create_submission(chapter.name, student)
        notebook = gb.find_submission_notebook(chapter.stem, chapter.name, student)
        for grade in notebook.grades:
            if grade.name in scores:
                grade.auto_score = scores[grade.name]
                grade.manual_score = None
                grade.needs_manual_grade = False
        for comment in notebook.comments:
            if comment.name in comments:
                comment.auto_comment = comments[comment.name]
        gb.db.commit()


def _write_record(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(rows, indent=1))
    os.replace(partial, path)


# --------------------------------------------------------------------------- the class run

def _all_records(settings: Settings) -> list[dict]:
    rows = []
    for path in sorted((settings.output / RESULTS).glob("*/*.json")):
        rows.extend(json.loads(path.read_text()))
    return rows


def write_csv(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in sorted(rows, key=lambda r: (r["student"], r["chapter"])):
            writer.writerow(row)


def write_plots(rows: list[dict], output: Path) -> None:
    """A histogram of students' total scores and the most-failed exercises."""
    # Figures of their own, without pyplot: nothing to show, and quicker to import.
    from matplotlib.figure import Figure

    totals: dict[str, float] = {}
    failed: dict[str, int] = {}
    for row in rows:
        totals[row["student"]] = totals.get(row["student"], 0.0) + float(row["score"])
        key = f"{row['chapter']}: {row['exercise']}"
        failed[key] = failed.get(key, 0) + int(float(row["score"]) < float(row["max_score"]))
    most = sum(float(r["max_score"]) for r in rows) / max(1, len(totals))

    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    ax.hist(list(totals.values()), bins=min(20, max(5, len(totals))), range=(0, max(most, 1)),
            color="#3b6ea8")
    ax.set_xlabel(f"total score (maximum {most:g})")
    ax.set_ylabel("students")
    ax.set_title("Total scores")
    fig.tight_layout()
    fig.savefig(output / "scores.png", dpi=100)

    worst = sorted(failed.items(), key=lambda kv: (-kv[1], kv[0]))[:15]
    fig = Figure(figsize=(7, 0.4 * len(worst) + 1.2))
    ax = fig.subplots()
    ax.barh([k for k, _ in reversed(worst)], [v for _, v in reversed(worst)], color="#c8553d")
    ax.set_xlabel("students without full marks")
    ax.set_title("Most-failed exercises")
    fig.tight_layout()
    fig.savefig(output / "failed_exercises.png", dpi=100)


def quiet_nbgrader(verbose: bool = False) -> None:
    """nbgrader logs every step and SQLAlchemy warns about nbgrader's own sessions.

    nbgrader also starts the ``alembic`` program for every new gradebook to learn the
    schema version (seconds each time); read it once, in this process, from nbgrader's own
    migration scripts.
    """
    import functools
    import warnings

    import nbgrader.api
    from sqlalchemy.exc import SAWarning

    warnings.filterwarnings("ignore", category=SAWarning)
    level = logging.INFO if verbose else logging.ERROR
    logging.getLogger("traitlets").setLevel(level)
    logging.getLogger("gptcourse.grading.nbgrader").setLevel(level)
    if not hasattr(nbgrader.api.get_alembic_version, "cache_info"):
        original = nbgrader.api.get_alembic_version

        @functools.cache
        def schema_version() -> str:
            try:
                from alembic.config import Config
                from alembic.script import ScriptDirectory

                config = Config()
                config.set_main_option("script_location", os.path.join(
                    os.path.dirname(nbgrader.__file__), "alembic"))
                return ScriptDirectory.from_config(config).get_current_head()
            except Exception:  # an unexpected nbgrader layout: ask the way nbgrader does
                return original()

        nbgrader.api.get_alembic_version = schema_version


def run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    quiet_nbgrader(args.verbose)
    try:
        settings = _settings(args)
        pairs = _discover(settings)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}")
        return 2
    if not pairs:
        print(f"error: no submissions in {settings.submissions} (expected "
              "<student>/<chapter>/<notebook>.ipynb)" +
              (f" for chapter {', '.join(args.chapter)}" if args.chapter else ""))
        return 2
    settings.output.mkdir(parents=True, exist_ok=True)
    print(f"isolation: {isolation.capabilities().describe()}")

    # Gradebook templates of this run; a killed run's leftovers go at the next start.
    work = settings.output / ".work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    # Python, torch and nbgrader start in the background while the chapters are prepared.
    todo = [(s, c) for s, c in pairs if args.force or not _record_path(settings, s, c).exists()]
    sandboxes = _start_workers(settings, len(todo))
    try:
        chapters: dict[str, Chapter] = {}
        for name in sorted({c for _, c in pairs}):
            try:
                chapters[name] = _prepare_chapter(settings, name, work)
            except Exception as exc:
                if args.chapter:
                    print(f"error: chapter {name} cannot be graded: {exc}")
                    return 2
                # A stray folder among the submissions must not stop the class run.
                print(f"skipping {name}: not a chapter of this course ({exc})")
        pairs = [(s, c) for s, c in pairs if c in chapters]
        todo = [(s, c) for s, c in todo if c in chapters]
        if len(todo) < len(pairs):
            print(f"{len(pairs) - len(todo)} submissions already graded (use --force to "
                  "regrade them)")
        failures = _grade_all(settings, chapters, todo, sandboxes, tqdm)
    finally:
        while not sandboxes.empty():
            sandboxes.get().close()
        if settings.runners is not None:
            settings.runners.close()
        shutil.rmtree(work, ignore_errors=True)

    rows = _all_records(settings)
    write_csv(rows, settings.output / "grades.csv")
    if rows:
        write_plots(rows, settings.output)
    broken = sorted({(r["student"], r["chapter"]) for r in rows if r["score"] < r["max_score"]
                     and r["reason"].startswith(("invalid notebook", "missing", "kernel died",
                                                 "timed out", "out of memory"))})
    print(f"graded {len({(r['student'], r['chapter']) for r in rows})} submissions; "
          f"{len(broken)} with a broken part (see the reason column); "
          f"report: {settings.output / 'grades.csv'}")
    for student, chapter, error in failures:
        print(f"NOT GRADED {student}/{chapter}: {error} (rerun to retry)")
    return 1 if failures else 0


def _start_workers(settings: Settings, needed: int) -> queue.Queue:
    """One sandbox per job (each its own uid), and warm nbgrader runners."""
    from gptcourse.grading.sandbox import Sandbox

    args = settings.args
    limits = isolation.Limits(memory_bytes=int(args.memory * isolation.GIB),
                              cpu_seconds=int(args.timeout) + 5)
    jobs = max(1, args.jobs)
    readonly = tuple(isolation.protected_paths(str(settings.root)))
    sandboxes: queue.Queue = queue.Queue()
    for worker in range(jobs):
        sandbox = Sandbox(limits=limits, timeout=args.timeout, hide=tuple(settings.hide),
                          worker=worker, readonly=readonly)
        if needed:
            sandbox.start_soon()
        sandboxes.put(sandbox)
    if not args.no_autograde:
        from gptcourse.grading.nbgrader_run import Runners

        settings.runners = Runners(needed)
        settings.runners.warm_up(jobs)
    return sandboxes


def _grade_all(settings, chapters, todo, sandboxes: queue.Queue, tqdm) -> list:
    """Grade ``todo`` with ``--jobs`` workers, each with its own sandbox and uid."""
    jobs = sandboxes.qsize()
    lock = threading.Lock()
    failures = []

    def one(pair):
        student, chapter = pair
        sandbox = sandboxes.get()
        started = time.perf_counter()
        try:
            grade_submission(settings, chapters[chapter], student, sandbox, lock)
        except Exception as exc:  # the grader's own failure: report, keep going
            log.exception("grading %s/%s failed", student, chapter)
            failures.append((student, chapter, f"{type(exc).__name__}: {exc}"))
        finally:
            sandboxes.put(sandbox)
        log.info("%s/%s graded in %.1f s", student, chapter, time.perf_counter() - started)

    try:
        with ThreadPoolExecutor(jobs) as pool:
            for _ in tqdm(pool.map(one, todo), total=len(todo), desc="grading",
                          unit="submission"):
                pass
    finally:
        while not sandboxes.empty():
            sandboxes.get().close()
    return failures
