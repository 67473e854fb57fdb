"""Checks for chapter 07: the whole GPT and its parameter count.

The exercises: the GPT module (built from plain case data and compared with the course's
model holding the same weights), the closed-form parameter count for configurations the
learner has not seen (an answer that builds a model to count it is refused), and GPT-3's
arithmetic. Counts must be ints, exact.
"""

import contextlib
import dataclasses
import functools

import torch
import torch.nn.functional as F
from torch import nn

from gptcourse import model as ref
from gptcourse.checks import Case, Exercise, Mistake, register
from gptcourse.checks.multi_head_attention import load_weights, random_state, run_module

CHAPTER = "07-gpt-model"


# -- the GPT module -----------------------------------------------------------------------

def case_config(kw: dict):
    """The GPTConfig a case describes (learned positions, no dropout, explicit attention)."""
    return ref.GPTConfig(vocab_size=kw["vocab_size"], context_length=kw["context_length"],
                         d_model=kw["d_model"], n_heads=kw["n_heads"], n_layers=kw["n_layers"],
                         d_ff=kw["d_ff"], tie_weights=kw["tie_weights"], dropout=0.0,
                         fast_attention=False)


class _GPTVariant(ref.GPT):
    def __init__(self, config, *, mistake):
        if mistake == "tied weights ignored":
            config = dataclasses.replace(config, tie_weights=False)
        super().__init__(config)
        if mistake == "one block repeated":
            self.blocks = torch.nn.ModuleList([self.blocks[0]] * config.n_layers)
        self.mistake = mistake

    def forward(self, idx, targets=None, kv_caches=None):
        m = self.mistake
        B, T = idx.shape
        x = self.token_embedding(idx)                                 # (B, T, d_model)
        if m != "positions not added":
            x = x + self.position_embedding(T)
        for block in self.blocks:
            x = block(x)
        if m != "no final LayerNorm":
            x = self.ln_final(x)
        logits = self.lm_head(x)                                      # (B, T, V)
        if m == "probabilities instead of logits":
            logits = torch.softmax(logits, dim=-1)
        loss = None
        if targets is not None:
            if m == "loss on the last position only":
                loss = F.cross_entropy(logits[:, -1], targets[:, -1])
            elif m == "loss summed":
                loss = F.cross_entropy(logits.reshape(B * T, -1), targets.reshape(B * T),
                                       reduction="sum")
            elif m == "targets shifted again":
                loss = F.cross_entropy(logits[:, :-1].reshape(B * (T - 1), -1),
                                       targets[:, 1:].reshape(B * (T - 1)))
            else:
                loss = F.cross_entropy(logits.reshape(B * T, -1), targets.reshape(B * T))
        return logits, loss


def _gpt_variant(mistake):
    return functools.partial(_GPTVariant, mistake=mistake)


def _run_gpt(candidate, case):
    """Build the model from the case's config and weights; run it on idx (and targets).

    ``targets`` is passed only when the case has some, so that case checks the default.
    """
    kw = case.kwargs
    module = load_weights(candidate(case_config(kw)), kw["state"], (
        ("lm_head.weight", "lm_head is nn.Linear(d_model, vocab_size, bias=False)."),
    ), extra_hints=(
        ("lm_head.bias", "The head has no bias (as in GPT-2): "
                         "nn.Linear(config.d_model, config.vocab_size, bias=False)."),
    ))
    targets = () if kw["targets"] is None else (kw["targets"],)
    result = run_module(module, kw["idx"], *targets)
    if not isinstance(result, (tuple, list)) or len(result) != 2:
        raise TypeError("forward must return a tuple (logits, loss); loss is None when no "
                        "targets are given")
    logits, loss = result
    n_parameters = sum(p.numel() for p in module.parameters())
    def detached(value):  # anything else is left for the comparison to describe
        return value.detach() if isinstance(value, torch.Tensor) else value

    return {"logits": detached(logits), "loss": detached(loss), "n_parameters": n_parameters}


def _compare_gpt(expected, actual):
    from gptcourse.checks.core import compare_outputs

    if expected["n_parameters"] != actual["n_parameters"]:
        return (f"your model has {actual['n_parameters']} parameters, the course's "
                f"{expected['n_parameters']} (a tied matrix counts once)")
    return compare_outputs({"logits": expected["logits"], "loss": expected["loss"]},
                           {"logits": actual["logits"], "loss": actual["loss"]})


