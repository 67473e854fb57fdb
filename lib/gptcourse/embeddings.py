"""Floors 1 and 2: token embeddings and positional encodings.

A token embedding is a lookup table: row ``i`` of a ``(vocab_size, d_model)`` matrix is the
vector of token ``i`` (the same as multiplying a one-hot vector by the matrix, without the
multiplication). Attention by itself ignores order, so each position also gets a vector:
either the fixed sinusoids of "Attention Is All You Need" or a learned table, as in GPT.
"""

import math

import torch
from torch import nn


class TokenEmbedding(nn.Module):
    """A learned vector per token id."""

    def __init__(self, vocab_size: int, d_model: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(vocab_size, d_model) * 0.02)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """idx (B, T) int64 -> (B, T, d_model)."""
        return self.weight[idx]


def sinusoidal_encoding(context_length: int, d_model: int, base: float = 10000.0,
                        dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The fixed positional encoding, shape (context_length, d_model).

    ``PE[pos, 2i] = sin(pos / base**(2i / d_model))`` and
    ``PE[pos, 2i + 1] = cos(pos / base**(2i / d_model))``: sine on even dimensions, cosine
    on odd ones, each pair sharing one frequency. An odd ``d_model`` ends on a sine.
    """
    position = torch.arange(context_length, dtype=torch.float64).unsqueeze(1)  # (T, 1)
    even = torch.arange(0, d_model, 2, dtype=torch.float64)                    # (ceil(d/2),)
    frequency = torch.exp(-math.log(base) * even / d_model)                    # base**(-2i/d)
    angle = position * frequency                                               # (T, ceil(d/2))

    pe = torch.zeros(context_length, d_model, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(angle)
    pe[:, 1::2] = torch.cos(angle[:, : d_model // 2])
    return pe.to(dtype)


class SinusoidalPositionalEncoding(nn.Module):
    """Fixed sinusoids for positions ``0 .. context_length - 1``; no parameters."""

    def __init__(self, context_length: int, d_model: int, base: float = 10000.0):
        super().__init__()
        self.context_length = context_length
        self.register_buffer("pe", sinusoidal_encoding(context_length, d_model, base),
                             persistent=False)

    def forward(self, T: int, start: int = 0) -> torch.Tensor:
        """Encodings of positions ``start .. start + T - 1``, shape (T, d_model)."""
        _check_positions(T, start, self.context_length)
        return self.pe[start:start + T]


class LearnedPositionalEmbedding(nn.Module):
    """A learned vector per position, as in GPT: flexible, but cannot go past the table."""

    def __init__(self, context_length: int, d_model: int):
        super().__init__()
        self.context_length = context_length
        self.weight = nn.Parameter(torch.randn(context_length, d_model) * 0.02)

    def forward(self, T: int, start: int = 0) -> torch.Tensor:
        """Embeddings of positions ``start .. start + T - 1``, shape (T, d_model)."""
        _check_positions(T, start, self.context_length)
        return self.weight[start:start + T]


def _check_positions(T: int, start: int, context_length: int) -> None:
    if start < 0 or start + T > context_length:
        raise ValueError(
            f"positions {start}..{start + T - 1} do not fit a context of {context_length} "
            "positions; crop the input to the last context_length tokens"
        )
