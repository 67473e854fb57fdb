"""Which exercises a chapter grades, and which of a submission's cells answer them.

The instructor's source notebook is the authority: its graded test cells (nbgrader
``grade_id`` ``test_<exercise id>``) say which exercises exist and how many points each is
worth. A submission only contributes its answer cells (nbgrader ``solution`` code cells),
which are run in order by the sandbox. A test cell deleted from the submission, or stripped
of its metadata, scores 0 with a message; a duplicated cell is still graded (like Python,
the last definition of a name wins).
"""

from dataclasses import dataclass, field

import nbformat

TEST_PREFIX = "test_"


@dataclass(frozen=True)
class GradedExercise:
    """One graded exercise of a chapter: ``id`` equals the learner's function name."""

    id: str
    points: float


@dataclass
class SubmissionCells:
    """What the sandbox needs from one submission, per exercise."""

    # Exercise id -> sources of every answer cell up to and including its answer.
    programs: dict[str, list[str]] = field(default_factory=dict)
    # Exercise id -> why it scores 0 without running anything.
    problems: dict[str, str] = field(default_factory=dict)
    # Exercise id -> remarks that do not change the score (duplicated cells).
    notes: dict[str, str] = field(default_factory=dict)


class InvalidNotebook(ValueError):
    """The file is not a readable Jupyter notebook."""


def _nbgrader(cell) -> dict:
    meta = cell.get("metadata", {}).get("nbgrader", {})
    return meta if isinstance(meta, dict) else {}


def read_notebook(path) -> nbformat.NotebookNode:
    """Read and validate a notebook; :class:`InvalidNotebook` says what is wrong."""
    try:
        nb = nbformat.read(str(path), as_version=4)
    except Exception as exc:  # JSON errors, wrong structure, unreadable file
        raise InvalidNotebook(f"invalid notebook: {type(exc).__name__}: {exc}"[:300]) from None
    if not isinstance(nb.get("cells"), list):
        raise InvalidNotebook("invalid notebook: it has no list of cells")
    return nb


def graded_exercises(source: nbformat.NotebookNode) -> list[GradedExercise]:
    """The graded exercises of a source notebook, in notebook order."""
    found = []
    for cell in source.cells:
        meta = _nbgrader(cell)
        grade_id = str(meta.get("grade_id", ""))
        if meta.get("grade") and not meta.get("solution") and grade_id.startswith(TEST_PREFIX):
            found.append(GradedExercise(grade_id[len(TEST_PREFIX):], float(meta.get("points", 0))))
    return found


def _is_answer(cell) -> bool:
    return cell.get("cell_type") == "code" and bool(_nbgrader(cell).get("solution"))


def submission_cells(submission: nbformat.NotebookNode,
                     exercises: list[GradedExercise]) -> SubmissionCells:
    """Match a submission's cells with the graded exercises of its chapter."""
    result = SubmissionCells()
    cells = [c for c in submission.cells if isinstance(c, dict)]
    answers = [c for c in cells if _is_answer(c)]
    answer_ids = [str(_nbgrader(c).get("grade_id", "")) for c in answers]
    test_ids = [str(_nbgrader(c).get("grade_id", "")) for c in cells
                if _nbgrader(c).get("grade") and not _nbgrader(c).get("solution")]

    for exercise in exercises:
        test_id = TEST_PREFIX + exercise.id
        notes = []
        if test_id not in test_ids:
            result.problems[exercise.id] = (
                f"missing cell: the check cell {test_id!r} was deleted or its nbgrader "
                "metadata removed; restore it from the released notebook")
            continue
        if test_ids.count(test_id) > 1:
            notes.append(f"the check cell {test_id!r} appears {test_ids.count(test_id)} times")
        positions = [i for i, grade_id in enumerate(answer_ids) if grade_id == exercise.id]
        if not positions:
            result.problems[exercise.id] = (
                f"missing cell: the answer cell {exercise.id!r} was deleted or its nbgrader "
                "metadata removed; restore it from the released notebook")
            continue
        if len(positions) > 1:
            notes.append(f"the answer cell {exercise.id!r} appears {len(positions)} times; "
                         "the last one counts")
        result.programs[exercise.id] = [
            "".join(c.get("source", "")) if isinstance(c.get("source"), list)
            else str(c.get("source", "")) for c in answers[:positions[-1] + 1]]
        if notes:
            result.notes[exercise.id] = "duplicated cells: " + "; ".join(notes)
    return result
