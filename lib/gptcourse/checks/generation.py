"""Checks for chapter 08, generating text.

The exercises: greedy decoding, temperature, the top-k and top-p filters, sampling one
token per row, the generation loop with end-of-sequence stopping, and one step of
single-head attention with a KV cache. Sampling is judged statistically: the learner's
function draws many tokens from the same logits and the frequencies must agree with the
course's within :data:`gptcourse.tolerances.SAMPLING_Z` standard errors; a seeded generator
must give the same draws twice and another seed other draws. The generation loop is judged
exactly when greedy, and by properties when it samples (the learner may draw in another
valid way): every token lies among those the filters keep at its step, the text is not the
greedy one, and it follows the generator's seed.
"""

import math

import torch
import torch.nn.functional as F

from gptcourse import generation as ref
from gptcourse.checks import Case, Exercise, Mistake, compare_outputs, register
from gptcourse.checks.core import one_thread
from gptcourse.tolerances import SAMPLING_Z

CHAPTER = "08-generation"


def _logits(g, *shape, dtype=torch.float32, scale=2.0):
    return (scale * torch.randn(*shape, generator=g, dtype=torch.float64)).to(dtype)


# -- greedy -----------------------------------------------------------------------------

def _greedy_visible():
    g = torch.Generator().manual_seed(801)
    return [Case("logits of 3 rows over a vocabulary of 7", (_logits(g, 3, 7),)),
            Case("logits (2, 3, 5): two sequences of 3 positions", (_logits(g, 2, 3, 5),))]


def _greedy_hidden():
    g = torch.Generator().manual_seed(802)
    return [Case("logits (2, 4, 11)", (_logits(g, 2, 4, 11),)),
            Case("float64 logits (5, 3)", (_logits(g, 5, 3, dtype=torch.float64),))]


_WRONG_DIM = ("You took the argmax over the wrong dimension: the vocabulary is the last one, "
              "so use dim=-1 (dim=1 is the last one only for 2-D logits).")

register(Exercise(
    id="greedy", chapter=CHAPTER, title="Exercise 1: greedy decoding",
    reference=ref.greedy, visible=_greedy_visible, hidden=_greedy_hidden,
    mistakes=(
        Mistake("wrong_dim", _WRONG_DIM, lambda logits: logits.argmax(dim=0)),
        Mistake("dim_1", _WRONG_DIM, lambda logits: logits.argmax(dim=1)),
        Mistake("keepdim", "Your ids keep a vocabulary dimension of size 1: return shape "
                "(...) without it (keepdim=False, the default).",
                lambda logits: logits.argmax(dim=-1, keepdim=True)),
        Mistake("values", "You returned the largest logit values, not their positions: greedy "
                "returns token ids, so use argmax (or .indices of max).",
                lambda logits: logits.max(dim=-1).values),
    ),
    forbidden=("gptcourse.generation.greedy",),
))


# -- temperature ------------------------------------------------------------------------

def _temperature_visible():
    g = torch.Generator().manual_seed(811)
    return [Case("temperature 0.5", (_logits(g, 2, 6), 0.5)),
            Case("temperature 2.0", (_logits(g, 2, 6), 2.0))]


def _temperature_hidden():
    g = torch.Generator().manual_seed(812)
    return [Case("temperature 0.7 on (3, 4, 9) logits", (_logits(g, 3, 4, 9), 0.7)),
            Case("temperature 1.5, float64", (_logits(g, 4, 5, dtype=torch.float64), 1.5))]


register(Exercise(
    id="apply_temperature", chapter=CHAPTER, title="Exercise 2: temperature",
    reference=ref.apply_temperature, visible=_temperature_visible,
    hidden=_temperature_hidden,
    mistakes=(
        Mistake("multiplied", "You multiplied the logits by the temperature; divide them "
                "instead, so that a small temperature sharpens the distribution.",
                lambda logits, temperature: logits * temperature),
        Mistake("after_softmax", "You returned probabilities divided by the temperature; the "
                "temperature divides the logits, before any softmax.",
                lambda logits, temperature: F.softmax(logits, dim=-1) / temperature),
    ),
    forbidden=("gptcourse.generation.apply_temperature",),
))


# -- top-k ------------------------------------------------------------------------------

def _top_k_visible():
    g = torch.Generator().manual_seed(821)
    return [Case("k=3 of a vocabulary of 8, 2 rows", (_logits(g, 2, 8), 3))]


def _top_k_hidden():
    g = torch.Generator().manual_seed(822)
    return [Case("k=1 (greedy as a filter)", (_logits(g, 3, 6), 1)),
            Case("k=4 on (2, 3, 10) logits", (_logits(g, 2, 3, 10), 4)),
            Case("k=2, float64", (_logits(g, 4, 5, dtype=torch.float64), 2))]


def _top_k_plus_one(logits, k):
    return ref.top_k_filter(logits, min(k + 1, logits.size(-1)))


def _top_k_zero_fill(logits, k):
    kept = ref.top_k_filter(logits, k)
    return torch.where(torch.isinf(kept), torch.zeros_like(logits), kept)


