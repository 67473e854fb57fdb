"""Chapters 05-07: the checks' references against independent ones, and their diagnoses.

The exercises of these chapters compare a learner's module with a reference built from the
same case data. These tests make sure each reference is right by an independent route
(torch's own modules, an explicit per-head loop, the model's real parameter count) and that
the module-specific diagnoses (a head blind to part of the input, a wrongly shaped or named
layer) say what is wrong.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from gptcourse import attention, block, feedforward, model
from gptcourse.checks import CheckFailed, check, get_exercise
from gptcourse.checks import gpt_model as gpt_checks
from gptcourse.checks import multi_head_attention as mha_checks
from gptcourse.tolerances import assert_close
from torch import nn


def _loop_attention(x, state, n_heads, causal):
    """Multi-head attention written head by head from the raw weights: (B, T, d_model)."""
    B, T, d_model = x.shape
    d_head = d_model // n_heads
    blocked = torch.ones(T, T, dtype=torch.bool).triu(1)
    outputs = []
    for h in range(n_heads):
        rows = slice(h * d_head, (h + 1) * d_head)
        q, k, v = (F.linear(x, state[f"{name}.weight"][rows],
                            state.get(f"{name}.bias", torch.zeros(d_model, dtype=x.dtype))[rows])
                   for name in ("query", "key", "value"))
        scores = q @ k.transpose(-2, -1) / math.sqrt(d_head)
        if causal:
            scores = scores.masked_fill(blocked, float("-inf"))
        outputs.append(torch.softmax(scores, dim=-1) @ v)
    return F.linear(torch.cat(outputs, dim=-1), state["out.weight"], state.get("out.bias"))


@pytest.mark.parametrize("hidden", [False, True], ids=["visible", "hidden"])
def test_attention_references_agree_with_a_loop_and_with_each_other(hidden):
    exercise = get_exercise("MultiHeadAttention")
    for case in exercise.cases(hidden):
        kw = case.kwargs
        via_torch = exercise.run(exercise.reference, case)
        via_course = exercise.run(attention.MultiHeadAttention, case)
        expected = _loop_attention(kw["x"], kw["state"], kw["n_heads"], kw["causal"])
        assert_close(via_torch["out"], expected, msg=case.label)
        assert_close(via_course["out"], expected, msg=case.label)
        assert_close(via_course["weights"], via_torch["weights"], msg=case.label)
        if via_torch["depends"] is not None:
            assert via_torch["depends"].all(), case.label


def test_course_attention_equals_torch_multihead_attention():
    torch.manual_seed(0)
    mine = attention.MultiHeadAttention(64, 8)
    theirs = nn.MultiheadAttention(64, 8, batch_first=True)
    with torch.no_grad():
        theirs.in_proj_weight.copy_(torch.cat([mine.query.weight, mine.key.weight,
                                               mine.value.weight]))
        theirs.in_proj_bias.copy_(torch.cat([mine.query.bias, mine.key.bias, mine.value.bias]))
        theirs.out_proj.weight.copy_(mine.out.weight)
        theirs.out_proj.bias.copy_(mine.out.bias)
        x = torch.randn(2, 7, 64)
        blocked = torch.ones(7, 7, dtype=torch.bool).triu(1)
        assert_close(mine(x), theirs(x, x, x, attn_mask=blocked)[0])


def test_a_head_blind_to_part_of_the_input_is_named():
    sliced = mha_checks.MHA_MISTAKES[0]
    assert sliced.name == "slice input"
    case = get_exercise("MultiHeadAttention").cases()[-1]
    assert case.kwargs["d_model"] == 512
    depends = mha_checks._run_attention(sliced.variant, case)["depends"]
    assert not depends.all() and depends.any()

    class SlicedHeads(nn.Module):
        """Heads that project their own slice of the input: nn.Linear(d_head, d_head)."""

        def __init__(self, d_model, n_heads, bias=True):
            super().__init__()
            d_head = d_model // n_heads
            self.query, self.key, self.value = (nn.Linear(d_head, d_head, bias=bias)
                                                for _ in range(3))
            self.out = nn.Linear(d_model, d_model, bias=bias)

    with pytest.raises(CheckFailed, match="slicing the input"):
        check("MultiHeadAttention", SlicedHeads)


def test_nan_from_a_fully_blocked_row_is_told_as_nan_not_as_a_blind_head():
    class DiagonalBlocked(attention.MultiHeadAttention):
        """Blocks the diagonal too, so the first token may look at nothing: NaN."""

        def forward(self, x, causal=True, return_weights=False):
            B, T, _ = x.shape
            q, k, v = (self._split_heads(layer(x)) for layer in (self.query, self.key,
                                                                 self.value))
            scores = q @ k.transpose(-2, -1) / math.sqrt(self.d_head)      # (B, H, T, T)
            if causal:
                blocked = torch.ones(T, T, dtype=torch.bool).triu(diagonal=0)
                scores = scores.masked_fill(blocked, float("-inf"))
            weights = torch.softmax(scores, dim=-1)
            y = self.out((weights @ v).transpose(1, 2).reshape(B, T, self.d_model))
            return (y, weights) if return_weights else y

    with pytest.raises(CheckFailed, match="NaN") as failure:
        check("MultiHeadAttention", _learner(DiagonalBlocked))
    assert "does not react" not in str(failure.value)


def test_a_misnamed_layer_is_named():
    class Misnamed(attention.MultiHeadAttention):
        def __init__(self, d_model, n_heads, bias=True):
            super().__init__(d_model, n_heads, bias)
            self.proj = self.out
            del self.out

    Misnamed.__module__ = "__main__"
    with pytest.raises(CheckFailed, match="'out.weight'"):
        check("MultiHeadAttention", Misnamed)


def test_feed_forward_reference_is_the_exact_gelu_network():
    exercise = get_exercise("FeedForward")
    for case in exercise.cases() + exercise.cases(hidden=True):
        kw = case.kwargs
        s, x = kw["state"], kw["x"]
        hidden = F.linear(x, s["expand.weight"], s["expand.bias"])
        gelu = 0.5 * hidden * (1 + torch.erf(hidden / math.sqrt(2)))
        expected = F.linear(gelu, s["contract.weight"], s["contract.bias"])
        assert_close(exercise.run(exercise.reference, case), expected, msg=case.label)


def test_layer_norm_reference_and_course_layer_norm_agree_with_torch():
    exercise = get_exercise("LayerNorm")
    for case in exercise.cases() + exercise.cases(hidden=True):
        kw = case.kwargs
        eps = 1e-5 if kw["eps"] is None else kw["eps"]
        expected = F.layer_norm(kw["x"], (kw["d_model"],), kw["state"]["weight"],
                                kw["state"]["bias"], eps)
        assert_close(exercise.run(exercise.reference, case), expected, msg=case.label)
        assert_close(exercise.run(block.LayerNorm, case), expected, msg=case.label)


def test_torch_layer_norm_itself_is_refused():
    with pytest.raises(CheckFailed, match="write your own"):
        check("LayerNorm", nn.LayerNorm)


def test_decoder_block_reference_is_pre_norm_with_torch_parts():
    exercise = get_exercise("DecoderBlock")
    for case in exercise.cases() + exercise.cases(hidden=True):
        kw = case.kwargs
        s, x, d = kw["state"], kw["x"], kw["d_model"]
        attn_state = {name[len("attn."):]: t for name, t in s.items()
                      if name.startswith("attn.")}
        h = F.layer_norm(x, (d,), s["ln_attn.weight"], s["ln_attn.bias"], 1e-5)
        x1 = x + _loop_attention(h, attn_state, kw["n_heads"], causal=kw["causal"])
        h = F.layer_norm(x1, (d,), s["ln_ff.weight"], s["ln_ff.bias"], 1e-5)
        ff = F.linear(F.gelu(F.linear(h, s["ff.expand.weight"], s["ff.expand.bias"])),
                      s["ff.contract.weight"], s["ff.contract.bias"])
        assert_close(exercise.run(exercise.reference, case), x1 + ff, msg=case.label)


@pytest.mark.parametrize("settings", [
    {}, {"tie_weights": True}, {"d_ff": 100}, {"positions": "sinusoidal"}, {"bias": False},
    {"tie_weights": True, "positions": "sinusoidal", "bias": False, "d_ff": 24},
])
def test_parameter_formula_matches_a_built_model(settings):
    config = model.GPTConfig(vocab_size=37, context_length=16, d_model=32, n_heads=4,
                             n_layers=3, **settings)
    built = model.GPT(config)
    counted = sum(p.numel() for p in {id(p): p for p in built.parameters()}.values())
    arguments = dict(vocab_size=37, context_length=16, d_model=32, n_layers=3,
                     d_ff=settings.get("d_ff"), bias=config.bias,
                     tie_weights=config.tie_weights, positions=config.positions)
    assert model.gpt_parameter_count(**arguments) == counted
    assert gpt_checks._formula(**arguments) == counted


def test_gpt_reference_is_the_five_floors_in_order():
    case = get_exercise("GPT").cases()[0]
    kw, s = case.kwargs, case.kwargs["state"]
    idx = kw["idx"]
    T = idx.shape[1]
    x = s["token_embedding.weight"][idx] + s["position_embedding.weight"][:T]
    for layer in range(kw["n_layers"]):
        prefix = f"blocks.{layer}."
        block_state = {name[len(prefix):]: t for name, t in s.items() if name.startswith(prefix)}
        one = block.DecoderBlock(gpt_checks.case_config(kw))
        one.load_state_dict(block_state)
        with torch.no_grad():
            x = one(x)
    x = F.layer_norm(x, (kw["d_model"],), s["ln_final.weight"], s["ln_final.bias"], 1e-5)
    logits = x @ s["lm_head.weight"].T
    result = get_exercise("GPT").run(model.GPT, case)
    assert_close(result["logits"], logits)
    assert_close(result["loss"], F.cross_entropy(logits.flatten(0, 1), kw["targets"].flatten()))


def test_gpt3_is_about_175_billion_parameters():
    numbers = gpt_checks.gpt3_arithmetic()
    assert numbers["heads"] == 96 * 96 and numbers["d_head"] == 128
    assert abs(numbers["parameters"] - 175e9) / 175e9 < 0.01


def test_an_off_by_a_few_count_fails_although_within_float_tolerance():
    reference = model.gpt_parameter_count  # held by the answer, so it is judged on its values

    def almost(*args, **kwargs):
        return reference(*args, **kwargs) + 3

    with pytest.raises(CheckFailed, match="off by \\+3"):
        check("gpt_parameter_count", almost, hidden=True)


def _learner(cls):
    """``cls`` as if defined in a notebook, not inside gptcourse."""
    return type(cls.__name__, (cls,), {"__module__": "__main__"})


@pytest.mark.parametrize("exercise_id", ["MultiHeadAttention", "MultiHeadAttentionLoop"])
@pytest.mark.parametrize("persistent", [True, False])
def test_a_causal_mask_kept_as_a_buffer_is_accepted(exercise_id, persistent):
    class WithMaskBuffer(attention.MultiHeadAttention):
        """The course's layer plus a saved (T, T) mask, as nanoGPT keeps one."""

        def __init__(self, d_model, n_heads, bias=True):
            super().__init__(d_model, n_heads, bias=bias)
            self.register_buffer("tril", torch.tril(torch.ones(16, 16)), persistent=persistent)

    for hidden in (False, True):
        check(exercise_id, _learner(WithMaskBuffer), hidden=hidden)