def _gpt_case(label, g, B, T, vocab_size, context_length, d_model, n_heads, n_layers,
              d_ff=None, tie_weights=False, targets=True, dtype=torch.float32):
    kw = {"vocab_size": vocab_size, "context_length": context_length, "d_model": d_model,
          "n_heads": n_heads, "n_layers": n_layers, "d_ff": d_ff, "tie_weights": tie_weights}
    template = ref.GPT(case_config(kw))
    state = random_state(template, g, dtype)
    # Embeddings of spread 1 (random_state gives 1/sqrt(d_model) to 2-D weights)
    for name in ("token_embedding.weight", "position_embedding.weight"):
        state[name] = state[name] * d_model ** 0.5
    if tie_weights:
        state["lm_head.weight"] = state["token_embedding.weight"]
    kw["state"] = state
    kw["idx"] = torch.randint(0, vocab_size, (B, T), generator=g)
    kw["targets"] = torch.randint(0, vocab_size, (B, T), generator=g) if targets else None
    return Case(label, (), kw)


def _gpt_visible():
    g = torch.Generator().manual_seed(7101)
    return [
        _gpt_case("vocab 11, context 8, d_model 16, 2 heads, 2 layers, B=2, T=6", g,
                  2, 6, 11, 8, 16, 2, 2),
        _gpt_case("tied weights, no targets, vocab 9, context 6, d_model 12, 3 heads, "
                  "2 layers, B=1, T=6", g, 1, 6, 9, 6, 12, 3, 2, tie_weights=True,
                  targets=False),
    ]


def _gpt_hidden():
    g = torch.Generator().manual_seed(7102)
    return [
        _gpt_case("float64, vocab 13, context 10, d_model 12, 3 heads, 3 layers, d_ff 20, "
                  "B=2, T=7", g, 2, 7, 13, 10, 12, 3, 3, d_ff=20, dtype=torch.float64),
        _gpt_case("tied weights, no targets, vocab 7, context 5, d_model 8, 2 heads, 2 layers",
                  g, 3, 4, 7, 5, 8, 2, 2, tie_weights=True, targets=False),
        _gpt_case("tied weights, vocab 10, context 6, d_model 16, 4 heads, 2 layers, B=2, T=5",
                  g, 2, 5, 10, 6, 16, 4, 2, tie_weights=True),
    ]


register(Exercise(
    id="GPT",
    chapter=CHAPTER,
    title="Exercise 1: the whole GPT",
    reference=ref.GPT,
    visible=_gpt_visible,
    hidden=_gpt_hidden,
    run=_run_gpt,
    compare=_compare_gpt,
    mistakes=(
        Mistake("no final LayerNorm",
                "You skip the final LayerNorm: apply self.ln_final to the output of the last "
                "block, before lm_head.",
                _gpt_variant("no final LayerNorm")),
        Mistake("positions not added",
                "Your model never adds the position embeddings, so it cannot tell token "
                "order: x = token_embedding(idx) + position_embedding(T).",
                _gpt_variant("positions not added")),
        Mistake("probabilities instead of logits",
                "You apply a softmax in forward: return the raw logits (F.cross_entropy "
                "applies log-softmax itself; generation applies softmax when it samples).",
                _gpt_variant("probabilities instead of logits")),
        Mistake("loss on the last position only",
                "Your loss uses only the last position. Training scores every position: "
                "flatten logits to (B*T, V) and targets to (B*T,) for F.cross_entropy.",
                _gpt_variant("loss on the last position only")),
        Mistake("loss summed",
                "Your loss is the SUM of the cross-entropies; the loss is their mean over "
                "all B*T positions (F.cross_entropy's default, reduction='mean').",
                _gpt_variant("loss summed")),
        Mistake("targets shifted again",
                "You shift the targets against the logits (logits[:, :-1] with "
                "targets[:, 1:]), but targets are already the next tokens: position t's "
                "target is targets[:, t]. Compare logits and targets position by position.",
                _gpt_variant("targets shifted again")),
        Mistake("tied weights ignored",
                "With config.tie_weights your model keeps two separate matrices; tie them: "
                "self.lm_head.weight = self.token_embedding.weight.",
                _gpt_variant("tied weights ignored")),
        Mistake("one block repeated",
                "Your n_layers blocks are one and the same module ([block] * n_layers shares "
                "it); build a new DecoderBlock(config) for every layer.",
                _gpt_variant("one block repeated")),
    ),
    forbidden=("gptcourse.model.GPT",),
))


# -- the parameter count ------------------------------------------------------------------

