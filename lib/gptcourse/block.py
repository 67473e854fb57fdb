"""A decoder block: attention and feed-forward, each wrapped in LayerNorm and a residual.

The five-floor picture leaves these out, but no deep model trains without them: the
residual path lets gradients reach early layers unchanged, and LayerNorm keeps each
position's activations at a steady scale. The course uses the pre-norm arrangement of
GPT-2 and later models, normalising the input of each sub-layer:

    x = x + attn(ln_attn(x))
    x = x + ff(ln_ff(x))
"""

import torch
from torch import nn

from gptcourse.attention import KVCache, MultiHeadAttention
from gptcourse.feedforward import FeedForward


class LayerNorm(nn.Module):
    """Normalise the last dimension to mean 0 and variance 1, then scale and shift.

    Uses the biased variance (divide by d_model) with ``eps`` inside the square root, as
    ``torch.nn.LayerNorm`` does.
    """

    def __init__(self, d_model: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))
        self.bias = nn.Parameter(torch.zeros(d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., d_model) -> (..., d_model)."""
        # One pass for both statistics: generation calls this on one token at a time, where
        # the cost of each separate operation, not the arithmetic, sets the speed.
        var, mean = torch.var_mean(x, dim=-1, keepdim=True, unbiased=False)  # (..., 1) each
        return (x - mean) * torch.rsqrt(var + self.eps) * self.weight + self.bias


class DecoderBlock(nn.Module):
    """Pre-norm block: masked multi-head self-attention, then the feed-forward network.

    ``config`` needs d_model, n_heads, d_ff, dropout, bias and fast_attention
    (a :class:`gptcourse.model.GPTConfig`).
    """

    def __init__(self, config):
        super().__init__()
        self.ln_attn = LayerNorm(config.d_model)
        self.attn = MultiHeadAttention(config.d_model, config.n_heads, bias=config.bias,
                                       dropout=config.dropout, fast=config.fast_attention)
        self.ln_ff = LayerNorm(config.d_model)
        self.ff = FeedForward(config.d_model, config.d_ff, dropout=config.dropout,
                              bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, kv_cache: KVCache | None = None,
                causal: bool = True) -> torch.Tensor:
        """x (B, T, d_model) -> (B, T, d_model). ``causal=False`` gives an encoder block."""
        x = x + self.dropout(self.attn(self.ln_attn(x), causal=causal, kv_cache=kv_cache))
        x = x + self.ff(self.ln_ff(x))
        return x
