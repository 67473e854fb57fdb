"""Attacks on the grade, tried one exercise at a time in the sandbox.

Each answer is run exactly as ``gptcourse grade`` runs it: the answer cells in a fresh
fenced process, the comparison with the reference here. A wrong answer must score 0
whatever it patches, a right one full marks.
"""

import os

import pytest
import torch

from attacks import submissions, toy_exercise
from gptcourse.checks import get_exercise
from gptcourse.grading import isolation
from gptcourse.grading.sandbox import Job, Sandbox, judge
from gptcourse.grading.structure import graded_exercises, submission_cells

CAPS = isolation.capabilities()
needs_fences = pytest.mark.skipif(not CAPS.namespaces,
                                  reason="hiding paths needs Linux and root")
TIMEOUT = 4.0

RIGHT, WRONG = submissions.RIGHT, submissions.WRONG


def _indented(code: str) -> str:
    """``code`` indented one level, to sit inside an ``if`` of a probe."""
    return "".join("    " + line + "\n" for line in code.splitlines())


@pytest.fixture(scope="module")
def gradebook(tmp_path_factory):
    """A stand-in for the instructor's gradebook, which learner code must not reach."""
    path = tmp_path_factory.mktemp("instructor") / "gradebook.db"
    path.write_text("the real gradebook")
    return path


@pytest.fixture(scope="module")
def sandbox(gradebook):
    hide = (str(submissions.REPO / "solutions"), str(gradebook))
    with Sandbox(timeout=TIMEOUT, hide=hide) as box:
        yield box


def grade(sandbox, cells, exercise_id="mean_squared_error"):
    exercise = get_exercise(exercise_id)
    cases = exercise.cases() + exercise.cases(hidden=True)
    job = Job(exercise_id, list(cells), cases, exercise.blocked, exercise.visible.__module__)
    return judge(exercise, cases, sandbox.run(job), 1.0)


PATCHES = {
    "torch.allclose always true": "import torch\ntorch.allclose = lambda *a, **k: True\n",
    "torch.isclose always true": (
        "import torch\ntorch.isclose = lambda a, b, **k: torch.ones_like(a, dtype=torch.bool)\n"),
    "the course's comparison patched": (
        "import gptcourse.checks.core as core\n"
        "core.compare_outputs = lambda *a, **k: None\n"
        "core.evaluate = lambda *a, **k: core.Verdict(True, 'passed')\n"
        "core.check = lambda *a, **k: None\n"),
    "the tolerance made huge": (
        "import gptcourse.tolerances as t\n"
        "for k in list(t.TOLERANCES): t.TOLERANCES[k] = (1e9, 1e9)\n"),
    "Tensor comparisons patched": (
        "import torch\ntorch.Tensor.__eq__ = lambda a, b: True\n"
        "torch.Tensor.__ne__ = lambda a, b: False\n"),
    "the check function replaced": (
        "import gptcourse.checks as checks\nchecks.check = lambda *a, **k: print('ok')\n"),
}


@pytest.mark.parametrize("patch", PATCHES.values(), ids=PATCHES.keys())
def test_a_wrong_answer_scores_0_whatever_it_patches(sandbox, patch):
    verdict = grade(sandbox, [patch + WRONG])
    assert verdict.score == 0.0
    assert "absolute" in verdict.reason  # the mistake is still named

    # The same patch next to a right answer does not cost the learner anything.
    assert grade(sandbox, [patch + RIGHT]).score == 1.0


def test_the_right_answer_scores_full_marks(sandbox):
    verdict = grade(sandbox, [RIGHT])
    assert (verdict.score, verdict.max_score) == (1.0, 1.0)
    assert verdict.reason.startswith("passed")


def test_an_unattempted_answer_scores_0(sandbox):
    stub = "def mean_squared_error(predictions, targets):\n    raise NotImplementedError()\n"
    verdict = grade(sandbox, [stub])
    assert verdict.score == 0.0 and verdict.reason.startswith("not attempted")


def test_warnings_and_stderr_do_not_cost_marks(sandbox):
    noisy = ("import sys, warnings\nwarnings.warn('a UserWarning')\n"
             "print('noise', file=sys.stderr)\n" + RIGHT +
             "    warnings.warn('inside')\n")
    noisy = noisy.replace("    return ((predictions - targets) ** 2).mean()\n    warnings",
                          "    warnings.warn('inside', DeprecationWarning)\n"
                          "    print('more noise', file=sys.stderr)\n"
                          "    return ((predictions - targets) ** 2).mean()\n    # warnings")
    assert grade(sandbox, [noisy]).score == 1.0


