"""Chapters 08 (generation) and 09 (training): the checks' own references against
independent computations, and learner-style wrong answers, written the way learners write
them, recognised by name."""

import math

import pytest
import torch
import torch.nn.functional as F

from gptcourse import generation
from gptcourse.checks import CheckFailed, check, get_exercise
from gptcourse.checks import generation as gen_checks
from gptcourse.checks import training as train_checks
from gptcourse.model import GPT, GPTConfig


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run fastest on one thread, and the suite runs tests side by side."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _tiny_model(seed=0, **overrides):
    torch.manual_seed(seed)
    config = dict(vocab_size=11, context_length=8, d_model=16, n_heads=2, n_layers=2)
    config.update(overrides)
    return GPT(GPTConfig(**config))


def _fails_with(exercise_id, candidate, mistake_words):
    with pytest.raises(CheckFailed) as info:
        check(exercise_id, candidate)
    assert mistake_words in str(info.value), str(info.value)


# -- chapter 08 -------------------------------------------------------------------------

def test_top_p_keeps_the_token_that_crosses_p():
    # probabilities 0.5, 0.2, 0.15, 0.1, 0.05: p = 0.8 keeps the first three (sum 0.85)
    logits = torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05]).log()
    kept = torch.isfinite(generation.top_p_filter(logits, 0.8))
    assert kept.tolist() == [True, True, True, False, False]


def test_cached_step_equals_full_causal_attention():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 7, 8, generator=g)
    w_q, w_k, w_v = (torch.randn(8, 4, generator=g) for _ in range(3))
    outputs, keys, values = gen_checks._run_cached(
        gen_checks.cached_attention_step, gen_checks.Case("", (x, w_q, w_k, w_v)))
    full = F.scaled_dot_product_attention(x @ w_q, x @ w_k, x @ w_v, is_causal=True)
    torch.testing.assert_close(outputs, full)
    torch.testing.assert_close(keys, x @ w_k)


def test_chapter_loop_matches_the_library_within_the_context():
    model = _tiny_model(1).eval()
    idx = torch.tensor([[1, 2, 3], [4, 5, 6]])
    with torch.no_grad():
        ours = gen_checks.generate(model, idx, 5, temperature=0.0)
    theirs = generation.generate(model, idx, 5, temperature=0.0, use_cache=False)
    assert torch.equal(ours, theirs)


def test_generate_cases_end_rows_at_different_steps():
    for case in gen_checks._generate_visible() + gen_checks._generate_hidden():
        if "sampling" in case.kwargs:
            continue
        out = gen_checks._run_generate(gen_checks.generate, case)
        eos = case.kwargs["eos_id"]
        if eos is None:
            assert out.shape[1] == case.args[0].shape[1] + case.kwargs["max_new_tokens"]
            continue
        new = out[:, case.args[0].shape[1]:]
        first = [(row == eos).nonzero()[0].item() if (row == eos).any() else None
                 for row in new]
        assert first[0] is not None and first[0] != first[1]
        assert (new[0, first[0]:] == eos).all()              # padded after its end


