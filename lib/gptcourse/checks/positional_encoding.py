"""Checks for chapter 02, positional encoding.

The exercises: the two sides of the permutation-equivariance test (shuffle then attend,
attend then shuffle), the sinusoidal encoding matrix, and adding positions to token
embeddings. Each comes with the classic wrong versions, so that a failing check can say
which one the learner wrote.
"""

import math

import torch

from gptcourse import embeddings as ref
from gptcourse.checks import Case, Exercise, Mistake, compare_outputs, register

CHAPTER = "02-positional-encoding"


# -- permutation equivariance -----------------------------------------------------------

def equivariance_pair(attend, x: torch.Tensor, perm: torch.Tensor):
    """attend maps (B, T, d_model) -> (B, T, d_model); x (B, T, d_model); perm (T,) int64.

    Returns ``(attend(x[:, perm]), attend(x)[:, perm])``: shuffle the tokens then attend, and
    attend then shuffle the outputs. They are equal exactly when ``attend`` is
    permutation-equivariant for this shuffle.
    """
    shuffled_first = attend(x[:, perm])  # (B, T, d_model)
    shuffled_after = attend(x)[:, perm]  # (B, T, d_model)
    return shuffled_first, shuffled_after


def _make_attend(w_q, w_k, w_v, pe=None, causal=False):
    """A bare self-attention layer from plain tensors, optionally with positions or a mask."""

    def attend(x):
        if pe is not None:
            x = x + pe[: x.shape[-2]]  # (B, T, d_model)
        q, k, v = x @ w_q, x @ w_k, x @ w_v
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, T, T)
        if causal:
            T = x.shape[-2]
            above = torch.ones(T, T, dtype=torch.bool).triu(1)
            scores = scores.masked_fill(above, float("-inf"))
        return torch.softmax(scores, dim=-1) @ v  # (B, T, d_model)

    return attend


def _run_equivariance(candidate, case):
    """Build the attention function the case describes and hand it to the candidate."""
    kw = case.kwargs
    attend = _make_attend(kw["w_q"], kw["w_k"], kw["w_v"], kw.get("pe"), kw.get("causal", False))
    return candidate(attend, kw["x"].clone(), kw["perm"].clone())


def _attention_case(label, g, B, T, d_model, perm, dtype=torch.float32, positions=False,
                    causal=False):
    weights = {name: torch.randn(d_model, d_model, generator=g, dtype=dtype) / math.sqrt(d_model)
               for name in ("w_q", "w_k", "w_v")}
    kwargs = {"x": torch.randn(B, T, d_model, generator=g, dtype=dtype),
              "perm": torch.tensor(perm), **weights}
    if positions:
        kwargs["pe"] = ref.sinusoidal_encoding(T, d_model, dtype=dtype) * 2.0
    if causal:
        kwargs["causal"] = True
    return Case(label, (), kwargs)


def _equivariance_visible():
    g = torch.Generator().manual_seed(501)
    return [
        _attention_case("self-attention without positions, B=2, T=5, d_model=4, "
                        "perm=[2, 0, 4, 1, 3]", g, 2, 5, 4, [2, 0, 4, 1, 3]),
        _attention_case("self-attention WITH sinusoidal positions added, B=2, T=5, d_model=4",
                        g, 2, 5, 4, [1, 3, 0, 4, 2], positions=True),
    ]


def _equivariance_hidden():
    g = torch.Generator().manual_seed(502)
    return [
        _attention_case("float64 self-attention without positions, B=3, T=7, d_model=6",
                        g, 3, 7, 6, [6, 2, 5, 0, 1, 3, 4], dtype=torch.float64),
        _attention_case("causal self-attention (not equivariant), B=1, T=6, d_model=8",
                        g, 1, 6, 8, [3, 5, 1, 0, 2, 4], causal=True),
        _attention_case("self-attention with positions, B=2, T=4, d_model=6",
                        g, 2, 4, 6, [1, 2, 3, 0], positions=True),
    ]


def _pair_not_reshuffled(attend, x, perm):
    return attend(x[:, perm]), attend(x)


def _pair_inverse(attend, x, perm):
    return attend(x[:, perm]), attend(x)[:, torch.argsort(perm)]


def _pair_both_after(attend, x, perm):
    out = attend(x)[:, perm]
    return out, out.clone()


def _pair_swapped(attend, x, perm):
    return attend(x)[:, perm], attend(x[:, perm])