def _bottom_k(logits, k):
    return -ref.top_k_filter(-logits, k)


def _finite_fill(filtered, value):
    """The filter's output with the removed entries set to ``value`` instead of -inf."""
    return filtered.masked_fill(torch.isinf(filtered), value)


_LARGE_FINITE = ("You set the removed logits to a large finite number instead of -inf. After "
                 "the softmax they get about 0 probability, but they are still finite "
                 "logits: torch.isfinite counts them as kept and a later filter still ranks "
                 "them. Use float('-inf').")


register(Exercise(
    id="top_k_filter", chapter=CHAPTER, title="Exercise 3: top-k filter",
    reference=ref.top_k_filter, visible=_top_k_visible, hidden=_top_k_hidden,
    mistakes=(
        Mistake("k_plus_one", "You keep k+1 tokens: an off-by-one at the threshold. Keep "
                "exactly the k largest (torch.topk(logits, k) gives them).", _top_k_plus_one),
        Mistake("zero_fill", "You set the removed logits to 0, but a logit of 0 still has "
                "probability after the softmax; set them to float('-inf').",
                _top_k_zero_fill),
        Mistake("bottom_k", "You kept the k smallest logits; keep the k largest "
                "(largest=True in torch.topk).", _bottom_k),
        Mistake("minus_1e9", _LARGE_FINITE,
                lambda logits, k: _finite_fill(ref.top_k_filter(logits, k), -1e9)),
        Mistake("finfo_min", _LARGE_FINITE, lambda logits, k: _finite_fill(
            ref.top_k_filter(logits, k), torch.finfo(logits.dtype).min)),
    ),
    forbidden=("gptcourse.generation.top_k_filter",),
))


# -- top-p ------------------------------------------------------------------------------

def _top_p_visible():
    g = torch.Generator().manual_seed(831)
    return [Case("p=0.6 on 2 rows over 8 tokens", (_logits(g, 2, 8), 0.6)),
            Case("p=0.9 on 2 rows over 8 tokens", (_logits(g, 2, 8), 0.9))]


def _top_p_hidden():
    g = torch.Generator().manual_seed(832)
    return [Case("p=0.5 on (2, 3, 12) logits", (_logits(g, 2, 3, 12), 0.5)),
            Case("p=0.75, float64", (_logits(g, 3, 7, dtype=torch.float64), 0.75)),
            Case("p=0.3 with a flat distribution", (_logits(g, 2, 9, scale=0.3), 0.3))]


def _top_p_excludes_crossing(logits, p):
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    cumulative = torch.cumsum(F.softmax(sorted_logits, dim=-1), dim=-1)
    sorted_logits = sorted_logits.masked_fill(cumulative > p, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)


def _ascending(logits, p):
    sorted_logits, order = torch.sort(logits, dim=-1)          # smallest first: the bug
    probs = F.softmax(sorted_logits, dim=-1)
    mass_before = torch.cumsum(probs, dim=-1) - probs
    sorted_logits = sorted_logits.masked_fill(mass_before >= p, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)


def _top_p_unsorted(logits, p):
    probs = F.softmax(logits, dim=-1)
    mass_before = torch.cumsum(probs, dim=-1) - probs
    return logits.masked_fill(mass_before >= p, float("-inf"))


def _top_p_zero_fill(logits, p):
    kept = ref.top_p_filter(logits, p)
    return torch.where(torch.isinf(kept), torch.zeros_like(logits), kept)


register(Exercise(
    id="top_p_filter", chapter=CHAPTER, title="Exercise 4: top-p (nucleus) filter",
    reference=ref.top_p_filter, visible=_top_p_visible, hidden=_top_p_hidden,
    mistakes=(
        Mistake("excludes_crossing", "You drop the token whose probability carries the sum "
                "past p, so your set can fall short of p (or be empty). Keep a token when the "
                "mass of the tokens ranked above it is still below p.",
                _top_p_excludes_crossing),
        Mistake("ascending", "You sorted the probabilities in ascending order, so you keep "
                "the least likely tokens; sort with descending=True.", _ascending),
        Mistake("unsorted", "You summed probabilities in vocabulary order without sorting "
                "them first; sort descending, filter, then scatter back to the original "
                "positions.", _top_p_unsorted),
        Mistake("zero_fill", "You set the removed logits to 0, but a logit of 0 still has "
                "probability after the softmax; set them to float('-inf').",
                _top_p_zero_fill),
        Mistake("minus_1e9", _LARGE_FINITE,
                lambda logits, p: _finite_fill(ref.top_p_filter(logits, p), -1e9)),
        Mistake("finfo_min", _LARGE_FINITE, lambda logits, p: _finite_fill(
            ref.top_p_filter(logits, p), torch.finfo(logits.dtype).min)),
    ),
    forbidden=("gptcourse.generation.top_p_filter",),
))


# -- sampling ---------------------------------------------------------------------------

N_DRAWS = 4000  # draws per row; a 5-standard-error band is then about +-0.03 at p=0.5


