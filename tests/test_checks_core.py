"""The check framework itself: verdicts, messages and the mistakes it must not make."""

import torch
from gptcourse.checks.core import Case, Exercise, Mistake, compare_outputs, evaluate, run_cases


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
    widened = _verdict(lambda x: (2 * x).double()).message
    assert "expected torch.float32, got torch.float64" in widened and "widens" in widened
    narrowed = compare_outputs(torch.ones(2, dtype=torch.float64), torch.ones(2))
    assert "keep the dtype of the inputs" in narrowed
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


def test_whole_numbers_must_stay_whole_numbers():
    from gptcourse.checks.core import compare_outputs

    ids = torch.tensor([3, 0, 2])
    assert compare_outputs(ids, ids.clone()) is None
    assert "torch.long" in compare_outputs(ids, ids.float() + 0.9)  # rounds back to the ids
    assert "torch.long" in compare_outputs(ids, ids.to(torch.int32))
    mask = torch.tensor([True, False])
    assert ".bool()" in compare_outputs(mask, mask.long())


def test_a_number_from_another_library_is_named_with_its_library():
    import numpy as np
    from gptcourse.checks.core import compare_outputs

    assert "numpy.float32" in compare_outputs(torch.tensor(1.0), np.float32(1.0))


def _learners(source: str, **namespace):
    """Functions defined by ``source`` as in a notebook's answer cell."""
    namespace["__name__"] = "__main__"
    exec(compile(source, "<answer cell>", "exec"), namespace)
    return namespace


def test_check_refuses_an_answer_that_calls_the_exercises_reference():
    import pytest
    from gptcourse.checks import CheckFailed, check

    wrappers = _learners(
        "import gptcourse.model as M\n"
        "from gptcourse.model import gpt_parameter_count as alias\n"
        "def imported(*a, **k):\n"
        "    from gptcourse.model import gpt_parameter_count as g\n"
        "    return g(*a, **k)\n"
        "def through_module(*a, **k):\n"
        "    return M.gpt_parameter_count(*a, **k)\n"
        "def through_alias(*a, **k):\n"
        "    return alias(*a, **k)\n")
    for name in ("imported", "through_module", "through_alias"):
        with pytest.raises(CheckFailed, match="does not count"):
            check("gpt_parameter_count", wrappers[name])


def test_other_names_of_the_reference_module_are_not_taken_for_the_reference():
    from gptcourse import attention
    from gptcourse.checks.core import calls_forbidden_reference

    forbidden = ("gptcourse.attention.softmax",)
    answers = _learners(
        "def own(x, dim=-1):\n"
        "    unused = reference.causal_mask\n"
        "    return x.softmax(dim)\n"
        "def wrapper(x, dim=-1):\n"
        "    return reference.softmax(x, dim)\n", reference=attention)
    assert not calls_forbidden_reference(answers["own"], forbidden)
    assert calls_forbidden_reference(answers["wrapper"], forbidden)


def test_nan_is_no_number_that_matches():
    from gptcourse.checks.core import compare_outputs

    assert "NaN" in compare_outputs(3.0e9, float("nan"))
    assert "NaN" in compare_outputs(2.5, torch.tensor(float("nan")))
    assert compare_outputs(2.5, 2.5) is None
