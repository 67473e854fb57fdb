"""nbgrader's part of a class run: the autograded notebook and the learner's feedback.

nbgrader executes the whole submission in a kernel, which gives the learner their check
cells' output in the feedback. That kernel runs learner code, so it runs in its own
process (``python -m gptcourse.grading.nbgrader_run SPEC``) under the same fences as the
sandbox (hidden paths, resource limits, another uid) and a wall-clock bound, in a scratch
course folder with its own throw-away gradebook: nothing it does reaches the real
gradebook, whose scores come from the sandbox alone.

Feedback is rendered from the autograded notebook with the hidden tests removed and the
scores that count (the sandbox's) written into a table at the top.
"""

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import nbformat

from gptcourse.grading import isolation

log = logging.getLogger(__name__)

SCRATCH_DB = "gradebook.db"


def _quiet_log() -> logging.Logger:
    """nbgrader's applications log every step at INFO; keep only errors unless asked."""
    quiet = logging.getLogger("gptcourse.grading.nbgrader")
    if quiet.level == logging.NOTSET:
        quiet.setLevel(logging.ERROR)
    return quiet


def _config(root: Path, course_id: str, db: Path):
    from nbgrader.preprocessors import (
        CheckCellMetadata,
        ClearHiddenTests,
        ClearOutput,
        DeduplicateIds,
        OverwriteCells,
        OverwriteKernelspec,
    )
    from traitlets.config import Config

    c = Config()
    c.CourseDirectory.root = str(root)
    c.CourseDirectory.course_id = course_id
    c.CourseDirectory.source_directory = "source"
    c.CourseDirectory.release_directory = "release"
    c.CourseDirectory.submitted_directory = "submitted"
    c.CourseDirectory.autograded_directory = "autograded"
    c.CourseDirectory.feedback_directory = "feedback"
    c.CourseDirectory.db_url = "sqlite:///" + str(db)
    c.GenerateAssignment.force = True
    c.GenerateAssignment.create_assignment = True
    c.Autograde.create_student = True
    # The grade comes from the sandbox; this run is for the feedback. A kernel that never
    # runs the hidden tests cannot show their source (IPython's `In` keeps every cell).
    c.Autograde.sanitize_preprocessors = [
        ClearOutput, DeduplicateIds, OverwriteKernelspec, OverwriteCells, ClearHiddenTests,
        CheckCellMetadata]
    c.Exchange.root = str(root / "exchange")
    (root / "exchange").mkdir(parents=True, exist_ok=True)
    return c


def make_template(chapter: str, source: Path, course_id: str, work: Path) -> Path:
    """A gradebook holding ``chapter`` (cells and points from its source notebook)."""
    from nbgrader.converters import GenerateAssignment
    from nbgrader.coursedir import CourseDirectory

    from gptcourse.release import ensure_scripts_on_path

    ensure_scripts_on_path()
    root = work / f"template-{chapter}"
    if root.exists():
        shutil.rmtree(root)
    (root / "source" / chapter).mkdir(parents=True)
    shutil.copy(source, root / "source" / chapter / source.name)
    config = _config(root, course_id, root / SCRATCH_DB)
    coursedir = CourseDirectory(config=config)
    coursedir.assignment_id = chapter
    app = GenerateAssignment(coursedir=coursedir, config=config)
    app.log.setLevel(logging.ERROR)
    app.start()
    return root / SCRATCH_DB