def _draw(candidate, many, seed, kwargs):
    ids = candidate(many.clone(), generator=torch.Generator().manual_seed(seed), **kwargs)
    if not isinstance(ids, torch.Tensor):
        raise TypeError(f"sample_next should return a tensor of ids, got {type(ids).__name__}")
    if ids.shape != many.shape[:1]:
        raise ValueError(f"sample_next should return one id per row, shape ({len(many)},), "
                         f"got {tuple(ids.shape)}")
    return ids.long()


def _run_sampler(candidate, case):
    """Draw ``N_DRAWS`` tokens per row with a seeded generator -> the frequencies (B, V),
    and whether the same seed draws the same tokens again and another seed other ones."""
    logits, kwargs = case.args[0], dict(case.kwargs)
    B, V = logits.shape
    seed = kwargs.pop("seed")
    many = logits.repeat_interleave(N_DRAWS, dim=0)                    # (B * N, V)
    ids = _draw(candidate, many, seed, kwargs)                         # (B * N,)
    counts = torch.stack([torch.bincount(row, minlength=V)[:V]
                          for row in ids.view(B, N_DRAWS)])
    return {"frequencies": counts.to(torch.float64) / N_DRAWS,      # (B, V)
            "repeatable": bool(torch.equal(ids, _draw(candidate, many, seed, kwargs))),
            "seed_matters": not torch.equal(ids, _draw(candidate, many, seed + 1000, kwargs))}


