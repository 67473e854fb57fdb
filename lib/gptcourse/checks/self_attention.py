"""Checks for chapter 03, self-attention.

The exercises: the score matrix, a numerically stable softmax, scaled dot-product attention
returning outputs and weights, and self-attention of a sentence through its own query, key
and value projections. Every wrong variant below has been seen in public code.

Every case of one exercise lets every wrong variant run without an error (square score
matrices where a variant would transpose them, ``T != d_k`` where a variant would confuse
the two), so that a learner who made one of these mistakes is told which one.
"""

import math
from typing import Any

import torch

from gptcourse import attention as ref
from gptcourse.checks import Case, Exercise, Mistake, compare_outputs, register

CHAPTER = "03-self-attention"

NEG_INF = float("-inf")


def compare_allowing_nan(expected: Any, actual: Any) -> str | None:
    """Like :func:`compare_outputs`, but NaN in ``expected`` matches NaN in ``actual``.

    The references never return NaN, so this only matters when a learner's answer is
    compared with a wrong variant that does (a softmax that overflows, a fully masked row):
    the same NaNs in the same places then count as the same answer.
    """
    if isinstance(expected, (tuple, list)) and isinstance(actual, (tuple, list)):
        if len(expected) != len(actual):
            return compare_outputs(expected, actual)
        for e, a in zip(expected, actual):
            message = compare_allowing_nan(e, a)
            if message:
                return message
        return None
    if (isinstance(expected, torch.Tensor) and isinstance(actual, torch.Tensor)
            and expected.dtype.is_floating_point and actual.dtype.is_floating_point
            and expected.shape == actual.shape):
        expected_nan = torch.isnan(expected)
        if expected_nan.any():
            if not torch.equal(expected_nan, torch.isnan(actual)):
                return "NaN in other places than expected"
            return compare_outputs(expected.masked_fill(expected_nan, 0.0),
                                   actual.masked_fill(expected_nan, 0.0))
    return compare_outputs(expected, actual)


def _randn(g: torch.Generator, *shape: int, dtype=torch.float32, scale: float = 1.0):
    return torch.randn(*shape, generator=g, dtype=dtype) * scale


# -- exercise 1: the score matrix --------------------------------------------------------

def _scores_visible():
    g = torch.Generator().manual_seed(301)
    return [
        Case("4 queries and 4 keys, d_k=8 (no batch)", (_randn(g, 4, 8), _randn(g, 4, 8))),
        Case("a batch of 2, 5 tokens, d_k=16", (_randn(g, 2, 5, 16), _randn(g, 2, 5, 16))),
    ]


def _scores_hidden():
    g = torch.Generator().manual_seed(302)
    return [
        Case("float64, a batch of 3, 7 tokens, d_k=5",
             (_randn(g, 3, 7, 5, dtype=torch.float64), _randn(g, 3, 7, 5, dtype=torch.float64))),
        Case("two batch dimensions (2, 3), 4 tokens, d_k=6",
             (_randn(g, 2, 3, 4, 6), _randn(g, 2, 3, 4, 6))),
        Case("a single token, d_k=12", (_randn(g, 1, 12), _randn(g, 1, 12))),
    ]


def _scores_unscaled(q, k):
    return q @ k.transpose(-2, -1)


def _scores_by_d_k(q, k):
    return q @ k.transpose(-2, -1) / q.size(-1)


def _scores_by_sqrt_t(q, k):
    return q @ k.transpose(-2, -1) / math.sqrt(q.size(-2))


def _scores_times_sqrt(q, k):
    return q @ k.transpose(-2, -1) * math.sqrt(q.size(-1))


def _scores_keys_first(q, k):
    return k @ q.transpose(-2, -1) / math.sqrt(q.size(-1))


_UNSCALED = ("Your scores are not divided by sqrt(d_k). Without it their spread grows with "
             "d_k and the softmax saturates; divide q @ k^T by math.sqrt(d_k), where d_k is "
             "q.size(-1).")