def test_weights_averaged_over_heads_are_named_by_their_shape():
    class Averaged(attention.MultiHeadAttention):
        def forward(self, x, causal=True, return_weights=False):
            out, weights = super().forward(x, causal=causal, return_weights=True)
            return (out, weights.mean(dim=1)) if return_weights else out

    with pytest.raises(CheckFailed, match=r"weights: expected shape \(B, n_heads, T, T\)"):
        check("MultiHeadAttention", _learner(Averaged))


@pytest.mark.parametrize("exercise_id, wrong", [
    # An argument the exercise names but the answer ignores must fail the VISIBLE check.
    ("MultiHeadAttention", lambda cls: type("AlwaysBias", (cls,), {
        "__init__": lambda self, d_model, n_heads, bias=True: cls.__init__(self, d_model,
                                                                            n_heads)})),
    ("FeedForward", lambda cls: type("FixedWidth", (cls,), {
        "__init__": lambda self, d_model, d_ff=None: cls.__init__(self, d_model)})),
    ("FeedForward", lambda cls: type("WrongDefault", (cls,), {
        "__init__": lambda self, d_model, d_ff=None: cls.__init__(self, d_model,
                                                                   d_ff or 2 * d_model)})),
])
def test_an_ignored_argument_fails_the_visible_check(exercise_id, wrong):
    reference = {"MultiHeadAttention": attention.MultiHeadAttention,
                 "FeedForward": feedforward.FeedForward}[exercise_id]
    with pytest.raises(CheckFailed):
        check(exercise_id, _learner(wrong(reference)))


