"""Checks for chapter 06: the feed-forward network, LayerNorm and the decoder block.

Each exercise is a module built from plain case data (sizes and a state dict of tensors).
The feed-forward network is compared with the course's, LayerNorm with torch's
``nn.LayerNorm`` (biased variance, eps inside the square root), and the decoder block with
the course's pre-norm block.
"""

import functools

import torch
import torch.nn.functional as F
from torch import nn

from gptcourse import block as ref_block
from gptcourse import feedforward as ref_ff
from gptcourse.checks import Case, Exercise, Mistake, register
from gptcourse.checks.multi_head_attention import load_weights, random_state, run_module

CHAPTER = "06-feed-forward"


# -- the feed-forward network -----------------------------------------------------------

class _FeedForwardVariant(ref_ff.FeedForward):
    def __init__(self, d_model, d_ff=None, *, mistake):
        super().__init__(d_model, d_ff)
        self.mistake = mistake

    def forward(self, x):
        if self.mistake == "no activation":
            return self.contract(self.expand(x))
        if self.mistake == "activation after the second linear":
            return F.gelu(self.contract(self.expand(x)))
        if self.mistake == "relu instead of gelu":
            return self.contract(F.relu(self.expand(x)))
        return self.contract(F.gelu(self.expand(x), approximate="tanh"))


def _ff_variant(mistake):
    return functools.partial(_FeedForwardVariant, mistake=mistake)


def _run_feed_forward(candidate, case):
    kw = case.kwargs
    made = candidate(kw["d_model"]) if kw["d_ff"] is None else candidate(kw["d_model"], kw["d_ff"])
    module = load_weights(made, kw["state"], (
        ("expand.weight", "expand is nn.Linear(d_model, d_ff) and contract is "
                          "nn.Linear(d_ff, d_model); d_ff defaults to 4 * d_model."),
        ("contract.weight", "contract is nn.Linear(d_ff, d_model); d_ff defaults to "
                            "4 * d_model."),
    ))
    return run_module(module, kw["x"])


def _ff_case(label, g, shape, d_model, d_ff, dtype=torch.float32):
    with torch.device("meta"):                # only the names and shapes
        template = ref_ff.FeedForward(d_model, d_ff)
    return Case(label, (), {"d_model": d_model, "d_ff": d_ff,
                            "state": random_state(template, g, dtype),
                            "x": torch.randn(*shape, d_model, generator=g, dtype=dtype)})


def _ff_visible():
    g = torch.Generator().manual_seed(6101)
    return [
        _ff_case("d_ff not given: 512 -> 4 * 512 = 2048 -> 512, B=1, T=2", g, (1, 2), 512,
                 None),
        _ff_case("d_ff=24: 16 -> 24 -> 16, B=2, T=3", g, (2, 3), 16, 24),
    ]


def _ff_hidden():
    g = torch.Generator().manual_seed(6102)
    return [
        _ff_case("float64, 12 -> 20 -> 12, B=2, T=3", g, (2, 3), 12, 20, torch.float64),
        _ff_case("d_ff not given (4 * d_model), B=2, T=3, d_model=8", g, (2, 3), 8, None),
        _ff_case("a 2-D input (T, d_model) = (6, 10), d_ff=24", g, (6,), 10, 24),
    ]


register(Exercise(
    id="FeedForward",
    chapter=CHAPTER,
    title="Exercise 1: the position-wise feed-forward network",
    reference=ref_ff.FeedForward,
    visible=_ff_visible,
    hidden=_ff_hidden,
    run=_run_feed_forward,
    mistakes=(
        Mistake("no activation",
                "Your network has no activation between the two linear layers, so it is one "
                "linear map in disguise. Apply GELU (nn.GELU() or F.gelu) to the output of "
                "expand, before contract.",
                _ff_variant("no activation")),
        Mistake("activation after the second linear",
                "Your GELU comes after contract instead of between expand and contract. "
                "The order is contract(gelu(expand(x))).",
                _ff_variant("activation after the second linear")),
        Mistake("relu instead of gelu",
                "You used ReLU; this course's network (like GPT-2's) uses GELU. Use nn.GELU() "
                "or F.gelu.",
                _ff_variant("relu instead of gelu")),
        Mistake("tanh-approximate gelu",
                "You used the tanh approximation of GELU; use the exact one: nn.GELU() or "
                "F.gelu(x) without approximate='tanh'.",
                _ff_variant("tanh-approximate gelu")),
    ),
    forbidden=("gptcourse.feedforward.FeedForward",),
))


