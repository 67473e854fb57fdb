"""Checks for chapter 04, the causal mask.

The exercises: build the additive causal mask, use a mask in attention (added to the
scores before the softmax, with fully masked rows giving zero weights instead of NaN), and
write a leak test, a function that tells whether an attention layer lets a token see the
tokens after it.

The leak test is graded by handing it attention layers whose answer is known: some that
look ahead (no mask, a transposed mask, the mask applied after the softmax, a peek at the
next token, a leak into position 3 only) and some that do not (a correct causal attention, a
blocked diagonal, one that also adds an earlier token, a layer that sees only the previous
token, a position-wise layer). The layers are built inside :func:`_run_leaks` from their
names, so that cases hold only plain data.

The mask's cases ask for a dtype and for the "meta" device, so that ignoring either
argument shows without a GPU.
"""

import math

import torch

from gptcourse import attention as ref
from gptcourse.checks import Case, Exercise, Mistake, compare_outputs, register
from gptcourse.checks.self_attention import compare_allowing_nan
from gptcourse.tolerances import close

CHAPTER = "04-causal-mask"

NEG_INF = float("-inf")


def _randn(g: torch.Generator, *shape: int, dtype=torch.float32, scale: float = 1.0):
    return torch.randn(*shape, generator=g, dtype=dtype) * scale


# -- exercise 1: the mask ------------------------------------------------------------------

# The "meta" device holds shapes and dtypes but no data. It exists on every computer, so a
# case that asks for it shows whether ``device`` is passed on without needing a GPU.
_META = "meta"


def _mask_visible():
    return [
        Case("T=4", (4,)),
        Case("T=7 (one row per word of 'apples are a type of delicious fruit')", (7,)),
        Case("T=1, a single token", (1,)),
        Case("T=3, dtype=torch.float64", (3,), {"dtype": torch.float64}),
        Case("T=3, device='meta' (a device with shapes but no data: is device passed on?)",
             (3,), {"device": _META}),
    ]


def _mask_hidden():
    return [
        Case("T=2", (2,)),
        Case("T=13", (13,)),
        Case("T=6, dtype=torch.float64", (6,), {"dtype": torch.float64}),
        Case("T=5, dtype=torch.bfloat16", (5,), {"dtype": torch.bfloat16}),
        Case("T=4, dtype=torch.bfloat16, device='meta'", (4,),
             {"dtype": torch.bfloat16, "device": _META}),
    ]


def _run_mask(candidate, case: Case) -> torch.Tensor:
    """Call the candidate on the case.

    Some operations need the data that a meta tensor does not have (``nonzero``, ``.item()``,
    copying to the CPU). Code that fails inside such an operation did pass ``device`` on, so
    on a meta case it stands for a mask of the requested dtype on the meta device.
    """
    try:
        return candidate(*case.args, **case.kwargs)
    except (NotImplementedError, RuntimeError) as error:
        # "meta and cpu" device mismatches are RuntimeErrors too, and real mistakes.
        about_meta = "meta" if isinstance(error, NotImplementedError) else "meta tensor"
        if case.kwargs.get("device") != _META or about_meta not in str(error).lower():
            raise
        T, dtype = case.args[0], case.kwargs.get("dtype", torch.float32)
        return torch.empty(T, T, dtype=dtype, device=_META)


def _compare_masks(expected, actual):
    """A mask must have the expected dtype exactly, boolean or float, and the device asked for.

    On the meta device there are no values to compare: the shape, dtype and device are all
    that such a case is about. The wrong variants below ignore ``device``, so a variant's CPU
    mask stands for a learner's meta one as long as shape and dtype agree.
    """
    if isinstance(expected, torch.Tensor) and isinstance(actual, torch.Tensor):
        if expected.dtype != actual.dtype:
            return f"dtype: expected {expected.dtype}, got {actual.dtype}"
        if _META in (expected.device.type, actual.device.type):
            if expected.device.type == _META and actual.device.type != _META:
                return (f"device: expected {_META}, got {actual.device.type} (create the "
                        "mask on the requested device: device=device)")
            return compare_outputs(torch.zeros(expected.shape), torch.zeros(actual.shape))
    return compare_outputs(expected, actual)


