"""Submissions of the welcome chapter, built from its source notebook with one change each.

Every builder returns a notebook whose only graded exercise is ``mean_squared_error``;
``ANSWERS`` holds answer-cell sources with the score each must get.
"""

import copy
from pathlib import Path

import nbformat

REPO = Path(__file__).resolve().parents[2]
SOURCE = REPO / "solutions" / "00-welcome" / "welcome.ipynb"
EXERCISE = "mean_squared_error"

RIGHT = ("def mean_squared_error(predictions, targets):\n"
         "    return ((predictions - targets) ** 2).mean()\n")
WRONG = ("def mean_squared_error(predictions, targets):\n"
         "    return (predictions - targets).abs().mean()\n")


def source() -> nbformat.NotebookNode:
    return nbformat.read(str(SOURCE), as_version=4)


def _meta(cell) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {})


def answer_index(nb) -> int:
    return next(i for i, c in enumerate(nb.cells) if _meta(c).get("grade_id") == EXERCISE)


def check_cell_index(nb) -> int:
    return next(i for i, c in enumerate(nb.cells)
                if _meta(c).get("grade_id") == "test_" + EXERCISE)


def with_answer(answer: str) -> nbformat.NotebookNode:
    """The source notebook with the answer cell replaced by ``answer`` (outputs cleared)."""
    nb = source()
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    nb.cells[answer_index(nb)].source = answer
    return nb


def without_test_cell(answer: str = RIGHT) -> nbformat.NotebookNode:
    nb = with_answer(answer)
    del nb.cells[check_cell_index(nb)]
    return nb


def stripped_test_cell(answer: str = RIGHT) -> nbformat.NotebookNode:
    nb = with_answer(answer)
    del nb.cells[check_cell_index(nb)].metadata["nbgrader"]
    return nb


def duplicated_cells(first: str = WRONG, last: str = RIGHT) -> nbformat.NotebookNode:
    """The answer and the check cell both appear twice; the last answer is ``last``."""
    nb = with_answer(first)
    i, t = answer_index(nb), check_cell_index(nb)
    extra = [copy.deepcopy(nb.cells[i]), copy.deepcopy(nb.cells[t])]
    extra[0].source = last
    for n, cell in enumerate(extra):
        cell["id"] = f"copy-{n}"
    nb.cells[t + 1:t + 1] = extra
    return nb


def write(nb, folder: Path, student: str, chapter: str = "00-welcome") -> Path:
    path = folder / student / chapter / SOURCE.name
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))
    return path