def compare_frequencies(expected, actual):
    """Two sets of sampled frequencies (B, V) agree when every gap is within SAMPLING_Z
    standard errors of the difference of two independent estimates. Given the dicts of
    :func:`_run_sampler`, the draws must also follow the generator as the expected ones
    do."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        message = compare_frequencies(expected["frequencies"], actual["frequencies"])
        if message is not None:
            return message
        if actual["repeatable"] != expected["repeatable"]:
            return ("two calls with generators seeded alike drew different tokens: pass "
                    "the generator on (torch.multinomial(probs, 1, generator=generator)), "
                    "so that a seeded generator makes the samples repeatable")
        if actual["seed_matters"] != expected["seed_matters"]:
            return ("generators with different seeds drew the very same tokens: your draws "
                    "do not depend on the generator you are given")
        return None
    if not isinstance(actual, torch.Tensor) or actual.shape != expected.shape:
        return compare_outputs(expected, actual)
    pooled = (expected + actual) / 2
    bound = SAMPLING_Z * torch.sqrt(2 * pooled * (1 - pooled) / N_DRAWS) + 0.5 / N_DRAWS
    excess = (actual - expected).abs() - bound                         # (B, V)
    if bool((excess > 0).any()):
        row, token = divmod(int(excess.argmax()), excess.shape[-1])
        return (f"sampled frequencies differ: in row {row}, token {token} was drawn with "
                f"frequency {actual[row, token].item():.3f}, expected about "
                f"{expected[row, token].item():.3f} ({N_DRAWS} draws per row)")
    return None


def _shaped(g, *rows):
    """Logits (B, V) whose softmax is each of ``rows`` (probabilities, the largest first),
    with the tokens shuffled so that their order in the vocabulary tells nothing."""
    probs = torch.tensor(rows, dtype=torch.float64)                    # (B, V)
    order = torch.stack([torch.randperm(probs.shape[1], generator=g) for _ in rows])
    return probs.log().gather(-1, order).to(torch.float32)


# Probabilities for which the order of the steps shows: temperature 2 flattens the first
# row so that top_p=0.6 keeps three tokens, where the untempered row keeps two; top_k=3
# renormalises the second row so that top_p=0.6 keeps two of the three, where top_p on the
# full row keeps three.
_ROW_TEMPERED = (0.5, 0.2, 0.15, 0.1, 0.05)
_ROW_RENORMALISED = (0.3, 0.25, 0.2, 0.15, 0.1)


def _sampler_visible():
    g = torch.Generator().manual_seed(841)
    return [
        Case("temperature 1, 2 rows over 6 tokens", (_logits(g, 2, 6, scale=1.0),),
             {"temperature": 1.0, "seed": 1}),
        Case("temperature 0.5", (_logits(g, 2, 6, scale=1.0),),
             {"temperature": 0.5, "seed": 2}),
        Case("top_k=3", (_logits(g, 2, 6, scale=1.0),), {"top_k": 3, "seed": 3}),
        Case("top_p=0.7", (_logits(g, 2, 6, scale=1.0),), {"top_p": 0.7, "seed": 4}),
        Case("temperature 2 and top_p=0.6", (_shaped(g, _ROW_TEMPERED, _ROW_RENORMALISED),),
             {"temperature": 2.0, "top_p": 0.6, "seed": 8}),
        Case("top_k=3 and top_p=0.6", (_shaped(g, _ROW_RENORMALISED, _ROW_TEMPERED),),
             {"top_k": 3, "top_p": 0.6, "seed": 9}),
    ]


def _sampler_hidden():
    g = torch.Generator().manual_seed(842)
    return [
        Case("temperature 2 over 9 tokens", (_logits(g, 3, 9, scale=1.0),),
             {"temperature": 2.0, "seed": 5}),
        Case("temperature 0.8 and top_k=4", (_logits(g, 2, 9, scale=1.0),),
             {"temperature": 0.8, "top_k": 4, "seed": 6}),
        Case("top_p=0.5", (_logits(g, 2, 9, scale=1.0),), {"top_p": 0.5, "seed": 7}),
        Case("temperature 0.5 and top_p=0.8", (_shaped(g, _ROW_TEMPERED, _ROW_RENORMALISED),),
             {"temperature": 0.5, "top_p": 0.8, "seed": 10}),
        Case("temperature 1.5, top_k=3 and top_p=0.6",
             (_shaped(g, _ROW_RENORMALISED, _ROW_TEMPERED),),
             {"temperature": 1.5, "top_k": 3, "top_p": 0.6, "seed": 11}),
    ]


def _sampler_always_greedy(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
    return logits.argmax(dim=-1)


def _sampler_multiplied(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
    return ref.sample_next(logits * temperature * temperature, temperature, top_k, top_p,
                           generator)


def _sampler_ignores_temperature(logits, temperature=1.0, top_k=None, top_p=None,
                                 generator=None):
    return ref.sample_next(logits, 1.0, top_k, top_p, generator)


def _sampler_ignores_filters(logits, temperature=1.0, top_k=None, top_p=None,
                             generator=None):
    return ref.sample_next(logits, temperature, None, None, generator)


def _sampler_ignores_top_k(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
    return ref.sample_next(logits, temperature, None, top_p, generator)


def _sampler_ignores_top_p(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
    return ref.sample_next(logits, temperature, top_k, None, generator)


def _sampler_filters_first(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
    if top_k is not None:
        logits = ref.top_k_filter(logits, top_k)
    if top_p is not None:
        logits = ref.top_p_filter(logits, top_p)
    return ref.sample_next(logits, temperature, None, None, generator)


def _sampler_top_p_first(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
    logits = ref.apply_temperature(logits, temperature)
    if top_p is not None:
        logits = ref.top_p_filter(logits, top_p)
    return ref.sample_next(logits, 1.0, top_k, None, generator)


def _sampler_no_generator(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
    return ref.sample_next(logits, temperature, top_k, top_p, None)


_IGNORES_FILTERS = ("Tokens outside top_k / top_p are still drawn: apply top_k_filter and "
                    "top_p_filter (when given) before the softmax.")


register(Exercise(
    id="sample_next", chapter=CHAPTER, title="Exercise 5: sampling the next token",
    reference=ref.sample_next, visible=_sampler_visible, hidden=_sampler_hidden,
    run=_run_sampler, compare=compare_frequencies,
    mistakes=(
        Mistake("always_greedy", "Every draw is the most likely token: sample with "
                "torch.multinomial(probs, 1, generator=generator) instead of taking argmax.",
                _sampler_always_greedy),
        Mistake("multiplied", "Your samples follow logits multiplied by the temperature; "
                "divide by it (use your apply_temperature).", _sampler_multiplied),
        Mistake("ignores_temperature", "Your samples do not depend on the temperature: "
                "divide the logits by it (your apply_temperature) before the softmax. Dividing "
                "the probabilities changes nothing, since torch.multinomial normalises them.",
                _sampler_ignores_temperature),
        Mistake("ignores_filters", _IGNORES_FILTERS, _sampler_ignores_filters),
        Mistake("ignores_top_k", _IGNORES_FILTERS, _sampler_ignores_top_k),
        Mistake("ignores_top_p", _IGNORES_FILTERS, _sampler_ignores_top_p),
        Mistake("filters_before_temperature", "You filter before dividing by the "
                "temperature: top-p then picks its tokens from the untempered "
                "probabilities. Divide by the temperature first, then filter.",
                _sampler_filters_first),
        Mistake("top_p_before_top_k", "You apply top_p_filter before top_k_filter. Top-p "
                "must measure its mass among the k tokens top-k keeps: filter with top_k "
                "first, then top_p.", _sampler_top_p_first),
        Mistake("no_generator", "Your draws ignore the generator: pass it on, "
                "torch.multinomial(probs, num_samples=1, generator=generator), so that a "
                "seeded generator makes the samples repeatable.", _sampler_no_generator),
    ),
    forbidden=("gptcourse.generation.sample_next",),
))


# -- the generation loop ----------------------------------------------------------------

def _pick(last, temperature, top_k, top_p, generator):
    """The next token from the last position's logits (B, V) -> (B,)."""
    if temperature == 0:
        return ref.greedy(last)
    return ref.sample_next(last, temperature, top_k, top_p, generator)


def generate(model, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None,
             eos_id=None, generator=None):
    """The chapter's loop (a sliding window): idx (B, T0) -> (B, T0 + n), n <= max_new_tokens.

    Each step feeds the last ``context_length`` tokens, keeps the last position's logits and
    picks the next token (greedy when ``temperature == 0``). A sequence that emitted
    ``eos_id`` is padded with it; the loop stops early once every sequence has.
    """
    context_length = model.config.context_length
    finished = torch.zeros(idx.size(0), dtype=torch.bool)

    for _ in range(max_new_tokens):
        logits, _ = model(idx[:, -context_length:])                   # (B, T, V)
        next_id = _pick(logits[:, -1, :], temperature, top_k, top_p, generator)  # (B,)

        if eos_id is not None:
            next_id = torch.where(finished, torch.full_like(next_id, eos_id), next_id)
            finished = finished | (next_id == eos_id)
        idx = torch.cat([idx, next_id.unsqueeze(1)], dim=1)
        if eos_id is not None and bool(finished.all()):
            break
    return idx