IMPORTS = {
    "the reference imported under the answer's name": (
        "from gptcourse.checks.welcome import reference_mean_squared_error as "
        "mean_squared_error\n"),
    "a wrapper around the reference": (
        "from gptcourse.checks import welcome\n"
        "def mean_squared_error(predictions, targets):\n"
        "    return welcome.reference_mean_squared_error(predictions, targets)\n"),
    "the reference fetched from the registry": (
        "from gptcourse.checks import get_exercise\n"
        "_ref = get_exercise('mean_squared_error').reference\n"
        "def mean_squared_error(predictions, targets):\n"
        "    return _ref(predictions, targets)\n"),
    "the reference's __module__ disguised": (
        "import functools\nfrom gptcourse.checks import welcome\n"
        "def mean_squared_error(predictions, targets):\n"
        "    return welcome.reference_mean_squared_error(predictions, targets)\n"
        "mean_squared_error.__module__ = '__main__'\n"),
}


@pytest.mark.parametrize("answer", IMPORTS.values(), ids=IMPORTS.keys())
def test_the_course_reference_does_not_count_as_an_answer(sandbox, answer):
    verdict = grade(sandbox, [answer])
    assert verdict.score == 0.0
    assert "course's own implementation" in verdict.reason


@pytest.mark.parametrize("answer", [
    "from gptcourse.attention import softmax as toy_softmax\n",
    "import gptcourse.attention as a\ndef toy_softmax(x):\n    return a.softmax(x)\n",
    # A module that imported the function before grading still holds the original object.
    "import sys\n_f = [getattr(m, 'softmax') for m in list(sys.modules.values())\n"
    "      if getattr(m, '__name__', '').startswith('gptcourse') and hasattr(m, 'softmax')]\n"
    "def toy_softmax(x):\n    return _f[-1](x)\n",
], ids=["imported", "wrapped", "found in another module"])
def test_a_library_reference_is_blocked_during_grading(sandbox, answer):
    verdict = grade(sandbox, [answer], "toy_softmax")
    assert verdict.score == 0.0
    assert "course's own implementation" in verdict.reason


def test_earlier_references_stay_usable(sandbox):
    # mean_squared_error may use another chapter's reference (here: attention.softmax).
    answer = ("from gptcourse.attention import softmax\n"
              "def mean_squared_error(predictions, targets):\n"
              "    assert softmax(torch.zeros(2)).sum() == 1\n"
              "    return ((predictions - targets) ** 2).mean()\n")
    assert grade(sandbox, [answer]).score == 1.0
    right_softmax = "def toy_softmax(x):\n    return torch.softmax(x, dim=-1)\n"
    assert grade(sandbox, [right_softmax], "toy_softmax").score == 1.0
    assert toy_exercise.TOY.id == "toy_softmax"


def test_os_exit_is_a_dead_kernel_not_a_crash(sandbox):
    verdict = grade(sandbox, ["import os\nos._exit(0)\n" + RIGHT])
    assert verdict.score == 0.0 and verdict.reason.startswith("kernel died")


def test_a_loop_that_swallows_keyboard_interrupt_is_killed(sandbox):
    loop = ("import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "while True:\n    try:\n        pass\n    except KeyboardInterrupt:\n"
            "        pass\n")
    verdict = grade(sandbox, [loop + RIGHT])
    assert verdict.score == 0.0 and verdict.reason.startswith("timed out")
    # The fork server is still usable for the next learner.
    assert grade(sandbox, [RIGHT]).score == 1.0


def test_a_huge_allocation_fails_and_later_cells_still_count(sandbox):
    hog = "import torch\nx = torch.ones(6 * 2**30, dtype=torch.uint8)\n"
    verdict = grade(sandbox, [hog + RIGHT])
    assert verdict.score == 0.0 and verdict.reason.startswith("out of memory")
    # Each cell runs on its own: a broken earlier cell does not hide a later answer.
    assert grade(sandbox, [hog, RIGHT]).score == 1.0
    assert grade(sandbox, ["raise SystemExit(1)", "raise KeyboardInterrupt", RIGHT]).score == 1.0


