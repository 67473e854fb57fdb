"""The whole GPT: the five floors, with the middle ones stacked n_layers times.

    idx (B, T) -> token embedding + position embedding          floors 1 and 2
               -> n_layers x DecoderBlock                        floors 3 and 4, stacked
               -> final LayerNorm -> linear to vocabulary        floor 5 (softmax in the loss)
               -> logits (B, T, vocab_size)

Every position gets a distribution over the next token. Generation uses only the last
one; training scores all of them at once, which is why training is so parallel.
"""

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from gptcourse.attention import KVCache
from gptcourse.block import DecoderBlock, LayerNorm
from gptcourse.embeddings import (
    LearnedPositionalEmbedding,
    SinusoidalPositionalEncoding,
    TokenEmbedding,
)


@dataclass
class GPTConfig:
    """Sizes and switches of a GPT. ``d_ff`` defaults to 4 * d_model."""

    vocab_size: int
    context_length: int = 64
    d_model: int = 128
    n_heads: int = 4
    n_layers: int = 4
    d_ff: int | None = None
    dropout: float = 0.0
    bias: bool = True
    tie_weights: bool = False
    positions: str = "learned"          # "learned" (GPT) or "sinusoidal" (the 2017 paper)
    fast_attention: bool = True         # torch's fused attention kernel; same result

    def __post_init__(self):
        if self.d_model % self.n_heads != 0:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads "
                             f"({self.n_heads})")
        if self.positions not in ("learned", "sinusoidal"):
            raise ValueError(f"positions must be 'learned' or 'sinusoidal', "
                             f"not {self.positions!r}")
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model

    def to_dict(self) -> dict:
        return asdict(self)


def position_layer(config: GPTConfig) -> nn.Module:
    """Floor 2 as the config asks: learned position embeddings or the sinusoidal table."""
    if config.positions == "learned":
        return LearnedPositionalEmbedding(config.context_length, config.d_model)
    return SinusoidalPositionalEncoding(config.context_length, config.d_model)


def init_weights(model: nn.Module, n_layers: int) -> None:
    """GPT-2's initialisation for a stack of ``n_layers`` blocks in ``model.blocks``.

    Linear weights start at N(0, 0.02) and biases at 0. Each block adds to the residual
    stream twice, so the projections that write into it start smaller still, by
    1/sqrt(2 n_layers), to keep the stream's variance from growing with depth.
    """
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    for block in model.blocks:
        for layer in (block.attn.out, block.ff.contract):
            nn.init.normal_(layer.weight, std=0.02 / math.sqrt(2 * n_layers))


class GPT(nn.Module):
    """A decoder-only transformer language model."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.token_embedding = TokenEmbedding(config.vocab_size, config.d_model)
        self.position_embedding = position_layer(config)
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(DecoderBlock(config) for _ in range(config.n_layers))
        self.ln_final = LayerNorm(config.d_model)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        init_weights(self, config.n_layers)
        if config.tie_weights:
            # One matrix serves both ends: row i embeds token i and scores token i.
            self.lm_head.weight = self.token_embedding.weight

    def new_kv_caches(self) -> list[KVCache]:
        """One empty cache per layer, for :func:`gptcourse.generation.generate`."""
        return [KVCache() for _ in self.blocks]

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                kv_caches: list[KVCache] | None = None):
        """idx (B, T) token ids -> (logits (B, T, vocab_size), loss or None).

        With ``targets`` (B, T), ``loss`` is the mean next-token cross-entropy over every
        position of every sequence. With ``kv_caches`` the T tokens continue the cached
        ones: their positions start after the cached length.
        """
        B, T = idx.shape
        start = kv_caches[0].length if kv_caches else 0
        if start + T > self.config.context_length:
            raise ValueError(
                f"{start + T} tokens do not fit the model's context_length of "
                f"{self.config.context_length}; pass at most the last "
                f"{self.config.context_length} tokens (generate() crops for you)"
            )
        if idx.numel() and (idx.min() < 0 or idx.max() >= self.config.vocab_size):
            raise ValueError(f"token ids must lie in 0..{self.config.vocab_size - 1}; got "
                             f"{int(idx.min())}..{int(idx.max())}")

        x = self.token_embedding(idx) + self.position_embedding(T, start)  # (B, T, d_model)
        x = self.dropout(x)
        caches = kv_caches if kv_caches is not None else [None] * len(self.blocks)
        for block, cache in zip(self.blocks, caches):
            x = block(x, kv_cache=cache)                                  # (B, T, d_model)
        x = self.ln_final(x)
        logits = self.lm_head(x)                                          # (B, T, V)

        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.reshape(B * T, -1), targets.reshape(B * T))
        return logits, loss


def count_parameters(model: nn.Module) -> int:
    """Number of trainable numbers; a tied matrix counts once."""
    return sum(p.numel() for p in model.parameters())


def gpt_parameter_count(vocab_size: int, context_length: int, d_model: int, n_layers: int,
                        d_ff: int | None = None, bias: bool = True, tie_weights: bool = False,
                        positions: str = "learned") -> int:
    """The closed-form parameter count of :class:`GPT` (n_heads does not change it).

    Per block: 4 d_model^2 for the query, key, value and output projections, 2 d_model d_ff
    for the feed-forward network, biases, and two LayerNorms (2 d_model each).
    """
    d_ff = 4 * d_model if d_ff is None else d_ff
    attention = 4 * d_model * d_model + (4 * d_model if bias else 0)
    feed_forward = 2 * d_model * d_ff + ((d_ff + d_model) if bias else 0)
    layer_norms = 2 * 2 * d_model
    per_block = attention + feed_forward + layer_norms

    embeddings = vocab_size * d_model
    embeddings += context_length * d_model if positions == "learned" else 0
    head = 0 if tie_weights else vocab_size * d_model
    return embeddings + n_layers * per_block + 2 * d_model + head
