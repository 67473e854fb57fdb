"""The course through nbgrader: the config loads, notebooks validate, autograding scores.

Autograding is parametrized over every chapter present in solutions/, so each new chapter
is covered as soon as it exists. All chapters share one temporary course folder (one
gradebook); each notebook is autograded exactly once, by the first test that needs it.
"""

import logging
import shutil
import sys

import nbformat
import pytest

from gptcourse import checks, release
from gptcourse.release import chapter_notebook, chapters, course_config, load_course_config

ROOT = release.find_course_root()
CHAPTERS = chapters(ROOT)
SOLUTION, UNTOUCHED = "solution", "untouched"

# nbgrader's gradebook code trips SQLAlchemy's autoflush warnings on every autograde.
pytestmark = pytest.mark.filterwarnings("ignore::sqlalchemy.exc.SAWarning")


# --- the configuration ----------------------------------------------------------------


def _configurable_traits() -> dict[str, set[str]]:
    """Every configurable trait name, by class name, of nbgrader and the classes it uses."""
    from jupyter_client.kernelspec import KernelSpecManager
    from nbgrader.apps import NbGraderApp
    from nbgrader.exchange import default as exchange
    from traitlets.config import Configurable

    # The file system exchange's classes share names with their abstract bases.
    exchange_classes = [c for c in vars(exchange).values()
                        if isinstance(c, type) and issubclass(c, Configurable)]
    traits = {}
    for cls in [*NbGraderApp().all_configurable_classes(), KernelSpecManager,
                *exchange_classes]:
        for klass in cls.mro():
            if hasattr(klass, "class_trait_names"):
                names = set(klass.class_trait_names(config=True))
                traits.setdefault(klass.__name__, set()).update(names)
    return traits


def test_nbgrader_config_loads_without_error():
    # traitlets raises here on any exception in the file; nbgrader would log and go on.
    config = load_course_config(ROOT)

    assert config.CourseDirectory.course_id == "gptcourse"
    assert config.CourseDirectory.source_directory == "solutions"
    assert config.CourseDirectory.release_directory == "notebooks"


def test_nbgrader_config_names_only_existing_options():
    # A misspelt or outdated option (such as ExecutePreprocessor.timeout, which nbgrader's
    # autograder ignores) would otherwise be skipped with a warning at most.
    config = load_course_config(ROOT)
    traits = _configurable_traits()

    for section, values in config.items():
        assert section in traits, f"nbgrader_config.py configures unknown class {section}"
        for name in values:
            assert name in traits[section], f"{section}.{name} is not an option of {section}"


def test_cell_timeout_is_honoured_by_nbgrader():
    from nbgrader.preprocessors import Execute

    config = load_course_config(ROOT)
    execute = Execute(config=config)

    assert execute.timeout == config.Execute.timeout
    assert execute.timeout >= 600, "training cells need the longer bound"


def test_grading_folders_are_git_ignored():
    config = load_course_config(ROOT).CourseDirectory
    ignored = {line.strip().rstrip("/") for line in (ROOT / ".gitignore").read_text().split()}

    for step in ("submitted", "autograded", "feedback", "solution", "source_with_tests"):
        top = getattr(config, f"{step}_directory").split("/")[0]
        assert top in ignored, f"{step} folder {top}/ is not in .gitignore"
    db_path = config.db_url.removeprefix("sqlite:///")
    assert db_path.startswith(str(ROOT)) and db_path[len(str(ROOT)) + 1:].split("/")[0] in ignored


def test_nbgrader_kernel_runs_this_python():
    # nbgrader starts the notebook's "python3" kernel through jupyter_client's default
    # kernel spec lookup; it must be this environment's Python, which imports gptcourse.
    from jupyter_client.manager import KernelManager

    manager = KernelManager(kernel_name="python3")
    command = manager.format_kernel_cmd()

    assert command[0] == sys.executable


# --- every chapter: layout and exercises ----------------------------------------------


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_chapter_exercises_are_registered(chapter):
    from gptcourse.selfcheck import graded_exercises

    nb = nbformat.read(chapter_notebook(chapter, ROOT), as_version=4)
    found = graded_exercises(nb)
    registry = checks.all_exercises()

    assert found, f"{chapter} has no graded exercise"
    for exercise in found:
        assert exercise.id in registry, f"{exercise.id} of {chapter} is not registered"
        assert registry[exercise.id].chapter == chapter
        assert exercise.answer_index is not None, f"{exercise.id} has no answer cell"
        assert exercise.answer_index < exercise.test_index
        assert exercise.points > 0


# --- nbgrader's validation (its command line exits 0 even on failure) ------------------