def _model(config: dict, seed: int, sharpen: float = 1.0):
    """A tiny GPT in eval mode; ``sharpen`` scales its output layer, so that an untrained
    model gives peaked distributions, like a trained one, instead of nearly uniform ones."""
    from gptcourse.model import GPT, GPTConfig

    torch.manual_seed(seed)
    model = GPT(GPTConfig(**config)).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(sharpen)
    return model


_TINY = {"vocab_size": 10, "context_length": 8, "d_model": 16, "n_heads": 2, "n_layers": 1}


def _allowed(logits, temperature, top_k=None, top_p=None):
    """logits (B, V) -> (B, V) bool: the tokens the course's filters keep after the
    temperature, with a little slack at each threshold so that rounding cannot decide."""
    logits = logits.double() / temperature
    keep = torch.ones_like(logits, dtype=torch.bool)
    if top_k is not None:
        keep &= logits >= logits.topk(top_k, dim=-1).values[..., -1:] - 1e-4
        logits = logits.masked_fill(~keep, float("-inf"))
    if top_p is not None:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = F.softmax(sorted_logits, dim=-1)
        kept = torch.cumsum(probs, dim=-1) - probs < top_p + 1e-4         # (B, V), sorted
        keep &= torch.zeros_like(keep).scatter(-1, order, kept)
    return keep


def _outside_filters(model, prompt_length, out, settings):
    """The first new token of ``out`` (B, T0 + n) that the filters remove, judged at its
    step on the learner's own prefix, as a sentence; None when every token is allowed."""
    context_length, V = model.config.context_length, model.config.vocab_size
    for t in range(prompt_length, out.size(1)):
        logits, _ = model(out[:, :t][:, -context_length:])              # (B, T, V)
        allowed = _allowed(logits[:, -1, :], **settings)                 # (B, V)
        for b, token in enumerate(out[:, t].tolist()):
            if not 0 <= token < V or not allowed[b, token]:
                kept = allowed[b].nonzero().flatten().tolist()
                return (f"new token {t - prompt_length} of row {b} is {token}, which "
                        f"{_describe(settings)} removes (it keeps tokens {kept} there)")
    return None


def _describe(settings):
    return ", ".join(f"{name}={value}" for name, value in settings.items())


def _greedy_continuation(model, idx: torch.Tensor, n: int) -> torch.Tensor:
    """idx (B, T0) -> (B, T0 + n) by greedy decoding with the course's windows. Spelled out
    here: this runs where grading blocks the exercise's reference."""
    start = 0
    for _ in range(n):
        start = ref.window_start(idx.size(1), start, model.config.context_length)
        logits, _ = model(idx[:, start:])                               # (B, T, V)
        idx = torch.cat([idx, logits[:, -1].argmax(dim=-1, keepdim=True)], dim=1)
    return idx


def _sampling_summary(candidate, model, idx, kwargs):
    """What the learner's loop does when it samples: the shape of its result, whether it
    keeps the prompt, draws only tokens the filters allow, differs from greedy decoding,
    repeats itself with the same seed and changes with another."""
    n, settings, seed = kwargs["max_new_tokens"], kwargs["sampling"], kwargs["generator_seed"]

    def run(seed):
        with torch.no_grad():
            out = candidate(model, idx.clone(), n,
                            generator=torch.Generator().manual_seed(seed), **settings)
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"generate should return a tensor of ids, got "
                            f"{type(out).__name__}")
        return out.detach().long()

    out = run(seed)
    summary = {"shape": list(out.shape), "settings": _describe(settings), "detail": None}
    if list(out.shape) != [idx.size(0), idx.size(1) + n]:
        return summary
    summary["prompt_kept"] = bool(torch.equal(out[:, :idx.size(1)], idx))
    with torch.no_grad():
        summary["detail"] = _outside_filters(model, idx.size(1), out, settings)
        greedy_out = _greedy_continuation(model, idx, n)
    summary["outside_filters"] = summary["detail"] is not None
    summary["as_greedy"] = bool(torch.equal(out, greedy_out))
    summary["repeatable"] = bool(torch.equal(out, run(seed)))
    summary["seed_matters"] = not torch.equal(out, run(seed + 1))
    return summary


