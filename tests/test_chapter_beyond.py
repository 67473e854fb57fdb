"""Checks of chapters 10-12 judge answers written the way learners write them.

The registry's own wrong variants are tested in test_check_mistakes.py. Here the answers
are written independently, in the styles seen in public code: a correct answer in another
style must pass with no mistake named, and a classic bug must be named.
"""

import math
from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from gptcourse.checks import CheckFailed, check

# ---- correct answers in other styles pass ---------------------------------------------------


def test_correct_answers_in_other_styles_pass(capsys):
    def get_pair_counts(ids):
        return Counter(zip(ids, ids[1:]))

    def train_bpe(text, vocab_size):
        ids, merges = list(text.encode("utf-8")), []
        for new_id in range(256, vocab_size):
            counts = Counter(zip(ids, ids[1:]))
            if not counts:
                break
            best = max(counts.values())
            pair = sorted(p for p, n in counts.items() if n == best)[0]
            out, i = [], 0
            while i < len(ids):
                if tuple(ids[i:i + 2]) == pair:
                    out.append(new_id)
                    i += 2
                else:
                    out.append(ids[i])
                    i += 1
            ids = out
            merges.append(pair)
        return merges

    def decode(ids, merges):
        vocab = {i: bytes([i]) for i in range(256)}
        for i, (a, b) in enumerate(merges):
            vocab[256 + i] = vocab[a] + vocab[b]
        return bytes(byte for i in ids for byte in vocab[i]).decode("utf-8", "replace")

    def self_attend(x, w_q, w_k, w_v, causal):
        q, k, v = x @ w_q, x @ w_k, x @ w_v
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
        if causal:
            T = x.shape[1]
            scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1),
                                        float("-inf"))
        return out, scores.softmax(-1)

    def masked_lm_loss(logits, targets, mask):
        masked_targets = targets.masked_fill(~mask, -100)
        return F.cross_entropy(logits.transpose(1, 2), masked_targets, ignore_index=-100)

    def average_gradients(grads_per_rank):
        world_size = len(grads_per_rank)
        total = [torch.zeros_like(g) for g in grads_per_rank[0]]
        for grads in grads_per_rank:
            for t, g in zip(total, grads):
                t += g
        return [t / world_size for t in total]

    for exercise_id, answer in [("get_pair_counts", get_pair_counts), ("train_bpe", train_bpe),
                                ("decode", decode), ("self_attend", self_attend),
                                ("masked_lm_loss", masked_lm_loss),
                                ("average_gradients", average_gradients)]:
        check(exercise_id, answer, hidden=True)
    assert capsys.readouterr().out.count("\u2713") == 6


# ---- classic bugs, written as learners write them, are named --------------------------------


def _fails_naming(exercise_id, answer, words):
    for hidden in (False, True):
        with pytest.raises(CheckFailed) as failure:
            check(exercise_id, answer, hidden=hidden)
        message = str(failure.value)
        assert all(w in message for w in words), message


def test_for_loop_merge_that_cannot_skip_is_named_overlapping():
    def merge_pair(ids, pair, new_id):
        out, skip = [], False
        for i in range(len(ids)):
            if skip and ids[i] != pair[1]:
                skip = False
            if i + 1 < len(ids) and (ids[i], ids[i + 1]) == tuple(pair):
                out.append(new_id)
                skip = True
            elif not (skip and i > 0 and (ids[i - 1], ids[i]) == tuple(pair)):
                out.append(ids[i])
        return out

    _fails_naming("merge_pair", merge_pair, ["merged twice"])


def test_decoding_each_token_strictly_is_named():
    def decode(ids, merges):
        vocab = [bytes([b]) for b in range(256)]
        for a, b in merges:
            vocab.append(vocab[a] + vocab[b])
        return "".join(vocab[i].decode("utf-8") for i in ids)

    _fails_naming("decode", decode, ["decoded on its own", "UnicodeDecodeError"])