_BY_D_K = ("Your scores are divided by d_k instead of sqrt(d_k): that shrinks them too much. "
           "Use math.sqrt(q.size(-1)).")
_BY_SQRT_T = ("Your scores are divided by the square root of the number of tokens, not of "
              "d_k: q.shape[1] or q.size(-2) is T. d_k is the LAST dimension, q.size(-1).")
_TIMES_SQRT = ("Your scores are multiplied by sqrt(d_k) instead of divided by it: "
               "q @ k^T / math.sqrt(d_k).")
_KEYS_FIRST = ("Your score matrix is transposed: you computed k @ q^T, so row i holds key i "
               "against every query. Row i must be query i against every key: q @ k^T.")

register(Exercise(
    id="attention_scores",
    chapter=CHAPTER,
    title="Exercise 1: the score matrix",
    reference=ref.attention_scores,
    visible=_scores_visible,
    hidden=_scores_hidden,
    mistakes=(
        Mistake("unscaled", _UNSCALED, _scores_unscaled),
        Mistake("divided by d_k", _BY_D_K, _scores_by_d_k),
        Mistake("divided by sqrt(T)", _BY_SQRT_T, _scores_by_sqrt_t),
        Mistake("multiplied by sqrt(d_k)", _TIMES_SQRT, _scores_times_sqrt),
        Mistake("k @ q^T", _KEYS_FIRST, _scores_keys_first),
    ),
    forbidden=("gptcourse.attention.attention_scores",),
))


# -- exercise 2: a numerically stable softmax --------------------------------------------

def _big_and_small(dtype=torch.float32):
    # Row 0 overflows a naive exp, row 1 underflows it; subtracting the maximum of the
    # whole tensor instead of each row's also turns row 1 into 0 / 0.
    return torch.tensor([[1000.0, 999.0, 998.0, 990.0],
                         [-1000.0, -999.0, -998.0, -1001.0],
                         [0.5, -0.5, 1.5, 0.0],
                         [3.0, 2.0, 1.0, 0.0]], dtype=dtype)


def _with_masked_rows(dtype=torch.float32):
    return torch.tensor([[1.0, 2.0, 3.0, 4.0],
                         [NEG_INF, NEG_INF, NEG_INF, NEG_INF],
                         [0.0, NEG_INF, 1.0, NEG_INF],
                         [-2.0, 5.0, NEG_INF, 0.0]], dtype=dtype)


def _softmax_visible():
    g = torch.Generator().manual_seed(311)
    return [
        Case("a (4, 4) matrix of scores, over the last dimension", (_randn(g, 4, 4),)),
        Case("scores near +1000 and -1000 (exp alone overflows or underflows)",
             (_big_and_small(),)),
        Case("a row where every score is -inf (a fully masked row)", (_with_masked_rows(),)),
        Case("dim=0 of a (3, 4) matrix", (_randn(g, 3, 4, scale=2.0),), {"dim": 0}),
    ]


def _softmax_hidden():
    g = torch.Generator().manual_seed(312)
    big = torch.cat([_big_and_small(torch.float64), _randn(g, 2, 4, dtype=torch.float64)])
    masked = torch.stack([_with_masked_rows(), _randn(g, 4, 4, scale=3.0)])   # (2, 4, 4)
    return [
        Case("float64 scores near +-1000, over the last dimension", (big,)),
        Case("a batch of two (4, 4) matrices, one with a fully masked row", (masked,)),
        Case("dim=1 of a (2, 5, 3) tensor", (_randn(g, 2, 5, 3, scale=4.0),), {"dim": 1}),
        Case("dim=0 of a (6, 2) matrix with a masked column",
             (torch.cat([_randn(g, 6, 1), torch.full((6, 1), NEG_INF)], dim=1),), {"dim": 0}),
    ]


def _softmax_naive(x, dim=-1):
    exp = torch.exp(x)
    return exp / exp.sum(dim=dim, keepdim=True)