def _sampling_messages(expected, actual):
    """(summary key, message about the learner's result), in the order they are checked."""
    B, length = expected["shape"]
    shape = (f"without eos_id your result should have shape ({B}, {length}), the prompt "
             f"followed by max_new_tokens new tokens; yours has shape "
             f"{tuple(actual['shape'])}")
    outside = (f"{actual['detail']}: pass temperature, top_k and top_p on to your "
               "sample_next(last, temperature, top_k, top_p, generator)")
    greedy = (f"with {actual['settings']} your tokens are exactly the greedy ones: when "
              "temperature > 0, sample with your sample_next(last, temperature, top_k, top_p, "
              "generator) instead of taking the argmax")
    repeatable = ("two runs with generators seeded alike gave different tokens: pass the "
                  "generator on to sample_next, so that a seeded generator makes the text "
                  "repeatable")
    seed_matters = ("runs with differently seeded generators gave the very same tokens: your "
                    "sampling does not use the generator it is given")
    return [("shape", shape),
            ("prompt_kept", "the first columns of your result should be the prompt, unchanged"),
            ("outside_filters", outside), ("as_greedy", greedy), ("repeatable", repeatable),
            ("seed_matters", seed_matters)]


def compare_generation(expected, actual):
    """Greedy cases compare the tokens; sampling cases compare the summaries of
    :func:`_sampling_summary` property by property."""
    if not isinstance(expected, dict) or not isinstance(actual, dict):
        return compare_outputs(expected, actual)
    for key, message in _sampling_messages(expected, actual):
        if actual.get(key) != expected.get(key):
            return message
    return None


@one_thread
def _run_generate(candidate, case):
    kwargs = case.kwargs
    model = _model(kwargs["config"], kwargs["seed"], kwargs.get("sharpen", 1.0))
    if "sampling" in kwargs:
        return _sampling_summary(candidate, model, case.args[0], kwargs)
    with torch.no_grad():
        out = candidate(model, case.args[0].clone(), kwargs["max_new_tokens"],
                        temperature=0.0, eos_id=kwargs["eos_id"])
    return out


@one_thread
def _find_eos_case(seed: int, prompt_seed: int, n: int, both_finish: bool):
    """A prompt and an eos_id for which greedy decoding ends the two rows at different
    steps (or ends only the first), so that every stopping mistake shows."""
    model = _model(_TINY, seed)
    g = torch.Generator().manual_seed(prompt_seed)
    for _ in range(40):
        idx = torch.randint(0, _TINY["vocab_size"], (2, 3), generator=g)
        with torch.no_grad():
            free = generate(model, idx, n + 4, temperature=0.0)[:, 3:]       # (2, n + 4)
        for eos in range(_TINY["vocab_size"]):
            firsts = [(row == eos).nonzero() for row in free]
            step = [int(f[0]) if len(f) else None for f in firsts]
            if step[0] is None or not 1 <= step[0] < n - 3:
                continue
            tail_differs = bool((free[0, step[0] + 1:] != eos).any())
            if both_finish:
                good = step[1] is not None and step[0] + 1 < step[1] < n - 1
            else:
                good = step[1] is None
            if good and tail_differs:
                return idx, eos
    raise RuntimeError("no suitable end-of-sequence case found; change the seeds")


def _generate_case(label, seed, prompt_seed, n, both_finish):
    idx, eos = _find_eos_case(seed, prompt_seed, n, both_finish)
    return Case(label, (idx,), {"config": dict(_TINY), "seed": seed, "max_new_tokens": n,
                                "eos_id": eos})


SHARPEN = 12.0  # the output scale of the sampling cases' models (see _model)


def _sampling_case(label, seed, settings, n=20):
    """Sampling from 3 prompts with a seeded generator, past the context of 8."""
    idx = torch.randint(0, _TINY["vocab_size"], (3, 3),
                        generator=torch.Generator().manual_seed(seed))
    return Case(label, (idx,), {"config": dict(_TINY), "seed": seed, "sharpen": SHARPEN,
                                "max_new_tokens": n, "sampling": settings,
                                "generator_seed": seed})


def _generate_visible():
    return [
        _generate_case("2 prompts, greedy, only the first emits EOS", 11, 1, 10, False),
        _generate_case("2 prompts, greedy, both emit EOS at different steps", 14, 2, 12, True),
        Case("no EOS, 14 new tokens past a context of 8", (torch.tensor([[1, 2, 3]]),),
             {"config": dict(_TINY), "seed": 13, "max_new_tokens": 14, "eos_id": None}),
        _sampling_case("sampling at temperature 1.5 with top_k=3", 15,
                       {"temperature": 1.5, "top_k": 3}),
        _sampling_case("sampling at temperature 1.2 with top_p=0.7", 16,
                       {"temperature": 1.2, "top_p": 0.7}),
    ]


def _generate_hidden():
    return [
        _generate_case("another model, only the first row ends", 21, 3, 12, False),
        _generate_case("another model, both rows end", 18, 4, 14, True),
        Case("no EOS, 2 prompts, 12 new tokens past a context of 8",
             (torch.tensor([[4, 0, 7], [9, 9, 2]]),),
             {"config": dict(_TINY), "seed": 19, "max_new_tokens": 12, "eos_id": None}),
        _sampling_case("sampling at temperature 2 with top_k=4 and top_p=0.8", 22,
                       {"temperature": 2.0, "top_k": 4, "top_p": 0.8}),
        _sampling_case("sampling at temperature 0.9 with top_k=2", 23,
                       {"temperature": 0.9, "top_k": 2}),
    ]