# Autograding below already runs every chapter's tests, hidden ones included, so
# validation (the same execution without hidden tests) is exercised on two chapters only.
VALIDATED = [c for c in CHAPTERS if c in ("00-welcome", "03-self-attention")]


def _validate(path, work):
    from nbgrader.validator import Validator

    release.ensure_scripts_on_path()
    return Validator(config=course_config(work, ROOT)).validate(str(path))


@pytest.mark.parametrize("chapter", VALIDATED)
def test_solution_passes_nbgrader_validation(chapter, tmp_path):
    result = _validate(chapter_notebook(chapter, ROOT), tmp_path)

    assert result == {}, f"nbgrader validation of the solution of {chapter}: {result}"


@pytest.mark.parametrize("chapter", VALIDATED)
def test_untouched_student_notebook_fails_nbgrader_validation(chapter, tmp_path):
    from gptcourse.selfcheck import graded_exercises

    student = chapter_notebook(chapter, ROOT, directory=release.RELEASE_DIR)
    result = _validate(student, tmp_path)

    n_tests = len(graded_exercises(nbformat.read(student, as_version=4)))
    assert "failed" in result, f"validation of untouched {chapter} did not fail: {result}"
    assert len(result["failed"]) == n_tests, "every check cell must fail"


# --- autograding --------------------------------------------------------------------


class GradedCourse:
    """One temporary nbgrader course shared by every autograde test of this module."""

    def __init__(self, work):
        from nbgrader.apps import NbGraderAPI
        from nbgrader.coursedir import CourseDirectory

        release.ensure_scripts_on_path()
        self.work = work
        self.config = course_config(work, ROOT)
        (work / "exchange").mkdir()
        self.api = NbGraderAPI(CourseDirectory(config=self.config), config=self.config)
        self.api.log.setLevel(logging.WARNING)
        self.generated = set()
        self.results = {}

    def autograde(self, chapter: str, student: str) -> dict:
        """Autograde ``student``'s copy of ``chapter`` once; return nbgrader's result."""
        if (chapter, student) in self.results:
            return self.results[chapter, student]
        if chapter not in self.generated:
            result = self.api.generate_assignment(chapter, force=True, create=True)
            assert result["success"], result.get("log")
            self.generated.add(chapter)

        source = chapter_notebook(chapter, ROOT, release.SOURCE_DIR if student == SOLUTION
                                  else release.RELEASE_DIR)
        target = self.work / "submitted" / student / chapter / source.name
        target.parent.mkdir(parents=True)
        shutil.copyfile(source, target)
        result = self.api.autograde(chapter, student, force=True, create=True)
        self.results[chapter, student] = result
        return result

    def grades(self, chapter: str, student: str):
        from nbgrader.api import Gradebook

        stem = chapter_notebook(chapter, ROOT).stem
        with Gradebook(self.config.CourseDirectory.db_url) as gradebook:
            notebook = gradebook.find_submission_notebook(stem, chapter, student)
            return [(g.name, g.score, g.max_score, g.needs_manual_grade)
                    for g in notebook.grades]


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    return GradedCourse(tmp_path_factory.mktemp("course"))


@pytest.mark.notebooks
@pytest.mark.parametrize("chapter", CHAPTERS)
def test_autograded_solution_scores_full_marks(course, chapter):
    result = course.autograde(chapter, SOLUTION)
    assert result["success"], result.get("log")

    autograded = next((course.work / "autograded" / SOLUTION / chapter).glob("*.ipynb"))
    for index, cell in enumerate(nbformat.read(autograded, as_version=4).cells):
        errors = [o for o in cell.get("outputs", []) if o.output_type == "error"]
        assert not errors, f"cell {index} of {chapter} raised {errors[0].ename}"
    grades = course.grades(chapter, SOLUTION)
    assert grades, f"no graded cells recorded for {chapter}"
    for name, score, max_score, manual in grades:
        assert not manual, f"{name} needs manual grading"
        assert score == max_score, f"{name}: {score} of {max_score}"


@pytest.mark.notebooks
@pytest.mark.parametrize("chapter", CHAPTERS)
def test_autograded_untouched_notebook_scores_zero(course, chapter):
    result = course.autograde(chapter, UNTOUCHED)
    assert result["success"], result.get("log")

    autograded = course.work / "autograded" / UNTOUCHED / chapter
    assert list(autograded.glob("*.ipynb")), "the autograded notebook is missing"
    grades = course.grades(chapter, UNTOUCHED)
    assert grades
    for name, score, max_score, manual in grades:
        assert not manual, f"{name} needs manual grading"
        assert max_score > 0
        assert score == 0, f"{name} scored {score} without an answer"
