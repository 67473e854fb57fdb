"""Floor 3: masked multi-head self-attention.

Each token asks a question (its query), every token offers a label (its key) and a content
(its value). The dot product of a query with each key says how well they align; a softmax
turns a row of those scores into weights that sum to 1; the weighted sum of the values is
the token's new, context-rich vector. A causal mask stops a token from looking at the
tokens after it, which is what lets a decoder learn to predict the next one.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn


def softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Numerically stable softmax along ``dim``.

    Subtracting the row maximum leaves the result unchanged but keeps ``exp`` from
    overflowing for scores near 1000. A row that is entirely ``-inf`` (every position
    masked) gets weights of 0 instead of the NaN that ``0 / 0`` would give.
    """
    row_max = x.amax(dim=dim, keepdim=True)
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    exp = torch.exp(x - row_max)
    total = exp.sum(dim=dim, keepdim=True)
    return exp / torch.where(total == 0, torch.ones_like(total), total)


def attention_scores(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Scaled alignment of every query with every key.

    q: (..., T_q, d_k), k: (..., T_k, d_k) -> scores (..., T_q, T_k) = q k^T / sqrt(d_k).
    Dividing by sqrt(d_k) keeps the scores' spread near 1 whatever d_k is, so the softmax
    does not saturate into a one-hot vector with vanishing gradients.
    """
    d_k = q.size(-1)
    return q @ k.transpose(-2, -1) / math.sqrt(d_k)


def causal_mask(T: int, dtype: torch.dtype = torch.float32, device=None,
                n_keys: int | None = None) -> torch.Tensor:
    """Additive causal mask: 0 where a query may look, ``-inf`` where it may not.

    Returns (T, n_keys) with ``n_keys`` defaulting to T. With ``n_keys > T`` the queries are
    the last T positions of the ``n_keys`` keys (as when a KV cache holds earlier tokens),
    so query ``i`` may see keys ``0 .. n_keys - T + i``.
    """
    n_keys = T if n_keys is None else n_keys
    if n_keys < T:
        raise ValueError(f"n_keys ({n_keys}) must be at least the number of queries ({T})")
    blocked = torch.full((T, n_keys), float("-inf"), dtype=dtype, device=device)
    return torch.triu(blocked, diagonal=1 + n_keys - T)


def scaled_dot_product_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q k^T / sqrt(d_k) + mask) v, returning the weights too.

    q: (..., T_q, d_k), k: (..., T_k, d_k), v: (..., T_k, d_v).
    mask: additive float tensor broadcastable to (..., T_q, T_k), 0 to keep and ``-inf`` to
    block; a boolean mask is accepted too, True meaning "may attend" (torch's convention).
    Returns (output (..., T_q, d_v), weights (..., T_q, T_k)). A query whose every key is
    masked gets all-zero weights and a zero output.
    """
    scores = attention_scores(q, k)                                   # (..., T_q, T_k)
    if mask is not None:
        if mask.dtype == torch.bool:
            mask = torch.zeros_like(mask, dtype=scores.dtype).masked_fill(~mask, float("-inf"))
        scores = scores + mask
    weights = softmax(scores, dim=-1)                                 # rows sum to 1
    return weights @ v, weights                                       # (..., T_q, d_v)


class AttentionHead(nn.Module):
    """One head of self-attention with its own query, key and value projections."""

    def __init__(self, d_model: int, d_head: int, bias: bool = True):
        super().__init__()
        self.query = nn.Linear(d_model, d_head, bias=bias)
        self.key = nn.Linear(d_model, d_head, bias=bias)
        self.value = nn.Linear(d_model, d_head, bias=bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, d_model) -> (output (B, T, d_head), weights (B, T, T))."""
        q, k, v = self.query(x), self.key(x), self.value(x)          # (B, T, d_head) each
        return scaled_dot_product_attention(q, k, v, mask)


class KVCache:
    """Keys and values of the tokens one attention layer has already seen.

    Shapes (B, n_heads, T_cached, d_head). During generation each step adds one position,
    so attention for the new token costs O(T) instead of recomputing all T positions.
    """

    def __init__(self):
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None

    @property
    def length(self) -> int:
        return 0 if self.keys is None else self.keys.size(2)

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add (B, H, T_new, d_head) keys and values; return all cached ones."""
        if self.keys is None:
            self.keys, self.values = k, v
        else:
            self.keys = torch.cat([self.keys, k], dim=2)
            self.values = torch.cat([self.values, v], dim=2)
        return self.keys, self.values


class MultiHeadAttention(nn.Module):
    """n_heads heads of attention computed together.

    Every head projects ALL d_model input dimensions down to d_head = d_model // n_heads
    (head h uses rows ``h*d_head:(h+1)*d_head`` of each projection matrix); the heads'
    outputs are concatenated and mixed by a final d_model -> d_model projection.
    ``fast=True`` uses torch's fused scaled_dot_product_attention, same result.
    """

    def __init__(self, d_model: int, n_heads: int, bias: bool = True, dropout: float = 0.0,
                 fast: bool = False):
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.d_model, self.n_heads, self.d_head = d_model, n_heads, d_model // n_heads
        self.dropout, self.fast = dropout, fast
        self.query = nn.Linear(d_model, d_model, bias=bias)
        self.key = nn.Linear(d_model, d_model, bias=bias)
        self.value = nn.Linear(d_model, d_model, bias=bias)
        self.out = nn.Linear(d_model, d_model, bias=bias)
        self.weights_dropout = nn.Dropout(dropout)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        return x.view(B, T, self.n_heads, self.d_head).transpose(1, 2)  # (B, H, T, d_head)

    def forward(self, x: torch.Tensor, causal: bool = True, kv_cache: KVCache | None = None,
                return_weights: bool = False):
        """x (B, T, d_model) -> (B, T, d_model); with ``return_weights`` also the attention
        weights (B, n_heads, T, T_k). With a ``kv_cache`` the T new positions attend to the
        cached ones as well (T_k = cached + T)."""
        B, T, _ = x.shape
        q = self._split_heads(self.query(x))                          # (B, H, T, d_head)
        k = self._split_heads(self.key(x))                            # (B, H, T, d_head)
        v = self._split_heads(self.value(x))                          # (B, H, T, d_head)
        if kv_cache is not None:
            k, v = kv_cache.append(k, v)                              # (B, H, T_k, d_head)
        T_k = k.size(2)

        # With a cache the new queries are the last T of T_k positions; a single query
        # may see every cached key, so it needs no mask at all.
        needs_mask = causal and T > 1
        mask = causal_mask(T, x.dtype, x.device, n_keys=T_k) if needs_mask else None
        dropout_p = self.dropout if self.training else 0.0
        if self.fast and not return_weights:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
            weights = None
        else:
            _, weights = scaled_dot_product_attention(q, k, v, mask)  # (B, H, T, T_k)
            y = self.weights_dropout(weights) @ v                     # (B, H, T, d_head)

        # Heads back next to each other: transpose BEFORE merging, or positions mix.
        y = y.transpose(1, 2).contiguous().view(B, T, self.d_model)   # (B, T, d_model)
        y = self.out(y)
        return (y, weights) if return_weights else y
