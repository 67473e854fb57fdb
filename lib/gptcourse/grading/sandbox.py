"""Run a learner's answer cells in a fresh, fenced process and bring back only plain data.

For one exercise, :meth:`Sandbox.run` sends a job (the answer cells up to the exercise's
answer, and the cases built here, in the grader) to a fork server: a small process that
imported torch and the course once, and forks one child per job, so each exercise starts
from a clean interpreter at the cost of a fork. The child

1. starts its own process group and session, so the whole group can be killed;
2. reads the job, loads the exercise (trusted code, before any learner code);
3. enters a private mount namespace in which the solutions, the gradebook, the submissions
   and the course library's source are covered by empty file systems and the course and
   Python folders are read-only, and an empty network namespace (Linux, as root);
4. limits its memory, CPU time, file size and processes, moves into a temporary working
   directory and an environment without the instructor's variables, and drops to an
   unprivileged uid (as root; when Python itself is not readable by other users, it stays
   root but gives up every capability, so the covers cannot be unmounted);
5. replaces the course's own implementation of this exercise (``Exercise.blocked``) by a
   function that raises, everywhere it is referenced;
6. runs the standard preamble and every answer cell, each in its own try/except, looks up
   the learner's object named like the exercise, applies it to the cases with
   :func:`gptcourse.checks.core.run_cases`, and writes the outcomes with ``torch.save``.

The fork server enforces the wall-clock bound (SIGKILL to the child's process group and to
every process of the sandbox uid, whatever signals learner code ignores). The grader loads
the outcomes with ``torch.load(weights_only=True)``, so nothing the learner made is
unpickled, and compares them with the reference itself (:func:`judge`).
"""

import importlib
import io
import json
import logging
import os
import pkgutil
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import types
import zipfile
from dataclasses import asdict, dataclass, field

import torch

from gptcourse.checks.core import Case, Exercise, Outcome, evaluate
from gptcourse.grading import isolation

log = logging.getLogger(__name__)

PREAMBLE = "import math, torch\nimport torch.nn as nn\nimport torch.nn.functional as F\n"

# Modules of the course that learner code may not reload or read: everything is imported
# in the fork server, then the package's source folder is hidden.
_NOT_PRELOADED = ("gptcourse.grading", "gptcourse.cli", "gptcourse.release",
                  "gptcourse.selfcheck", "gptcourse.doctor")

_READY = b"gptcourse-sandbox-ready\n"
_OOM_SIGNS = ("can't allocate memory", "MemoryError", "out of memory",
              "std::bad_alloc")


@dataclass(frozen=True)
class Job:
    """One exercise of one submission. ``cells``: answer cell sources, in order."""

    exercise_id: str
    cells: list[str]
    cases: list[Case]
    forbidden: tuple[str, ...] = ()
    # The module that registers the exercise, imported in the child before learner code.
    module: str = ""


@dataclass
class JobResult:
    """What came back from the child; ``failure`` is set when no outcomes did."""

    outcomes: list[Outcome] | None = None
    candidate: str = "missing"        # "ok", "missing", "reference"
    cell_errors: list[str] = field(default_factory=list)
    failure: str | None = None
    seconds: float = 0.0


@dataclass(frozen=True)
class Judgement:
    score: float
    max_score: float
    reason: str


# --------------------------------------------------------------------------- the grader side

