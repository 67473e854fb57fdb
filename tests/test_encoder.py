"""The encoder: attention without the mask, the masked-token objective, cross-attention."""

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from gptcourse import encoder as enc
from gptcourse.model import GPT, GPTConfig
from gptcourse.tolerances import assert_close

CONFIG = dict(vocab_size=12, context_length=8, d_model=16, n_heads=4, n_layers=2)


def _weights(g, d_model, d_head, dtype=torch.float64):
    return [torch.randn(d_model, d_head, generator=g, dtype=dtype) for _ in range(3)]


@pytest.mark.parametrize("causal", [False, True])
def test_self_attend_matches_torch(causal):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 6, 8, generator=g, dtype=torch.float64)
    w_q, w_k, w_v = _weights(g, 8, 4)
    out, weights = enc.self_attend(x, w_q, w_k, w_v, causal)
    expected = F.scaled_dot_product_attention(x @ w_q, x @ w_k, x @ w_v, is_causal=causal)
    assert_close(out, expected)
    above_diagonal = torch.ones(6, 6, dtype=torch.bool).triu(1)
    assert (weights[:, above_diagonal] > 0).all() != causal


def test_cross_attention_matches_torch_with_memory_as_keys_and_values():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 8, generator=g, dtype=torch.float64)       # decoder, T_dec = 3
    memory = torch.randn(2, 5, 8, generator=g, dtype=torch.float64)  # encoder, T_enc = 5
    w_q, w_k, w_v = _weights(g, 8, 4)
    out, weights = enc.cross_attention(x, memory, w_q, w_k, w_v)
    assert out.shape == (2, 3, 4) and weights.shape == (2, 3, 5)
    assert_close(out, F.scaled_dot_product_attention(x @ w_q, memory @ w_k, memory @ w_v))


def test_cross_attention_module_matches_nn_multihead_attention():
    torch.manual_seed(0)
    ours = enc.CrossAttention(d_model=16, n_heads=4)
    theirs = nn.MultiheadAttention(16, 4, batch_first=True)
    with torch.no_grad():
        theirs.in_proj_weight.copy_(torch.cat([ours.query.weight, ours.key.weight,
                                               ours.value.weight]))
        theirs.in_proj_bias.copy_(torch.cat([ours.query.bias, ours.key.bias, ours.value.bias]))
        theirs.out_proj.weight.copy_(ours.out.weight)
        theirs.out_proj.bias.copy_(ours.out.bias)
    x, memory = torch.randn(2, 3, 16), torch.randn(2, 7, 16)
    out, weights = ours(x, memory, return_weights=True)
    expected, expected_weights = theirs(x, memory, memory, average_attn_weights=False)
    assert_close(out, expected)
    assert_close(weights, expected_weights)
    with pytest.raises(ValueError, match="batch size and d_model"):
        ours(x, torch.randn(3, 7, 16))


def test_mask_tokens_follows_the_80_10_10_rule():
    idx = torch.randint(0, 50, (64, 128), generator=torch.Generator().manual_seed(2))
    original = idx.clone()
    inputs, mask = enc.mask_tokens(idx, 0.15, 99, 50, torch.Generator().manual_seed(3))
    assert torch.equal(idx, original), "idx must not change in place"
    assert torch.equal(inputs[~mask], idx[~mask]), "unselected positions keep their token"

    n = idx.numel()
    selected = int(mask.sum())
    # Binomial proportions, each within 5 standard errors.
    assert abs(selected / n - 0.15) < 5 * math.sqrt(0.15 * 0.85 / n)
    masked = int((inputs[mask] == 99).sum())
    assert abs(masked / selected - 0.8) < 5 * math.sqrt(0.8 * 0.2 / selected)
    kept = int((inputs[mask] == idx[mask]).sum())
    # Kept: 10%, plus random tokens that happen to equal the original (0.1 / 50).
    assert abs(kept / selected - 0.102) < 5 * math.sqrt(0.1 * 0.9 / selected)