def test_a_layer_norm_that_overwrites_its_input_fails():
    class InPlace(block.LayerNorm):
        def forward(self, x):
            mean = x.mean(dim=-1, keepdim=True)
            var = x.var(dim=-1, keepdim=True, unbiased=False)
            x.sub_(mean).div_(torch.sqrt(var + self.eps))
            return x * self.weight + self.bias

    with pytest.raises(CheckFailed, match="in place"):
        check("LayerNorm", _learner(InPlace))


def test_a_plain_tensor_instead_of_a_parameter_is_named():
    class NotLearned(block.LayerNorm):
        def __init__(self, d_model, eps=1e-5):
            super().__init__(d_model, eps)
            del self.weight
            self.weight = torch.ones(d_model)

    with pytest.raises(CheckFailed, match=r"wrap it in nn.Parameter"):
        check("LayerNorm", _learner(NotLearned))


def test_a_bias_on_the_head_is_named():
    class BiasedHead(model.GPT):
        def __init__(self, config):
            super().__init__(config)
            self.lm_head.bias = nn.Parameter(torch.zeros(config.vocab_size))

    with pytest.raises(CheckFailed, match="The head has no bias"):
        check("GPT", _learner(BiasedHead))


def test_a_parameter_count_that_builds_a_model_is_refused():
    # Held by the answer, as a learner's own GPT class and counter from the chapter would be.
    GPT, count_parameters = model.GPT, model.count_parameters  # noqa: N806

    def built(vocab_size, context_length, d_model, n_layers, d_ff=None, bias=True,
              tie_weights=False, positions="learned"):
        config = model.GPTConfig(vocab_size=vocab_size, context_length=context_length,
                                 d_model=d_model, n_heads=1, n_layers=n_layers, d_ff=d_ff,
                                 bias=bias, tie_weights=tie_weights, positions=positions)
        return count_parameters(GPT(config))

    with pytest.raises(CheckFailed, match="must not build a model"):
        check("gpt_parameter_count", built)
    nn.Linear(2, 2)                                    # building works again afterwards


