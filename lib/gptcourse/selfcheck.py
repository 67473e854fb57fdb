"""``gptcourse check PATH``: run a learner's notebook headless and report every exercise.

The notebook is executed from top to bottom in a fresh kernel (nbclient), in its own
folder, with a generous per-cell time limit, carrying on past errors. Then each graded
exercise is reported from the outputs of its check cell:

* **passed**: the check cell ran without an error;
* **failed**: it raised; the line gives the check's first failure message (or the error
  of the answer cell when that cell itself raised);
* **not attempted**: the check raised :class:`gptcourse.checks.NotAttempted` or
  ``NotImplementedError``, or the exercise's function is not defined at all.

Exercises are found from nbgrader's metadata: a graded test cell with grade id
``test_<exercise id>`` and its points. No gradebook is needed and the notebook may live
anywhere on disk. The kernel is always Python from the environment gptcourse is installed
in (``sys.executable``), whatever kernels the machine has registered, so that it imports
gptcourse.

Other course tools can use :func:`graded_exercises`, :func:`execute_notebook` and
:func:`check_notebook` directly.
"""

import argparse
import json
import logging
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import nbformat

log = logging.getLogger(__name__)

HELP = ("Run a notebook headless in a fresh kernel and print, for every exercise, whether it "
        "passed, failed (with the first failure message) or was not attempted. "
        "Exit status 0 only when every exercise passed.")

DEFAULT_TIMEOUT = 600  # seconds per cell: the bound nbgrader_config.py gives training cells
TEST_PREFIX = "test_"
PASSED, FAILED, NOT_ATTEMPTED = "passed", "failed", "not attempted"
NOT_ATTEMPTED_ERRORS = ("NotAttempted", "NotImplementedError")
MAX_MESSAGE = 400


class NotebookError(ValueError):
    """The file is not a notebook of this course; the message is one line saying why."""


@dataclass(frozen=True)
class ExerciseCell:
    """A graded exercise of a notebook, found from nbgrader's cell metadata."""

    id: str               # the exercise id (= the learner's function or class name)
    test_index: int       # index of its test (check) cell in nb.cells
    answer_index: int | None  # index of its answer cell, if present
    points: float


@dataclass(frozen=True)
class ExerciseResult:
    """How one exercise fared when the notebook ran."""

    id: str
    status: str           # PASSED, FAILED or NOT_ATTEMPTED
    message: str
    points: float

    @property
    def passed(self) -> bool:
        return self.status == PASSED


def read_course_notebook(path: Path) -> nbformat.NotebookNode:
    """Read and validate ``path``; raise :class:`NotebookError` with a one-line reason."""
    path = Path(path)
    if not path.is_file():
        raise NotebookError(f"{path}: no such file")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise NotebookError(f"{path} is not a notebook: it is not a UTF-8 text file") from None
    except json.JSONDecodeError as exc:
        raise NotebookError(f"{path} is not a notebook: invalid JSON at line {exc.lineno}, "
                            f"column {exc.colno} ({exc.msg}); restore it from a saved "
                            "copy or download the chapter again") from None
    if not isinstance(raw, dict) or "cells" not in raw or "nbformat" not in raw:
        raise NotebookError(f"{path} is not a notebook: the JSON has no 'cells' or "
                            "'nbformat' field")
    try:
        nb = nbformat.reads(json.dumps(raw), as_version=4)
        nbformat.validate(nb)
    except Exception as exc:
        reason = " ".join(str(exc).split())[:200]
        raise NotebookError(f"{path} is not a valid notebook: {reason}") from None
    if not graded_exercises(nb):
        raise NotebookError(f"{path} is not a notebook of this course: it has no graded "
                            f"exercises (nbgrader test cells named {TEST_PREFIX}<exercise>)")
    return nb