def _full(T, dtype, value):
    return torch.full((T, T), value, dtype=dtype)


# The wrong variants ignore ``device``: see _compare_masks.

def _mask_zeros(T, dtype=torch.float32, device=None):
    return torch.zeros(T, T, dtype=dtype)


def _mask_diagonal_blocked(T, dtype=torch.float32, device=None):
    return torch.triu(_full(T, dtype, NEG_INF), diagonal=0)


def _mask_transposed(T, dtype=torch.float32, device=None):
    return torch.tril(_full(T, dtype, NEG_INF), diagonal=-1)


def _mask_ones_above(T, dtype=torch.float32, device=None):
    return torch.triu(_full(T, dtype, 1.0), diagonal=1)


def _mask_keep_ones(T, dtype=torch.float32, device=None):
    return torch.tril(_full(T, dtype, 1.0))


def _mask_boolean(T, dtype=torch.float32, device=None):
    return torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)


def _mask_minus_1e9(T, dtype=torch.float32, device=None):
    return torch.triu(_full(T, dtype, -1e9), diagonal=1)


def _mask_finfo_min(T, dtype=torch.float32, device=None):
    return torch.triu(_full(T, dtype, torch.finfo(dtype).min), diagonal=1)


def _mask_dtype_ignored(T, dtype=torch.float32, device=None):
    return ref.causal_mask(T)


def _mask_device_ignored(T, dtype=torch.float32, device=None):
    return ref.causal_mask(T, dtype)


_ZEROS = ("Your mask is all zeros, so it blocks nothing. Fill the entries above the diagonal "
          "with float('-inf'), e.g. torch.triu(torch.full((T, T), float('-inf')), diagonal=1).")
_DIAGONAL = ("Your mask also blocks the diagonal, so a token may not look at itself (and "
             "the first token sees nothing at all). Block only the entries ABOVE the "
             "diagonal: torch.triu(..., diagonal=1).")
_TRANSPOSED_MASK = ("Your mask is transposed: it blocks the entries below the diagonal, the "
                    "past, and lets every token see the future. Row i (a query) must block "
                    "the columns j > i: torch.triu(..., diagonal=1).")
_ONES = ("Your mask holds 1 where it should hold -inf. The mask is ADDED to the scores, and "
         "adding 1 blocks nothing; only -inf turns into a weight of exactly 0 after the "
         "softmax. Use float('-inf').")
_KEEP_ONES = ("Your mask is a multiplicative 0/1 mask (1 = keep, 0 = block). This mask is "
              "added to the scores: it must be 0 where a token may look and -inf where it "
              "may not.")
_BOOLEAN = ("Your mask is a boolean tensor. This course's mask is an additive float mask "
            "of the requested dtype: 0.0 where a token may look, float('-inf') above the "
            "diagonal.")
_DTYPE_IGNORED = ("Your mask ignores the dtype argument and is always float32. Create it with "
                  "dtype=dtype, e.g. torch.full((T, T), float('-inf'), dtype=dtype, "
                  "device=device).")
_DEVICE_IGNORED = ("Your mask ignores the device argument: asked for device='meta', it comes "
                   "back on the CPU. Create it with device=device (as torch.full and "
                   "torch.zeros accept), so that a GPU model gets its mask on the GPU.")
_LARGE_FINITE = ("Your mask uses a large finite number instead of -inf. After the softmax "
                 "that also gives weights of about 0, but a row whose every entry is "
                 "blocked would get equal weights instead of zeros, and the number "
                 "overflows in half precision. Use float('-inf').")