def _learner_sampler(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
    # Written differently from the course's: inverse-CDF sampling with torch.rand.
    logits = logits / temperature
    if top_k is not None:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None:
        logits = generation.top_p_filter(logits, top_p)
    cdf = F.softmax(logits, dim=-1).cumsum(-1)
    u = torch.rand(logits.shape[0], 1, generator=generator)
    return (cdf < u).sum(-1).clamp(max=logits.shape[-1] - 1)


def test_a_correct_sampler_that_draws_differently_passes():
    check("sample_next", _learner_sampler)
    check("sample_next", _learner_sampler, hidden=True)


def test_frequencies_far_apart_are_reported():
    expected = torch.tensor([[0.5, 0.5, 0.0]], dtype=torch.float64)
    assert gen_checks.compare_frequencies(expected, expected) is None
    message = gen_checks.compare_frequencies(
        expected, torch.tensor([[0.45, 0.5, 0.05]], dtype=torch.float64))
    assert message and "token 2" in message


def test_kv_cache_that_forgets_the_newest_position_is_named():
    def cached_step(x_new, w_q, w_k, w_v, cache=None):
        q, k, v = x_new @ w_q, x_new @ w_k, x_new @ w_v
        if cache is None:
            return F.softmax(q @ k.mT / math.sqrt(q.shape[-1]), -1) @ v, (k, v)
        keys, values = cache                                  # attends before appending
        out = F.softmax(q @ keys.mT / math.sqrt(q.shape[-1]), -1) @ values
        return out, (torch.cat([keys, k], 1), torch.cat([values, v], 1))

    _fails_with("cached_attention_step", cached_step, "does not attend to itself")


def test_kv_cache_that_appends_twice_is_named():
    def cached_step(x_new, w_q, w_k, w_v, cache=None):
        q, k, v = x_new @ w_q, x_new @ w_k, x_new @ w_v
        keys = k if cache is None else torch.cat([cache[0], k], 1)
        values = v if cache is None else torch.cat([cache[1], v], 1)
        keys, values = torch.cat([keys, k], 1), torch.cat([values, v], 1)
        out = F.softmax(q @ keys.mT / math.sqrt(q.shape[-1]), -1) @ values
        return out, (keys, values)

    _fails_with("cached_attention_step", cached_step, "appended twice")


def test_kv_cache_that_concatenates_the_new_key_twice_is_named():
    def cached_step(x_new, w_q, w_k, w_v, cache=None):
        q, k, v = x_new @ w_q, x_new @ w_k, x_new @ w_v
        if cache is not None:
            k, v = torch.cat([cache[0], k, k], dim=1), torch.cat([cache[1], v, v], dim=1)
        return F.softmax(q @ k.mT / math.sqrt(q.shape[-1]), -1) @ v, (k, v)

    _fails_with("cached_attention_step", cached_step, "appended twice")


def _learner_loop(pick):
    """A generation loop written the learner's way, choosing each token with ``pick``."""
    @torch.no_grad()
    def generate(model, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None,
                 eos_id=None, generator=None):
        done = torch.zeros(len(idx), dtype=torch.bool)
        for _ in range(max_new_tokens):
            logits, _ = model(idx[:, -model.config.context_length:])
            nxt = pick(logits[:, -1], temperature, top_k, top_p, generator)
            if eos_id is not None:
                nxt = nxt.masked_fill(done, eos_id)
                done |= nxt == eos_id
            idx = torch.cat([idx, nxt[:, None]], 1)
            if eos_id is not None and done.all():
                break
        return idx
    return generate


def test_a_loop_that_samples_another_valid_way_passes():
    def pick(last, temperature, top_k, top_p, generator):
        if temperature == 0:
            return last.argmax(-1)
        return _learner_sampler(last, temperature, top_k, top_p, generator)

    check("generate", _learner_loop(pick))
    check("generate", _learner_loop(pick), hidden=True)


def test_a_loop_that_always_takes_the_argmax_is_named():
    _fails_with("generate", _learner_loop(lambda last, *settings: last.argmax(-1)),
                "You always take the most likely token")


def test_a_loop_that_samples_without_the_filters_says_which_token():
    def pick(last, temperature, top_k, top_p, generator):
        if temperature == 0:
            return last.argmax(-1)
        probs = F.softmax(last / temperature, -1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)

    _fails_with("generate", _learner_loop(pick), "which temperature=1.5, top_k=3 removes")


def test_a_sampler_that_reseeds_itself_is_caught():
    def sample_next(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
        torch.manual_seed(0)                                  # the generator is ignored
        return _learner_sampler(logits, temperature, top_k, top_p)

    _fails_with("sample_next", sample_next, "different seeds drew the very same tokens")


def test_a_top_k_filled_with_a_large_finite_number_is_named():
    def top_k_filter(logits, k):
        kth = logits.topk(k, -1).values[..., -1:]
        return logits.masked_fill(logits < kth, -1e9)

    _fails_with("top_k_filter", top_k_filter, "large finite number instead of -inf")


def test_greedy_over_dim_1_fails_the_visible_check():
    _fails_with("greedy", lambda logits: logits.argmax(dim=1), "wrong dimension")


def test_generation_that_ignores_finished_rows_is_named():
    def generate(model, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None,
                 eos_id=None, generator=None):
        for _ in range(max_new_tokens):
            logits, _ = model(idx[:, -model.config.context_length:])
            if temperature == 0:
                next_id = logits[:, -1].argmax(-1, keepdim=True)
            else:
                next_id = _learner_sampler(logits[:, -1], temperature, top_k, top_p,
                                           generator)[:, None]
            idx = torch.cat([idx, next_id], 1)
            if eos_id is not None and (idx == eos_id).any(1).all():
                break
        return idx

    _fails_with("generate", generate, "keep receiving the model's tokens")


# -- chapter 09 -------------------------------------------------------------------------

def _slices_batch(data, batch_size, context_length, generator=None, shift=1):
    starts = torch.randint(len(data) - context_length, (batch_size,), generator=generator)
    x = torch.stack([data[s:s + context_length] for s in starts.tolist()])
    y = torch.stack([data[s + shift:s + shift + context_length] for s in starts.tolist()])
    return x, y


def test_get_batch_written_with_slices_passes():
    check("get_batch", _slices_batch)
    check("get_batch", _slices_batch, hidden=True)


def test_targets_not_shifted_are_named():
    _fails_with("get_batch", lambda d, b, t, generator=None: _slices_batch(d, b, t, generator,
                                                                            shift=0),
                "Your targets equal your inputs")


def test_targets_shifted_the_wrong_way_are_named():
    def get_batch(data, batch_size, context_length, generator=None):
        starts = torch.randint(1, len(data) - context_length, (batch_size,),
                               generator=generator)
        x = torch.stack([data[s:s + context_length] for s in starts.tolist()])
        y = torch.stack([data[s - 1:s - 1 + context_length] for s in starts.tolist()])
        return x, y

    _fails_with("get_batch", get_batch, "shifted the wrong way")


def test_segments_past_the_end_are_named():
    def get_batch(data, batch_size, context_length, generator=None):
        starts = torch.randint(len(data) - context_length + 1, (batch_size,),
                               generator=generator)
        x = torch.stack([data[s:s + context_length] for s in starts.tolist()])
        y = torch.stack([data[s + 1:s + 1 + context_length] for s in starts.tolist()])
        return x, y

    _fails_with("get_batch", get_batch, "reach past the end")


def test_targets_two_tokens_ahead_are_named_not_blamed_on_the_bound():
    _fails_with("get_batch", lambda d, b, t, generator=None: _slices_batch(d, b, t, generator,
                                                                            shift=2),
                "two tokens ahead")


def test_rolled_targets_are_named():
    def get_batch(data, batch_size, context_length, generator=None):
        x, _ = _slices_batch(data, batch_size, context_length, generator)
        return x, x.roll(-1, dims=1)

    _fails_with("get_batch", get_batch, "rolling x")


def test_batch_messages_speak_of_x_and_y_not_of_summaries():
    def get_batch(data, batch_size, context_length, generator=None):
        starts = torch.arange(batch_size) % (len(data) - context_length)
        x = torch.stack([data[s:s + context_length] for s in starts.tolist()])
        return x.float(), (x + 3).float()

    with pytest.raises(CheckFailed) as info:
        check("get_batch", get_batch)
    message = str(info.value)
    assert "x[b, t] + 3" in message and "keys" not in message and "shift'" not in message


def test_batches_that_ignore_the_generator_or_the_dtype_are_named():
    def unseeded(data, batch_size, context_length, generator=None):
        return _slices_batch(data, batch_size, context_length)

    def as_floats(data, batch_size, context_length, generator=None):
        x, y = _slices_batch(data, batch_size, context_length, generator)
        return x.float(), y.float()

    _fails_with("get_batch", unseeded, "ignore the generator")
    _fails_with("get_batch", as_floats, "not int64 token ids")


def test_one_pass_losses_equal_per_prefix_losses():
    model = _tiny_model(2).eval()
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, 11, (3, 8), generator=g)
    targets = torch.randint(0, 11, (3, 8), generator=g)
    with torch.no_grad():
        logits, loss = model(idx, targets)
        one_pass = train_checks.position_losses(logits, targets)
        per_prefix = train_checks.prefix_losses(model, idx, targets)
    torch.testing.assert_close(one_pass, per_prefix, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(train_checks.lm_loss(logits, targets), loss)
    manual = -torch.log(F.softmax(logits[1, 4], -1)[targets[1, 4]])
    torch.testing.assert_close(one_pass[1, 4], manual)


def test_summed_loss_is_named():
    _fails_with("lm_loss", lambda logits, targets: F.cross_entropy(
        logits.flatten(0, 1), targets.flatten(), reduction="sum"), "summed the losses")


def test_train_step_lowers_the_loss_and_missing_zero_grad_is_named():
    model = _tiny_model(3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x = torch.randint(0, 11, (4, 8), generator=torch.Generator().manual_seed(1))
    y = torch.roll(x, -1, dims=1)
    losses = [train_checks.train_step(model, optimizer, x, y) for _ in range(10)]
    assert losses[-1] < losses[0] - 0.5

    def accumulating(model, optimizer, x, y):
        model.train()
        _, loss = model(x, y)
        loss.backward()
        optimizer.step()
        return loss.item()

    _fails_with("train_step", accumulating, "gradients accumulate")


def test_train_step_without_optimizer_step_is_named():
    def no_step(model, optimizer, x, y):
        model.train()
        optimizer.zero_grad()
        _, loss = model(x, y)
        loss.backward()
        return loss.item()

    _fails_with("train_step", no_step, "Your weights never change")


def test_evaluation_without_eval_mode_is_named():
    def evaluate_loss(model, batches):
        with torch.no_grad():
            return sum(model(x, y)[1].item() for x, y in batches) / len(batches)

    _fails_with("evaluate_loss", evaluate_loss, "Dropout was active")


def _learner_train(batch_of, record=True, first_step=1):
    """A training loop written the learner's way; ``batch_of(train_data, val_data)`` says
    which split each step trains on."""
    def train(model, optimizer, train_data, val_data, steps, batch_size, eval_every,
              eval_batches=10, generator=None, progress=True):
        T = model.config.context_length
        history = {"steps": [], "train_loss": [], "val_loss": [], "iter_loss": []}
        for step in range(first_step, steps + 1):
            x, y = _learner_batch(batch_of(train_data, val_data), batch_size, T,
                                         generator)
            history["iter_loss"].append(train_checks.train_step(model, optimizer, x, y))
            if record and (step % eval_every == 0 or step == steps):
                history["steps"].append(step)
                for key, split in (("train_loss", train_data), ("val_loss", val_data)):
                    batches = [_learner_batch(split, batch_size, T, generator)
                               for _ in range(eval_batches)]
                    history[key].append(train_checks.evaluate_loss(model, batches))
        return history
    return train


def _learner_batch(data, batch_size, context_length, generator=None):
    return _slices_batch(data, batch_size, context_length, generator)


def test_a_loop_written_another_way_passes():
    check("train", _learner_train(lambda train_data, val_data: train_data))


def test_a_loop_that_does_not_train_fails_with_the_loss_it_reached():
    fixed = {}

    def one_batch(train_data, val_data):
        fixed.setdefault("data", train_data[:17])              # 16 tokens and a target
        return fixed["data"]

    with pytest.raises(CheckFailed, match="on train_data it should be below"):
        check("train", _learner_train(one_batch))


def test_a_loop_that_never_evaluates_is_named():
    _fails_with("train", _learner_train(lambda t, v: t, record=False), "never evaluates")


def test_a_loop_that_trains_on_the_validation_split_is_named():
    _fails_with("train", _learner_train(lambda t, v: v), "You train on the validation split")


def test_the_course_loop_trains_the_tiny_corpus_well_below_guessing():
    exercise = get_exercise("train")
    result = exercise.run(exercise.reference, exercise.cases()[0])
    assert result["train_loss"] < result["threshold"] < result["chance"] - 1.5
    assert result["val_loss"] > result["train_loss"] + 2     # the reversed text is unlearnt
    assert result["eval_steps"] == [40, 80, 120, 150]
    assert result["steps_taken"] == 150