class Runners:
    """Autograding processes started ahead of time.

    Each has already imported nbgrader and waits for the path of its job's spec, so a
    submission does not wait for Python and nbgrader to start; one spare is kept warm.
    """

    def __init__(self, needed: int) -> None:
        self._lock = threading.Lock()
        self._warm: list[tuple[subprocess.Popen, Path]] = []
        # Never start more than the run needs: a spare left over would only steal CPU.
        self._left = needed

    @staticmethod
    def _spawn() -> tuple[subprocess.Popen, Path]:
        handle, name = tempfile.mkstemp(prefix="gptcourse-autograde-", suffix=".log")
        with os.fdopen(handle, "wb") as log_file:
            proc = subprocess.Popen([sys.executable, "-m", "gptcourse.grading.nbgrader_run",
                                     "--wait"], stdin=subprocess.PIPE, stdout=log_file,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        return proc, Path(name)

    def _add(self) -> None:
        if self._left > len(self._warm):
            self._warm.append(self._spawn())

    def warm_up(self, count: int = 1) -> None:
        with self._lock:
            for _ in range(count - len(self._warm)):
                self._add()

    def take(self) -> tuple[subprocess.Popen, Path]:
        with self._lock:
            runner = self._warm.pop(0) if self._warm else self._spawn()
            self._left -= 1
            self._add()
        return runner

    def close(self) -> None:
        with self._lock:
            for proc, log_path in self._warm:
                isolation.kill_process_group(proc.pid)
                proc.wait()
                log_path.unlink(missing_ok=True)
            self._warm.clear()


def autograde(spec: dict, timeout: float, runners: Runners | None = None) -> dict:
    """Run nbgrader's autograder on one staged submission in a fenced process.

    ``spec``: root (scratch course folder holding ``submitted/<student>/<chapter>/``),
    chapter, student, course_id, cell_timeout, limits, uid, namespaces, hide, readonly.
    Returns ``{"status": "ok" | "timed out" | "kernel died" | "failed", "detail": ...}``.
    """
    root = Path(spec["root"])
    spec_path = root / "spec.json"
    spec_path.write_text(json.dumps(spec))
    proc, log_path = runners.take() if runners is not None else Runners._spawn()
    try:
        proc.stdin.write(str(spec_path).encode() + b"\n")
        proc.stdin.close()
    except OSError:  # the runner died while waiting; its log says why
        pass
    started = time.perf_counter()
    try:
        proc.wait(timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        timed_out = True
    isolation.kill_process_group(proc.pid)
    proc.wait()
    if spec.get("uid") is not None:
        isolation.kill_uid(spec["uid"])

    log.info("nbgrader's process for %s/%s ran %.1f s", spec["student"], spec["chapter"],
             time.perf_counter() - started)
    try:
        text = isolation.read_regular_file(str(log_path), 1 << 20).decode("utf-8", "replace")
    except OSError as exc:
        text = f"nbgrader's log could not be read: {exc}"
    log_path.unlink(missing_ok=True)
    if timed_out:
        return {"status": "timed out", "detail": f"the notebook ran longer than {timeout:g} s"}
    result_path = root / "result.json"
    if os.path.lexists(result_path):
        try:
            result = json.loads(isolation.read_regular_file(str(result_path), 1 << 20))
        except (OSError, ValueError) as exc:
            return {"status": "failed", "detail": f"nbgrader's result was tampered with: {exc}"}
        if result.get("success"):
            return {"status": "ok", "detail": ""}
        text = (result.get("error") or "") + "\n" + (result.get("log") or "") + text
    if "DeadKernel" in text or "Kernel died" in text or "kernel died" in text:
        return {"status": "kernel died", "detail": "the kernel died while running the notebook"}
    if "CellTimeoutError" in text or "timed out" in text.lower():
        return {"status": "timed out", "detail": f"a cell ran longer than "
                                                 f"{spec['cell_timeout']} s"}
    last = [line for line in text.strip().splitlines() if line.strip()][-1:] or [""]
    return {"status": "failed", "detail": last[0][:300]}


def _main(spec_path: str) -> int:  # pragma: no cover - runs in its own process
    """Entry point of the fenced autograding process (``--wait``: read the spec's path
    from stdin once nbgrader is imported)."""
    from nbgrader.apps.api import NbGraderAPI
    from nbgrader.coursedir import CourseDirectory

    from gptcourse.grading.command import quiet_nbgrader

    if spec_path == "--wait":
        spec_path = sys.stdin.readline().strip()
        if not spec_path:
            return 0
    spec = json.loads(Path(spec_path).read_text())
    root = Path(spec["root"])
    uid = spec.get("uid")
    home = root / "home"
    home.mkdir(exist_ok=True)
    if spec.get("namespaces"):
        isolation.enter_namespaces(spec["hide"], network=True,
                                   readonly=spec.get("readonly", []))
        isolation.enter_pid_namespace()
    if uid is not None:
        for folder, dirs, files in os.walk(root):
            for name in [folder] + [os.path.join(folder, n) for n in dirs + files]:
                os.chown(name, uid, uid)
    env = isolation.clean_environment(str(home))
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    os.environ.clear()
    os.environ.update(env)
    os.chdir(root)
    isolation.apply_limits(isolation.Limits(**spec["limits"]), processes=uid is not None)
    if uid is not None:
        isolation.drop_privileges(uid)
    elif spec.get("namespaces"):
        isolation.drop_capabilities()

    quiet_nbgrader()
    config = _config(root, spec["course_id"], root / SCRATCH_DB)
    config.Execute.timeout = spec["cell_timeout"]
    config.Execute.interrupt_on_timeout = True
    config.Execute.startup_timeout = 120
    api = NbGraderAPI(coursedir=CourseDirectory(config=config), config=config,
                      log=_quiet_log())
    result = api.autograde(spec["chapter"], spec["student"], force=True, create=True)
    if spec.get("namespaces"):
        # Whatever the kernel left running must not touch the results from here on.
        isolation.kill_all_others()
    result_path = root / "result.json"
    result_path.write_text(json.dumps({k: result.get(k) for k in ("success", "error", "log")}))
    return 0


# --------------------------------------------------------------------------- feedback

def _score_table(rows: list[dict]) -> str:
    total = sum(r["score"] for r in rows)
    most = sum(r["max_score"] for r in rows)
    lines = ["## Your grade", "",
             f"**{total:g} of {most:g} points.** These scores come from the grader's own "
             "run of your answer cells; the check cells below are there to help you.", "",
             "| exercise | score | why |", "|---|---|---|"]
    for row in rows:
        why = str(row["reason"]).replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {row['exercise']} | {row['score']:g} / {row['max_score']:g} | {why} |")
    return "\n".join(lines)


def _clean_for_feedback(nb, source_grade_ids: set[str]) -> None:
    """Drop nbgrader metadata nbgrader's gradebook does not know or has seen already."""
    seen = set()
    for cell in nb.cells:
        meta = cell.get("metadata", {}).get("nbgrader")
        if not isinstance(meta, dict):
            continue
        grade_id = meta.get("grade_id")
        if grade_id not in source_grade_ids or grade_id in seen:
            del cell["metadata"]["nbgrader"]
        else:
            seen.add(grade_id)


def _shorten_tracebacks(nb) -> None:
    """In cells holding hidden tests, keep only the last line of every error."""
    for cell in nb.cells:
        if cell.get("cell_type") != "code" or "HIDDEN TESTS" not in cell.get("source", ""):
            continue
        kept = []
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                output["traceback"] = [f"{output.get('ename', 'Error')}: "
                                       f"{output.get('evalue', '')}"]
            elif "HIDDEN TESTS" in str(output):
                continue
            kept.append(output)
        cell["outputs"] = kept


def write_feedback(template_db: Path, chapter: str, student: str, course_id: str,
                   notebook: nbformat.NotebookNode, stem: str, rows: list[dict],
                   target: Path) -> None:
    """Render ``notebook`` (autograded, or the submission when that failed) as feedback HTML
    without hidden tests, with the sandbox scores in the gradebook it reads them from."""
    from nbgrader.api import Gradebook
    from nbgrader.apps.api import NbGraderAPI
    from nbgrader.coursedir import CourseDirectory

    from nbgrader.preprocessors import ClearHiddenTests

    with tempfile.TemporaryDirectory(prefix="gptcourse-feedback-") as tmp:
        root = Path(tmp)
        db = root / SCRATCH_DB
        shutil.copy(template_db, db)
        with Gradebook("sqlite:///" + str(db), course_id) as gb:
            source_ids = {c.name for c in gb.find_notebook(stem, chapter).grade_cells}
            source_ids |= {c.name for c in gb.find_notebook(stem, chapter).source_cells}
            gb.update_or_create_student(student)
            gb.update_or_create_submission(chapter, student)
            scores = {"test_" + r["exercise"]: r["score"] for r in rows}
            for grade in gb.find_submission_notebook(stem, chapter, student).grades:
                if grade.name in scores:
                    grade.auto_score = scores[grade.name]
                    grade.needs_manual_grade = False
            gb.db.commit()

        nb = nbformat.from_dict(notebook)
        _clean_for_feedback(nb, source_ids)
        # nbgrader's autograder put the hidden tests back into the check cells; their
        # source also shows in the tracebacks of those cells.
        _shorten_tracebacks(nb)
        nb, _ = ClearHiddenTests(enforce_metadata=False).preprocess(nb, {})
        nb.cells.insert(0, nbformat.v4.new_markdown_cell(_score_table(rows)))
        # Learner edits may duplicate cell ids; feedback only needs them unique.
        for index, cell in enumerate(nb.cells):
            cell["id"] = f"feedback-{index}"
        nb.nbformat, nb.nbformat_minor = 4, 5
        folder = root / "autograded" / student / chapter
        folder.mkdir(parents=True)
        nbformat.write(nb, str(folder / f"{stem}.ipynb"))

        config = _config(root, course_id, db)
        api = NbGraderAPI(coursedir=CourseDirectory(config=config), config=config,
                          log=_quiet_log())
        result = api.generate_feedback(chapter, student)
        html = root / "feedback" / student / chapter / f"{stem}.html"
        if not result.get("success") or not html.exists():
            raise RuntimeError(f"nbgrader could not write feedback: {result.get('error')}")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(html, target)


if __name__ == "__main__":  # pragma: no cover
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.exit(_main(sys.argv[1]))
