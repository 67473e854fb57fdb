"""``gptcourse release``: regenerate the student notebooks in notebooks/ from solutions/.

Each chapter is written once, as an nbgrader source notebook in
``solutions/NN-slug/<stem>.ipynb``. Releasing runs nbgrader's ``GenerateAssignment`` on it
(answer cells become ``raise NotImplementedError()``, hidden tests are removed, test cells
are locked) against a throw-away gradebook, so that releasing never touches a real one.
The result is then normalised so that releasing twice gives byte-identical files:

* outputs and execution counts are cleared (student notebooks ship without outputs);
* volatile metadata is dropped: execution timestamps, widget state, kernel and Python
  versions;
* cell ids are kept from the source (they are stable there); a missing id gets one derived
  from the notebook's stem and the cell's position;
* the notebook stays at nbformat 4.5 and is written with nbformat's canonical layout.

``gptcourse release --gradebook`` also records each chapter's graded cells in the class
gradebook named by nbgrader_config.py, which nbgrader's exchange, autograder and formgrader
need.

The module also holds the helpers other course tools share: :func:`find_course_root`,
:func:`load_course_config` (raises on any config error, unlike nbgrader, which logs and
carries on), :func:`course_config` (the course's config redirected into a scratch folder),
:func:`ensure_scripts_on_path`, :func:`chapters` and :func:`chapter_notebook`.
"""

import argparse
import logging
import os
import re
import shutil
import sys
import sysconfig
import tempfile
from pathlib import Path

import nbformat
from nbconvert.preprocessors import Preprocessor
from traitlets import Bool

log = logging.getLogger(__name__)

HELP = ("Regenerate the student notebooks in notebooks/ from the source notebooks in "
        "solutions/ with nbgrader (for instructors and chapter authors).")

CONFIG_FILE = "nbgrader_config.py"
SOURCE_DIR = "solutions"
RELEASE_DIR = "notebooks"
CHAPTER_PATTERN = re.compile(r"^\d\d-[a-z0-9-]+$")

# Notebook metadata kept in a student notebook; everything else (widget state, papermill,
# editor settings, ...) is dropped.
KEPT_NOTEBOOK_METADATA = ("kernelspec", "language_info", "nbgrader")
# language_info keys that change with the learner's or author's Python version.
VOLATILE_LANGUAGE_INFO = ("version",)
# Cell metadata that records when and how a cell last ran.
VOLATILE_CELL_METADATA = ("execution", "ExecuteTime", "papermill", "collapsed", "scrolled",
                          "widgets", "vscode")


class ReleaseError(RuntimeError):
    """Releasing a chapter failed; the message says which chapter and why."""


def find_course_root(start: Path | None = None) -> Path:
    """The folder holding ``nbgrader_config.py`` and ``solutions/``.

    Looks in ``start`` (default: the current directory) and its parents, then next to the
    installed package (an editable install from a clone of the repository).
    """
    start = Path.cwd() if start is None else Path(start)
    candidates = [start.resolve(), *start.resolve().parents,
                  Path(__file__).resolve().parents[2]]
    for folder in candidates:
        if (folder / CONFIG_FILE).is_file() and (folder / SOURCE_DIR).is_dir():
            return folder
    raise FileNotFoundError(
        f"no course folder found from {start}: expected a folder holding {CONFIG_FILE} and "
        f"{SOURCE_DIR}/; run this command inside a clone of the course repository")


def load_course_config(root: Path | None = None):
    """Load ``nbgrader_config.py`` of the course with traitlets and return the Config.

    Any exception raised while the file runs propagates (nbgrader itself would only log it
    and carry on with defaults).
    """
    from traitlets.config.loader import PyFileConfigLoader

    root = find_course_root() if root is None else Path(root)
    loader = PyFileConfigLoader(CONFIG_FILE, path=str(root), log=log)
    return loader.load_config()


def chapters(root: Path | None = None, directory: str = SOURCE_DIR) -> list[str]:
    """The chapter folders (``NN-slug``) present in ``root/directory``, in course order."""
    root = find_course_root() if root is None else Path(root)
    base = root / directory
    if not base.is_dir():
        return []
    return sorted(p.name for p in base.iterdir()
                  if p.is_dir() and CHAPTER_PATTERN.match(p.name) and any(p.glob("*.ipynb")))


def chapter_notebook(chapter: str, root: Path | None = None,
                     directory: str = SOURCE_DIR) -> Path:
    """The one graded notebook of ``chapter`` in ``root/directory``."""
    root = find_course_root() if root is None else Path(root)
    found = sorted((root / directory / chapter).glob("*.ipynb"))
    if not found and directory == RELEASE_DIR:
        raise ReleaseError(f"{directory}/{chapter} has no student notebook yet: run "
                           "`gptcourse release` after changing solutions/")
    if len(found) != 1:
        raise ReleaseError(f"{directory}/{chapter} must hold exactly one notebook, "
                           f"found {len(found)}: {[p.name for p in found]}")
    return found[0]