register(Exercise(
    id="equivariance_pair",
    chapter=CHAPTER,
    title="Exercise 1: shuffle then attend, attend then shuffle",
    reference=equivariance_pair,
    visible=_equivariance_visible,
    hidden=_equivariance_hidden,
    run=_run_equivariance,
    mistakes=(
        Mistake("outputs not shuffled",
                "Your second tensor is attend(x) without the shuffle. Shuffle the outputs "
                "the same way as the inputs: attend(x)[:, perm].",
                _pair_not_reshuffled),
        Mistake("inverse permutation",
                "You shuffled the outputs with the inverse permutation (argsort(perm)). "
                "Shuffling the inputs by perm should move the outputs by perm too: "
                "attend(x)[:, perm].",
                _pair_inverse),
        Mistake("attend(x) on both sides",
                "Both of your tensors are attend(x)[:, perm], so they are always equal and "
                "prove nothing. The first one must attend to the shuffled input: "
                "attend(x[:, perm]).",
                _pair_both_after),
        Mistake("pair swapped",
                "Your two tensors are in the wrong order. Return "
                "(attend(x[:, perm]), attend(x)[:, perm]): shuffled-then-attended first.",
                _pair_swapped),
    ),
    forbidden=("gptcourse.checks.positional_encoding.equivariance_pair",),
))


# -- sinusoidal encoding ----------------------------------------------------------------

