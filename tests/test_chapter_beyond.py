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
