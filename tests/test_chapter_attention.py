"""Chapters 03 (self-attention) and 04 (the causal mask): the checks' own correctness.

The references are compared with torch's built-ins on every case the learners see or are
graded on; other correct ways of writing each answer must pass; and the layers handed to the
learner's leak test really do (or do not) look ahead, as measured by their Jacobian.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from gptcourse.checks import CheckFailed, check, compare_outputs, get_exercise
from gptcourse.checks.causal_mask import _LAYER_LABELS, _Layer
from gptcourse.checks.self_attention import compare_allowing_nan
from gptcourse.tolerances import assert_close

ATTENTION_EXERCISES = ["attention_scores", "softmax", "scaled_dot_product_attention",
                       "self_attention", "causal_mask", "masked_attention", "leaks"]
NEG_INF = float("-inf")


def _all_cases(exercise_id):
    exercise = get_exercise(exercise_id)
    return exercise.cases(hidden=False) + exercise.cases(hidden=True)


def _learner(function):
    """``function`` as if defined in a notebook, so that the check accepts it."""
    function.__module__ = "__main__"
    return function


# -- the references agree with torch's built-ins on every case ---------------------------

def test_scores_match_einsum():
    reference = get_exercise("attention_scores").reference
    for case in _all_cases("attention_scores"):
        q, k = case.args
        expected = torch.einsum("...id,...jd->...ij", q, k) / math.sqrt(q.shape[-1])
        assert_close(reference(q, k), expected)


def test_softmax_matches_torch_with_masked_rows_as_zero():
    reference = get_exercise("softmax").reference
    for case in _all_cases("softmax"):
        (x,), dim = case.args, case.kwargs.get("dim", -1)
        expected = torch.nan_to_num(torch.softmax(x, dim=dim), nan=0.0)
        assert_close(reference(x, dim=dim), expected)


def test_attention_matches_torch_sdpa():
    reference = get_exercise("scaled_dot_product_attention").reference
    for case in _all_cases("scaled_dot_product_attention"):
        q, k, v = case.args
        output, weights = reference(q, k, v)
        assert_close(output, F.scaled_dot_product_attention(q, k, v))
        assert_close(weights.sum(-1), torch.ones_like(weights.sum(-1)))


def test_self_attention_matches_torch_sdpa_of_projections():
    reference = get_exercise("self_attention").reference
    for case in _all_cases("self_attention"):
        x, w_q, w_k, w_v = case.args
        output, _ = reference(x, w_q, w_k, w_v)
        assert_close(output, F.scaled_dot_product_attention(x @ w_q, x @ w_k, x @ w_v))


def test_causal_mask_matches_a_lower_triangle():
    reference = get_exercise("causal_mask").reference
    seen_devices = set()
    for case in _all_cases("causal_mask"):
        (T,), dtype = case.args, case.kwargs.get("dtype", torch.float32)
        keep = torch.ones(T, T, dtype=torch.bool).tril()
        expected = torch.zeros(T, T, dtype=dtype).masked_fill(~keep, NEG_INF)
        assert torch.equal(reference(T, dtype=dtype), expected)
        device = case.kwargs.get("device")
        if device is not None:
            seen_devices.add(reference(T, dtype=dtype, device=device).device.type)
    assert seen_devices == {"meta"}, "no case asks for a device"


def test_masked_attention_matches_torch_sdpa_and_zeroes_blocked_rows():
    reference = get_exercise("masked_attention").reference
    seen_blocked_row = False
    for case in _all_cases("masked_attention"):
        q, k, v, mask = case.args
        output, weights = reference(q, k, v, mask)
        blocked = torch.isinf(mask).all(dim=-1).expand(output.shape[:-1])  # (..., T_q)
        seen_blocked_row |= bool(blocked.any())
        expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.to(q.dtype))
        assert_close(output[~blocked], expected[~blocked])
        assert torch.equal(output[blocked], torch.zeros_like(output[blocked]))
        assert torch.equal(weights[torch.isinf(mask).expand(weights.shape)],
                           torch.zeros_like(weights[torch.isinf(mask).expand(weights.shape)]))
    assert seen_blocked_row, "no case has a fully blocked row"


@pytest.mark.parametrize("kind", sorted(_LAYER_LABELS))
def test_leak_layers_look_ahead_exactly_when_their_jacobian_says_so(kind):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(1, 6, 4, generator=g, dtype=torch.float64)
    layer = _Layer(kind, 4, torch.float64)
    jacobian = torch.autograd.functional.jacobian(layer, x)          # (1, T, d_out, 1, T, d)
    depends = jacobian.abs().sum(dim=(0, 2, 3, 5)) > 0               # (T_out, T_in)
    looks_ahead = bool(depends.triu(diagonal=1).any())
    expected_leaky = kind in {"no mask", "after softmax", "transposed", "peeks one ahead",
                              "first sees second", "fourth sees fifth"}
    assert looks_ahead == expected_leaky
    assert get_exercise("leaks").reference(layer, x) == expected_leaky


def test_hidden_cases_differ_from_visible_ones():
    for exercise_id in ATTENTION_EXERCISES:
        exercise = get_exercise(exercise_id)

        def signature(case):
            tensors = [a for a in case.args + tuple(case.kwargs.values())
                       if isinstance(a, torch.Tensor)]
            return {(tuple(t.shape), t.dtype) for t in tensors} | {
                a for a in case.args + tuple(case.kwargs.values())
                if not isinstance(a, torch.Tensor)}

        visible = set().union(*(signature(c) for c in exercise.cases(hidden=False)))
        hidden = set().union(*(signature(c) for c in exercise.cases(hidden=True)))
        assert hidden - visible, f"{exercise_id}: hidden cases add no new shape or dtype"


# -- other correct answers pass -----------------------------------------------------------

def test_other_correct_answers_pass(capsys):
    @_learner
    def attention_scores(q, k):
        return torch.einsum("...id,...jd->...ij", q, k) * q.size(-1) ** -0.5

    @_learner
    def softmax(x, dim=-1):
        # log-sum-exp form; a row of -inf has logsumexp -inf, so guard it.
        log_total = torch.logsumexp(x, dim=dim, keepdim=True)
        weights = torch.exp(x - log_total)
        return torch.nan_to_num(weights, nan=0.0)

    @_learner
    def scaled_dot_product_attention(q, k, v):
        weights = torch.softmax(q @ k.mT / math.sqrt(k.shape[-1]), dim=-1)
        return weights @ v, weights

    @_learner
    def self_attention(x, w_q, w_k, w_v):
        q, k, v = F.linear(x, w_q.T), F.linear(x, w_k.T), F.linear(x, w_v.T)
        return scaled_dot_product_attention(q, k, v)

    @_learner
    def causal_mask(T, dtype=torch.float32, device=None):
        rows = torch.arange(T, device=device)
        blocked = rows[None, :] > rows[:, None]
        return torch.zeros(T, T, dtype=dtype, device=device).masked_fill(blocked, NEG_INF)

    @_learner
    def masked_attention(q, k, v, mask):
        # -1e9 instead of -inf, with fully blocked rows zeroed explicitly: accepted.
        scores = (q @ k.mT / math.sqrt(q.size(-1))).masked_fill(torch.isinf(mask), -1e9)
        weights = torch.softmax(scores, dim=-1)
        weights = weights.masked_fill(torch.isinf(mask).all(-1, keepdim=True), 0.0)
        return weights @ v, weights

    @_learner
    def leaks(attend, x):
        # One token at a time, exact equality.
        original = attend(x)
        for t in range(1, x.size(1)):
            changed = x.clone()
            changed[:, t] = changed[:, t] + 1.0
            if not torch.equal(attend(changed)[:, :t], original[:, :t]):
                return True
        return False

    answers = {"attention_scores": attention_scores, "softmax": softmax,
               "scaled_dot_product_attention": scaled_dot_product_attention,
               "self_attention": self_attention, "causal_mask": causal_mask,
               "masked_attention": masked_attention, "leaks": leaks}
    for exercise_id, answer in answers.items():
        check(exercise_id, answer)
        check(exercise_id, answer, hidden=True)
    assert capsys.readouterr().out.count("\u2713") == 2 * len(answers)


def test_every_argument_of_the_mask_is_checked_by_the_visible_cases():
    @_learner
    def causal_mask(T, dtype=torch.float32, device=None):
        return torch.triu(torch.full((T, T), NEG_INF), diagonal=1)

    with pytest.raises(CheckFailed, match="ignores the dtype argument"):
        check("causal_mask", causal_mask)
    with pytest.raises(CheckFailed, match="ignores the device argument"):
        check("causal_mask", lambda T, dtype=torch.float32, device=None: causal_mask(T).to(dtype))


def test_a_mask_built_with_data_dependent_operations_passes_on_the_meta_device(capsys):
    @_learner
    def causal_mask(T, dtype=torch.float32, device=None):
        # nonzero needs data, which the meta device does not have.
        mask = torch.zeros(T, T, dtype=dtype, device=device)
        rows, columns = torch.ones(T, T, device=device).triu(1).nonzero(as_tuple=True)
        mask[rows, columns] = NEG_INF
        return mask

    check("causal_mask", causal_mask)
    check("causal_mask", causal_mask, hidden=True)
    assert capsys.readouterr().out.count("\u2713") == 2


def test_a_mistake_is_named_whether_or_not_the_mask_honours_device():
    @_learner
    def causal_mask(T, dtype=torch.float32, device=None):
        return torch.tril(torch.ones(T, T, dtype=dtype, device=device))

    for candidate in (causal_mask, lambda T, dtype=torch.float32, device=None:
                      causal_mask(T, dtype)):
        with pytest.raises(CheckFailed, match="multiplicative 0/1 mask"):
            check("causal_mask", candidate)


def test_a_leak_test_whose_changes_pile_up_is_told_so():
    @_learner
    def leaks(attend, x):
        original = attend(x)
        for t in range(1, x.size(1)):
            x[:, t:] = torch.randn_like(x[:, t:])  # no copy: earlier changes stay
            if not torch.allclose(original[:, :t], attend(x)[:, :t]):
                return True
        return False

    for hidden in (False, True):
        with pytest.raises(CheckFailed, match="changes pile up"):
            check("leaks", leaks, hidden=hidden)


def test_a_softmax_that_only_guards_the_maximum_but_divides_by_zero_fails():
    @_learner
    def softmax(x, dim=-1):
        exp = torch.exp(x - x.amax(dim=dim, keepdim=True).clamp(min=-1e30))
        return exp / exp.sum(dim=dim, keepdim=True)

    with pytest.raises(CheckFailed, match="NaN"):
        check("softmax", softmax)


# -- comparing with NaN ---------------------------------------------------------------------

def test_nan_in_the_same_places_matches_only_a_wrong_variant():
    with_nan = torch.tensor([[0.5, 0.5], [float("nan"), float("nan")]])
    assert compare_allowing_nan(with_nan, with_nan.clone()) is None
    assert compare_allowing_nan((with_nan, 1.0), (with_nan.clone(), 1.0)) is None
    elsewhere = torch.tensor([[float("nan"), 0.5], [float("nan"), 0.0]])
    assert compare_allowing_nan(with_nan, elsewhere) is not None
    correct = torch.tensor([[0.5, 0.5], [0.0, 0.0]])
    assert "NaN" in compare_allowing_nan(correct, with_nan)
    assert compare_allowing_nan(correct, with_nan) == compare_outputs(correct, with_nan)


def test_a_leak_test_that_looks_only_at_position_0_is_told_so():
    @_learner
    def leaks(attend, x):
        changed = x.clone()
        changed[:, 1:] = torch.randn_like(changed[:, 1:])
        return not torch.allclose(attend(x)[:, :1], attend(changed)[:, :1])

    for hidden in (False, True):
        with pytest.raises(CheckFailed, match="only looks at the output of position 0"):
            check("leaks", leaks, hidden=hidden)


def test_uniform_weights_on_a_fully_blocked_row_are_told_to_be_zero():
    @_learner
    def masked_attention(q, k, v, mask):
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1)) + mask
        weights = torch.softmax(scores, dim=-1).nan_to_num(1.0 / scores.size(-1))
        return weights @ v, weights

    with pytest.raises(CheckFailed) as failure:
        check("masked_attention", masked_attention)
    message = str(failure.value)
    assert "all-zero weights" in message and "You block with" not in message, message
