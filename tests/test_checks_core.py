"""The check framework itself: verdicts, messages and the mistakes it must not make."""

import torch

from gptcourse.checks.core import Case, Exercise, Mistake, evaluate, run_cases


def _double(x):
    return 2 * x


def _cases():
    return [Case("a 2 x 3 tensor", (torch.arange(6.0).reshape(2, 3),))]


EXERCISE = Exercise(
    id="double", chapter="99-test", title="Doubling", reference=_double, visible=_cases,
    hidden=_cases,
    mistakes=(Mistake("tripled", "You multiplied by 3.", lambda x: 3 * x),),
)


def _verdict(candidate):
    cases = EXERCISE.cases()
    return evaluate(EXERCISE, cases, run_cases(EXERCISE, candidate, cases))


def test_correct_answer_passes_and_names_no_mistake():
    verdict = _verdict(lambda x: x + x)
    assert verdict.passed and verdict.mistake is None


def test_known_mistake_is_named_and_unknown_one_gets_the_first_difference():
    assert _verdict(lambda x: 3 * x).mistake == "tripled"
    verdict = _verdict(lambda x: 2 * x + (x == 5))
    assert not verdict.passed and verdict.mistake is None
    assert "index [1, 2]: expected 10, got 11" in verdict.message


def test_shape_dtype_and_nan_are_described():
    assert "shape: expected (2, 3), got (3, 2)" in _verdict(lambda x: 2 * x.T).message
    assert "dtype" in _verdict(lambda x: (2 * x).double()).message
    assert "NaN" in _verdict(lambda x: 2 * x / (x != 0)).message


def test_changing_an_input_in_place_fails_even_with_right_values():
    def in_place(x):
        return x.mul_(2)

    verdict = _verdict(in_place)
    assert not verdict.passed and "in place" in verdict.message


def test_not_attempted_and_unfinished_dependency_are_told_apart():
    def double(x):
        raise NotImplementedError()

    verdict = _verdict(double)
    assert not verdict.attempted

    def helper(x):
        raise NotImplementedError()

    def uses_helper(x):
        return helper(x)

    verdict = _verdict(uses_helper)
    assert verdict.attempted and not verdict.passed
    assert "`helper`, which is not done yet" in verdict.message


def test_error_line_is_the_learners_not_the_librarys():
    source = "def broken(x):\n    y = 1\n    return x @ torch.ones(5)\n"
    namespace = {"torch": torch}
    exec(compile(source, "<answer cell>", "exec"), namespace)
    verdict = _verdict(namespace["broken"])
    assert "your code raised RuntimeError" in verdict.message
    assert "(line 3)" in verdict.message