# -- LayerNorm ------------------------------------------------------------------------------

class TorchLayerNorm(nn.LayerNorm):
    """``torch.nn.LayerNorm`` with the course's signature (d_model, eps=1e-5)."""

    def __init__(self, d_model: int, eps: float = 1e-5):
        super().__init__(d_model, eps=eps)


class _LayerNormVariant(ref_block.LayerNorm):
    def __init__(self, d_model, eps=1e-5, *, mistake):
        super().__init__(d_model, 1e-5 if mistake == "eps ignored" else eps)
        self.mistake = mistake

    def forward(self, x):
        m = self.mistake
        dim = {"normalised over the batch": 0, "normalised over the positions": -2,
               "normalised over everything": tuple(range(x.dim()))}.get(m, -1)
        mean = x.mean(dim=dim, keepdim=True)
        var = x.var(dim=dim, keepdim=True, unbiased=(m == "unbiased variance"))
        if m == "eps outside the sqrt":
            normed = (x - mean) / (torch.sqrt(var) + self.eps)
        else:
            normed = (x - mean) / torch.sqrt(var + self.eps)
        if m == "no scale and shift":
            return normed
        return normed * self.weight + self.bias


def _ln_variant(mistake):
    return functools.partial(_LayerNormVariant, mistake=mistake)


def _run_layer_norm(candidate, case):
    if candidate is nn.LayerNorm:
        raise TypeError("this is torch's own LayerNorm, the one yours is compared with; "
                        "write your own forward")
    kw = case.kwargs
    made = candidate(kw["d_model"]) if kw["eps"] is None else candidate(kw["d_model"],
                                                                        eps=kw["eps"])
    module = load_weights(made, kw["state"], (
        ("weight", "weight and bias are nn.Parameter vectors of length d_model."),
        ("bias", "weight and bias are nn.Parameter vectors of length d_model."),
    ))
    return run_module(module, kw["x"])


def _ln_case(label, g, shape, d_model, eps=None, dtype=torch.float32, small_rows=True):
    """Some rows have a spread near 0.003, where eps (1e-5) is about the variance: there
    eps inside or outside the square root makes a visible difference."""
    x = torch.randn(*shape, d_model, generator=g, dtype=dtype) * 2.0 + 0.5
    if small_rows:
        scale = torch.where(torch.rand(*shape, 1, generator=g, dtype=dtype) < 0.5, 0.003, 1.0)
        x = x * scale.to(dtype)
    with torch.device("meta"):                # only the names and shapes
        template = ref_block.LayerNorm(d_model)
    return Case(label, (), {"d_model": d_model, "eps": eps,
                            "state": random_state(template, g, dtype), "x": x})


def _ln_visible():
    g = torch.Generator().manual_seed(6201)
    return [
        _ln_case("B=2, T=5, d_model=8, some rows with a tiny spread", g, (2, 5), 8),
        _ln_case("eps=0.01, B=2, T=3, d_model=512", g, (2, 3), 512, eps=0.01),
    ]


def _ln_hidden():
    g = torch.Generator().manual_seed(6202)
    return [
        _ln_case("float64, B=3, T=4, d_model=6", g, (3, 4), 6, dtype=torch.float64),
        _ln_case("eps=0.1, B=2, T=3, d_model=10", g, (2, 3), 10, eps=0.1),
        _ln_case("a 2-D input (T, d_model) = (5, 7)", g, (5,), 7),
    ]