register(Exercise(
    id="causal_mask",
    chapter=CHAPTER,
    title="Exercise 1: the causal mask",
    reference=ref.causal_mask,
    visible=_mask_visible,
    hidden=_mask_hidden,
    run=_run_mask,
    compare=_compare_masks,
    mistakes=(
        Mistake("all zeros", _ZEROS, _mask_zeros),
        Mistake("diagonal blocked", _DIAGONAL, _mask_diagonal_blocked),
        Mistake("transposed", _TRANSPOSED_MASK, _mask_transposed),
        Mistake("1 instead of -inf", _ONES, _mask_ones_above),
        Mistake("0/1 keep mask", _KEEP_ONES, _mask_keep_ones),
        Mistake("boolean", _BOOLEAN, _mask_boolean),
        Mistake("-1e9", _LARGE_FINITE, _mask_minus_1e9),
        Mistake("finfo.min", _LARGE_FINITE, _mask_finfo_min),
        Mistake("dtype ignored", _DTYPE_IGNORED, _mask_dtype_ignored),
        Mistake("device ignored", _DEVICE_IGNORED, _mask_device_ignored),
    ),
    forbidden=("gptcourse.attention.causal_mask",),
))


# -- exercise 2: attention with a mask -----------------------------------------------------

def _padding_mask(T, n_pad, dtype=torch.float32):
    """Causal mask for a sequence whose first ``n_pad`` tokens are padding: their keys are
    blocked for everyone, so the first ``n_pad`` rows are fully masked."""
    mask = ref.causal_mask(T, dtype)
    mask[:, :n_pad] = NEG_INF
    return mask


def _qkv(g, *shape, d_v=None, dtype=torch.float32, scale=1.0):
    d_v = shape[-1] if d_v is None else d_v
    q, k = _randn(g, *shape, dtype=dtype, scale=scale), _randn(g, *shape, dtype=dtype)
    return q, k, _randn(g, *shape[:-1], d_v, dtype=dtype)


def _masked_visible():
    g = torch.Generator().manual_seed(401)
    return [
        Case("4 tokens with the causal mask, d_k=8",
             (*_qkv(g, 4, 8), ref.causal_mask(4))),
        Case("a batch of 2, 5 tokens, d_k=4, one (5, 5) causal mask for both",
             (*_qkv(g, 2, 5, 4), ref.causal_mask(5))),
        Case("4 tokens whose first one is padding: row 0 has every key blocked",
             (*_qkv(g, 4, 6, d_v=3), _padding_mask(4, 1))),
    ]


def _masked_hidden():
    g = torch.Generator().manual_seed(402)
    f64 = torch.float64
    random_mask = torch.where(torch.rand(6, 6, generator=g) < 0.4, NEG_INF, 0.0)
    random_mask[2] = NEG_INF
    return [
        Case("float64, a batch of 3, 6 tokens, d_k=5, causal mask",
             (*_qkv(g, 3, 6, 5, dtype=f64), ref.causal_mask(6, f64))),
        Case("two batch dimensions (2, 3), 5 tokens, 2 padding tokens",
             (*_qkv(g, 2, 3, 5, 4, d_v=2), _padding_mask(5, 2))),
        Case("6 tokens, an irregular mask with row 2 fully blocked",
             (*_qkv(g, 6, 3, scale=2.0), random_mask)),
        Case("a batch of 2, 7 tokens, a (2, 7, 7) mask, one per sequence",
             (*_qkv(g, 2, 7, 4), torch.stack([ref.causal_mask(7), _padding_mask(7, 3)]))),
    ]


def _scores(q, k):
    return q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))


def _masked_after_softmax(q, k, v, mask):
    weights = ref.softmax(_scores(q, k), dim=-1).masked_fill(torch.isinf(mask), 0.0)
    return weights @ v, weights


def _masked_added_after_softmax(q, k, v, mask):
    weights = ref.softmax(_scores(q, k), dim=-1) + mask
    return weights @ v, weights


def _masked_zero_filled(q, k, v, mask):
    weights = ref.softmax(_scores(q, k).masked_fill(torch.isinf(mask), 0.0), dim=-1)
    return weights @ v, weights


def _masked_multiplied(q, k, v, mask):
    weights = ref.softmax(_scores(q, k) * mask, dim=-1)
    return weights @ v, weights


