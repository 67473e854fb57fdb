"""nbgrader configuration of the gptcourse course (read by every `nbgrader` command).

Layout (paths relative to the folder holding this file):

* ``solutions/NN-slug/<stem>.ipynb``  the source notebooks: one graded notebook per chapter,
  the chapter folder is nbgrader's assignment id (for example ``03-self-attention``);
* ``notebooks/NN-slug/<stem>.ipynb``  the student versions, written by ``gptcourse release``;
* ``grading/``                        everything produced while grading a class: the
  gradebook, collected submissions, autograded copies and feedback. It is git-ignored and
  never shipped.

Run nbgrader commands from this folder (nbgrader reads ``nbgrader_config.py`` from the
current directory).
"""

import os

c = get_config()  # noqa: F821 (provided by traitlets when it loads this file)

HERE = os.path.dirname(os.path.abspath(__file__))

c.CourseDirectory.course_id = "gptcourse"
c.CourseDirectory.root = HERE
c.CourseDirectory.source_directory = "solutions"
c.CourseDirectory.release_directory = "notebooks"

# Work folders of a class run: all under the git-ignored grading/ folder.
c.CourseDirectory.submitted_directory = os.path.join("grading", "submitted")
c.CourseDirectory.autograded_directory = os.path.join("grading", "autograded")
c.CourseDirectory.feedback_directory = os.path.join("grading", "feedback")
c.CourseDirectory.solution_directory = os.path.join("grading", "solution")
c.CourseDirectory.source_with_tests_directory = os.path.join("grading", "source_with_tests")
# sqlite cannot create the folder of its database file, so make sure it exists.
os.makedirs(os.path.join(HERE, "grading"), exist_ok=True)
c.CourseDirectory.db_url = "sqlite:///" + os.path.join(HERE, "grading", "gradebook.db")

# The nbgrader exchange (hand-out and collection on a shared machine) lives outside the
# repository: /srv/nbgrader/exchange, or the folder in $GPTCOURSE_EXCHANGE.
c.Exchange.root = os.environ.get("GPTCOURSE_EXCHANGE", "/srv/nbgrader/exchange")

# Execution bounds. nbgrader 0.9.6 honours `Execute.timeout` (the older
# `ExecutePreprocessor.timeout` is ignored by its autograder and validator). It bounds every
# cell in seconds. Training cells (chapters 09 and 10, run in learner mode without
# GPTCOURSE_QUICK) get this longer bound of 600 s; every other cell of the course is meant
# to finish well within nbgrader's default of 30 s.
c.Execute.timeout = 600
c.Execute.startup_timeout = 120
c.Execute.interrupt_on_timeout = True

# Feedback for learners must not show the hidden tests' source: shorten the tracebacks
# that quote it, then remove it from the check cells before the feedback HTML is written
# (stock nbgrader copies every test cell and its traceback into the feedback).
c.GenerateFeedback.preprocessors = [
    "gptcourse.release.HideHiddenTestSource",
    "nbgrader.preprocessors.ClearHiddenTests",
    "nbgrader.preprocessors.GetGrades",
    "nbconvert.preprocessors.CSSHTMLHeaderPreprocessor",
]
c.ClearHiddenTests.enforce_metadata = False