def ensure_scripts_on_path() -> None:
    """Put this environment's scripts folder first on PATH (in this process).

    nbgrader runs helper programs by name (``alembic`` when it creates a gradebook), and
    they must come from the environment gptcourse is installed in, even when that
    environment was not activated (``.venv/bin/gptcourse release``).
    """
    scripts = sysconfig.get_path("scripts")
    paths = os.environ.get("PATH", "").split(os.pathsep)
    if scripts and paths[0] != scripts:
        os.environ["PATH"] = os.pathsep.join([scripts, *[p for p in paths if p != scripts]])
    log.debug("PATH starts with %s (python %s)", scripts, sys.executable)


def normalize_notebook(nb: nbformat.NotebookNode, stem: str) -> nbformat.NotebookNode:
    """Strip everything volatile from a student notebook (in place) and return it."""
    nb.nbformat, nb.nbformat_minor = 4, 5
    metadata = {key: nb.metadata[key] for key in KEPT_NOTEBOOK_METADATA if key in nb.metadata}
    if "language_info" in metadata:
        metadata["language_info"] = {k: v for k, v in metadata["language_info"].items()
                                     if k not in VOLATILE_LANGUAGE_INFO}
    nb.metadata = nbformat.from_dict(metadata)

    seen = set()
    for index, cell in enumerate(nb.cells):
        if not cell.get("id") or cell.id in seen:
            cell.id = f"{stem.replace('_', '-')}-{index:02d}"
        seen.add(cell.id)
        for key in VOLATILE_CELL_METADATA:
            cell.metadata.pop(key, None)
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    nbformat.validate(nb)
    return nb


def notebook_bytes(nb: nbformat.NotebookNode) -> bytes:
    """The canonical file content of a notebook (nbformat's layout, one final newline)."""
    text = nbformat.writes(nb, version=4)
    return (text if text.endswith("\n") else text + "\n").encode("utf-8")


def _ensure_sqlite_folder(db_url: str) -> None:
    if db_url.startswith("sqlite:///"):
        Path(db_url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)


def course_config(work: Path, root: Path | None = None):
    """The course's nbgrader Config, redirected into the scratch folder ``work``.

    Sources stay in the course's ``solutions/``; the release, submitted, autograded and
    feedback folders and the gradebook all live under ``work``. Used to grade or test
    without touching the course folder (for example in a temporary directory).
    """
    root = find_course_root() if root is None else Path(root)
    work = Path(work).resolve()
    config = load_course_config(root)
    config.CourseDirectory.root = str(work)
    config.CourseDirectory.source_directory = str(root / SOURCE_DIR)
    config.CourseDirectory.release_directory = str(work / "release")
    for step in ("submitted", "autograded", "feedback", "solution", "source_with_tests"):
        setattr(config.CourseDirectory, f"{step}_directory", str(work / step))
    config.CourseDirectory.db_url = "sqlite:///" + str(work / "gradebook.db")
    config.Exchange.root = str(work / "exchange")
    return config


class HideHiddenTestSource(Preprocessor):
    """Shorten the tracebacks of check cells holding hidden tests to their last line.

    An IPython traceback quotes the failing cell's source, hidden tests included, so
    nbgrader's feedback would show them even after ``ClearHiddenTests``. nbgrader_config.py
    runs it before that preprocessor (the hidden-test markers identify the cells).
    """

    enabled = Bool(True).tag(config=True)  # nbconvert's preprocessors start disabled

    def preprocess_cell(self, cell, resources, index):
        if cell.cell_type == "code" and "BEGIN HIDDEN TESTS" in cell.source:
            for output in cell.get("outputs", []):
                if output.get("output_type") == "error":
                    output["traceback"] = [f"{output.get('ename', 'Error')}: "
                                           f"{output.get('evalue', '')}"]
        return cell, resources