def _softmax_global_max(x, dim=-1):
    exp = torch.exp(x - x.max())
    return exp / exp.sum(dim=dim, keepdim=True)


def _softmax_nan_on_masked_rows(x, dim=-1):
    exp = torch.exp(x - x.amax(dim=dim, keepdim=True))
    return exp / exp.sum(dim=dim, keepdim=True)


def _softmax_ignores_dim(x, dim=-1):
    return ref.softmax(x, dim=-1)


def _softmax_first_dim(x, dim=-1):
    return ref.softmax(x, dim=0)


_NAIVE = ("Your softmax overflows: exp(1000) is inf in float32 and inf / inf is NaN (and "
          "exp(-1000) is 0, so 0 / 0). Subtract each row's maximum before exp: softmax does "
          "not change when a whole row is shifted by a constant.")
_GLOBAL_MAX = ("You subtract the maximum of the whole tensor, not of each row: a row far "
               "below the overall maximum becomes exp(...) = 0 everywhere and 0 / 0 is NaN. "
               "Use x.amax(dim=dim, keepdim=True).")
_NAN_ROWS = ("Your softmax returns NaN for a row where every score is -inf (a fully masked "
             "row): its maximum is -inf and -inf - (-inf) is NaN (torch.softmax does the "
             "same). Give such rows weight 0 everywhere, e.g. replace a maximum of -inf by 0 "
             "before subtracting it and never divide by a sum of 0.")
_IGNORES_DIM = ("Your softmax ignores its `dim` argument and always works along the last "
                "dimension. Use dim in the max, in the exp's sum and in keepdim=True.")
_FIRST_DIM = ("Your softmax is taken over the wrong dimension (the first one): the weights "
              "must sum to 1 along `dim`, which is the last dimension by default.")

register(Exercise(
    id="softmax",
    chapter=CHAPTER,
    title="Exercise 2: a numerically stable softmax",
    reference=ref.softmax,
    visible=_softmax_visible,
    hidden=_softmax_hidden,
    compare=compare_allowing_nan,
    mistakes=(
        Mistake("naive exp overflows", _NAIVE, _softmax_naive),
        Mistake("maximum of the whole tensor", _GLOBAL_MAX, _softmax_global_max),
        Mistake("NaN on fully masked rows", _NAN_ROWS, _softmax_nan_on_masked_rows),
        Mistake("dim ignored", _IGNORES_DIM, _softmax_ignores_dim),
        Mistake("over the first dimension", _FIRST_DIM, _softmax_first_dim),
    ),
    forbidden=("gptcourse.attention.softmax",),
))


# -- exercise 3: scaled dot-product attention ---------------------------------------------

def _attention_visible():
    g = torch.Generator().manual_seed(321)
    return [
        Case("5 tokens, d_k=8, d_v=6 (no batch)",
             (_randn(g, 5, 8), _randn(g, 5, 8), _randn(g, 5, 6))),
        Case("a batch of 2, 4 tokens, d_k=d_v=16",
             (_randn(g, 2, 4, 16), _randn(g, 2, 4, 16), _randn(g, 2, 4, 16))),
    ]


def _attention_hidden():
    g = torch.Generator().manual_seed(322)
    f64 = torch.float64
    return [
        Case("float64, a batch of 3, 6 tokens, d_k=4, d_v=5",
             (_randn(g, 3, 6, 4, dtype=f64), _randn(g, 3, 6, 4, dtype=f64),
              _randn(g, 3, 6, 5, dtype=f64))),
        Case("two batch dimensions (2, 2), 7 tokens, d_k=d_v=3",
             (_randn(g, 2, 2, 7, 3), _randn(g, 2, 2, 7, 3), _randn(g, 2, 2, 7, 3))),
        Case("3 tokens with large scores, d_k=32, d_v=2",
             (_randn(g, 3, 32, scale=3.0), _randn(g, 3, 32, scale=3.0), _randn(g, 3, 2))),
    ]