def test_returning_objects_that_fake_equality_scores_0(sandbox):
    liar = ("class Anything:\n    def __eq__(self, other):\n        return True\n"
            "def mean_squared_error(predictions, targets):\n    return Anything()\n")
    assert grade(sandbox, [liar]).score == 0.0
    subclass = ("class Liar(torch.Tensor):\n"
                "    @classmethod\n"
                "    def __torch_function__(cls, func, types, args=(), kwargs=None):\n"
                "        return True\n"
                "def mean_squared_error(predictions, targets):\n"
                "    return torch.zeros(()).as_subclass(Liar)\n")
    assert grade(sandbox, [subclass]).score == 0.0


def test_a_forged_result_file_is_never_unpickled(sandbox, tmp_path):
    marker = tmp_path / "payload-ran"
    forge = (
        "import os, pickle, torch\n"
        "class Payload:\n"
        "    def __reduce__(self):\n"
        f"        return (open, ({str(marker)!r}, 'w'))\n"
        "torch.save({'outcomes': [Payload()], 'candidate': 'ok', 'cell_errors': []},\n"
        "           'result.pt', _use_new_zipfile_serialization=True)\n"
        "os._exit(0)\n")
    verdict = grade(sandbox, [forge])
    assert verdict.score == 0.0 and "could not be read back" in verdict.reason
    assert not marker.exists()


@needs_fences
def test_solutions_and_gradebook_are_out_of_reach(sandbox, gradebook):
    spy = (
        "import os\nfound = []\n"
        f"for path in [{str(submissions.SOURCE)!r}, {str(gradebook)!r}]:\n"
        "    try:\n        found.append(open(path).read())\n    except OSError:\n"
        "        pass\n"
        "try:\n"
        f"    open({str(gradebook)!r}, 'w').write('tampered')\n"
        "    found.append('wrote')\nexcept OSError:\n    pass\n"
        "if not any(found):\n" + _indented(RIGHT))
    assert grade(sandbox, [spy]).score == 1.0  # defined only when nothing was reached
    assert gradebook.read_text() == "the real gradebook"


@needs_fences
def test_no_network_and_no_unmounting(sandbox):
    probe = (
        "import socket, ctypes, ctypes.util\nreached = []\n"
        "try:\n    socket.create_connection(('1.1.1.1', 53), timeout=1)\n"
        "    reached.append('net')\nexcept OSError:\n    pass\n"
        "libc = ctypes.CDLL(ctypes.util.find_library('c'))\n"
        f"if libc.umount2({str(submissions.REPO / 'solutions')!r}.encode(), 2) == 0:\n"
        "    reached.append('umount')\n"
        "if not reached:\n" + _indented(RIGHT))
    assert grade(sandbox, [probe]).score == 1.0


def test_deleted_stripped_and_duplicated_cells():
    exercises = graded_exercises(submissions.source())
    assert [e.id for e in exercises] == ["mean_squared_error"]

    for nb in (submissions.without_test_cell(), submissions.stripped_test_cell()):
        found = submission_cells(nb, exercises)
        assert "missing cell" in found.problems["mean_squared_error"]
        assert "restore it from the released notebook" in found.problems["mean_squared_error"]

    stripped_answer = submissions.with_answer(RIGHT)
    del stripped_answer.cells[submissions.answer_index(stripped_answer)].metadata["nbgrader"]
    assert "answer cell" in submission_cells(stripped_answer, exercises).problems[
        "mean_squared_error"]

    found = submission_cells(submissions.duplicated_cells(), exercises)
    assert not found.problems
    assert found.programs["mean_squared_error"][-1] == RIGHT
    assert "appears 2 times" in found.notes["mean_squared_error"]


def test_duplicated_answer_cells_are_graded_last_one_wins(sandbox):
    exercises = graded_exercises(submissions.source())
    found = submission_cells(submissions.duplicated_cells(WRONG, RIGHT), exercises)
    assert grade(sandbox, found.programs["mean_squared_error"]).score == 1.0
    found = submission_cells(submissions.duplicated_cells(RIGHT, WRONG), exercises)
    assert grade(sandbox, found.programs["mean_squared_error"]).score == 0.0


def test_learner_processes_do_not_outlive_the_job(sandbox, tmp_path):
    if CAPS.other_uid is False and not CAPS.namespaces:
        pytest.skip("needs a separate uid or namespaces")
    flag = tmp_path / "still-alive"
    os.chmod(tmp_path, 0o777)
    script = tmp_path / "linger.py"
    script.write_text(f"import time, pathlib\ntime.sleep(2)\n"
                      f"pathlib.Path({str(flag)!r}).touch()\n")
    spawner = ("import subprocess, sys\n"
               f"subprocess.Popen([sys.executable, {str(script)!r}])\n" + RIGHT)
    assert grade(sandbox, [spawner]).score == 1.0
    import time

    time.sleep(3)
    assert not flag.exists()
    assert torch.tensor(1).item() == 1


