"""Every exercise's check: the reference passes, and each classic mistake is named.

For each registered exercise the wrong variants of the reference are fed to the check as if
a learner had written them: the check must fail, and its message must name that mistake.
No mistake's message may appear for a correct answer.
"""

import pytest

from gptcourse.checks import CheckFailed, all_exercises, check

EXERCISES = all_exercises()
MISTAKES = [(ex.id, m) for ex in EXERCISES.values() for m in ex.mistakes]


def _local_copy(function):
    """The same function defined outside gptcourse, as a learner's answer would be."""
    def answer(*args, **kwargs):
        return function(*args, **kwargs)

    answer.__module__ = "__main__"
    return answer


@pytest.mark.parametrize("exercise_id", sorted(EXERCISES))
@pytest.mark.parametrize("hidden", [False, True], ids=["visible", "hidden"])
def test_reference_passes_without_any_mistake_message(exercise_id, hidden, capsys):
    exercise = EXERCISES[exercise_id]
    check(exercise_id, _candidate(exercise, exercise.reference), hidden=hidden)
    printed = capsys.readouterr().out
    for mistake in exercise.mistakes:
        assert mistake.message not in printed


@pytest.mark.parametrize("exercise_id, mistake", MISTAKES,
                         ids=[f"{e}-{m.name}" for e, m in MISTAKES])
def test_each_mistake_fails_and_is_named(exercise_id, mistake):
    exercise = EXERCISES[exercise_id]
    for hidden in (False, True):
        with pytest.raises(CheckFailed) as failure:
            check(exercise_id, _candidate(exercise, mistake.variant), hidden=hidden)
        assert mistake.message in str(failure.value)


def _candidate(exercise, implementation):
    """Functions are wrapped; classes are subclassed so they look like a learner's."""
    if isinstance(implementation, type):
        return type(implementation.__name__, (implementation,), {"__module__": "__main__"})
    return _local_copy(implementation)


def test_course_reference_itself_is_refused():
    exercise = next(iter(EXERCISES.values()), None)
    if exercise is None:
        pytest.skip("no exercises registered")
    with pytest.raises(CheckFailed, match="write your own"):
        check(exercise.id, exercise.reference)


def test_exercise_ids_are_unique_and_name_a_chapter():
    for exercise_id, exercise in EXERCISES.items():
        assert exercise.id == exercise_id
        assert exercise.chapter[:2].isdigit(), exercise.chapter