def test_python_max_tie_break_is_named():
    def train_bpe(text, vocab_size):
        ids, merges = list(text.encode("utf-8")), []
        for i in range(vocab_size - 256):
            counts = {}
            for pair in zip(ids, ids[1:]):
                counts[pair] = counts.get(pair, 0) + 1
            if not counts:
                break
            pair = max(counts, key=counts.get)
            out, j = [], 0
            while j < len(ids):
                if j < len(ids) - 1 and (ids[j], ids[j + 1]) == pair:
                    out.append(256 + i)
                    j += 2
                else:
                    out.append(ids[j])
                    j += 1
            ids = out
            merges.append(pair)
        return merges

    _fails_naming("train_bpe", train_bpe, ["occurs first in the text"])


def test_all_reduce_without_division_is_named():
    def average_gradients(grads_per_rank):
        return [sum(grads) for grads in zip(*grads_per_rank)]

    _fails_naming("average_gradients", average_gradients, ["sum", "world_size"])


def test_forward_only_flops_are_named():
    _fails_naming("training_flops", lambda n_params, n_tokens: 2.0 * n_params * n_tokens,
                  ["forward pass only"])


def test_encoder_attention_with_the_mask_left_on_is_named():
    def self_attend(x, w_q, w_k, w_v, causal):
        q, k, v = x @ w_q, x @ w_k, x @ w_v
        T = x.shape[1]
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
        scores = scores + torch.full((T, T), float("-inf"), dtype=x.dtype).triu(1)
        weights = scores.softmax(-1)
        return weights @ v, weights

    _fails_naming("self_attend", self_attend, ["causal mask is on"])


def test_loss_over_every_position_is_named():
    def masked_lm_loss(logits, targets, mask):
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))

    _fails_naming("masked_lm_loss", masked_lm_loss, ["every position"])


def test_cross_attention_reading_the_decoder_is_named():
    def cross_attention(x, memory, w_q, w_k, w_v):
        q, k, v = x @ w_q, x @ w_k, x @ w_v
        weights = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).softmax(-1)
        return weights @ v, weights

    _fails_naming("cross_attention", cross_attention, ["come from the decoder"])


def test_unknown_wrong_answer_gets_the_first_difference():
    def compression_ratio(text, merges):
        return 1.0

    with pytest.raises(CheckFailed) as failure:
        check("compression_ratio", compression_ratio)
    assert "expected" in str(failure.value) and "got 1" in str(failure.value)


def test_mask_tokens_that_changes_idx_in_place_errors_clearly():
    def mask_tokens(idx, mask_prob, mask_id, vocab_size, generator=None):
        selected = torch.rand(idx.shape, generator=generator) < mask_prob
        idx[selected] = mask_id
        return idx, selected

    with pytest.raises(CheckFailed, match="in place"):
        check("mask_tokens", mask_tokens)


# ---- chapter 10: the torchrun script and its comparison --------------------------------------


def test_ddp_step_that_gives_every_replica_the_whole_batch_is_named():
    import copy

    def ddp_step(model, x, y, world_size, lr):
        replicas = [copy.deepcopy(model) for _ in range(world_size)]
        grads = []
        for replica in replicas:
            F.cross_entropy(replica(x), y).backward()
            grads.append([p.grad for p in replica.parameters()])
        mean = [torch.stack(g).mean(0) for g in zip(*grads)]
        with torch.no_grad():
            for replica in replicas:
                for p, g in zip(replica.parameters(), mean):
                    p -= lr * g
        return [list(replica.parameters()) for replica in replicas]

    _fails_naming("ddp_step", ddp_step, ["whole batch", "shard"])


def test_shard_batch_without_value_error_names_it_in_one_line():
    def shard_batch(x, y, rank, world_size):
        b = x.shape[0] // world_size
        return x[rank * b:(rank + 1) * b], y[rank * b:(rank + 1) * b]

    with pytest.raises(CheckFailed) as failure:
        check("shard_batch", shard_batch)
    message = str(failure.value)
    assert "raise ValueError" in message and "\n" not in message and "tensor(" not in message


