"""Encoders: the decoder's blocks without the causal mask, trained to fill in masked tokens.

A BERT-style encoder is the GPT's stack of blocks with ``causal=False``: every position
attends to every other, before and after it. It cannot be trained to predict the next
token (it would see it), so it is trained with a **masked-token objective**: hide some
tokens and score the predictions at exactly those positions.

The masking rule (BERT's "80/10/10"), with the random draws in a fixed order so that a run
is reproducible from its generator:

1. ``selected = torch.rand(idx.shape) < mask_prob``: the positions that will be scored;
2. ``action = torch.rand(idx.shape)``: of the selected positions, those with
   ``action < 0.8`` become ``mask_id``, those with ``0.8 <= action < 0.9`` become a random
   token, the rest keep their token (the model cannot tell which inputs to trust);
3. ``random_ids = torch.randint(0, vocab_size, idx.shape)``: the random tokens.

The module also holds cross-attention, the link of the original encoder-decoder
transformer: queries from the decoder, keys and values from the encoder's output.
"""

import torch
import torch.nn.functional as F
from torch import nn

from gptcourse.attention import causal_mask, scaled_dot_product_attention
from gptcourse.block import DecoderBlock, LayerNorm
from gptcourse.embeddings import TokenEmbedding
from gptcourse.model import GPTConfig, init_weights, position_layer

MASK_PROB = 0.15


def mask_tokens(idx: torch.Tensor, mask_prob: float, mask_id: int, vocab_size: int,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """idx (B, T) -> (inputs (B, T) with tokens hidden, mask (B, T) bool: positions to score).

    Follows the 80/10/10 rule and draw order of the module docstring. ``idx`` is not
    changed; random tokens are drawn from ``0 .. vocab_size - 1``.
    """
    if not 0.0 <= mask_prob <= 1.0:
        raise ValueError(f"mask_prob must lie in [0, 1], got {mask_prob}")

    mask = torch.rand(idx.shape, generator=generator) < mask_prob          # (B, T) scored
    action = torch.rand(idx.shape, generator=generator)                    # (B, T)
    random_ids = torch.randint(0, vocab_size, idx.shape, generator=generator)

    inputs = idx.clone()
    inputs[mask & (action < 0.8)] = mask_id
    randomised = mask & (action >= 0.8) & (action < 0.9)
    inputs[randomised] = random_ids[randomised]
    return inputs, mask


def masked_lm_loss(logits: torch.Tensor, targets: torch.Tensor,
                   mask: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the masked positions only.

    logits (B, T, V), targets (B, T) the original tokens, mask (B, T) bool -> scalar.
    With no masked position at all the loss is 0 (and still has a gradient), not NaN.
    """
    if mask.shape != targets.shape:
        raise ValueError(f"mask {tuple(mask.shape)} and targets {tuple(targets.shape)} must "
                         "have the same shape (B, T)")
    if not mask.any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits[mask], targets[mask])                  # (N_masked, V)


def self_attend(x: torch.Tensor, w_q: torch.Tensor, w_k: torch.Tensor, w_v: torch.Tensor,
                causal: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One head of self-attention, masked (decoder) or not (encoder).

    x (B, T, d_model), w_q/w_k/w_v (d_model, d_head) -> (out (B, T, d_head),
    weights (B, T, T)). With ``causal=False`` every position sees every other.
    """
    q, k, v = x @ w_q, x @ w_k, x @ w_v                                  # (B, T, d_head)
    T = x.shape[-2]
    mask = causal_mask(T, dtype=x.dtype, device=x.device) if causal else None
    return scaled_dot_product_attention(q, k, v, mask)


def cross_attention(x: torch.Tensor, memory: torch.Tensor, w_q: torch.Tensor,
                    w_k: torch.Tensor, w_v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One head of cross-attention: the decoder's positions look at the encoder's output.

    x (B, T_dec, d_model) the decoder's states (queries), memory (B, T_enc, d_model) the
    encoder's output (keys and values) -> (out (B, T_dec, d_head),
    weights (B, T_dec, T_enc)). No mask: the whole source sentence is known.
    """
    q = x @ w_q                                                          # (B, T_dec, d_head)
    k, v = memory @ w_k, memory @ w_v                                    # (B, T_enc, d_head)
    return scaled_dot_product_attention(q, k, v)


class CrossAttention(nn.Module):
    """Multi-head cross-attention: ``forward(x (B, T_dec, d_model), memory (B, T_enc,
    d_model)) -> (B, T_dec, d_model)``; ``return_weights`` adds (B, H, T_dec, T_enc)."""

    def __init__(self, d_model: int, n_heads: int, bias: bool = True):
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.n_heads, self.d_head = n_heads, d_model // n_heads
        self.query = nn.Linear(d_model, d_model, bias=bias)
        self.key = nn.Linear(d_model, d_model, bias=bias)
        self.value = nn.Linear(d_model, d_model, bias=bias)
        self.out = nn.Linear(d_model, d_model, bias=bias)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        return x.view(B, T, self.n_heads, self.d_head).transpose(1, 2)  # (B, H, T, d_head)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, return_weights: bool = False):
        if x.shape[0] != memory.shape[0] or x.shape[-1] != memory.shape[-1]:
            raise ValueError(f"x {tuple(x.shape)} and memory {tuple(memory.shape)} must share "
                             "the batch size and d_model")
        B, T_dec, d_model = x.shape
        q = self._split_heads(self.query(x))                             # (B, H, T_dec, d_head)
        k = self._split_heads(self.key(memory))                          # (B, H, T_enc, d_head)
        v = self._split_heads(self.value(memory))                        # (B, H, T_enc, d_head)
        y, weights = scaled_dot_product_attention(q, k, v)               # (B, H, T_dec, d_head)
        y = self.out(y.transpose(1, 2).contiguous().view(B, T_dec, d_model))
        return (y, weights) if return_weights else y


class Encoder(nn.Module):
    """A BERT-style encoder built from the course's blocks, run with ``causal=False``.

    Same embeddings and blocks as :class:`gptcourse.model.GPT`; the head predicts the
    original token at every position, and the loss scores the masked ones only.
    ``config.vocab_size`` must include the mask token.
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.token_embedding = TokenEmbedding(config.vocab_size, config.d_model)
        self.position_embedding = position_layer(config)
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(DecoderBlock(config) for _ in range(config.n_layers))
        self.ln_final = LayerNorm(config.d_model)
        self.mlm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        init_weights(self, config.n_layers)

    def hidden_states(self, idx: torch.Tensor) -> torch.Tensor:
        """idx (B, T) -> contextual vectors (B, T, d_model), each seeing the whole input."""
        T = idx.size(1)
        if T > self.config.context_length:
            raise ValueError(f"{T} tokens do not fit the encoder's context_length of "
                             f"{self.config.context_length}")
        x = self.dropout(self.token_embedding(idx) + self.position_embedding(T))
        for block in self.blocks:
            x = block(x, causal=False)                                   # (B, T, d_model)
        return self.ln_final(x)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                mask: torch.Tensor | None = None):
        """idx (B, T) -> (logits (B, T, vocab_size), loss or None).

        With ``targets`` (B, T) and ``mask`` (B, T) bool, ``loss`` is
        :func:`masked_lm_loss`: the mean cross-entropy over the masked positions.
        """
        logits = self.mlm_head(self.hidden_states(idx))                  # (B, T, V)
        loss = None
        if targets is not None:
            if mask is None:
                raise ValueError("pass the mask of scored positions with the targets "
                                 "(see mask_tokens)")
            loss = masked_lm_loss(logits, targets, mask)
        return logits, loss