def _masked_nan_rows(q, k, v, mask):
    weights = torch.softmax(_scores(q, k) + mask, dim=-1)
    return weights @ v, weights


def _masked_minus_1e9(q, k, v, mask):
    scores = _scores(q, k).masked_fill(torch.isinf(mask), -1e9)
    weights = ref.softmax(scores, dim=-1)
    return weights @ v, weights


def _masked_uniform_rows(q, k, v, mask):
    weights = torch.softmax(_scores(q, k) + mask, dim=-1)
    weights = weights.nan_to_num(1.0 / weights.size(-1))
    return weights @ v, weights


def _masked_ignored(q, k, v, mask):
    return ref.scaled_dot_product_attention(q, k, v)


def _masked_transposed(q, k, v, mask):
    return ref.scaled_dot_product_attention(q, k, v, mask.transpose(-2, -1))


def _masked_unscaled(q, k, v, mask):
    weights = ref.softmax(q @ k.transpose(-2, -1) + mask, dim=-1)
    return weights @ v, weights


_AFTER_SOFTMAX = ("You mask the weights after the softmax: the blocked keys still took their "
                  "share of each row, so the rows no longer sum to 1 and the future still "
                  "shapes the past. Add the mask to the scores BEFORE the softmax.")
_ADDED_AFTER = ("You add the mask to the weights after the softmax, which puts -inf into "
                "the weights. Add it to the scores before the softmax instead.")
_ZERO_FILLED = ("You set the blocked scores to 0 instead of -inf. A score of 0 still gets "
                "exp(0) = 1 and so a real share of the weight; use scores + mask (the mask "
                "holds -inf where blocked).")
_MULTIPLIED = ("You multiply the scores by the mask. This mask is additive: scores + mask. "
               "(Multiplying by 0 and -inf turns kept scores into 0 and blocked ones into "
               "+-inf or NaN.)")
_NAN_ROWS = ("A row whose every key is blocked gives NaN (torch.softmax of a row of -inf "
             "divides 0 by 0). Such a query has nothing to look at: give it weights of 0 and "
             "an output of 0, e.g. with your own stable softmax or torch.nan_to_num.")
_UNIFORM_ROWS = ("A row whose every key is blocked gets equal weights over keys it may not "
                 "see, where the chapter asks for all-zero weights (and an output of 0): the "
                 "result of blocking with a large finite number such as -1e9, or of turning "
                 "softmax's NaN into 1/T. Keep -inf and make those rows 0, e.g. with "
                 "torch.nan_to_num(weights, 0.0).")
_IGNORED = ("Your attention ignores the mask: add it to the scores before the softmax.")
_MASK_TRANSPOSED = ("You add the mask transposed (mask.T or mask.transpose(-2, -1)). Row i "
                    "of the mask belongs to query i: add it to the scores as it is.")
_UNSCALED = ("Your scores are not divided by sqrt(d_k) before the mask is added; "
             "scores = q @ k^T / sqrt(d_k), then + mask.")

register(Exercise(
    id="masked_attention",
    chapter=CHAPTER,
    title="Exercise 2: attention with a mask",
    reference=ref.scaled_dot_product_attention,
    visible=_masked_visible,
    hidden=_masked_hidden,
    compare=compare_allowing_nan,
    mistakes=(
        Mistake("mask after the softmax", _AFTER_SOFTMAX, _masked_after_softmax),
        Mistake("mask added after the softmax", _ADDED_AFTER, _masked_added_after_softmax),
        Mistake("blocked scores set to 0", _ZERO_FILLED, _masked_zero_filled),
        Mistake("mask multiplied", _MULTIPLIED, _masked_multiplied),
        Mistake("NaN on fully masked rows", _NAN_ROWS, _masked_nan_rows),
        Mistake("-1e9 instead of -inf", _UNIFORM_ROWS, _masked_minus_1e9),
        Mistake("uniform weights on fully masked rows", _UNIFORM_ROWS, _masked_uniform_rows),
        Mistake("mask ignored", _IGNORED, _masked_ignored),
        Mistake("mask transposed", _MASK_TRANSPOSED, _masked_transposed),
        Mistake("unscaled", _UNSCALED, _masked_unscaled),
    ),
    forbidden=("gptcourse.attention.scaled_dot_product_attention",
               "gptcourse.attention.softmax"),
))


