"""Attention against torch's own implementations and properties that must hold."""

import torch
import torch.nn.functional as F

from gptcourse.attention import (
    AttentionHead,
    MultiHeadAttention,
    causal_mask,
    scaled_dot_product_attention,
    softmax,
)
from gptcourse.tolerances import assert_close


def _qkv(B=2, T=6, d=8, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, 3, T, d, generator=g, dtype=dtype) for _ in range(3)]


def test_softmax_matches_torch_and_survives_large_scores():
    x = torch.randn(4, 9) * 3
    assert_close(softmax(x), torch.softmax(x, dim=-1))
    big = torch.tensor([[1000.0, 999.0, 998.0]])
    assert_close(softmax(big), torch.softmax(big, dim=-1))
    assert torch.isfinite(softmax(big)).all()


def test_fully_masked_row_gives_zeros_not_nan():
    x = torch.tensor([[float("-inf")] * 3, [0.0, 1.0, float("-inf")]])
    out = softmax(x)
    assert torch.equal(out[0], torch.zeros(3))
    assert torch.isfinite(out).all()


def test_attention_equals_torch_without_mask():
    q, k, v = _qkv()
    out, weights = scaled_dot_product_attention(q, k, v)
    assert_close(out, F.scaled_dot_product_attention(q, k, v))
    assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]))


def test_attention_equals_torch_with_causal_mask():
    q, k, v = _qkv(dtype=torch.float64)
    mask = causal_mask(6, dtype=torch.float64)
    out, weights = scaled_dot_product_attention(q, k, v, mask)
    assert_close(out, F.scaled_dot_product_attention(q, k, v, is_causal=True))
    above = torch.triu(torch.ones(6, 6, dtype=torch.bool), diagonal=1)
    assert torch.all(weights[..., above] == 0)


def test_causal_mask_values_and_offset_against_tril():
    mask = causal_mask(5)
    assert torch.equal(mask == 0, torch.ones(5, 5).tril().bool())
    assert torch.isinf(mask[0, 1]) and mask[0, 1] < 0
    # With 3 cached keys, 2 new queries sit at positions 3 and 4 of 5 keys.
    assert torch.equal(causal_mask(2, n_keys=5), mask[3:])


def test_attention_head_shapes():
    head = AttentionHead(16, 4)
    out, weights = head(torch.randn(2, 5, 16))
    assert out.shape == (2, 5, 4) and weights.shape == (2, 5, 5)


def _copy_into_torch_mha(ours: MultiHeadAttention) -> torch.nn.MultiheadAttention:
    theirs = torch.nn.MultiheadAttention(ours.d_model, ours.n_heads, batch_first=True)
    with torch.no_grad():
        theirs.in_proj_weight.copy_(torch.cat([ours.query.weight, ours.key.weight,
                                               ours.value.weight]))
        theirs.in_proj_bias.copy_(torch.cat([ours.query.bias, ours.key.bias,
                                             ours.value.bias]))
        theirs.out_proj.weight.copy_(ours.out.weight)
        theirs.out_proj.bias.copy_(ours.out.bias)
    return theirs


def test_multi_head_attention_equals_torch_multihead_attention():
    torch.manual_seed(0)
    ours = MultiHeadAttention(32, 4)
    theirs = _copy_into_torch_mha(ours)
    x = torch.randn(3, 7, 32)
    expected, _ = theirs(x, x, x, need_weights=False)
    assert_close(ours(x, causal=False), expected)

    mask = torch.triu(torch.ones(7, 7, dtype=torch.bool), diagonal=1)   # True = blocked
    expected, _ = theirs(x, x, x, attn_mask=mask, need_weights=False)
    assert_close(ours(x, causal=True), expected)


def test_fast_path_equals_plain_path():
    torch.manual_seed(0)
    plain = MultiHeadAttention(32, 4)
    fast = MultiHeadAttention(32, 4, fast=True)
    fast.load_state_dict(plain.state_dict())
    x = torch.randn(2, 9, 32)
    for causal in (True, False):
        assert_close(fast(x, causal=causal), plain(x, causal=causal))


def test_every_head_depends_on_every_input_dimension():
    torch.manual_seed(0)
    mha = MultiHeadAttention(16, 4)
    x = torch.randn(1, 5, 16)
    _, base = mha(x, causal=False, return_weights=True)
    for dim in range(16):
        bumped = x.clone()
        bumped[..., dim] += 1.0
        _, weights = mha(bumped, causal=False, return_weights=True)
        per_head_change = (weights - base).abs().amax(dim=(0, 2, 3))   # (H,)
        assert torch.all(per_head_change > 0), f"a head ignores input dimension {dim}"


def test_kv_cache_matches_full_causal_attention():
    from gptcourse.attention import KVCache

    torch.manual_seed(0)
    mha = MultiHeadAttention(16, 2)
    x = torch.randn(2, 6, 16)
    full = mha(x, causal=True)
    cache = KVCache()
    pieces = [mha(x[:, :3], kv_cache=cache)]
    pieces += [mha(x[:, t:t + 1], kv_cache=cache) for t in range(3, 6)]
    assert_close(torch.cat(pieces, dim=1), full)
    assert cache.length == 6