def graded_exercises(nb: nbformat.NotebookNode) -> list[ExerciseCell]:
    """The graded exercises of ``nb`` in notebook order.

    A graded exercise is a code cell whose nbgrader metadata has ``grade: true`` and a
    ``grade_id`` of the form ``test_<exercise id>``; its answer cell is the solution cell
    whose ``grade_id`` is the exercise id.
    """
    answers = {}
    for index, cell in enumerate(nb.cells):
        meta = cell.get("metadata", {}).get("nbgrader", {})
        if meta.get("solution") and meta.get("grade_id"):
            answers.setdefault(meta["grade_id"], index)

    exercises = []
    for index, cell in enumerate(nb.cells):
        meta = cell.get("metadata", {}).get("nbgrader", {})
        grade_id = meta.get("grade_id", "")
        if cell.cell_type == "code" and meta.get("grade") and grade_id.startswith(TEST_PREFIX):
            exercise_id = grade_id[len(TEST_PREFIX):]
            exercises.append(ExerciseCell(exercise_id, index, answers.get(exercise_id),
                                          float(meta.get("points", 0) or 0)))
    return exercises


def native_kernel_manager_class():
    """An nbclient kernel manager class that starts this environment's Python.

    Registered kernels are ignored on purpose: a ``python3`` kernel registered for another
    environment would not import gptcourse. The kernel runs ``sys.executable``.
    """
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import default

    class NativeKernelManager(AsyncKernelManager):
        @default("kernel_spec_manager")
        def _native_only(self):
            return KernelSpecManager(kernel_dirs=[], ensure_native_kernel=True)

    return NativeKernelManager


def execute_notebook(nb: nbformat.NotebookNode, cwd: Path, timeout: int = DEFAULT_TIMEOUT,
                     progress: bool = True) -> tuple[nbformat.NotebookNode, str | None]:
    """Run every cell of ``nb`` (in place) in a fresh kernel started in ``cwd``.

    Errors in cells do not stop the run; a cell over ``timeout`` seconds is interrupted and
    recorded as a ``CellTimeoutError``. Returns the notebook and, if the kernel died, a
    sentence saying so (cells after that point are left unexecuted).
    """
    from nbclient import NotebookClient
    from nbclient.exceptions import DeadKernelError
    from tqdm.auto import tqdm

    from gptcourse.release import ensure_scripts_on_path

    ensure_scripts_on_path()
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None

    code_cells = sum(cell.cell_type == "code" for cell in nb.cells)
    running: set[int] = set()  # cells started and not finished: the one a crash hit
    bar = tqdm(total=code_cells, desc="running cells", unit="cell", disable=not progress,
               file=sys.stderr, leave=False)
    client = NotebookClient(
        nb,
        kernel_manager_class=native_kernel_manager_class(),
        kernel_name="python3",
        timeout=timeout,
        allow_errors=True,
        interrupt_on_timeout=True,
        error_on_timeout={
            "ename": "CellTimeoutError",
            "evalue": f"the cell ran longer than {timeout} s and was interrupted",
            "traceback": [],
        },
        resources={"metadata": {"path": str(cwd)}},
        on_cell_execute=lambda cell_index, **_: running.add(cell_index),
        on_cell_executed=lambda cell_index, **_: (running.discard(cell_index), bar.update(1)),
    )
    died = None
    try:
        # The kernel's own stderr holds only transport notices; learners' output and
        # errors reach the notebook through the kernel's messages.
        client.execute(stderr=subprocess.DEVNULL)
    except DeadKernelError:
        died = ("the kernel died while running the notebook (out of memory, or code that "
                "ends the process)")
        for index in running:
            nb.cells[index].setdefault("outputs", []).append(nbformat.v4.new_output(
                "error", ename="DeadKernelError", evalue=f"{died} in this cell", traceback=[]))
    except Exception as exc:  # the run itself broke; report it instead of a traceback
        died = f"the notebook could not be run to the end: {type(exc).__name__}: {exc}"
    finally:
        bar.close()

    # nbclient interrupts a cell over the limit; the kernel answers with KeyboardInterrupt.
    # Headless, nothing else sends one, so name the real cause.
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error" and output.get("ename") == "KeyboardInterrupt":
                output["ename"] = "CellTimeoutError"
                output["evalue"] = f"the cell ran longer than {timeout} s and was interrupted"
    return nb, died


def _error(cell: nbformat.NotebookNode) -> tuple[str, str] | None:
    for output in cell.get("outputs", []):
        if output.get("output_type") == "error":
            return output.get("ename", "Error"), output.get("evalue", "")
    return None


def _one_line(text: str) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)  # ANSI colours of tracebacks
    text = " ".join(text.split())
    return text if len(text) <= MAX_MESSAGE else text[:MAX_MESSAGE - 3] + "..."