register(Exercise(
    id="LayerNorm",
    chapter=CHAPTER,
    title="Exercise 2: LayerNorm (compared with torch.nn.LayerNorm)",
    reference=TorchLayerNorm,
    visible=_ln_visible,
    hidden=_ln_hidden,
    run=_run_layer_norm,
    mistakes=(
        Mistake("unbiased variance",
                "Your variance divides by d_model - 1 (torch.var's default, unbiased=True); "
                "LayerNorm divides by d_model. Use x.var(dim=-1, keepdim=True, "
                "unbiased=False).",
                _ln_variant("unbiased variance")),
        Mistake("eps outside the sqrt",
                "You add eps after the square root, (x - mean) / (std + eps); LayerNorm adds "
                "it inside: (x - mean) / sqrt(var + eps).",
                _ln_variant("eps outside the sqrt")),
        Mistake("eps ignored",
                "Your LayerNorm ignores its eps argument and always uses 1e-5: keep it "
                "(self.eps = eps in __init__) and use self.eps in forward.",
                _ln_variant("eps ignored")),
        Mistake("normalised over the batch",
                "You normalise over the batch dimension (dim=0), as BatchNorm does; LayerNorm "
                "normalises each position's vector over its own features: dim=-1, "
                "keepdim=True.",
                _ln_variant("normalised over the batch")),
        Mistake("normalised over the positions",
                "You normalise over the positions (dim=-2 or 1); LayerNorm normalises each "
                "position's vector over its own features: dim=-1, keepdim=True.",
                _ln_variant("normalised over the positions")),
        Mistake("normalised over everything",
                "You take one mean and one variance over the whole tensor; LayerNorm takes "
                "them per position, over the last dimension: x.mean(dim=-1, keepdim=True).",
                _ln_variant("normalised over everything")),
        Mistake("no scale and shift",
                "You normalise but never apply the learned scale and shift: multiply by "
                "self.weight and add self.bias at the end.",
                _ln_variant("no scale and shift")),
    ),
    forbidden=("gptcourse.block.LayerNorm", "torch.nn.LayerNorm"),
))


# -- the decoder block -----------------------------------------------------------------------

class _BlockVariant(ref_block.DecoderBlock):
    def __init__(self, config, *, mistake):
        super().__init__(config)
        self.mistake = mistake

    def forward(self, x, kv_cache=None, causal=True):
        m = self.mistake
        if m == "sub-layers in parallel":
            return x + self.attn(self.ln_attn(x), causal=causal) + self.ff(self.ln_ff(x))
        if m == "one LayerNorm for both":
            x = x + self.attn(self.ln_attn(x), causal=causal)
            return x + self.ff(self.ln_attn(x))
        if m == "feed-forward first":
            x = x + self.ff(self.ln_ff(x))
            return x + self.attn(self.ln_attn(x), causal=causal)
        if m == "causal not passed on":
            x = x + self.attn(self.ln_attn(x))
            return x + self.ff(self.ln_ff(x))
        if m == "post-norm":
            x = self.ln_attn(x + self.attn(x, causal=causal))
            return self.ln_ff(x + self.ff(x))
        if m == "no residuals":
            x = self.attn(self.ln_attn(x), causal=causal)
            return self.ff(self.ln_ff(x))
        if m == "no attention residual":
            x = self.attn(self.ln_attn(x), causal=causal)
            return x + self.ff(self.ln_ff(x))
        if m == "no feed-forward residual":
            x = x + self.attn(self.ln_attn(x), causal=causal)
            return self.ff(self.ln_ff(x))
        if m == "no LayerNorm":
            x = x + self.attn(x, causal=causal)
            return x + self.ff(x)
        if m == "residual after the norm":
            h = self.ln_attn(x)
            h = h + self.attn(h, causal=causal)
            return self.ln_ff(h) + self.ff(self.ln_ff(h))
        # "not causal"
        x = x + self.attn(self.ln_attn(x), causal=False)
        return x + self.ff(self.ln_ff(x))


def _block_variant(mistake):
    return functools.partial(_BlockVariant, mistake=mistake)


def block_config(d_model: int, n_heads: int, d_ff: int | None):
    """The GPTConfig a block of these sizes is built from (vocabulary and depth unused)."""
    from gptcourse.model import GPTConfig

    return GPTConfig(vocab_size=1, context_length=1, d_model=d_model, n_heads=n_heads,
                     n_layers=1, d_ff=d_ff, dropout=0.0, fast_attention=False)


def _run_block(candidate, case):
    """Build the block from the case's config and weights; run it on x.

    ``causal`` is passed only when False, so a causal case also checks the default.
    """
    kw = case.kwargs
    config = block_config(kw["d_model"], kw["n_heads"], kw["d_ff"])
    module = load_weights(candidate(config), kw["state"], (
        ("ff.expand.weight", "ff is your FeedForward(config.d_model, config.d_ff)."),
    ))
    return run_module(module, kw["x"], where=" (look in your LayerNorm and FeedForward too)",
                      **({} if kw["causal"] else {"causal": False}))