def _formula(vocab_size, context_length, d_model, n_layers, d_ff=None, bias=True,
             tie_weights=False, positions="learned", *, mistake=None):
    """The parameter count written out term by term, with one classic slip switched on."""
    m = mistake
    if d_ff is None or m == "d_ff ignored":
        d_ff = 4 * d_model
    use_bias = bias and m != "biases forgotten"
    if not bias and m == "LayerNorm shifts dropped with bias=False":
        m = "LayerNorm as one vector"
    n_projections = 3 if m == "attention as 3 d_model^2" else 4
    attention = n_projections * d_model * d_model + (n_projections * d_model if use_bias else 0)
    ff_biases = d_ff if m == "contract bias forgotten" else d_ff + d_model
    feed_forward = 2 * d_model * d_ff + (ff_biases if use_bias else 0)
    vectors_per_norm = 1 if m == "LayerNorm as one vector" else 2
    norm = 0 if m == "LayerNorm forgotten" else vectors_per_norm * d_model
    count = n_layers * (attention + feed_forward + 2 * norm)
    if m != "final LayerNorm forgotten":
        count += norm
    count += vocab_size * d_model
    if (positions == "learned" and m != "positions forgotten") or m == "sinusoidal counted":
        count += context_length * d_model
    if not tie_weights or m == "tied weights counted twice":
        count += vocab_size * d_model
    if m == "head bias counted":
        count += vocab_size
    return count


def compare_counts(expected, actual):
    """Counts are ints and must be exact: a forgotten LayerNorm is a few thousand of a
    hundred million. A dict must have exactly the expected keys."""
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return f"expected a dict with the keys {sorted(expected)}, got {type(actual).__name__}"
        if set(actual) != set(expected):
            absent = sorted(map(repr, set(expected) - set(actual)))
            extra = sorted(map(repr, set(actual) - set(expected)))
            problems = []
            if absent:
                problems.append(f"missing {', '.join(absent)}")
            if extra:
                problems.append(f"not asked for {', '.join(extra)}")
            return f"expected exactly the keys {sorted(expected)}; {'; '.join(problems)}"
        for key in expected:
            message = compare_counts(expected[key], actual[key])
            if message:
                return f"{key}: {message}"
        return None
    if isinstance(actual, float):
        return (f"expected an int, got the float {actual!r}: a count is a whole number; "
                "use // rather than / (or int(...) on an exact result)")
    if not isinstance(actual, int) or isinstance(actual, bool):
        return f"expected an int, got {type(actual).__name__} {actual!r}"
    if actual != expected:
        return f"expected {expected:,}, got {actual:,} (off by {actual - expected:+,})"
    return None


def _count_variant(mistake):
    return functools.partial(_formula, mistake=mistake)


class ModelBuilt(RuntimeError):
    """Raised when the parameter-count answer builds a module instead of computing."""


@contextlib.contextmanager
def _no_modules():
    """Refuse to create any nn.Parameter (so any layer or model) inside the block."""
    def refuse(cls, *args, **kwargs):
        raise ModelBuilt("gpt_parameter_count must not build a model or any layer (it "
                         "created an nn.Parameter): add the parts up with the table's "
                         "formulas, so that it also works for GPT-3's sizes")

    original = nn.Parameter.__dict__["__new__"]                        # a staticmethod
    nn.Parameter.__new__ = staticmethod(refuse)
    try:
        yield
    finally:
        nn.Parameter.__new__ = original


def _run_count(candidate, case):
    """Call the candidate on the case's settings, with model building refused."""
    with _no_modules():
        return candidate(**dict(case.kwargs))


def _count_cases(specs):
    keys = ("vocab_size", "context_length", "d_model", "n_layers", "d_ff", "bias",
            "tie_weights", "positions")
    return [Case(label, (), dict(zip(keys, values))) for label, *values in specs]


def _count_visible():
    return _count_cases([
        ("vocab 65, context 64, d_model 128, 4 layers", 65, 64, 128, 4, None, True, False,
         "learned"),
        ("tied, vocab 50, context 32, d_model 64, 2 layers, d_ff 100", 50, 32, 64, 2, 100,
         True, True, "learned"),
        ("sinusoidal positions, bias=False, vocab 30, context 16, d_model 32, 3 layers", 30,
         16, 32, 3, None, False, False, "sinusoidal"),
    ])


def _count_hidden():
    return _count_cases([
        ("tied, sinusoidal, vocab 100, context 128, d_model 48, 5 layers, d_ff 120", 100, 128,
         48, 5, 120, True, True, "sinusoidal"),
        ("bias=False, vocab 77, context 20, d_model 40, 2 layers", 77, 20, 40, 2, None, False,
         False, "learned"),
        ("GPT-2 small: vocab 50257, context 1024, d_model 768, 12 layers, tied", 50257, 1024,
         768, 12, None, True, True, "learned"),
    ])