# -- exercise 3: a leak test ---------------------------------------------------------------

def leaks(attend, x: torch.Tensor) -> bool:
    """True when some output position of ``attend`` depends on a LATER input position.

    attend: a function (B, T, d) -> (B, T, d_out); x: (B, T, d), a sequence to probe it with.
    For every position t, change the tokens from t on and compare the outputs before t.
    """
    with torch.no_grad():
        before = attend(x)                                            # (B, T, d_out)
        g = torch.Generator().manual_seed(0)
        for t in range(1, x.size(1)):
            changed = x.clone()
            changed[:, t:] = torch.randn(changed[:, t:].shape, generator=g, dtype=x.dtype)
            after = attend(changed)
            if not close(after[:, :t], before[:, :t]):
                return True
    return False


# Causal attention plus one extra input: kind -> (output position, input position it also
# sees). Only a test that looks at every position finds the leak into position 3.
_EXTRA_INPUT = {"first sees second": (0, 1), "fourth sees fifth": (3, 4),
                "fourth sees second": (3, 1)}


class _Layer:
    """A small attention layer with fixed projections; ``kind`` says how it (mis)masks."""

    def __init__(self, kind: str, d: int, dtype: torch.dtype):
        g = torch.Generator().manual_seed(7)
        self.kind = kind
        self.w_q, self.w_k, self.w_v = (torch.randn(d, d, generator=g, dtype=dtype)
                                        for _ in range(3))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        T = x.size(-2)
        if self.kind == "position-wise":
            return torch.tanh(x @ self.w_v)
        if self.kind == "running mean":
            return x.cumsum(dim=-2) / torch.arange(1, T + 1, dtype=x.dtype)[:, None]
        q, k, v = x @ self.w_q, x @ self.w_k, x @ self.w_v
        causal = ref.causal_mask(T, x.dtype)
        blocked = torch.full((T, T), NEG_INF, dtype=x.dtype)
        if self.kind == "after softmax":
            weights = ref.softmax(_scores(q, k), dim=-1).masked_fill(torch.isinf(causal), 0.0)
            return weights @ v
        mask = {
            "causal": causal,
            "first sees second": causal,
            "fourth sees fifth": causal,
            "fourth sees second": causal,
            "no mask": None,
            "diagonal blocked": torch.triu(blocked, diagonal=0),
            "transposed": torch.tril(blocked, diagonal=-1),
            "peeks one ahead": torch.triu(blocked, diagonal=2),
            "previous token": torch.triu(blocked, diagonal=0) + torch.tril(blocked, diagonal=-2),
        }[self.kind]
        out = ref.scaled_dot_product_attention(q, k, v, mask)[0]
        if self.kind in _EXTRA_INPUT:
            position, seen = _EXTRA_INPUT[self.kind]
            out = out.clone()
            out[:, position] = out[:, position] + x[:, seen]
        return out


_LAYER_LABELS = {
    "causal": "a correct causal attention",
    "no mask": "attention without a mask (bidirectional)",
    "after softmax": "attention that masks the weights after the softmax",
    "diagonal blocked": "attention whose mask also blocks the diagonal",
    "transposed": "attention with a transposed mask",
    "peeks one ahead": "attention that lets each token see the next one",
    "first sees second": "causal attention, except that token 0 also sees token 1",
    "fourth sees fifth": "causal attention, except that token 3 also sees token 4",
    "fourth sees second": "causal attention in which token 3 also sees token 1 (no leak)",
    "previous token": "attention in which each token sees only the token before it",
    "position-wise": "a position-wise layer (each token on its own)",
    "running mean": "a running mean over the tokens so far",
}