def _angles(context_length, d_model, base=10000.0, exponent=None, start=0):
    """(T, ceil(d_model / 2)) angles, one column per sine/cosine pair, in float64."""
    position = torch.arange(start, start + context_length, dtype=torch.float64)[:, None]
    pair = torch.arange((d_model + 1) // 2, dtype=torch.float64)  # i
    if exponent is None:
        exponent = 2 * pair / d_model
    return position / base ** exponent


def _interleave(sines, cosines, d_model):
    pe = torch.zeros(sines.shape[0], d_model, dtype=torch.float64)
    pe[:, 0::2] = sines
    pe[:, 1::2] = cosines[:, : d_model // 2]
    return pe.float()


def _pe_concatenated(context_length, d_model, base=10000.0):
    angle = _angles(context_length, d_model, base)
    return torch.cat([angle.sin(), angle.cos()[:, : d_model // 2]], dim=-1).float()


def _pe_swapped(context_length, d_model, base=10000.0):
    angle = _angles(context_length, d_model, base)
    return _interleave(angle.cos(), angle.sin(), d_model)


def _pe_i_not_2i(context_length, d_model, base=10000.0):
    pair = torch.arange((d_model + 1) // 2, dtype=torch.float64)
    angle = _angles(context_length, d_model, base, exponent=pair / d_model)
    return _interleave(angle.sin(), angle.cos(), d_model)


def _pe_unpaired(context_length, d_model, base=10000.0):
    dim = torch.arange(d_model, dtype=torch.float64)
    position = torch.arange(context_length, dtype=torch.float64)[:, None]
    angle = position / base ** (dim / d_model)  # every dimension its own frequency
    pe = angle.sin()
    pe[:, 1::2] = angle[:, 1::2].cos()
    return pe.float()


def _pe_base_1000(context_length, d_model, base=10000.0):
    angle = _angles(context_length, d_model, 1000.0)
    return _interleave(angle.sin(), angle.cos(), d_model)


def _pe_from_one(context_length, d_model, base=10000.0):
    angle = _angles(context_length, d_model, base, start=1)
    return _interleave(angle.sin(), angle.cos(), d_model)


# Beyond this many radians, float32 rounding of the angle alone can move a sine by more than
# the tolerance (from about 150 radians on), so a wrong variant's entries there are unknown.
_LARGEST_COMPARABLE_ANGLE = 50.0


def _pe_inverted(context_length, d_model, base=10000.0):
    pair = torch.arange((d_model + 1) // 2, dtype=torch.float64)
    position = torch.arange(context_length, dtype=torch.float64)[:, None]
    angle = position * base ** (2 * pair / d_model)  # multiplied where it should divide
    pe = _interleave(angle.sin(), angle.cos(), d_model)
    unknown = _interleave(angle, angle, d_model) > _LARGEST_COMPARABLE_ANGLE
    return pe.masked_fill(unknown, float("nan"))


def _pe_base_ignored(context_length, d_model, base=10000.0):
    return ref.sinusoidal_encoding(context_length, d_model)


def _compare_encodings(expected, actual):
    """Like :func:`compare_outputs`, but NaN in ``expected`` marks entries not compared.

    The reference never holds NaN. A wrong variant does where its angles are so large that a
    learner's float32 version of the same mistake would differ from it by rounding alone.
    """
    if (isinstance(expected, torch.Tensor) and isinstance(actual, torch.Tensor)
            and expected.dtype.is_floating_point and actual.dtype == expected.dtype
            and actual.shape == expected.shape):
        unknown = torch.isnan(expected)
        if unknown.any():
            return compare_outputs(expected.masked_fill(unknown, 0.0),
                                   actual.masked_fill(unknown, 0.0))
    return compare_outputs(expected, actual)


def _pe_log10(context_length, d_model, base=10000.0):
    pair = torch.arange((d_model + 1) // 2, dtype=torch.float64)
    position = torch.arange(context_length, dtype=torch.float64)[:, None]
    angle = position * torch.exp(-2 * pair * math.log10(base) / d_model)
    return _interleave(angle.sin(), angle.cos(), d_model)


def _pe_context_length_in_exponent(context_length, d_model, base=10000.0):
    pair = torch.arange((d_model + 1) // 2, dtype=torch.float64)
    angle = _angles(context_length, d_model, base, exponent=2 * pair / context_length)
    return _interleave(angle.sin(), angle.cos(), d_model)


def _pe_no_d_model(context_length, d_model, base=10000.0):
    pair = torch.arange((d_model + 1) // 2, dtype=torch.float64)
    angle = _angles(context_length, d_model, base, exponent=2 * pair)
    return _interleave(angle.sin(), angle.cos(), d_model)


def _sinusoidal_reference(context_length, d_model, base=10000.0):
    return ref.sinusoidal_encoding(context_length, d_model, base)


def _sinusoidal_visible():
    return [
        Case("context_length=8, d_model=16", (8, 16)),
        Case("context_length=50, d_model=6", (50, 6)),
        Case("an odd d_model: context_length=12, d_model=7", (12, 7)),
        Case("base=100, context_length=10, d_model=8", (10, 8), {"base": 100.0}),
    ]


def _sinusoidal_hidden():
    return [
        Case("context_length=64, d_model=32", (64, 32)),
        Case("an odd d_model: context_length=9, d_model=11", (9, 11)),
        Case("context_length=1, d_model=4", (1, 4)),
        Case("base=500, context_length=20, d_model=10", (20, 10), {"base": 500.0}),
    ]


register(Exercise(
    id="sinusoidal_encoding",
    chapter=CHAPTER,
    title="Exercise 2: the sinusoidal encoding matrix",
    reference=_sinusoidal_reference,
    visible=_sinusoidal_visible,
    hidden=_sinusoidal_hidden,
    compare=_compare_encodings,
    mistakes=(
        Mistake("concatenated",
                "You put all the sines first and all the cosines after them "
                "(concatenated). They must be interleaved: sine in the even columns "
                "pe[:, 0::2], cosine in the odd columns pe[:, 1::2].",
                _pe_concatenated),
        Mistake("sin and cos swapped",
                "Sine and cosine are swapped: the even columns (0, 2, 4, ...) hold the sine "
                "and the odd columns (1, 3, 5, ...) the cosine.",
                _pe_swapped),
        Mistake("i instead of 2i",
                "Your exponent uses the pair index i instead of 2i: the frequency of pair i "
                "is 1 / base**(2i / d_model). Check the exponent (or use the even column "
                "numbers 0, 2, 4, ... directly).",
                _pe_i_not_2i),
        Mistake("dimensions not paired",
                "Every column has its own frequency. The sine in column 2i and the cosine "
                "in column 2i + 1 share one frequency, 1 / base**(2i / d_model): use the "
                "even column number for both.",
                _pe_unpaired),
        Mistake("base 1000",
                "Your wavelengths use base 1000. Use the base argument (10000 by default).",
                _pe_base_1000),
        Mistake("base ignored",
                "Your matrix ignores the base argument and always uses 10000. Use base in "
                "the frequencies: 1 / base**(2i / d_model).",
                _pe_base_ignored),
        Mistake("positions start at 1",
                "Your positions start at 1. The first token is position 0, so the first row "
                "is sin(0) = 0 and cos(0) = 1 alternating: use torch.arange(context_length).",
                _pe_from_one),
        Mistake("multiplied by the wavelength",
                "You multiplied the position by base**(2i / d_model) instead of dividing "
                "by it, so the later columns turn faster instead of slower.",
                _pe_inverted),
        Mistake("log10 inside exp",
                "Your frequencies use math.log10 inside torch.exp. The exponential undoes "
                "the natural logarithm: exp(-2i * math.log(base) / d_model) equals "
                "1 / base**(2i / d_model).",
                _pe_log10),
        Mistake("context_length in the exponent",
                "Your exponent divides by context_length. It is 2i / d_model: the "
                "frequencies depend on the width of the vectors, not on how many "
                "positions there are.",
                _pe_context_length_in_exponent),
        Mistake("d_model missing from the exponent",
                "Your exponent is 2i instead of 2i / d_model, so every column after the "
                "first is almost constant. Divide the exponent by d_model.",
                _pe_no_d_model),
    ),
    forbidden=("gptcourse.embeddings.sinusoidal_encoding",),
))


# -- adding positions to token embeddings -----------------------------------------------

def embed_with_positions(idx: torch.Tensor, token_weight: torch.Tensor,
                         pe: torch.Tensor) -> torch.Tensor:
    """idx (B, T) int64, token_weight (V, d_model), pe (context_length, d_model) with
    context_length >= T -> (B, T, d_model): token vectors plus the vectors of positions
    0 .. T - 1."""
    T = idx.shape[-1]
    return token_weight[idx] + pe[:T]  # (B, T, d_model) + (T, d_model) broadcasts over B


def _embed_case(label, g, B, T, vocab_size, d_model, context_length, dtype=torch.float32,
                learned=False):
    idx = torch.randint(0, vocab_size, (B, T), generator=g)
    token_weight = torch.randn(vocab_size, d_model, generator=g, dtype=dtype)
    if learned:
        pe = torch.randn(context_length, d_model, generator=g, dtype=dtype)
    else:
        pe = ref.sinusoidal_encoding(context_length, d_model, dtype=dtype)
    return Case(label, (idx, token_weight, pe))


def _embed_visible():
    g = torch.Generator().manual_seed(601)
    return [
        _embed_case("B=2, T=5, vocab_size=6, d_model=4, a sinusoidal table of 8 positions",
                    g, 2, 5, 6, 4, 8),
        _embed_case("B=1, T=3, vocab_size=10, d_model=6, a learned table of 16 positions",
                    g, 1, 3, 10, 6, 16, learned=True),
    ]


def _embed_hidden():
    g = torch.Generator().manual_seed(602)
    return [
        _embed_case("float64, B=3, T=9, vocab_size=12, d_model=8, 12 positions",
                    g, 3, 9, 12, 8, 12, dtype=torch.float64),
        _embed_case("B=2, T=1, vocab_size=5, d_model=3, 4 learned positions",
                    g, 2, 1, 5, 3, 4, learned=True),
        _embed_case("B=4, T=7, vocab_size=7, d_model=10, 20 positions", g, 4, 7, 7, 10, 20),
    ]


def _embed_multiplied(idx, token_weight, pe):
    return token_weight[idx] * pe[: idx.shape[-1]]


def _embed_concatenated(idx, token_weight, pe):
    tokens = token_weight[idx]
    positions = pe[: idx.shape[-1]].expand_as(tokens)
    return torch.cat([tokens, positions], dim=-1)


def _embed_scaled(idx, token_weight, pe):
    return token_weight[idx] * math.sqrt(token_weight.shape[-1]) + pe[: idx.shape[-1]]


def _embed_from_one(idx, token_weight, pe):
    T = idx.shape[-1]
    return token_weight[idx] + pe[1:T + 1]


def _embed_pe_by_token(idx, token_weight, pe):
    return token_weight[idx] + pe[idx]


register(Exercise(
    id="embed_with_positions",
    chapter=CHAPTER,
    title="Exercise 3: add positions to token embeddings",
    reference=embed_with_positions,
    visible=_embed_visible,
    hidden=_embed_hidden,
    mistakes=(
        Mistake("multiplied",
                "You multiplied the token vectors by the position vectors. Add them: "
                "token_weight[idx] + pe[:T].",
                _embed_multiplied),
        Mistake("concatenated",
                "You concatenated token and position vectors, which doubles the width to "
                "2 * d_model. Add them instead, so the result stays (B, T, d_model).",
                _embed_concatenated),
        Mistake("scaled by sqrt(d_model)",
                "You scaled the token vectors by sqrt(d_model), as the original Transformer "
                "paper does. This course follows GPT and adds them unscaled.",
                _embed_scaled),
        Mistake("positions start at 1",
                "You took the position vectors of rows 1 .. T. The first token sits at "
                "position 0: use pe[:T].",
                _embed_from_one),
        Mistake("positions looked up by token id",
                "You looked up the position table with the token ids (pe[idx]). A token's "
                "position is where it stands in the sequence, 0 .. T - 1: use pe[:T].",
                _embed_pe_by_token),
    ),
    forbidden=("gptcourse.checks.positional_encoding.embed_with_positions",),
))