class _Collect(logging.Handler):
    """Keeps nbgrader's error messages so that a failed release can show them."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _generate(chapter: str, root: Path, work: Path, gradebook: bool = False) -> Path:
    """Run nbgrader's GenerateAssignment for ``chapter`` into ``work``; return its folder.

    With ``gradebook=True`` the chapter's graded cells are recorded in the course's
    gradebook (from nbgrader_config.py); otherwise in a throw-away one inside ``work``.
    """
    from nbgrader.converters import GenerateAssignment
    from nbgrader.coursedir import CourseDirectory

    ensure_scripts_on_path()
    config = load_course_config(root)
    config.CourseDirectory.root = str(root)
    config.CourseDirectory.release_directory = str(work / "release")
    if not gradebook:
        # A throw-away gradebook: a plain release never touches an instructor's real one.
        config.CourseDirectory.db_url = "sqlite:///" + str(work / "gradebook.db")
    else:
        _ensure_sqlite_folder(config.CourseDirectory.db_url)
    config.GenerateAssignment.force = True
    config.GenerateAssignment.create_assignment = True

    coursedir = CourseDirectory(config=config)
    coursedir.assignment_id = chapter
    app = GenerateAssignment(coursedir=coursedir, config=config)
    records = _Collect()
    level = app.log.level
    app.log.addHandler(records)
    app.log.setLevel(logging.WARNING)  # nbgrader's INFO lines would drown the summary
    try:
        app.start()
    except Exception as exc:
        details = "\n".join(records.lines) or str(exc)
        raise ReleaseError(f"nbgrader could not generate the student version of {chapter}:\n"
                           f"{details}") from exc
    finally:
        app.log.removeHandler(records)
        app.log.setLevel(level)
    return work / "release" / chapter


def release_chapter(chapter: str, output_dir: Path, root: Path | None = None,
                    gradebook: bool = False, work: Path | None = None) -> list[Path]:
    """Release one chapter into ``output_dir/chapter``; return the notebooks written.

    The chapter's folder in ``output_dir`` is replaced as a whole (other files of the
    chapter, such as data or scripts, are copied as nbgrader copies them). With
    ``gradebook=True`` the chapter is also recorded in the course's gradebook. ``work`` is
    a scratch folder that may be shared by several releases (it holds the throw-away
    gradebook, whose creation is the slowest step); by default a temporary one is used.
    """
    root = find_course_root() if root is None else Path(root)
    chapter_notebook(chapter, root)
    output_dir = Path(output_dir).resolve()
    if work is None:
        with tempfile.TemporaryDirectory(prefix="gptcourse-release-") as tmp:
            return release_chapter(chapter, output_dir, root, gradebook, Path(tmp))

    generated = _generate(chapter, root, Path(work), gradebook)
    target = output_dir / chapter
    staging = output_dir / f".{chapter}.partial"
    if staging.exists():
        shutil.rmtree(staging)
    shutil.copytree(generated, staging)

    written = []
    for path in sorted(staging.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        normalize_notebook(nb, path.stem)
        path.write_bytes(notebook_bytes(nb))
        written.append(target / path.name)

    # Swap in the new folder only once every notebook is written.
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
    return written


def release_all(output_dir: Path | None = None, root: Path | None = None,
                only: list[str] | None = None, gradebook: bool = False) -> list[Path]:
    """Release every chapter present in solutions/ (or those in ``only``).

    ``gradebook=True`` also records the chapters in the course's gradebook (see
    :func:`release_chapter`).
    ``output_dir`` defaults to the course's notebooks/. When every chapter is released, a
    chapter folder in ``output_dir`` whose source no longer exists is removed: notebooks/
    holds generated files only.
    """
    root = find_course_root() if root is None else Path(root)
    output_dir = root / RELEASE_DIR if output_dir is None else Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    present = chapters(root)
    if only:
        unknown = [c for c in only if c not in present]
        if unknown:
            raise ReleaseError(f"no chapter {', '.join(unknown)} in {root / SOURCE_DIR}; "
                               f"chapters present: {', '.join(present) or 'none'}")
    selected = list(only) if only else present

    written = []
    with tempfile.TemporaryDirectory(prefix="gptcourse-release-") as work:
        for chapter in selected:
            written += release_chapter(chapter, output_dir, root, gradebook, Path(work))

    if not only:
        for stale in sorted(output_dir.iterdir()):
            if stale.is_dir() and CHAPTER_PATTERN.match(stale.name) and stale.name not in present:
                log.warning("removing %s: its source %s/%s no longer exists",
                            stale, SOURCE_DIR, stale.name)
                shutil.rmtree(stale)
    return written


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--chapter", action="append", metavar="NN-slug",
                        help="release only this chapter (repeatable); default: every chapter "
                             "in solutions/")
    parser.add_argument("--output", type=Path, metavar="DIR",
                        help="write the student notebooks here instead of notebooks/")
    parser.add_argument("--gradebook", action="store_true",
                        help="also record each chapter's graded cells in the class gradebook "
                             "(db_url of nbgrader_config.py), as nbgrader's release_assignment, "
                             "autograde and formgrader need; without it a throw-away gradebook "
                             "is used")


def run(args: argparse.Namespace) -> int:
    try:
        root = find_course_root()
        written = release_all(args.output, root, args.chapter, args.gradebook)
    except (FileNotFoundError, ReleaseError) as exc:
        print(f"gptcourse release: {exc}")
        return 1
    for path in written:
        try:
            shown = path.relative_to(Path.cwd())
        except ValueError:
            shown = path
        print(f"released {shown}")
    if not written:
        print(f"gptcourse release: no chapters in {root / SOURCE_DIR}")
    return 0
