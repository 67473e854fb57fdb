"""Learner-facing checks: one module per chapter, each registering its exercises.

A notebook's test cell calls ``check("attention_scores", attention_scores)``; the grader
and ``gptcourse check`` look exercises up with :func:`get_exercise`.
"""

import importlib
import pkgutil

from gptcourse.checks.core import (
    Case,
    CheckFailed,
    Exercise,
    Mistake,
    NotAttempted,
    Outcome,
    Verdict,
    check,
    compare_outputs,
    evaluate,
    run_cases,
)

_REGISTRY: dict[str, Exercise] = {}
_loaded = False


def register(exercise: Exercise) -> Exercise:
    """Add an exercise to the course registry; ids are unique across the course."""
    if exercise.id in _REGISTRY and _REGISTRY[exercise.id] is not exercise:
        raise ValueError(f"exercise id {exercise.id!r} is registered twice")
    _REGISTRY[exercise.id] = exercise
    return exercise


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    for module in pkgutil.iter_modules(__path__):
        if not module.name.startswith("_") and module.name != "core":
            importlib.import_module(f"{__name__}.{module.name}")
    _loaded = True


def all_exercises() -> dict[str, Exercise]:
    """Every registered exercise, by id."""
    _load_all()
    return dict(_REGISTRY)


def get_exercise(exercise_id: str) -> Exercise:
    """The exercise called ``exercise_id``; a clear error when there is none."""
    _load_all()
    try:
        return _REGISTRY[exercise_id]
    except KeyError:
        raise KeyError(f"no exercise called {exercise_id!r}; known exercises: "
                       f"{', '.join(sorted(_REGISTRY))}") from None


__all__ = [
    "Case", "CheckFailed", "Exercise", "Mistake", "NotAttempted", "Outcome", "Verdict",
    "all_exercises", "check", "compare_outputs", "evaluate", "get_exercise", "register",
    "run_cases",
]