def _block_case(label, g, B, T, d_model, n_heads, d_ff=None, dtype=torch.float32,
                causal=True):
    with torch.device("meta"):                # only the names and shapes
        template = ref_block.DecoderBlock(block_config(d_model, n_heads, d_ff))
    return Case(label, (), {"d_model": d_model, "n_heads": n_heads, "d_ff": d_ff,
                            "causal": causal, "state": random_state(template, g, dtype),
                            "x": torch.randn(B, T, d_model, generator=g, dtype=dtype) * 2.0})


def _block_visible():
    g = torch.Generator().manual_seed(6301)
    return [
        _block_case("d_model=16, 4 heads, d_ff=24, B=2, T=4, causal", g, 2, 4, 16, 4, 24),
        _block_case("causal=False, d_model=8, 2 heads, d_ff not given, B=1, T=4", g, 1, 4, 8,
                    2, causal=False),
    ]


def _block_hidden():
    g = torch.Generator().manual_seed(6302)
    return [
        _block_case("float64, d_model=12, 3 heads, d_ff=20, B=2, T=5, causal", g, 2, 5, 12, 3,
                    20, torch.float64),
        _block_case("causal=False, d_model=8, 2 heads, d_ff=16, B=2, T=3", g, 2, 3, 8, 2, 16,
                    causal=False),
    ]


register(Exercise(
    id="DecoderBlock",
    chapter=CHAPTER,
    title="Exercise 3: the pre-norm decoder block",
    reference=ref_block.DecoderBlock,
    visible=_block_visible,
    hidden=_block_hidden,
    run=_run_block,
    mistakes=(
        Mistake("post-norm",
                "Your block normalises after adding the residual (post-norm, the 2017 paper's "
                "order). This course uses pre-norm: x = x + attn(ln_attn(x)), then "
                "x = x + ff(ln_ff(x)).",
                _block_variant("post-norm")),
        Mistake("no residuals",
                "Your block has no residual connections: add each sub-layer's output to its "
                "input, x = x + attn(ln_attn(x)) and x = x + ff(ln_ff(x)).",
                _block_variant("no residuals")),
        Mistake("no attention residual",
                "The attention sub-layer has no residual connection: "
                "x = x + attn(ln_attn(x)), not x = attn(ln_attn(x)).",
                _block_variant("no attention residual")),
        Mistake("no feed-forward residual",
                "The feed-forward sub-layer has no residual connection: "
                "x = x + ff(ln_ff(x)), not x = ff(ln_ff(x)).",
                _block_variant("no feed-forward residual")),
        Mistake("no LayerNorm",
                "Your block never applies ln_attn and ln_ff: normalise the input of each "
                "sub-layer, attn(ln_attn(x)) and ff(ln_ff(x)).",
                _block_variant("no LayerNorm")),
        Mistake("residual after the norm",
                "Your residual adds the normalised x instead of the raw x: the residual path "
                "must carry x untouched, x = x + attn(ln_attn(x)).",
                _block_variant("residual after the norm")),
        Mistake("not causal",
                "Your block's attention sees future tokens: call self.attn(..., causal=True) "
                "(the default of the course's MultiHeadAttention).",
                _block_variant("not causal")),
        Mistake("causal not passed on",
                "Your block ignores causal=False: its attention stays masked. Pass the "
                "argument on: self.attn(self.ln_attn(x), causal=causal).",
                _block_variant("causal not passed on")),
        Mistake("sub-layers in parallel",
                "Your block feeds the same x to attention and to the feed-forward network "
                "and adds both. They run one after the other: the feed-forward sub-layer "
                "reads x AFTER the attention residual, x = x + attn(ln_attn(x)), then "
                "x = x + ff(ln_ff(x)).",
                _block_variant("sub-layers in parallel")),
        Mistake("one LayerNorm for both",
                "Both sub-layers use ln_attn. Each has its own LayerNorm with its own scale "
                "and shift: attn(ln_attn(x)), then ff(ln_ff(x)).",
                _block_variant("one LayerNorm for both")),
        Mistake("feed-forward first",
                "Your block runs the feed-forward sub-layer before attention. Attention comes "
                "first: x = x + attn(ln_attn(x)), then x = x + ff(ln_ff(x)).",
                _block_variant("feed-forward first")),
    ),
    forbidden=("gptcourse.block.DecoderBlock",),
))