def _notebook_script(chapter, grade_id):
    import json
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "solutions" / chapter
    for path in folder.glob("*.ipynb"):
        for cell in json.loads(path.read_text())["cells"]:
            if cell["metadata"].get("nbgrader", {}).get("grade_id") == grade_id:
                return "".join(cell["source"]).split("\n", 1)[1]  # without %%writefile
    raise LookupError(grade_id)


def test_ddp_script_gives_every_setting_the_comparison_uses(tmp_path):
    from gptcourse.checks.data_parallel import DDP_SCRIPT_SETTINGS, script_settings

    script = tmp_path / "ddp_train.py"
    script.write_text(_notebook_script("10-data-parallel", "ddp_train_script"))
    given = script_settings(script)
    assert {k: given.get(k) for k in DDP_SCRIPT_SETTINGS} == DDP_SCRIPT_SETTINGS


def _ddp_states(settings, data, vocab_size, optimizer="sgd"):
    """The weights one process holds after the script's first step with ``settings``."""
    from gptcourse.checks.data_parallel import single_process_step

    if optimizer == "sgd":
        return single_process_step(data, vocab_size, settings)[1]
    from gptcourse.model import GPT, GPTConfig
    from gptcourse.training import get_batch

    torch.manual_seed(settings["MODEL_SEED"])
    model = GPT(GPTConfig(vocab_size=vocab_size, context_length=settings["CONTEXT_LENGTH"],
                          d_model=settings["D_MODEL"], n_heads=settings["N_HEADS"],
                          n_layers=settings["N_LAYERS"]))
    adam = torch.optim.AdamW(model.parameters(), lr=settings["LR"])
    x, y = get_batch(data, settings["GLOBAL_BATCH"], settings["CONTEXT_LENGTH"],
                     generator=torch.Generator().manual_seed(settings["BATCH_SEED"]))
    model(x, y)[1].backward()
    adam.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("change, words", [
    ({"MODEL_SEED": 1}, ["starting weights", "MODEL_SEED"]),
    ({"BATCH_SEED": 0}, ["batch", "BATCH_SEED"]),
    ({"LR": 0.1}, ["0.333 times", "lr=LR"]),
    ({"D_MODEL": 16, "N_LAYERS": 1}, ["model differs", "d_model=D_MODEL"]),
    ({"optimizer": "adamw"}, ["Adam", "SGD"]),
])
def test_ddp_run_problem_names_the_setting_that_differs(change, words):
    from gptcourse.checks import data_parallel as dp

    data = torch.randint(0, 20, (2_000,), generator=torch.Generator().manual_seed(0))
    initial, expected = dp.single_process_step(data, 20)
    settings = {**dp.DDP_SCRIPT_SETTINGS, **change}
    saved = _ddp_states(settings, data, 20, settings.pop("optimizer", "sgd"))
    assert dp.ddp_run_problem([expected, expected], initial, expected) is None
    problem = dp.ddp_run_problem([saved, saved], initial, expected)
    assert problem is not None and all(w in problem for w in words), problem


def test_ddp_run_problem_names_unsynchronised_ranks_and_wrong_saves():
    from gptcourse.checks.data_parallel import ddp_run_problem, single_process_step

    data = torch.randint(0, 20, (2_000,), generator=torch.Generator().manual_seed(0))
    initial, expected = single_process_step(data, 20)
    assert "DDP(model)" in ddp_run_problem([expected, initial], initial, expected)
    assert "initial ones" in ddp_run_problem([initial, initial], initial, expected)
    wrapped = {f"module.{k}": v for k, v in expected.items()}
    assert "model.module.state_dict()" in ddp_run_problem([wrapped] * 2, initial, expected)