def _run_leaks(candidate, case: Case) -> bool:
    kind, x = case.args
    answer = candidate(_Layer(kind, x.size(-1), x.dtype), x.clone())
    if isinstance(answer, torch.Tensor):
        answer = answer.item()
    if not isinstance(answer, bool):
        raise TypeError(f"leaks must return True or False, got {type(answer).__name__}")
    return answer


def _leak_cases(seed, B, T, d, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [Case(f"{_LAYER_LABELS[kind]}, {T} tokens", (kind, _randn(g, B, T, d, dtype=dtype)))
            for kind in _LAYER_LABELS]


def _leaks_visible():
    return _leak_cases(411, 1, 5, 4)


def _leaks_hidden():
    return _leak_cases(412, 2, 8, 6, torch.float64)


def _leaks_including_changed(attend, x):
    """Compares the changed position too."""
    before = attend(x)
    for t in range(1, x.size(1)):
        changed = x.clone()
        changed[:, t:] = changed[:, t:] + 1.0
        if not torch.allclose(before[:, :t + 1], attend(changed)[:, :t + 1]):
            return True
    return False


def _leaks_looking_forward(attend, x):
    """Changes a token and compares the positions after it."""
    before = attend(x)
    for t in range(x.size(1) - 1):
        changed = x.clone()
        changed[:, t] = changed[:, t] + 1.0
        if not torch.allclose(before[:, t + 1:], attend(changed)[:, t + 1:]):
            return True
    return False


def _leaks_changes_pile_up(attend, x):
    """Changes x itself, without a copy: the changes of earlier steps stay."""
    before = attend(x)
    for t in range(1, x.size(1)):
        x[:, t:] = x[:, t:] + 1.0
        if not torch.allclose(before[:, :t], attend(x)[:, :t]):
            return True
    return False


def _leaks_first_position_only(attend, x):
    """Changes every token after the first and compares position 0 only."""
    changed = x.clone()
    changed[:, 1:] = changed[:, 1:] + 1.0
    return not torch.allclose(attend(x)[:, :1], attend(changed)[:, :1])


def _leaks_last_token_only(attend, x):
    """Changes only the last token."""
    changed = x.clone()
    changed[:, -1] = changed[:, -1] + 1.0
    return not torch.allclose(attend(x)[:, :-1], attend(changed)[:, :-1])


_INCLUDES_CHANGED = ("Your test also compares the position you changed. That output may "
                     "change (a token sees itself); only outputs BEFORE the changed "
                     "position must stay the same.")
_LOOKS_FORWARD = ("Your test compares the positions AFTER the token you changed; those are "
                  "allowed to see it. A leak is a change in an EARLIER position.")
_PILE_UP = ("Your test changes x itself instead of a copy, so the changes pile up: when it "
            "compares the outputs before t, the tokens before t were already changed in "
            "earlier steps, and a layer that only looks back seems to leak. Start each step "
            "from a fresh copy: changed = x.clone().")
_LAST_ONLY = ("Your test only changes the last token, so it misses a leak from a token in "
              "the middle (here token 1 into token 0). Change each position t in turn (or "
              "every token from t on) and compare the outputs before t.")
_FIRST_ONLY = ("Your test only looks at the output of position 0, so it misses a leak into a "
               "later position (here token 3 also sees token 4). For every position t, "
               "change the tokens from t on and compare all the outputs before t.")

register(Exercise(
    id="leaks",
    chapter=CHAPTER,
    title="Exercise 3: a leak test",
    reference=leaks,
    visible=_leaks_visible,
    hidden=_leaks_hidden,
    run=_run_leaks,
    mistakes=(
        Mistake("compares the changed position", _INCLUDES_CHANGED, _leaks_including_changed),
        Mistake("compares later positions", _LOOKS_FORWARD, _leaks_looking_forward),
        Mistake("only position 0 is tested", _FIRST_ONLY, _leaks_first_position_only),
        Mistake("changes only the last token", _LAST_ONLY, _leaks_last_token_only),
        Mistake("changes pile up", _PILE_UP, _leaks_changes_pile_up),
    ),
    forbidden=("gptcourse.checks.causal_mask.leaks",),
))