def _sdpa(q, k, v, scale, keys_first=False, dim=-1):
    scores = (k @ q.transpose(-2, -1)) if keys_first else (q @ k.transpose(-2, -1))
    weights = ref.softmax(scores / scale, dim=dim)
    return weights @ v, weights


def _attention_unscaled(q, k, v):
    return _sdpa(q, k, v, 1.0)


def _attention_by_d_k(q, k, v):
    return _sdpa(q, k, v, q.size(-1))


def _attention_softmax_over_queries(q, k, v):
    return _sdpa(q, k, v, math.sqrt(q.size(-1)), dim=-2)


def _attention_weights_transposed(q, k, v):
    out, weights = ref.scaled_dot_product_attention(q, k, v)
    return out, weights.transpose(-2, -1)


def _attention_keys_first(q, k, v):
    return _sdpa(q, k, v, math.sqrt(q.size(-1)), keys_first=True)


def _attention_swapped(q, k, v):
    out, weights = ref.scaled_dot_product_attention(q, k, v)
    return weights, out


def _attention_output_only(q, k, v):
    return ref.scaled_dot_product_attention(q, k, v)[0]


_SOFTMAX_DIM = ("Your softmax is taken over the queries (dim=-2) instead of the keys "
                "(dim=-1): each ROW of the weights, one query, must sum to 1.")
_TRANSPOSED = ("Your output is right but the weights you return are transposed: "
               "weights[..., i, j] must be how much query i looks at key j (shape "
               "(..., T_q, T_k)). Return the matrix you multiplied v with.")
_SWAPPED = ("You return (weights, output); return (output, weights), in that order.")
_OUTPUT_ONLY = ("You return only the output; return a tuple (output, weights) so that the "
                "weights can be plotted and checked.")

register(Exercise(
    id="scaled_dot_product_attention",
    chapter=CHAPTER,
    title="Exercise 3: scaled dot-product attention",
    reference=ref.scaled_dot_product_attention,
    visible=_attention_visible,
    hidden=_attention_hidden,
    mistakes=(
        Mistake("unscaled", _UNSCALED, _attention_unscaled),
        Mistake("divided by d_k", _BY_D_K, _attention_by_d_k),
        Mistake("softmax over the queries", _SOFTMAX_DIM, _attention_softmax_over_queries),
        Mistake("weights transposed", _TRANSPOSED, _attention_weights_transposed),
        Mistake("k @ q^T", _KEYS_FIRST, _attention_keys_first),
        Mistake("(weights, output)", _SWAPPED, _attention_swapped),
        Mistake("weights not returned", _OUTPUT_ONLY, _attention_output_only),
    ),
    forbidden=("gptcourse.attention.scaled_dot_product_attention",
               "gptcourse.attention.attention_scores", "gptcourse.attention.softmax"),
))


# -- exercise 4: self-attention of a sentence through Q/K/V projections ------------------