def test_check_ddp_run_names_a_default_sized_model_and_changed_constants(tmp_path, corpus_path,
                                                                       monkeypatch):
    from gptcourse.checks.data_parallel import check_ddp_run
    from gptcourse.model import GPT, GPTConfig

    monkeypatch.setenv("GPTCOURSE_CORPUS", str(corpus_path))
    torch.manual_seed(0)
    state = GPT(GPTConfig(vocab_size=66, context_length=32)).state_dict()
    for rank in range(2):
        torch.save(state, tmp_path / f"step1_rank{rank}.pt")
    script = tmp_path / "ddp_train.py"
    script.write_text("GLOBAL_BATCH, CONTEXT_LENGTH, LR = 16, 32, 0.1\n")
    with pytest.raises(CheckFailed) as failure:
        check_ddp_run(tmp_path, script)
    message = str(failure.value)
    assert "model differs" in message and "LR = 0.1 (given: 0.3)" in message, message


# ---- chapters 11 and 12: messages in the words of the exercise ---------------------------------


def test_bpe_messages_speak_of_merges_pairs_and_tokens():
    def get_pair_counts(ids):
        counts, i = {}, 0
        while i < len(ids) - 1:  # skips the second (a, a) of "aaa"
            pair = (ids[i], ids[i + 1])
            counts[pair] = counts.get(pair, 0) + 1
            i += 2 if ids[i] == ids[i + 1] else 1
        return counts

    def train_bpe(text, vocab_size):
        ids, merges = list(text.encode("utf-8")), []
        for i in range(vocab_size - 256):
            counts = Counter(zip(ids, ids[1:]))
            if not counts:
                break
            pair = min(counts, key=lambda p: (-counts[p], p))
            out, j = [], 0
            while j < len(ids):
                if tuple(ids[j:j + 2]) == pair:
                    out.append(257 + i)  # one too high
                    j += 2
                else:
                    out.append(ids[j])
                    j += 1
            ids = out
            merges.append(pair)
        return merges

    def encode(text, merges):
        ids = list(text.encode("utf-8"))
        for i, pair in enumerate(merges):
            if tuple(pair) != (98, 99):  # the second merge of 'abcbc' is forgotten
                out, j = [], 0
                while j < len(ids):
                    if tuple(ids[j:j + 2]) == tuple(pair):
                        out.append(256 + i)
                        j += 2
                    else:
                        out.append(ids[j])
                        j += 1
                ids = out
        return ids

    for exercise_id, answer, words in [
            ("get_pair_counts", get_pair_counts, "pair (97, 97): expected count 4, got 2"),
            ("train_bpe", train_bpe, "merge 2 (token 258): expected (256, 257), got (257, 258)"),
            ("encode", encode, "token ids differ from position")]:
        with pytest.raises(CheckFailed) as failure:
            check(exercise_id, answer)
        assert words in str(failure.value), str(failure.value)
        assert " in item " not in str(failure.value)


def test_decoding_without_replace_is_named():
    def decode(ids, merges):
        vocab = [bytes([b]) for b in range(256)]
        for a, b in merges:
            vocab.append(vocab[a] + vocab[b])
        return b"".join(vocab[i] for i in ids).decode("utf-8")

    _fails_naming("decode", decode, ["errors='replace'", "UnicodeDecodeError"])


def test_mask_tokens_with_an_integer_mask_is_named():
    def mask_tokens(idx, mask_prob, mask_id, vocab_size, generator=None):
        mask = torch.rand(idx.shape, generator=generator) < mask_prob
        action = torch.rand(idx.shape, generator=generator)
        random_ids = torch.randint(0, vocab_size, idx.shape, generator=generator)
        inputs = idx.clone()
        inputs[mask & (action < 0.8)] = mask_id
        randomised = mask & (action >= 0.8) & (action < 0.9)
        inputs[randomised] = random_ids[randomised]
        return inputs, mask.int()

    _fails_naming("mask_tokens", mask_tokens, ["not booleans", "torch.bool"])