def test_counts_must_be_ints_and_the_dict_exactly_the_asked_keys():
    reference = model.gpt_parameter_count

    def as_float(*args, **kwargs):
        return float(reference(*args, **kwargs))

    with pytest.raises(CheckFailed, match="expected an int"):
        check("gpt_parameter_count", as_float)

    arithmetic = gpt_checks.gpt3_arithmetic

    def extra_key():
        return {**arithmetic(), "layers": 96}

    def float_d_head():
        return {**arithmetic(), "d_head": 128.0}

    with pytest.raises(CheckFailed, match="not asked for 'layers'"):
        check("gpt3_arithmetic", extra_key)
    with pytest.raises(CheckFailed, match="d_head: expected an int"):
        check("gpt3_arithmetic", float_d_head)


def test_a_module_that_ignores_bias_false_is_told_to_pass_it_on():
    class AlwaysBias(attention.MultiHeadAttention):
        def __init__(self, d_model, n_heads, bias=True):
            super().__init__(d_model, n_heads)                 # bias dropped on the floor

    with pytest.raises(CheckFailed, match="pass bias=bias on") as failure:
        check("MultiHeadAttention", _learner(AlwaysBias), hidden=True)
    assert "could not be checked" not in str(failure.value)


def test_a_loss_returned_as_a_float_is_described_not_crashed_on():
    class FloatLoss(model.GPT):
        def forward(self, idx, targets=None):
            logits, loss = super().forward(idx, targets)
            return logits, None if loss is None else loss.item()

    with pytest.raises(CheckFailed, match=r"expected a torch.Tensor in \['loss'\], got float"):
        check("GPT", _learner(FloatLoss))


def test_a_missing_attention_bias_is_among_the_named_causes():
    reference = model.gpt_parameter_count

    def three_attention_biases(vocab_size, context_length, d_model, n_layers, d_ff=None,
                               bias=True, tie_weights=False, positions="learned"):
        count = reference(vocab_size, context_length, d_model, n_layers, d_ff, bias,
                          tie_weights, positions)
        return count - (n_layers * d_model if bias else 0)

    with pytest.raises(CheckFailed, match="four attention projections' biases"):
        check("gpt_parameter_count", three_attention_biases)