def _generate_ignores_eos(model, idx, max_new_tokens, temperature=1.0, top_k=None,
                          top_p=None, eos_id=None, generator=None):
    return generate(model, idx, max_new_tokens, temperature, top_k, top_p, None, generator)


def _generate_always_greedy(model, idx, max_new_tokens, temperature=1.0, top_k=None,
                            top_p=None, eos_id=None, generator=None):
    return generate(model, idx, max_new_tokens, 0.0, None, None, eos_id, generator)


def _generate_ignores_filters(model, idx, max_new_tokens, temperature=1.0, top_k=None,
                              top_p=None, eos_id=None, generator=None):
    return generate(model, idx, max_new_tokens, temperature, None, None, eos_id, generator)


def _generate_no_generator(model, idx, max_new_tokens, temperature=1.0, top_k=None,
                           top_p=None, eos_id=None, generator=None):
    return generate(model, idx, max_new_tokens, temperature, top_k, top_p, eos_id, None)


def _generate_no_padding(model, idx, max_new_tokens, temperature=1.0, top_k=None,
                         top_p=None, eos_id=None, generator=None):
    context_length = model.config.context_length
    finished = torch.zeros(idx.size(0), dtype=torch.bool)
    for _ in range(max_new_tokens):
        logits, _ = model(idx[:, -context_length:])
        next_id = _pick(logits[:, -1, :], temperature, top_k, top_p, generator)
        if eos_id is not None:
            finished = finished | (next_id == eos_id)
        idx = torch.cat([idx, next_id.unsqueeze(1)], dim=1)
        if eos_id is not None and bool(finished.all()):
            break
    return idx


def _generate_stops_at_first(model, idx, max_new_tokens, temperature=1.0, top_k=None,
                             top_p=None, eos_id=None, generator=None):
    context_length = model.config.context_length
    for _ in range(max_new_tokens):
        logits, _ = model(idx[:, -context_length:])
        next_id = _pick(logits[:, -1, :], temperature, top_k, top_p, generator)
        idx = torch.cat([idx, next_id.unsqueeze(1)], dim=1)
        if eos_id is not None and bool((next_id == eos_id).any()):
            break
    return idx


def _generate_first_position(model, idx, max_new_tokens, temperature=1.0, top_k=None,
                             top_p=None, eos_id=None, generator=None):
    context_length = model.config.context_length
    finished = torch.zeros(idx.size(0), dtype=torch.bool)
    for _ in range(max_new_tokens):
        logits, _ = model(idx[:, -context_length:])
        next_id = _pick(logits[:, 0, :], temperature, top_k, top_p, generator)
        if eos_id is not None:
            next_id = torch.where(finished, torch.full_like(next_id, eos_id), next_id)
            finished = finished | (next_id == eos_id)
        idx = torch.cat([idx, next_id.unsqueeze(1)], dim=1)
        if eos_id is not None and bool(finished.all()):
            break
    return idx


register(Exercise(
    id="generate", chapter=CHAPTER, title="Exercise 6: the generation loop",
    reference=generate, visible=_generate_visible, hidden=_generate_hidden,
    run=_run_generate, compare=compare_generation,
    mistakes=(
        Mistake("always_greedy", "You always take the most likely token, whatever "
                "temperature, top_k and top_p say: use greedy only when temperature == 0, and "
                "otherwise your sample_next(last, temperature, top_k, top_p, generator).",
                _generate_always_greedy),
        Mistake("ignores_filters", "You sample without top_k and top_p, so tokens they remove "
                "are drawn: pass them on, sample_next(last, temperature, top_k, top_p, "
                "generator).", _generate_ignores_filters),
        Mistake("no_generator", "Your sampling ignores the generator: pass it on, "
                "sample_next(last, temperature, top_k, top_p, generator), so that a seeded "
                "generator makes the text repeatable.", _generate_no_generator),
        Mistake("ignores_eos", "A sequence that emitted the end-of-sequence token goes on "
                "generating: remember which rows are finished, pad them with eos_id, and "
                "stop when all are.", _generate_ignores_eos),
        Mistake("no_padding", "Finished sequences keep receiving the model's tokens after "
                "their end-of-sequence token; replace their new token with eos_id "
                "(torch.where(finished, eos_id, next_id)).", _generate_no_padding),
        Mistake("stops_batch", "You stop the whole batch as soon as one sequence emits the "
                "end-of-sequence token; stop only when every sequence has.",
                _generate_stops_at_first),
        Mistake("first_position", "You picked the next token from the first position's "
                "logits; the prediction for the next token is at the last one "
                "(logits[:, -1, :]).", _generate_first_position),
    ),
    forbidden=("gptcourse.generation.generate",),
))


# -- one attention step with a KV cache -------------------------------------------------

