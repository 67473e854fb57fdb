"""`gptcourse release`: student notebooks are reproducible and give nothing away."""

import json
import re
import shutil

import nbformat
import pytest

from gptcourse import release
from gptcourse.cli import main
from gptcourse.release import RELEASE_DIR, SOURCE_DIR, chapter_notebook, chapters, release_all

ROOT = release.find_course_root()
CHAPTERS = chapters(ROOT)

SOLUTION_REGION = re.compile(r"### BEGIN SOLUTION\n(.*?)### END SOLUTION", re.S)
HIDDEN_REGION = re.compile(r"### BEGIN HIDDEN TESTS\n(.*?)### END HIDDEN TESTS", re.S)
MARKERS = ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "END HIDDEN TESTS",
           "hidden=True")


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """Every chapter released into a fresh temporary folder."""
    out = tmp_path_factory.mktemp("released")
    release_all(out, ROOT)
    return out


def _files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()
            and ".ipynb_checkpoints" not in p.parts and "__pycache__" not in p.parts}


def test_release_matches_committed_notebooks(released):
    committed = _files(ROOT / RELEASE_DIR)
    fresh = _files(released)

    assert sorted(committed) == sorted(fresh), "run `gptcourse release` and commit notebooks/"
    for name, content in fresh.items():
        assert committed[name] == content, f"notebooks/{name} is stale: run `gptcourse release`"


def test_releasing_twice_is_byte_identical(released, tmp_path):
    release_all(tmp_path, ROOT)

    assert _files(tmp_path) == _files(released)


@pytest.fixture
def mini_course(tmp_path):
    """A course folder holding the config and the welcome chapter only."""
    course = tmp_path / "course"
    (course / SOURCE_DIR / "00-welcome").mkdir(parents=True)
    shutil.copy(ROOT / "nbgrader_config.py", course)
    shutil.copy(chapter_notebook("00-welcome", ROOT), course / SOURCE_DIR / "00-welcome")
    return course


def test_volatile_metadata_does_not_reach_students(mini_course, tmp_path):
    # A source notebook after a run in Jupyter: outputs, counts, timestamps, widget state,
    # a kernel version. Its release must equal the release of the clean source.
    course = mini_course
    source = course / SOURCE_DIR / "00-welcome"
    clean = chapter_notebook("00-welcome", ROOT)
    release_all(tmp_path / "clean", course)

    nb = nbformat.read(clean, as_version=4)
    nb.metadata["language_info"] = {"name": "python", "version": "3.11.7"}
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    for count, cell in enumerate(c for c in nb.cells if c.cell_type == "code"):
        cell.execution_count = count + 1
        cell.outputs = [nbformat.v4.new_output("stream", text="hello\n")]
        cell.metadata["execution"] = {"iopub.execute_input": "2026-01-01T00:00:00Z"}
    nbformat.write(nb, source / clean.name)
    release_all(tmp_path / "run", course)

    assert _files(tmp_path / "run") == _files(tmp_path / "clean")


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_student_notebook_is_a_clean_nbformat_45_notebook(released, chapter):
    path = next((released / chapter).glob("*.ipynb"))
    raw = json.loads(path.read_text())
    nb = nbformat.reads(path.read_text(), as_version=4)

    nbformat.validate(nb)
    assert (raw["nbformat"], raw["nbformat_minor"]) == (4, 5)
    assert set(raw["metadata"]) <= set(release.KEPT_NOTEBOOK_METADATA)
    assert "version" not in raw["metadata"].get("language_info", {})
    ids = [cell["id"] for cell in raw["cells"]]
    assert len(ids) == len(set(ids))
    source_ids = [c.id for c in nbformat.read(chapter_notebook(chapter, ROOT), 4).cells]
    assert ids == source_ids, "cell ids must be those of the source notebook"
    for cell in raw["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None
        assert not set(cell["metadata"]) & set(release.VOLATILE_CELL_METADATA)


def _lines(text):
    return {line.strip() for line in text.splitlines() if line.strip()}


# Lines too generic to betray a solution (they also appear in ordinary code).
GENERIC = re.compile(r"^(return|pass|else:|try:|\)|\]|\}|[#\"'].*|return \w+|\w+ = \w+)$")


def _leaks(source: nbformat.NotebookNode, student: nbformat.NotebookNode) -> list[str]:
    """Markers, solution lines and hidden-test lines of ``source`` found in ``student``."""
    public = set()
    secret = set()
    for cell in source.cells:
        for region in SOLUTION_REGION.findall(cell.source) + HIDDEN_REGION.findall(cell.source):
            secret |= _lines(region)
        public |= _lines(HIDDEN_REGION.sub("", SOLUTION_REGION.sub("", cell.source)))
    # Lines the learner may see anyway (outside the secret regions) are no leak.
    secret = {line for line in secret - public if not GENERIC.match(line)}

    student_text = "\n".join(cell.source for cell in student.cells)
    found = [marker for marker in MARKERS if marker in student_text]
    return found + sorted(secret & _lines(student_text))


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_student_notebook_has_no_solution_or_hidden_test(chapter):
    source = nbformat.read(chapter_notebook(chapter, ROOT, SOURCE_DIR), as_version=4)
    student = nbformat.read(chapter_notebook(chapter, ROOT, RELEASE_DIR), as_version=4)

    leaked = _leaks(source, student)

    assert not leaked, f"{chapter}: the student notebook contains {leaked[:5]}"
    assert any("raise NotImplementedError()" in cell.source for cell in student.cells)


def test_leak_scan_finds_a_solution_line_and_a_hidden_test():
    source = nbformat.read(chapter_notebook("00-welcome", ROOT, SOURCE_DIR), as_version=4)
    student = nbformat.read(chapter_notebook("00-welcome", ROOT, RELEASE_DIR), as_version=4)
    answer = SOLUTION_REGION.findall("".join(c.source for c in source.cells))[0].strip()
    student.cells[-1].source += "\n" + answer
    student.cells[-2].source += "\ncheck('mean_squared_error', mean_squared_error, hidden=True)"

    leaked = _leaks(source, student)

    assert answer in leaked
    assert "hidden=True" in leaked


def test_release_command_writes_one_chapter(tmp_path, capsys):
    code = main(["release", "--chapter", CHAPTERS[0], "--output", str(tmp_path)])

    assert code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHAPTERS[0]]
    assert "released" in capsys.readouterr().out


def test_release_command_rejects_an_unknown_chapter(tmp_path, capsys):
    code = main(["release", "--chapter", "99-nothing", "--output", str(tmp_path)])

    assert code == 1
    out = capsys.readouterr().out
    assert "99-nothing" in out and CHAPTERS[0] in out
    assert not list(tmp_path.iterdir())


def test_release_removes_a_chapter_whose_source_is_gone(mini_course):
    out = mini_course / RELEASE_DIR
    (out / "98-retired").mkdir(parents=True)
    (out / "98-retired" / "retired.ipynb").write_text("{}")
    (out / "notes").mkdir()

    written = release_all(root=mini_course)

    assert not (out / "98-retired").exists()
    assert (out / "notes").exists(), "only chapter folders are managed by release"
    assert written == [out / "00-welcome" / "welcome.ipynb"]