def self_attention(x: torch.Tensor, w_q: torch.Tensor, w_k: torch.Tensor, w_v: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Self-attention of a sequence through its own projections.

    x (..., T, d_model); w_q, w_k (d_model, d_head); w_v (d_model, d_v).
    Returns (output (..., T, d_v), weights (..., T, T)), scores scaled by sqrt(d_head).
    """
    q, k, v = x @ w_q, x @ w_k, x @ w_v                              # (..., T, d_head)
    return ref.scaled_dot_product_attention(q, k, v)


def _projection_case(g, label, batch, T, d_model, d_head, d_v=None, dtype=torch.float32):
    d_v = d_head if d_v is None else d_v
    x = _randn(g, *batch, T, d_model, dtype=dtype)
    # Weights scaled like nn.Linear's initialisation keep q and k of order 1.
    scale = 1.5 / math.sqrt(d_model)
    w_q, w_k = (_randn(g, d_model, d_head, dtype=dtype, scale=scale) for _ in range(2))
    w_v = _randn(g, d_model, d_v, dtype=dtype, scale=scale)
    return Case(label, (x, w_q, w_k, w_v))


def _projection_visible():
    g = torch.Generator().manual_seed(331)
    return [
        _projection_case(g, "a 6-token sentence, d_model=8, d_head=4", (), 6, 8, 4),
        _projection_case(g, "a batch of 2 sentences of 5 tokens, d_model=12, d_head=3, d_v=5",
                         (2,), 5, 12, 3, d_v=5),
    ]


def _projection_hidden():
    g = torch.Generator().manual_seed(332)
    return [
        _projection_case(g, "float64, a batch of 3, 7 tokens, d_model=10, d_head=5, d_v=4",
                         (3,), 7, 10, 5, d_v=4, dtype=torch.float64),
        _projection_case(g, "one sentence of 9 tokens, d_model=16, d_head=2", (1,), 9, 16, 2),
    ]


def _self_attention_by_d_model(x, w_q, w_k, w_v):
    q, k, v = x @ w_q, x @ w_k, x @ w_v
    weights = ref.softmax(q @ k.transpose(-2, -1) / math.sqrt(x.size(-1)), dim=-1)
    return weights @ v, weights


def _self_attention_by_d_v(x, w_q, w_k, w_v):
    return _sdpa(x @ w_q, x @ w_k, x @ w_v, math.sqrt(w_v.size(-1)))


def _self_attention_unscaled(x, w_q, w_k, w_v):
    return _sdpa(x @ w_q, x @ w_k, x @ w_v, 1.0)


def _self_attention_q_k_swapped(x, w_q, w_k, w_v):
    return ref.scaled_dot_product_attention(x @ w_k, x @ w_q, x @ w_v)


def _self_attention_values_from_keys(x, w_q, w_k, w_v):
    return ref.scaled_dot_product_attention(x @ w_q, x @ w_k, x @ w_k)


def _self_attention_swapped(x, w_q, w_k, w_v):
    out, weights = self_attention(x, w_q, w_k, w_v)
    return weights, out


_BY_D_MODEL = ("Your scores are divided by sqrt(d_model) (x.size(-1)) instead of "
               "sqrt(d_head): the scale belongs to the vectors that are multiplied, q and k, "
               "whose size is w_q.size(-1).")
_BY_D_V = ("Your scores are divided by sqrt(d_v), the size of the values: the scale belongs "
           "to the vectors that are multiplied, q and k, whose size is w_q.size(-1).")
_Q_K_SWAPPED = ("Queries and keys are swapped: you project the queries with w_k and the keys "
                "with w_q, which transposes the scores. q = x @ w_q, k = x @ w_k.")
_VALUES_FROM_KEYS = ("Your values are made with w_k: each of q, k and v has its own "
                     "projection, v = x @ w_v.")

register(Exercise(
    id="self_attention",
    chapter=CHAPTER,
    title="Exercise 4: self-attention of a sentence",
    reference=self_attention,
    visible=_projection_visible,
    hidden=_projection_hidden,
    mistakes=(
        Mistake("divided by sqrt(d_model)", _BY_D_MODEL, _self_attention_by_d_model),
        Mistake("divided by sqrt(d_v)", _BY_D_V, _self_attention_by_d_v),
        Mistake("unscaled", _UNSCALED, _self_attention_unscaled),
        Mistake("queries and keys swapped", _Q_K_SWAPPED, _self_attention_q_k_swapped),
        Mistake("values from w_k", _VALUES_FROM_KEYS, _self_attention_values_from_keys),
        Mistake("(weights, output)", _SWAPPED, _self_attention_swapped),
    ),
    forbidden=("gptcourse.attention.scaled_dot_product_attention",
               "gptcourse.attention.attention_scores", "gptcourse.attention.softmax",
               "gptcourse.attention.AttentionHead",
               "gptcourse.checks.self_attention.self_attention"),
))
