"""How every exercise is checked: cases, a reference, known mistakes, and a verdict.

An :class:`Exercise` bundles what is needed to judge a learner's function or class:

* ``reference``: the course's implementation, the answer the learner's is compared with;
* ``visible`` and ``hidden``: functions that build deterministic :class:`Case` lists (the
  hidden ones use other shapes, seeds and dtypes);
* ``run``: how a candidate is applied to a case (a plain call by default; a class exercise
  builds the module, copies weights in and runs it);
* ``mistakes``: wrong variants of the reference, each with a message naming the mistake.

Judging is split in two so that grading can run the learner's code in a separate process:
:func:`run_cases` applies a candidate to the cases and records values or errors, and
:func:`evaluate` compares those outcomes with the reference and the known mistakes. The
learner-facing :func:`check` simply does both in one process.

Case arguments and outputs hold only tensors, numbers, strings, booleans, ``None`` and
lists, tuples or dicts of them, so they can cross a process boundary with
``torch.save``/``torch.load(weights_only=True)``.
"""

import copy
import dis
import functools
import math
import os
import sys
import traceback
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from gptcourse.tolerances import tolerance


class CheckFailed(AssertionError):
    """A learner's answer does not match the reference; the message says how."""


class NotAttempted(CheckFailed):
    """The answer cell still raises ``NotImplementedError``."""


@dataclass(frozen=True)
class Case:
    """One set of inputs. ``label`` says in plain words what is special about it."""

    label: str
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Mistake:
    """A classic wrong answer: ``variant`` reproduces it, ``message`` names it and hints."""

    name: str
    message: str
    variant: Callable[..., Any]


@dataclass(frozen=True)
class Outcome:
    """What a candidate returned for one case, or the error it raised."""

    value: Any = None
    error: str | None = None
    not_implemented: bool = False


@dataclass(frozen=True)
class Verdict:
    passed: bool
    message: str
    attempted: bool = True
    mistake: str | None = None


class Unfit(Exception):
    """An answer that does not fit what the exercise asks for (a layer misnamed, a
    parameter of the wrong shape), found by the course's code while it sets the answer up;
    the message speaks to the learner as it is."""


class InputModified(Exception):
    """The candidate changed one of its inputs in place."""


def _first_change(original: Any, used: Any, where: str) -> str | None:
    """Where ``used`` no longer equals ``original`` (tensors compared exactly), or None."""
    if isinstance(original, torch.Tensor):
        if not isinstance(used, torch.Tensor) or used.shape != original.shape or not bool(
                torch.equal(used, original) or torch.isnan(original).any()):
            return where
        return None
    if isinstance(original, (tuple, list)):
        for i, (o, u) in enumerate(zip(original, used)):
            if (change := _first_change(o, u, f"{where}[{i}]")) is not None:
                return change
    if isinstance(original, dict):
        for key in original:
            if (change := _first_change(original[key], used.get(key), f"{key}")) is not None:
                return change
    return None


def call_case(candidate: Callable[..., Any], case: Case) -> Any:
    """Default ``Exercise.run``: call the candidate on fresh copies of the case's inputs.

    An answer that changes its inputs in place (``x.sub_(m)``) can return the right
    values and still break whatever uses those inputs next (the residual path of a
    block, say), so it fails here, where the mistake is made.
    """
    args, kwargs = copy.deepcopy(case.args), copy.deepcopy(case.kwargs)
    result = candidate(*args, **kwargs)
    names = [f"argument {i + 1}" for i in range(len(args))]
    for name, original, used in zip(names, case.args, args):
        if (change := _first_change(original, used, name)) is not None:
            raise InputModified(
                f"your function changed its input ({change}) in place; compute new tensors "
                "instead (x - m, not x.sub_(m) or x -= m)")
    change = _first_change(case.kwargs, kwargs, "")
    if change is not None:
        raise InputModified(f"your function changed its input {change!r} in place; compute "
                            "new tensors instead (x - m, not x.sub_(m) or x -= m)")
    return result