def test_without_os_fences_limits_and_the_comparison_still_hold():
    # What a grader gets without root (or on macOS): limits and the outside comparison.
    with Sandbox(timeout=TIMEOUT, isolate=False) as plain:
        assert plain.uid is None and not plain.namespaces
        assert grade(plain, [PATCHES["torch.allclose always true"] + WRONG]).score == 0.0
        assert grade(plain, [RIGHT]).score == 1.0
        cpu = ("x = 0\nwhile True:\n    try:\n        x += 1\n"
               "    except KeyboardInterrupt:\n        pass\n")
        assert grade(plain, [cpu]).reason.startswith("timed out")


def test_cpu_time_is_bounded_apart_from_the_wall_clock():
    limits = isolation.Limits(cpu_seconds=1)
    with Sandbox(limits=limits, timeout=30.0) as box:
        spin = "while True:\n    pass\n"
        verdict = grade(box, [spin])
        assert verdict.reason.startswith("timed out: used more than 1 s of CPU")


@needs_fences
def test_the_course_and_python_cannot_be_modified(sandbox):
    import sysconfig

    targets = [submissions.REPO / "grading-probe.txt",
               submissions.REPO / "lib" / "grading-probe.txt",
               os.path.join(sysconfig.get_path("purelib"), "grading-probe.txt")]
    probe = ("written = []\n"
             f"for path in {[str(t) for t in targets]!r}:\n"
             "    try:\n        open(path, 'w').write('x')\n        written.append(path)\n"
             "    except OSError:\n        pass\n"
             "if not written:\n" + _indented(RIGHT))
    try:
        assert grade(sandbox, [probe]).score == 1.0
    finally:
        for target in targets:
            if os.path.exists(target):
                os.unlink(target)


def test_a_forged_result_file_with_no_outcomes_scores_0(sandbox):
    forged = ("import os, torch\n"
              "torch.save({'outcomes': [], 'candidate': 'ok', 'cell_errors': []}, "
              "'result.pt')\nos._exit(0)\n")
    verdict = grade(sandbox, [forged])
    assert verdict.score == 0.0 and "tampered" in verdict.reason


def test_a_compressed_result_file_is_refused_before_it_is_unpacked(sandbox):
    bomb = ("import os, zipfile, torch\n"
            "torch.save({'outcomes': None, 'candidate': 'ok', 'cell_errors': []}, 'real.pt')\n"
            "with zipfile.ZipFile('real.pt') as src, zipfile.ZipFile('result.pt', 'w', "
            "zipfile.ZIP_DEFLATED) as dst:\n"
            "    for info in src.infolist():\n"
            "        dst.writestr(info.filename, src.read(info))\n"
            "os._exit(0)\n")
    verdict = grade(sandbox, [bomb])
    assert verdict.score == 0.0 and "compressed" in verdict.reason


def test_a_named_pipe_where_the_output_belongs_does_not_stall_grading(sandbox):
    pipe = "import os\nos.unlink('output.txt')\nos.mkfifo('output.txt')\n"
    assert grade(sandbox, [pipe + RIGHT]).score == 1.0
    assert grade(sandbox, ["import os\nos.mkfifo('result.pt')\nos._exit(0)\n"]).score == 0.0


@needs_fences
def test_nothing_the_answer_starts_outlives_its_job_or_reaches_the_grader(sandbox):
    marker = f"gptcourse-leftover-probe-{os.getpid()}"
    leftover = (
        "import subprocess, sys\n"
        f"subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)  # {marker}'],"
        " start_new_session=True)\n")
    fork_server = sandbox._proc.pid
    kill_server = (f"import os, signal\ntry:\n    os.kill({fork_server}, signal.SIGKILL)\n"
                   "except OSError:\n    pass\n")
    assert grade(sandbox, [leftover + kill_server + RIGHT]).score == 1.0
    assert sandbox._proc.poll() is None, "learner code killed the fork server"

    survivors = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    survivors.append(pid)
        except OSError:
            pass
    assert not survivors, f"processes the answer started are still running: {survivors}"
