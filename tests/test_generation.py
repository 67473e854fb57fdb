"""Generation: filters against sort-based references, the KV cache against recomputation."""

import torch
import pytest

from gptcourse.generation import (
    generate,
    greedy,
    sample_next,
    top_k_filter,
    top_p_filter,
    window_start,
)
from gptcourse.model import GPT, GPTConfig
from gptcourse.tolerances import SAMPLING_Z


def _model(context_length=16, seed=0):
    torch.manual_seed(seed)
    config = GPTConfig(vocab_size=30, context_length=context_length, d_model=32, n_heads=4,
                       n_layers=2)
    return GPT(config).eval()


def test_top_k_keeps_exactly_k_largest_and_sets_rest_to_minus_inf():
    logits = torch.randn(4, 50)
    out = top_k_filter(logits, 5)
    for row, filtered in zip(logits, out):
        kept = torch.isfinite(filtered)
        assert kept.sum() == 5
        assert set(kept.nonzero().flatten().tolist()) == set(row.argsort()[-5:].tolist())
        assert torch.all(filtered[~kept] == float("-inf"))
        assert torch.equal(filtered[kept], row[kept])


def test_top_p_keeps_smallest_set_reaching_p():
    logits = torch.randn(6, 40) * 2
    for p in (0.1, 0.5, 0.9, 1.0):
        out = top_p_filter(logits, p)
        for row, filtered in zip(logits, out):
            probs = torch.softmax(row.double(), -1)
            order = probs.argsort(descending=True).tolist()
            total, expected = 0.0, set()
            for i in order:                       # a plain loop: add until the mass reaches p
                expected.add(i)
                total += probs[i].item()
                if total >= p:
                    break
            assert set(torch.isfinite(filtered).nonzero().flatten().tolist()) == expected


def test_sampling_frequencies_match_probabilities():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    probs = torch.softmax(logits / 0.7, -1)[0]
    g = torch.Generator().manual_seed(0)
    n = 20000
    draws = sample_next(logits.expand(n, 4), temperature=0.7, generator=g)
    freq = torch.bincount(draws, minlength=4).double() / n
    stderr = (probs * (1 - probs) / n).sqrt()
    assert torch.all((freq - probs).abs() <= SAMPLING_Z * stderr + 1e-12)


def test_temperature_zero_is_greedy():
    logits = torch.randn(3, 10)
    assert torch.equal(sample_next(logits, temperature=0), greedy(logits))


@pytest.mark.parametrize("kwargs", [dict(temperature=0), dict(top_k=5, top_p=0.9)])
def test_cache_equals_recomputation_within_context(kwargs):
    model = _model(context_length=64)
    prompt = torch.randint(0, 30, (2, 4))
    outs = []
    for use_cache in (True, False):
        g = torch.Generator().manual_seed(3)
        outs.append(generate(model, prompt, 40, use_cache=use_cache, generator=g, **kwargs))
    assert torch.equal(outs[0], outs[1])


def _recompute_with_same_windows(model, idx, n):
    """Greedy decoding written out by hand: a full forward pass per step over the window."""
    start = 0
    for _ in range(n):
        start = window_start(idx.size(1), start, model.config.context_length)
        logits, _ = model(idx[:, start:])
        idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return idx


def test_cache_past_context_matches_recomputation_with_same_windows():
    model = _model(context_length=8)
    prompt = torch.randint(0, 30, (2, 3))
    cached = generate(model, prompt, 30, temperature=0, use_cache=True)
    assert cached.shape == (2, 33)
    assert torch.equal(cached, _recompute_with_same_windows(model, prompt, 30))


def test_window_keeps_half_a_context_when_full():
    assert window_start(8, 0, 8) == 0
    assert window_start(9, 0, 8) == 5
    assert window_start(10, 5, 8) == 5


def test_eos_stops_each_sequence_and_pads():
    model = _model()
    prompt = torch.randint(0, 30, (3, 2))
    free = generate(model, prompt, 12, temperature=0)
    eos = int(free[0, 4])                       # the token sequence 0 emits at step 3
    out = generate(model, prompt, 12, temperature=0, eos_id=eos)
    for row_free, row in zip(free, out):
        hits = (row_free[2:] == eos).nonzero()
        if len(hits):
            first = 2 + int(hits[0])
            assert torch.equal(row[:first + 1], row_free[:first + 1])
            assert torch.all(row[first:] == eos)
        else:
            assert torch.equal(row, row_free[: row.size(0)])
    finished_all = all((row[2:] == eos).any() for row in out)
    assert finished_all == (out.size(1) < 14)