def test_mask_tokens_replays_the_stated_draw_order():
    idx = torch.arange(40).reshape(4, 10) % 7
    g = torch.Generator().manual_seed(4)
    selected = torch.rand(idx.shape, generator=g) < 0.5
    action = torch.rand(idx.shape, generator=g)
    random_ids = torch.randint(0, 7, idx.shape, generator=g)
    expected = torch.where(selected & (action < 0.8), torch.tensor(7), idx)
    randomised = selected & (action >= 0.8) & (action < 0.9)
    expected = torch.where(randomised, random_ids, expected)

    inputs, mask = enc.mask_tokens(idx, 0.5, 7, 7, torch.Generator().manual_seed(4))
    assert torch.equal(mask, selected) and torch.equal(inputs, expected)
    with pytest.raises(ValueError, match="mask_prob"):
        enc.mask_tokens(idx, 1.5, 7, 7)


def test_masked_lm_loss_matches_a_loop_over_masked_positions():
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(3, 6, 9, generator=g, dtype=torch.float64)
    targets = torch.randint(0, 9, (3, 6), generator=g)
    mask = torch.rand(3, 6, generator=g) < 0.4
    losses = [-torch.log_softmax(logits[b, t], -1)[targets[b, t]]
              for b in range(3) for t in range(6) if mask[b, t]]
    assert_close(enc.masked_lm_loss(logits, targets, mask), torch.stack(losses).mean())

    nothing = enc.masked_lm_loss(logits.requires_grad_(), targets, torch.zeros_like(mask))
    assert nothing.item() == 0.0
    nothing.backward()
    assert logits.grad is not None


def test_encoder_sees_the_future_and_the_decoder_does_not():
    torch.manual_seed(0)
    encoder, decoder = enc.Encoder(GPTConfig(**CONFIG)), GPT(GPTConfig(**CONFIG))
    encoder.eval()
    decoder.eval()
    idx = torch.tensor([[1, 2, 3, 4, 5, 6]])
    changed = idx.clone()
    changed[0, -1] = 7
    with torch.no_grad():
        enc_moved = (encoder(idx)[0] - encoder(changed)[0]).abs().amax(-1)[0]
        dec_moved = (decoder(idx)[0] - decoder(changed)[0]).abs().amax(-1)[0]
    assert (enc_moved[:-1] > 0).all(), "every encoder position must see the last token"
    assert (dec_moved[:-1] == 0).all(), "no decoder position may see a later token"


def test_encoder_loss_scores_the_masked_positions_only():
    torch.manual_seed(0)
    encoder = enc.Encoder(GPTConfig(**CONFIG))
    idx = torch.randint(0, 11, (3, 8), generator=torch.Generator().manual_seed(6))
    inputs, mask = enc.mask_tokens(idx, 0.3, 11, 11, torch.Generator().manual_seed(7))
    assert mask.any() and not mask.all()

    logits, loss = encoder(inputs, idx, mask)
    assert logits.shape == (3, 8, CONFIG["vocab_size"])
    assert_close(loss, F.cross_entropy(logits[mask], idx[mask]))
    (grad,) = torch.autograd.grad(loss, logits)
    assert (grad[~mask] == 0).all() and (grad[mask] != 0).any()

    with pytest.raises(ValueError, match="mask of scored positions"):
        encoder(idx, idx)
    with pytest.raises(ValueError, match="context_length"):
        encoder(torch.zeros(1, 9, dtype=torch.long))


def test_encoder_takes_the_positions_of_its_config():
    learned = enc.Encoder(GPTConfig(**CONFIG))
    fixed = enc.Encoder(GPTConfig(**CONFIG, positions="sinusoidal"))
    n_position_weights = CONFIG["context_length"] * CONFIG["d_model"]
    count = sum(p.numel() for p in learned.parameters()) - sum(
        p.numel() for p in fixed.parameters())
    assert count == n_position_weights