def classify(nb: nbformat.NotebookNode, exercises: list[ExerciseCell],
             died: str | None = None) -> list[ExerciseResult]:
    """Judge every exercise from the outputs of an executed notebook."""
    results = []
    for exercise in exercises:
        test_cell = nb.cells[exercise.test_index]
        error = _error(test_cell)
        if error is None and test_cell.get("execution_count") is None:
            reason = died or "the check cell did not run"
            results.append(ExerciseResult(exercise.id, FAILED, reason, exercise.points))
            continue
        if error is None:
            results.append(ExerciseResult(exercise.id, PASSED, "", exercise.points))
            continue

        ename, evalue = error
        answer_error = None
        if exercise.answer_index is not None:
            answer_error = _error(nb.cells[exercise.answer_index])
        missing = ename == "NameError" and f"'{exercise.id}'" in evalue
        if ename in NOT_ATTEMPTED_ERRORS or (missing and answer_error is None):
            message = ("replace `raise NotImplementedError()` with your code"
                       if not missing else f"`{exercise.id}` is not defined")
            results.append(ExerciseResult(exercise.id, NOT_ATTEMPTED, message,
                                          exercise.points))
        elif answer_error is not None:
            name, value = answer_error
            results.append(ExerciseResult(
                exercise.id, FAILED, _one_line(f"your answer cell raised {name}: {value}"),
                exercise.points))
        else:
            message = evalue if ename in ("CheckFailed", "AssertionError") and evalue else (
                f"{ename}: {evalue}")
            results.append(ExerciseResult(exercise.id, FAILED, _one_line(message),
                                          exercise.points))
    return results


def other_errors(nb: nbformat.NotebookNode, exercises: list[ExerciseCell]) -> list[str]:
    """One line for each cell outside the exercises that raised, in order: when every
    check passes, such a cell can still show an answer wrong in a way no check tried."""
    graded = {e.test_index for e in exercises} | {e.answer_index for e in exercises}
    code_cells = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    lines = []
    for number, index in enumerate(code_cells, start=1):
        error = None if index in graded else _error(nb.cells[index])
        if error is not None:
            lines.append(_one_line(f"code cell {number} raised {error[0]}: {error[1]}"))
    return lines


def check_notebook(path: Path, timeout: int = DEFAULT_TIMEOUT, progress: bool = False,
                   notes: list[str] | None = None) -> list[ExerciseResult]:
    """Run the notebook at ``path`` in a fresh kernel and judge each exercise.

    ``notes``, when given, receives :func:`other_errors`. Raises :class:`NotebookError`
    when ``path`` is not a valid notebook of this course. The file on disk is never
    modified.
    """
    path = Path(path).resolve()
    nb = read_course_notebook(path)
    exercises = graded_exercises(nb)
    nb, died = execute_notebook(nb, path.parent, timeout=timeout, progress=progress)
    if notes is not None:
        notes.extend(other_errors(nb, exercises))
    return classify(nb, exercises, died)


def format_report(results: list[ExerciseResult]) -> str:
    """One line per exercise, then a total."""
    width = max(len(r.id) for r in results)
    lines = []
    for r in results:
        line = f"{r.id:<{width}}  {r.status}"
        if r.message:
            line += f": {r.message}"
        lines.append(line)
    passed = [r for r in results if r.passed]
    total_points = sum(r.points for r in results)
    earned = sum(r.points for r in passed)
    lines.append(f"Total: {len(passed)} of {len(results)} exercises passed "
                 f"({earned:g} of {total_points:g} points)")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", type=Path, help="the notebook to check (.ipynb)")
    parser.add_argument("--timeout", type=int, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                        help=f"time limit per cell (default {DEFAULT_TIMEOUT})")


def run(args: argparse.Namespace) -> int:
    notes: list[str] = []
    try:
        results = check_notebook(args.path, timeout=args.timeout, progress=True, notes=notes)
    except NotebookError as exc:
        print(f"gptcourse check: {exc}")
        return 2
    print(format_report(results))
    if notes and all(r.passed for r in results):
        # Unfinished exercises make later cells fail anyway; once they pass, say so.
        print("Every check passed, but other cells raised errors; an answer may be wrong in "
              "a way its check did not try:")
        print("\n".join(f"  {line}" for line in notes))
    return 0 if all(r.passed for r in results) else 1
