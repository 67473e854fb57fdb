"""The feed-forward network, the block and the whole GPT against independent references."""

import math

import pytest
import torch

from gptcourse.block import DecoderBlock, LayerNorm
from gptcourse.feedforward import FeedForward
from gptcourse.model import GPT, GPTConfig, count_parameters, gpt_parameter_count
from gptcourse.tolerances import assert_close


def _tiny(**overrides) -> GPTConfig:
    settings = dict(vocab_size=20, context_length=12, d_model=16, n_heads=4, n_layers=2)
    settings.update(overrides)
    return GPTConfig(**settings)


def test_feed_forward_is_position_wise():
    torch.manual_seed(0)
    ff = FeedForward(16)
    x = torch.randn(2, 7, 16)
    perm = torch.randperm(7)
    assert_close(ff(x[:, perm]), ff(x)[:, perm])


def test_layer_norm_matches_torch():
    torch.manual_seed(0)
    ours = LayerNorm(10)
    with torch.no_grad():
        ours.weight.uniform_()
        ours.bias.uniform_()
    theirs = torch.nn.LayerNorm(10)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(3, 4, 10) * 5 + 2
    assert_close(ours(x), theirs(x))


def test_block_is_pre_norm_with_residuals():
    torch.manual_seed(0)
    block = DecoderBlock(_tiny())
    x = torch.randn(2, 5, 16)
    h = x + block.attn(block.ln_attn(x))
    expected = h + block.ff.contract(block.ff.activation(block.ff.expand(block.ln_ff(h))))
    assert_close(block(x), expected)


@pytest.mark.parametrize("fast", [False, True])
def test_changing_later_tokens_leaves_earlier_logits_unchanged(fast):
    torch.manual_seed(0)
    model = GPT(_tiny(fast_attention=fast)).eval()
    idx = torch.randint(0, 20, (2, 10))
    changed = idx.clone()
    changed[:, 6:] = (changed[:, 6:] + 1) % 20
    before, _ = model(idx)
    after, _ = model(changed)
    assert_close(after[:, :6], before[:, :6])
    assert not torch.allclose(after[:, 6:], before[:, 6:])


def test_initial_loss_is_close_to_log_vocab():
    torch.manual_seed(0)
    config = _tiny(vocab_size=65, context_length=32)
    idx = torch.randint(0, 65, (8, 32))
    _, loss = GPT(config)(idx, torch.randint(0, 65, (8, 32)))
    assert abs(loss.item() - math.log(65)) < 0.1


def test_all_positions_loss_equals_mean_of_per_prefix_losses():
    torch.manual_seed(0)
    model = GPT(_tiny()).eval()
    idx = torch.randint(0, 20, (1, 8))
    targets = torch.randint(0, 20, (1, 8))
    _, loss = model(idx, targets)
    per_prefix = []
    for t in range(1, 9):
        logits, _ = model(idx[:, :t])              # a separate forward pass per prefix
        per_prefix.append(torch.nn.functional.cross_entropy(logits[0, -1], targets[0, t - 1]))
    assert_close(loss, torch.stack(per_prefix).mean())


@pytest.mark.parametrize("tie", [False, True])
@pytest.mark.parametrize("positions", ["learned", "sinusoidal"])
@pytest.mark.parametrize("bias", [False, True])
def test_parameter_formula_matches_sum_of_tensor_sizes(tie, positions, bias):
    config = _tiny(tie_weights=tie, positions=positions, bias=bias, d_ff=24)
    model = GPT(config)
    by_tensor = sum(t.numel() for t in {id(p): p for p in model.parameters()}.values())
    assert count_parameters(model) == by_tensor
    assert gpt_parameter_count(20, 12, 16, 2, d_ff=24, bias=bias, tie_weights=tie,
                               positions=positions) == by_tensor


def test_gpt3_is_about_175_billion():
    total = gpt_parameter_count(vocab_size=50257, context_length=2048, d_model=12288,
                                n_layers=96, tie_weights=True)
    assert 174e9 < total < 176e9


def test_weight_tying_shares_one_matrix():
    model = GPT(_tiny(tie_weights=True))
    assert model.lm_head.weight is model.token_embedding.weight


def test_context_too_long_is_a_clear_error():
    model = GPT(_tiny())
    with pytest.raises(ValueError, match="context_length of 12"):
        model(torch.zeros(1, 13, dtype=torch.long))


def test_token_ids_outside_vocabulary_are_a_clear_error():
    with pytest.raises(ValueError, match="0..19"):
        GPT(_tiny())(torch.tensor([[3, 25]]))


def test_bad_head_count_is_a_clear_error():
    with pytest.raises(ValueError, match="divisible"):
        _tiny(n_heads=3)