_COUNT_MISTAKES = (
    ("tied weights counted twice",
     "With tie_weights the output layer reuses the token embedding matrix: count "
     "vocab_size * d_model once, not twice."),
    ("biases forgotten",
     "Your count leaves out the biases: with bias=True each of the 4 attention projections "
     "has d_model, expand has d_ff and contract has d_model."),
    ("LayerNorm shifts dropped with bias=False",
     "With bias=False only the attention and feed-forward layers lose their biases; every "
     "LayerNorm keeps its scale AND its shift (2 * d_model each)."),
    ("contract bias forgotten",
     "Your count is one bias vector of d_model short in every block: contract's bias in the "
     "feed-forward network (d_ff + d_model biases per block), or one of the four attention "
     "projections' biases (4 * d_model per block)."),
    ("head bias counted",
     "The output layer (lm_head) has no bias, as in GPT-2: it adds vocab_size * d_model "
     "weights only (none when tied)."),
    ("LayerNorm forgotten",
     "Your count leaves out the LayerNorms: each has a scale and a shift of d_model "
     "numbers, two per block plus the final one."),
    ("LayerNorm as one vector",
     "Each LayerNorm has TWO vectors of d_model numbers (scale and shift), not one."),
    ("final LayerNorm forgotten",
     "Your count leaves out the final LayerNorm before the output layer (2 * d_model)."),
    ("attention as 3 d_model^2",
     "Attention has FOUR d_model x d_model matrices, query, key, value and the output "
     "projection, not three (and four bias vectors)."),
    ("positions forgotten",
     "Learned positions are parameters too: add context_length * d_model when "
     "positions == 'learned'."),
    ("sinusoidal counted",
     "Sinusoidal positions are computed, not learned: they add no parameters."),
    ("d_ff ignored",
     "Your count always uses 4 * d_model for the hidden size of the feed-forward network; "
     "use d_ff when it is given."),
)

register(Exercise(
    id="gpt_parameter_count",
    chapter=CHAPTER,
    title="Exercise 2: the parameter-count formula",
    reference=ref.gpt_parameter_count,
    visible=_count_visible,
    hidden=_count_hidden,
    run=_run_count,
    compare=compare_counts,
    mistakes=tuple(Mistake(name, message, _count_variant(name))
                   for name, message in _COUNT_MISTAKES),
    forbidden=("gptcourse.model.gpt_parameter_count", "gptcourse.model.GPT",
               "gptcourse.model.count_parameters"),
))


# -- GPT-3 ----------------------------------------------------------------------------------

GPT3 = {"vocab_size": 50257, "context_length": 2048, "d_model": 12288, "n_layers": 96,
        "n_heads": 96}


def gpt3_arithmetic() -> dict:
    """GPT-3 in numbers: its d_head, its heads in all layers, its parameters (tied).

    GPT-3 follows GPT-2: learned positions, biases, the output layer tied to the token
    embedding, d_ff = 4 * d_model.
    """
    return {
        "d_head": GPT3["d_model"] // GPT3["n_heads"],
        "heads": GPT3["n_layers"] * GPT3["n_heads"],
        "parameters": ref.gpt_parameter_count(
            GPT3["vocab_size"], GPT3["context_length"], GPT3["d_model"], GPT3["n_layers"],
            tie_weights=True),
    }


def _gpt3_heads_per_layer():
    return {**gpt3_arithmetic(), "heads": GPT3["n_heads"]}


def _gpt3_untied():
    numbers = gpt3_arithmetic()
    return {**numbers, "parameters": numbers["parameters"]
            + GPT3["vocab_size"] * GPT3["d_model"]}


def _gpt3_cases():
    return [Case("GPT-3: 96 layers, d_model 12288, 96 heads, vocab 50257, context 2048")]


register(Exercise(
    id="gpt3_arithmetic",
    chapter=CHAPTER,
    title="Exercise 3: GPT-3's arithmetic",
    reference=gpt3_arithmetic,
    visible=_gpt3_cases,
    hidden=_gpt3_cases,
    compare=compare_counts,
    mistakes=(
        Mistake("heads of one layer",
                "You counted the heads of one layer; every one of the 96 layers has its own "
                "96 heads: n_layers * n_heads.",
                _gpt3_heads_per_layer),
        Mistake("untied",
                "GPT-3 ties its output layer to the token embedding (as GPT-2 does): call "
                "your formula with tie_weights=True.",
                _gpt3_untied),
    ),
))