def cached_attention_step(x_new, w_q, w_k, w_v, cache=None):
    """One step of single-head causal self-attention with a KV cache.

    x_new (B, 1, d_model) is the newest position; w_q, w_k, w_v (d_model, d_head);
    cache is None or (keys, values), each (B, T_cached, d_head).
    Returns (out (B, 1, d_head), (keys, values) each (B, T_cached + 1, d_head)).
    """
    q, k, v = x_new @ w_q, x_new @ w_k, x_new @ w_v                    # (B, 1, d_head)
    if cache is not None:
        k = torch.cat([cache[0], k], dim=1)                            # (B, T_cached + 1, d_head)
        v = torch.cat([cache[1], v], dim=1)

    # The newest query may look at every cached key: no mask is needed.
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))           # (B, 1, T_k)
    out = F.softmax(scores, dim=-1) @ v                                # (B, 1, d_head)
    return out, (k, v)


def _run_cached(candidate, case):
    """Feed the sequence one position at a time -> (outputs (B, T, d_head), keys, values)."""
    x, w_q, w_k, w_v = case.args
    cache, outputs = None, []
    for t in range(x.size(1)):
        out, cache = candidate(x[:, t:t + 1].clone(), w_q, w_k, w_v, cache)
        outputs.append(out)
    keys, values = cache
    return torch.cat(outputs, dim=1), keys, values


def _cached_case(label, g, B, T, d_model, d_head, dtype=torch.float32):
    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)
    return Case(label, (r(B, T, d_model), r(d_model, d_head) / math.sqrt(d_model),
                        r(d_model, d_head) / math.sqrt(d_model),
                        r(d_model, d_head) / math.sqrt(d_model)))


def _cached_visible():
    g = torch.Generator().manual_seed(861)
    return [_cached_case("batch of 2, 5 positions, d_model=8, d_head=4", g, 2, 5, 8, 4)]


def _cached_hidden():
    g = torch.Generator().manual_seed(862)
    return [_cached_case("batch of 1, 9 positions, d_model=6, d_head=3", g, 1, 9, 6, 3),
            _cached_case("float64, batch of 3, 4 positions", g, 3, 4, 8, 8, torch.float64)]


def _cached_drops_newest(x_new, w_q, w_k, w_v, cache=None):
    q, k, v = x_new @ w_q, x_new @ w_k, x_new @ w_v
    keys = k if cache is None else cache[0]                    # the bug: new key left out
    values = v if cache is None else cache[1]
    out = F.softmax(q @ keys.transpose(-2, -1) / math.sqrt(q.size(-1)), dim=-1) @ values
    new_cache = (k, v) if cache is None else (torch.cat([cache[0], k], 1),
                                              torch.cat([cache[1], v], 1))
    return out, new_cache


def _cached_appends_twice(x_new, w_q, w_k, w_v, cache=None):
    q, k, v = x_new @ w_q, x_new @ w_k, x_new @ w_v
    if cache is not None:
        k = torch.cat([cache[0], k, k], dim=1)                         # the bug: k twice
        v = torch.cat([cache[1], v, v], dim=1)
    out = F.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.size(-1)), dim=-1) @ v
    return out, (k, v)


def _cached_appends_twice_from_start(x_new, w_q, w_k, w_v, cache=None):
    _, (k, v) = cached_attention_step(x_new, w_q, w_k, w_v, cache)
    k, v = torch.cat([k, k[:, -1:]], 1), torch.cat([v, v[:, -1:]], 1)  # the bug
    q = x_new @ w_q
    out = F.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.size(-1)), dim=-1) @ v
    return out, (k, v)


def _cached_attends_twice(x_new, w_q, w_k, w_v, cache=None):
    _, (k, v) = cached_attention_step(x_new, w_q, w_k, w_v, cache)
    keys, values = torch.cat([k, k[:, -1:]], 1), torch.cat([v, v[:, -1:]], 1)  # the bug
    q = x_new @ w_q
    out = F.softmax(q @ keys.transpose(-2, -1) / math.sqrt(q.size(-1)), dim=-1) @ values
    return out, (k, v)


_APPENDS_TWICE = ("Your cache grows by two positions per step: the newest key and value are "
                  "appended twice. Append them once, with a single torch.cat.")


def _cached_overwrites(x_new, w_q, w_k, w_v, cache=None):
    return cached_attention_step(x_new, w_q, w_k, w_v, None)


register(Exercise(
    id="cached_attention_step", chapter=CHAPTER, title="Exercise 7: a KV cache",
    reference=cached_attention_step, visible=_cached_visible, hidden=_cached_hidden,
    run=_run_cached,
    mistakes=(
        Mistake("drops_newest", "Your newest position does not attend to itself: append the "
                "new key and value to the cache BEFORE computing the scores.",
                _cached_drops_newest),
        Mistake("appends_twice", _APPENDS_TWICE, _cached_appends_twice),
        Mistake("appends_twice_from_start", _APPENDS_TWICE, _cached_appends_twice_from_start),
        Mistake("attends_twice", "Your cache is right, but the newest key and value enter "
                "the attention twice: attend to the cached keys and values with the new "
                "position appended once.", _cached_attends_twice),
        Mistake("overwrites", "Your cache keeps only the newest position, so each token "
                "attends to itself alone; concatenate the new key and value to the cached "
                "ones along the time dimension (dim=1).", _cached_overwrites),
    ),
))