class Sandbox:
    """A fork server for one grading worker; use as a context manager.

    ``timeout``: wall-clock seconds per exercise. ``hide``: paths learner code must not
    see. ``worker`` picks the sandbox uid, so parallel workers never share one.
    """

    def __init__(self, limits: isolation.Limits = isolation.Limits(), timeout: float = 60.0,
                 hide: tuple[str, ...] = (), worker: int = 0, isolate: bool = True,
                 readonly: tuple[str, ...] | None = None):
        self.limits = limits
        self.timeout = timeout
        caps = isolation.capabilities()
        self.namespaces = isolate and caps.namespaces
        self.uid = isolation.BASE_UID + worker if isolate and caps.other_uid else None
        self.hide = tuple(os.path.abspath(p) for p in hide)
        self.readonly = tuple(isolation.protected_paths() if readonly is None else readonly)
        self._proc: subprocess.Popen | None = None
        self._starting: threading.Thread | None = None

    def __enter__(self) -> "Sandbox":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start_soon(self) -> None:
        """Start the fork server in the background (importing torch takes a while)."""
        self._starting = threading.Thread(target=self.start, daemon=True)
        self._starting.start()

    def _wait_started(self) -> None:
        if self._starting is not None:
            self._starting.join()
            self._starting = None

    def start(self) -> None:
        env = dict(os.environ)
        # The child must import whatever registered the exercise, test fixtures included.
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p and os.path.isdir(p))
        env.setdefault("OMP_NUM_THREADS", "1")
        self._proc = subprocess.Popen(
            [sys.executable, "-c", "from gptcourse.grading.sandbox import serve; serve()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, start_new_session=True)
        line = self._readline(120.0)
        if line != _READY:
            self.close()
            raise RuntimeError("the grading sandbox did not start; run "
                               "`python -c 'import gptcourse.grading.sandbox'` to see why")

    def close(self) -> None:
        self._wait_started()
        if self._proc is not None:
            isolation.kill_process_group(self._proc.pid)
            self._proc.wait()
            self._proc = None

    def _readline(self, timeout: float) -> bytes | None:
        fd = self._proc.stdout.fileno()
        ready, _, _ = select.select([fd], [], [], timeout)
        return self._proc.stdout.readline() if ready else None

    def run(self, job: Job) -> JobResult:
        """Run one job in a fresh child; never raises for anything the learner did."""
        self._wait_started()
        if self._proc is None or self._proc.poll() is not None:
            self.start()
        work = tempfile.mkdtemp(prefix="gptcourse-sandbox-")
        started = time.perf_counter()
        try:
            torch.save({"exercise": job.exercise_id, "module": job.module,
                        "cells": list(job.cells), "forbidden": list(job.forbidden),
                        "cases": [(c.label, tuple(c.args), dict(c.kwargs)) for c in job.cases]},
                       os.path.join(work, "job.pt"))
            request = {"work": work, "timeout": self.timeout, "limits": asdict(self.limits),
                       "uid": self.uid, "namespaces": self.namespaces,
                       "hide": list(self.hide) + _library_dirs(),
                       "readonly": list(self.readonly)}
            self._proc.stdin.write(json.dumps(request).encode() + b"\n")
            self._proc.stdin.flush()
            line = self._readline(self.timeout + 60.0)
            if not line:
                self.close()
                return JobResult(failure="the grading sandbox stopped responding")
            reply = json.loads(line)
            result = _read_result(work, reply, self.timeout, self.limits)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        result.seconds = time.perf_counter() - started
        return result


def _library_dirs() -> list[str]:
    import gptcourse
    return [os.path.dirname(os.path.abspath(gptcourse.__file__))]


def _read_result(work: str, reply: dict, timeout: float, limits: isolation.Limits) -> JobResult:
    path = os.path.join(work, "result.pt")
    stderr = _tail(os.path.join(work, "output.txt"), limits.file_bytes)
    if reply.get("timed_out"):
        return JobResult(failure=f"timed out: the answer cells and checks ran longer than "
                                 f"{timeout:g} s")
    if reply.get("signal") == signal.SIGXCPU or (reply.get("signal") == signal.SIGKILL
                                                 and "CPU" in stderr):
        return JobResult(failure=f"timed out: used more than {limits.cpu_seconds} s of CPU")
    if not os.path.lexists(path):
        if reply.get("signal") == signal.SIGKILL:
            return JobResult(failure="kernel died: the process was killed (out of memory?)")
        if reply.get("signal"):
            name = signal.Signals(reply["signal"]).name
            return JobResult(failure=f"kernel died: the process was killed by {name}")
        if any(sign in stderr for sign in _OOM_SIGNS):
            return JobResult(failure=f"out of memory: more than "
                                     f"{limits.memory_bytes / isolation.GIB:g} GiB")
        return JobResult(failure=f"kernel died: the answer cells ended the process (exit code "
                                 f"{reply.get('code')}, e.g. os._exit or a crash) before the "
                                 "checks ran")
    try:
        data = _load_result(isolation.read_regular_file(path, limits.file_bytes))
        outcomes = [Outcome(value=o["value"], error=o["error"],
                            not_implemented=bool(o["not_implemented"]))
                    for o in data["outcomes"]] if data["outcomes"] is not None else None
        return JobResult(outcomes=outcomes, candidate=str(data["candidate"]),
                         cell_errors=[str(e) for e in data["cell_errors"]])
    except Exception as exc:
        return JobResult(failure=f"the answer's results could not be read back: "
                                 f"{type(exc).__name__}: {exc}"[:300])


def _load_result(raw: bytes):
    """``torch.load`` of a result file that holds only what ``torch.save`` writes: stored,
    uncompressed records. A compressed record could unpack to far more memory than the file
    takes on disk."""
    with zipfile.ZipFile(io.BytesIO(raw)) as archive:
        if any(info.compress_type != zipfile.ZIP_STORED for info in archive.infolist()):
            raise ValueError("the result file holds compressed records, which torch.save "
                             "never writes")
    return torch.load(io.BytesIO(raw), weights_only=True)


def _tail(path: str, limit: int, size: int = 4000) -> str:
    try:
        return isolation.read_regular_file(path, limit)[-size:].decode("utf-8", "replace")
    except OSError:
        return ""


def judge(exercise: Exercise, cases: list[Case], result: JobResult,
          points: float) -> Judgement:
    """Turn a child's outcomes into a score, comparing with the reference here."""
    if result.failure:
        return Judgement(0.0, points, result.failure)
    first_error = (f" (first error in the answer cells: {result.cell_errors[0]})"
                   if result.cell_errors else "")
    out_of_memory = any(sign in text for text in result.cell_errors for sign in _OOM_SIGNS)
    if result.candidate == "reference":
        return Judgement(0.0, points, "the course's own implementation from gptcourse does "
                                      "not count as an answer; write your own")
    if result.candidate != "ok" or result.outcomes is None:
        reason = (f"not attempted: no function or class named {exercise.id!r} after running "
                  f"the answer cells{first_error}")
        return Judgement(0.0, points, ("out of memory: " if out_of_memory else "") + reason)

    if len(result.outcomes) != len(cases):
        return Judgement(0.0, points, f"the answer's results were tampered with: "
                                      f"{len(result.outcomes)} outcomes for {len(cases)} "
                                      "checks")
    verdict = evaluate(exercise, cases, result.outcomes)
    if verdict.passed:
        return Judgement(points, points, verdict.message)
    reason = verdict.message
    if out_of_memory or any(sign in reason for sign in _OOM_SIGNS):
        reason = "out of memory: " + reason
    elif result.cell_errors:
        reason += first_error
    return Judgement(0.0, points, reason)


# --------------------------------------------------------------------------- the fork server

def _preload() -> None:
    """Import torch and every course module once, so that children start warm."""
    import gptcourse
    import gptcourse.checks

    for info in pkgutil.walk_packages(gptcourse.__path__, "gptcourse."):
        if info.name.startswith(_NOT_PRELOADED):
            continue
        try:
            importlib.import_module(info.name)
        except Exception as exc:  # a broken module only matters if an exercise needs it
            log.debug("not preloaded: %s (%s)", info.name, exc)
    gptcourse.checks.all_exercises()


def serve() -> None:
    """The fork server's loop: one JSON request per line on stdin, one reply on stdout."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _preload()
    replies = os.fdopen(os.dup(1), "wb", buffering=0)
    requests = os.fdopen(os.dup(0), "rb")
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    replies.write(_READY)
    for line in requests:
        request = json.loads(line)
        replies.write(json.dumps(_fork_and_wait(request)).encode() + b"\n")


def _fork_and_wait(request: dict) -> dict:
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child; never returns
        code = 3
        try:
            code = _child(request)
        finally:
            os._exit(code)

    deadline = time.monotonic() + request["timeout"]
    timed_out = False
    status = None
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        pidfd = None
    while status is None:
        left = deadline - time.monotonic()
        if left <= 0:
            timed_out = True
            break
        if pidfd is not None:
            select.select([pidfd], [], [], left)
        else:
            time.sleep(min(left, 0.01))
        done, raw = os.waitpid(pid, os.WNOHANG)
        if done:
            status = raw
    if pidfd is not None:
        os.close(pidfd)

    # Whatever happened, nothing the learner started may outlive the job.
    isolation.kill_process_group(pid)
    if status is None:
        _, status = os.waitpid(pid, 0)
    if request.get("uid") is not None:
        isolation.kill_uid(request["uid"])
    # Without namespaces (not root, or not Linux) and without a separate uid, a process the
    # learner started in a session of its own survives this (its CPU time stays limited).
    return {"timed_out": timed_out,
            "code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
            "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None}


def _blocked(*args, **kwargs):
    # The message is a literal: this code object also runs with other modules' globals.
    raise RuntimeError("this is the course's own implementation of the exercise being "
                       "graded; it does not count as your answer: write your own")


def _block_function(func: types.FunctionType) -> None:
    """Make ``func`` raise wherever it is referenced, by swapping its code."""
    replacement = _blocked.__code__
    try:
        if func.__code__.co_freevars:
            raise ValueError("closure")
        func.__code__ = replacement
    except ValueError:
        wrapped = getattr(func, "__wrapped__", None)
        if isinstance(wrapped, types.FunctionType) and not wrapped.__code__.co_freevars:
            wrapped.__code__ = replacement


def _poison(dotted: str) -> None:
    """Block the course object ``dotted`` (``"gptcourse.attention.attention_scores"``)."""
    module_name, _, attribute = dotted.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return
    target = getattr(module, attribute, None)
    if isinstance(target, types.FunctionType):
        _block_function(target)
    elif isinstance(target, type):
        for value in vars(target).values():
            func = getattr(value, "__func__", value)
            if isinstance(func, types.FunctionType):
                _block_function(func)
    setattr(module, attribute, _blocked)


def _strip_magics(source: str) -> str:
    # IPython magics and shell escapes mean nothing outside a kernel.
    return "\n".join("pass  # " + line if line.lstrip().startswith(("%", "!")) else line
                     for line in source.split("\n"))


def _plain(value, depth: int = 0):
    """``value`` made of plain tensors, numbers, strings and containers, or TypeError."""
    if depth > 20:
        raise TypeError("a value nested too deeply")
    if isinstance(value, torch.Tensor):
        # Tensor subclasses cannot cross with weights_only: send a plain copy.
        return value.detach().as_subclass(torch.Tensor).clone()
    if value is None or isinstance(value, (bool, int, float, str)):
        return type(value)(value) if value is not None else None
    if isinstance(value, (list, tuple)):
        items = [_plain(v, depth + 1) for v in value]
        return items if isinstance(value, list) else tuple(items)
    if isinstance(value, dict):
        return {_plain(k, depth + 1): _plain(v, depth + 1) for k, v in value.items()}
    raise TypeError(f"your code returned a {type(value).__name__}, which the checks "
                    "cannot compare (return tensors, numbers or tuples of them)")


def _plain_outcome(outcome: Outcome) -> dict:
    try:
        value = _plain(outcome.value)
    except Exception as exc:
        return {"value": None, "error": f"{type(exc).__name__}: {exc}"[:500],
                "not_implemented": False}
    return {"value": value, "error": None if outcome.error is None else str(outcome.error),
            "not_implemented": bool(outcome.not_implemented)}


def _child(request: dict) -> int:  # pragma: no cover - runs in the forked child
    from gptcourse.checks import get_exercise
    from gptcourse.checks.core import is_course_reference, run_cases

    os.setsid()
    work = request["work"]
    out = os.open(os.path.join(work, "output.txt"), os.O_WRONLY | os.O_CREAT, 0o600)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.closerange(3, 4096)
    sys.stdout = open(1, "w", buffering=1, closefd=False)
    sys.stderr = open(2, "w", buffering=1, closefd=False)

    # Trusted set-up: nothing below runs learner code until the cells are executed.
    job = torch.load(os.path.join(work, "job.pt"), weights_only=True)
    if job["module"] and job["module"] not in sys.modules:
        importlib.import_module(job["module"])
    exercise = get_exercise(job["exercise"])
    cases = [Case(label, tuple(args), dict(kwargs)) for label, args, kwargs in job["cases"]]
    save, kill_all_others = torch.save, isolation.kill_all_others

    uid = request["uid"]
    if request["namespaces"]:
        isolation.enter_namespaces(request["hide"], readonly=request["readonly"])
        isolation.enter_pid_namespace()
    if uid is not None:
        os.chown(work, uid, uid)
        os.chown(os.path.join(work, "output.txt"), uid, uid)
    os.chdir(work)
    os.environ.clear()
    os.environ.update(isolation.clean_environment(work))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    isolation.apply_limits(isolation.Limits(**request["limits"]), processes=uid is not None)
    for dotted in job["forbidden"]:
        _poison(dotted)
    import linecache
    linecache.clearcache()
    torch.set_num_threads(1)
    if uid is not None:
        isolation.drop_privileges(uid)
    elif request["namespaces"]:
        isolation.drop_capabilities()

    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    exec(compile(PREAMBLE, "<preamble>", "exec"), namespace)
    cell_errors = []
    for index, source in enumerate(job["cells"], start=1):
        try:
            exec(compile(_strip_magics(source), f"<answer cell {index}>", "exec"), namespace)
        except BaseException as exc:  # SystemExit and KeyboardInterrupt included
            frames = [f for f in traceback.extract_tb(exc.__traceback__)
                      if f.filename.startswith("<answer cell")]
            lineno = exc.lineno if isinstance(exc, SyntaxError) else (
                frames[-1].lineno if frames else None)
            line = f", line {lineno}" if lineno else ""
            cell_errors.append(f"answer cell {index}{line}: {type(exc).__name__}: {exc}"[:500])

    candidate = namespace.get(exercise.id)
    outcomes = None
    if candidate is None:
        state = "missing"
    elif is_course_reference(candidate):
        state = "reference"
    else:
        state = "ok"
        try:
            outcomes = [_plain_outcome(o) for o in run_cases(exercise, candidate, cases)]
        except BaseException as exc:  # a KeyboardInterrupt raised from inside a case
            outcomes = [{"value": None, "error": f"{type(exc).__name__}: {exc}"[:500],
                         "not_implemented": False} for _ in cases]
    if request["namespaces"]:
        kill_all_others()    # nothing the answer started may touch the result below
    save({"outcomes": outcomes, "candidate": state, "cell_errors": cell_errors},
         os.path.join(work, "result.pt"))
    return 0