def one_thread(function: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``function`` on one CPU thread, for an ``Exercise.run`` that trains or generates
    with a tiny model: such models are fastest that way, and a busy machine does not slow
    them down by thread contention."""
    @functools.wraps(function)
    def wrapped(*args, **kwargs):
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return function(*args, **kwargs)
        finally:
            torch.set_num_threads(threads)
    return wrapped


@dataclass(frozen=True)
class Exercise:
    """Everything needed to judge one graded exercise (see the module docstring)."""

    id: str
    chapter: str
    title: str
    reference: Callable[..., Any]
    visible: Callable[[], list[Case]]
    hidden: Callable[[], list[Case]]
    mistakes: tuple[Mistake, ...] = ()
    run: Callable[[Callable[..., Any], Case], Any] = call_case
    compare: Callable[[Any, Any], str | None] | None = None
    # Dotted names of course references that do not count as this exercise's answer.
    forbidden: tuple[str, ...] = ()

    def cases(self, hidden: bool = False) -> list[Case]:
        return self.hidden() if hidden else self.visible()

    @property
    def blocked(self) -> tuple[str, ...]:
        """``forbidden`` and the reference itself: what grading blocks for this exercise."""
        name = f"{self.reference.__module__}.{self.reference.__qualname__}"
        own = () if "<" in name or name in self.forbidden else (name,)
        return self.forbidden + own

    def differ(self, expected: Any, actual: Any) -> str | None:
        return (self.compare or compare_outputs)(expected, actual)


def _fmt(x: Any) -> str:
    if isinstance(x, float):
        return f"{x:.6g}"
    return repr(x)


def _type_name(x: Any) -> str:
    """``float``, ``numpy.float32``: a type from outside the builtins says where it is from."""
    kind = type(x)
    return kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__name__}"


def _shape(t: torch.Tensor) -> str:
    return "(" + ", ".join(str(s) for s in t.shape) + ")"


def compare_outputs(expected: Any, actual: Any, where: str = "") -> str | None:
    """Describe the first way ``actual`` differs from ``expected``, or return ``None``.

    Tensors are compared with the course's tolerance for the expected dtype; the message
    gives the shape, the dtype or the first differing element with both values.
    """
    at = f" in {where}" if where else ""
    if isinstance(expected, torch.Tensor):
        if not isinstance(actual, torch.Tensor):
            return f"expected a torch.Tensor{at}, got {_type_name(actual)}"
        if actual.shape != expected.shape:
            return f"shape{at}: expected {_shape(expected)}, got {_shape(actual)}"
        if expected.dtype.is_floating_point and not actual.dtype.is_floating_point:
            return f"dtype{at}: expected {expected.dtype}, got {actual.dtype}"
        if expected.dtype.is_floating_point and actual.dtype != expected.dtype:
            wider = actual.dtype.itemsize > expected.dtype.itemsize
            return (f"dtype{at}: expected {expected.dtype}, got {actual.dtype} " + (
                "(a float64 tensor, from torch.tensor of Python floats with "
                "dtype=torch.float64 or from numpy, widens everything it touches: build "
                f"your tensors as {expected.dtype})" if wider else
                "(keep the dtype of the inputs: avoid creating float32 constants "
                "with torch.tensor(...) without dtype=)"))
        if not expected.dtype.is_floating_point:
            if actual.dtype != expected.dtype:
                return f"dtype{at}: expected {expected.dtype}, got {actual.dtype}" + (
                    " (a mask is True/False: compare, or use .bool())"
                    if expected.dtype == torch.bool else
                    " (ids, positions and counts are whole numbers: torch.long, as argmax, "
                    "torch.arange and indexing give; a float near a whole number is not one)")
            diff = actual != expected
        else:
            actual = actual.detach().to(expected.dtype)
            exp = expected.detach()
            rtol, atol = tolerance(exp.dtype)
            both_inf = torch.isinf(exp) & (actual == exp)
            diff = ~(torch.isclose(actual, exp, rtol=rtol, atol=atol) | both_inf)
            nan_here = torch.isnan(actual) & ~torch.isnan(exp)
            if nan_here.any():
                index = tuple(nan_here.nonzero()[0].tolist())
                return (f"your output contains NaN{at}, first at index {list(index)}: look "
                        "for 0/0, a softmax over a row that is entirely -inf, or the log of 0")
        if diff.any():
            index = tuple(diff.nonzero()[0].tolist())
            count = int(diff.sum())
            return (f"values differ{at} at {count} of {diff.numel()} positions; first at index "
                    f"{list(index)}: expected {_fmt(expected[index].item())}, "
                    f"got {_fmt(actual[index].item())} (shape {_shape(expected)})")
        return None
    if isinstance(expected, (tuple, list)):
        if not isinstance(actual, (tuple, list)):
            return f"expected a {type(expected).__name__}{at}, got {type(actual).__name__}"
        if len(actual) != len(expected):
            return (f"expected {len(expected)} items{at}, got {len(actual)}")
        for i, (e, a) in enumerate(zip(expected, actual)):
            message = compare_outputs(e, a, f"{where}[{i}]" if where else f"item {i}")
            if message:
                return message
        return None
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return f"expected a dict{at}, got {type(actual).__name__}"
        if set(actual) != set(expected):
            return (f"keys{at}: expected {sorted(map(str, expected))}, "
                    f"got {sorted(map(str, actual))}")
        for key in expected:
            message = compare_outputs(expected[key], actual[key], f"{where}[{key!r}]")
            if message:
                return message
        return None
    if isinstance(expected, bool) or expected is None or isinstance(expected, str):
        return None if actual == expected else f"expected {_fmt(expected)}{at}, got {_fmt(actual)}"
    if isinstance(expected, (int, float)):
        if isinstance(actual, torch.Tensor) and actual.numel() == 1:
            actual = actual.item()
        if not isinstance(actual, (int, float)) or isinstance(actual, bool):
            return f"expected a number{at}, got {_type_name(actual)}"
        if math.isnan(actual) and not math.isnan(expected):
            return (f"expected {_fmt(expected)}{at}, got NaN: look for 0/0, the log of 0 or "
                    "a mean over nothing")
        if isinstance(expected, int) and not isinstance(actual, int) and actual != expected:
            return f"expected {expected}{at}, got {_fmt(actual)}"
        rtol, atol = tolerance(torch.float64 if isinstance(expected, float) else torch.float32)
        if abs(actual - expected) > atol + rtol * abs(expected):
            return f"expected {_fmt(expected)}{at}, got {_fmt(actual)}"
        return None
    return None if actual == expected else f"expected {_fmt(expected)}{at}, got {_fmt(actual)}"


_LIBRARY_DIRS = tuple(
    os.path.dirname(module.__file__) + os.sep for module in (torch, sys.modules["gptcourse"])
)


def _learner_frames(exc: BaseException) -> list[traceback.FrameSummary]:
    """The traceback's frames that are not inside gptcourse or torch."""
    frames = traceback.extract_tb(exc.__traceback__)
    return [f for f in frames if not f.filename.startswith(_LIBRARY_DIRS)]


def _error_text(exc: BaseException) -> str:
    """One line saying what went wrong, at the learner's line when there is one."""
    if isinstance(exc, (InputModified, Unfit)):
        return str(exc)
    own = _learner_frames(exc)
    if not own:
        # Raised while handling what the candidate returned, not inside its code.
        return (f"your output could not be checked ({type(exc).__name__}: {exc}); is its "
                "type and shape what the exercise asks for?")
    return f"your code raised {type(exc).__name__}: {exc} (line {own[-1].lineno})"


def _unfinished_dependency(exc: NotImplementedError, candidate: Any) -> str | None:
    """The name of another function still raising NotImplementedError, if that is where
    this one came from (an earlier exercise the candidate calls)."""
    frames = _learner_frames(exc)
    if not frames:
        return None
    tb = exc.__traceback__
    while tb.tb_next is not None:
        tb = tb.tb_next
    parts = [p for p in tb.tb_frame.f_code.co_qualname.split(".") if p != "<locals>"]
    if getattr(candidate, "__name__", None) in parts:
        return None
    # A method of an unfinished class names the class, a plain function itself.
    is_method = len(parts) > 1 and parts[-1] in ("__init__", "__call__", "forward")
    return parts[-2] if is_method else parts[-1]


def run_cases(exercise: Exercise, candidate: Any, cases: list[Case]) -> list[Outcome]:
    """Apply ``candidate`` to every case and record what it returned or raised."""
    outcomes = []
    for case in cases:
        try:
            value = exercise.run(candidate, case)
        except NotImplementedError as exc:
            dependency = _unfinished_dependency(exc, candidate)
            if dependency is None:
                outcomes.append(Outcome(not_implemented=True, error="NotImplementedError"))
            else:
                outcomes.append(Outcome(error=(
                    f"your code calls `{dependency}`, which is not done yet (it still "
                    "raises NotImplementedError): finish that exercise first")))
        except Exception as exc:  # a learner's bug is a result to report, not a crash
            outcomes.append(Outcome(error=_error_text(exc)))
        else:
            if isinstance(value, torch.Tensor):
                value = value.detach()
            outcomes.append(Outcome(value=value))
    return outcomes


def _matches(exercise: Exercise, cases: list[Case], implementation: Callable[..., Any],
             outcomes: list[Outcome], first: int = 0) -> bool:
    """True when ``outcomes`` agree with ``implementation`` on every case.

    Case ``first`` (where the candidate first failed) is tried first: it rules most
    variants out after a single run.
    """
    order = [first] + [i for i in range(len(cases)) if i != first]
    for i in order:
        if outcomes[i].error is not None:
            return False
        try:
            expected = exercise.run(implementation, cases[i])
        except Exception:
            return False
        if exercise.differ(expected, outcomes[i].value) is not None:
            return False
    return True


def evaluate(exercise: Exercise, cases: list[Case], outcomes: list[Outcome]) -> Verdict:
    """Compare a candidate's outcomes with the reference and name a known mistake."""
    if outcomes and all(o.not_implemented for o in outcomes):
        return Verdict(False, "not attempted: replace `raise NotImplementedError()` "
                              "with your code", attempted=False)

    first_failure, failed_at = None, 0
    for index, (case, outcome) in enumerate(zip(cases, outcomes)):
        if outcome.error is not None:
            first_failure = f"on {case.label}, {outcome.error}"
        else:
            expected = exercise.run(exercise.reference, case)
            difference = exercise.differ(expected, outcome.value)
            if difference is not None:
                first_failure = f"on {case.label}: {difference}"
        if first_failure is not None:
            failed_at = index
            break
    if first_failure is None:
        return Verdict(True, f"passed {len(cases)} check{'' if len(cases) == 1 else 's'}")

    for mistake in exercise.mistakes:
        if _matches(exercise, cases, mistake.variant, outcomes, first=failed_at):
            return Verdict(False, f"{mistake.message} ({first_failure})", mistake=mistake.name)
    return Verdict(False, first_failure)


def is_course_reference(candidate: Any) -> bool:
    """True when ``candidate`` was defined inside the gptcourse package itself."""
    module = getattr(candidate, "__module__", "") or ""
    return module == "gptcourse" or module.startswith("gptcourse.")


def _code_objects(code: types.CodeType):
    """``code`` and every code object nested in it (inner functions, comprehensions)."""
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _code_objects(const)


def calls_forbidden_reference(candidate: Any, forbidden: tuple[str, ...]) -> bool:
    """True when the function ``candidate`` names one of the ``forbidden`` course objects:
    ``module.attribute`` on a module it can see, ``from module import attribute`` inside
    it, or a global alias of the object itself.

    A convenience for learners, so that ``check`` says at once what grading would find;
    grading itself blocks those objects, whatever the route to them.
    """
    code = getattr(candidate, "__code__", None)
    if not isinstance(code, types.CodeType):
        return False
    global_values = getattr(candidate, "__globals__", {})
    targets = []
    for dotted in forbidden:
        module_name, _, attribute = dotted.rpartition(".")
        module = sys.modules.get(module_name)
        targets.append((module_name, module, attribute, getattr(module, attribute, None)))

    for inner in _code_objects(code):
        previous = None
        for instruction in dis.get_instructions(inner):
            name = instruction.argval
            for module_name, module, attribute, target in targets:
                if instruction.opname in ("LOAD_GLOBAL", "LOAD_NAME"):
                    if target is not None and global_values.get(name) is target:
                        return True
                elif previous is not None and name == attribute:
                    op, value = previous
                    if op == "IMPORT_NAME" and value == module_name:
                        return True
                    if (op in ("LOAD_GLOBAL", "LOAD_NAME") and module is not None
                            and global_values.get(value) is module):
                        return True
            previous = (instruction.opname, name)
    return False


def check(exercise_id: str, candidate: Any, hidden: bool = False) -> None:
    """Check a learner's answer in this process; print a tick or raise :class:`CheckFailed`.

    Used by the notebooks' test cells. ``hidden=True`` runs the hidden cases.
    """
    from gptcourse.checks import get_exercise

    exercise = get_exercise(exercise_id)
    if is_course_reference(candidate):
        raise CheckFailed(f"{exercise.title}: this is the course's own implementation from "
                          "gptcourse; write your own version in the answer cell")
    if calls_forbidden_reference(candidate, exercise.blocked):
        raise CheckFailed(f"{exercise.title}: your answer calls the course's own "
                          "implementation of this exercise, which does not count (grading "
                          "blocks it); write the computation yourself")
    cases = exercise.cases(hidden)
    verdict = evaluate(exercise, cases, run_cases(exercise, candidate, cases))
    if not verdict.attempted:
        raise NotAttempted(f"{exercise.title}: {verdict.message}")
    if not verdict.passed:
        raise CheckFailed(f"{exercise.title}: {verdict.message}")
    which = "hidden" if hidden else "visible"
    print(f"\u2713 {exercise.title}: {verdict.message} ({which})")
