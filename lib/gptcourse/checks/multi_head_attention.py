"""Checks for chapter 05, multi-head attention.

The exercises: splitting a (B, T, d_model) tensor into heads and merging them back, the
per-head loop, and the batched module. The two modules are built from plain case data (the
sizes and a state dict of tensors) and judged on their output, their attention weights and
on which input dimensions each head reacts to. The batched module is compared with
``torch.nn.MultiheadAttention`` holding the same weights.

The helpers :func:`load_weights`, :func:`random_state` and :func:`run_module` are shared
with the checks of the next chapters, which build modules from case data the same way. Only
parameters travel with a case: buffers a learner's module keeps for itself (a saved causal
mask, say) are its own business.
"""

import copy
import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from gptcourse import attention as ref
from gptcourse.checks import Case, Exercise, Mistake, register
from gptcourse.checks.core import InputModified, Unfit, compare_outputs
from gptcourse.tolerances import tolerance

CHAPTER = "05-multi-head-attention"


# -- building a learner's module from case data -----------------------------------------

def random_state(template: nn.Module, generator: torch.Generator, dtype: torch.dtype,
                 overrides: dict | None = None) -> dict[str, torch.Tensor]:
    """Fresh values, drawn from ``generator``, for every parameter of ``template``.

    Weights get a spread of 1 / sqrt(fan_in) (outputs keep a spread near 1), biases and
    LayerNorm shifts 0.1, LayerNorm scales 1 +- 0.1, so that a forgotten bias or LayerNorm
    changes the output clearly. Buffers are left out: they are not learned.
    """
    overrides = overrides or {}
    state = {}
    for name, tensor in template.named_parameters(remove_duplicate=False):
        if name in overrides:
            state[name] = overrides[name]
            continue
        shape = tensor.shape
        noise = torch.randn(shape, generator=generator, dtype=dtype)
        if name.endswith("bias"):
            state[name] = 0.1 * noise
        elif tensor.dim() == 1:                   # a LayerNorm scale
            state[name] = 1.0 + 0.1 * noise
        else:
            state[name] = noise / math.sqrt(shape[-1])
    return state


def load_weights(module: nn.Module, state: dict[str, torch.Tensor], shape_hints=(),
                 extra_hints=()) -> nn.Module:
    """Copy ``state`` into the parameters of ``module`` (converted to the state's dtype),
    with errors that name the parameter and say what to change.

    Only parameters are compared and copied; the module's buffers stay as they are.
    ``shape_hints``: pairs (name suffix, advice) added to a shape mismatch of that name;
    ``extra_hints``: pairs (name suffix, advice) added when the module has a parameter of
    that name that the course's has not.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"your class built a {type(module).__name__}, not an nn.Module: "
                        "subclass nn.Module and call super().__init__() first")
    dtype = next((t.dtype for t in state.values() if t.is_floating_point()), torch.float32)
    module = module.to(dtype)
    mine = dict(module.named_parameters(remove_duplicate=False))
    missing = [name for name in state if name not in mine]
    if missing:
        name = missing[0]
        advice = (f"; {name} is a plain tensor or a buffer in yours: wrap it in "
                  "nn.Parameter(...) so that it is learned" if _is_tensor(module, name) else
                  "; name the layers as the exercise says")
        raise Unfit(
            f"your module has no parameter {name!r} (expected names: "
            f"{', '.join(state)}){advice}")
    unexpected = [name for name in mine if name not in state]
    if unexpected:
        name = unexpected[0]
        advice = next((text for suffix, text in extra_hints if name.endswith(suffix)), "")
        if not advice and name.endswith(".bias") and not any(k.endswith("bias") for k in state):
            advice = ("This case builds your module with bias=False: pass bias=bias on to "
                      "every nn.Linear.")
        raise Unfit(
            f"your module has a parameter {name!r} the course's does not have; "
            f"keep exactly these: {', '.join(state)}. {advice}".strip())
    for name, tensor in state.items():
        if mine[name].shape != tensor.shape:
            advice = next((text for suffix, text in shape_hints if name.endswith(suffix)), "")
            raise Unfit(
                f"{name} has shape {tuple(mine[name].shape)} in your module but "
                f"{tuple(tensor.shape)} in the course's. {advice}".strip())
    with torch.no_grad():
        for name, tensor in state.items():
            mine[name].copy_(tensor)
    return module.eval()


def _is_tensor(module: nn.Module, name: str) -> bool:
    """True when ``module`` holds a tensor (not a parameter) under the dotted ``name``."""
    path, _, attribute = name.rpartition(".")
    try:
        owner = module.get_submodule(path)
    except AttributeError:
        return False
    return isinstance(getattr(owner, attribute, None), torch.Tensor)


def run_module(module: nn.Module, x: torch.Tensor, *args, where: str = "", **kwargs):
    """``module(copy of x, ...)`` without gradients; fails if the copy was changed in place.

    A module that overwrites its input (``x.sub_(mean)``) can return the right values and
    still break whatever uses that input next, such as the residual path of a block.
    ``where`` names the parts to look in, for a module built from others.
    """
    used = x.clone()
    with torch.no_grad():
        result = module(used, *args, **kwargs)
    if not torch.equal(used, x):
        raise InputModified(
            f"your module changed its input x in place{where}; compute new tensors instead "
            "(x - mean, not x.sub_(mean) or x -= mean)")
    return result


# -- split and merge ----------------------------------------------------------------------

def split_heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """x (B, T, d_model) -> (B, n_heads, T, d_head): head h gets dims h*d_head:(h+1)*d_head."""
    B, T, d_model = x.shape
    return x.view(B, T, n_heads, d_model // n_heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """x (B, n_heads, T, d_head) -> (B, T, n_heads * d_head), heads side by side per token."""
    B, H, T, d_head = x.shape
    return x.transpose(1, 2).reshape(B, T, H * d_head)


def _split_no_transpose(x, n_heads):
    B, T, d_model = x.shape
    return x.reshape(B, n_heads, T, d_model // n_heads)


def _split_strided(x, n_heads):
    B, T, d_model = x.shape
    return x.view(B, T, d_model // n_heads, n_heads).permute(0, 3, 1, 2)


def _merge_no_transpose(x):
    B, H, T, d_head = x.shape
    return x.reshape(B, T, H * d_head)


def _merge_strided(x):
    B, H, T, d_head = x.shape
    return x.permute(0, 2, 3, 1).reshape(B, T, H * d_head)


def _split_cases(seed, specs):
    g = torch.Generator().manual_seed(seed)
    return [Case(label, (torch.randn(B, T, d_model, generator=g, dtype=dtype), H))
            for label, B, T, d_model, H, dtype in specs]


def _split_visible():
    return _split_cases(5101, [
        ("512 dimensions into 8 heads of 64, B=2, T=6", 2, 6, 512, 8, torch.float32),
        ("12 dimensions into 3 heads of 4, B=1, T=5", 1, 5, 12, 3, torch.float32),
    ])


def _split_hidden():
    return _split_cases(5102, [
        ("float64, 24 dimensions into 4 heads of 6, B=3, T=7", 3, 7, 24, 4, torch.float64),
        ("16 dimensions into 2 heads, B=2, T=3", 2, 3, 16, 2, torch.float32),
        ("a single token, 8 dimensions into 4 heads", 1, 1, 8, 4, torch.float32),
    ])


def _merge_cases(seed, specs):
    g = torch.Generator().manual_seed(seed)
    return [Case(label, (torch.randn(B, H, T, d_head, generator=g, dtype=dtype),))
            for label, B, H, T, d_head, dtype in specs]


def _merge_visible():
    return _merge_cases(5111, [
        ("8 heads of 64 back into 512 dimensions, B=2, T=6", 2, 8, 6, 64, torch.float32),
        ("3 heads of 4, B=1, T=5", 1, 3, 5, 4, torch.float32),
    ])


def _merge_hidden():
    return _merge_cases(5112, [
        ("float64, 4 heads of 6, B=3, T=7", 3, 4, 7, 6, torch.float64),
        ("2 heads of 8, B=2, T=3", 2, 2, 3, 8, torch.float32),
    ])


_SPLIT_NO_TRANSPOSE = (
    "You reshaped (B, T, d_model) straight to (B, n_heads, T, d_head) with no transpose, so "
    "each 'head' holds pieces of several tokens. View as (B, T, n_heads, d_head) first, then "
    "swap dims 1 and 2 with .transpose(1, 2).")
_SPLIT_STRIDED = (
    "Your heads take every n_heads-th dimension (0, H, 2H, ...) instead of a block of d_head "
    "neighbouring ones. View as (B, T, n_heads, d_head), not (B, T, d_head, n_heads).")
_MERGE_NO_TRANSPOSE = (
    "You reshaped (B, n_heads, T, d_head) straight to (B, T, d_model) with no transpose, so "
    "each token's row gets pieces of other tokens. Transpose to (B, T, n_heads, d_head) "
    "first, then reshape (after .contiguous(), or use .reshape).")
_MERGE_STRIDED = (
    "Your merge interleaves the heads (dimension 0 of every head, then dimension 1, ...) "
    "instead of putting head 0's d_head values first, then head 1's. Transpose to "
    "(B, T, n_heads, d_head) and reshape, without moving d_head in front of n_heads.")

register(Exercise(
    id="split_heads",
    chapter=CHAPTER,
    title="Exercise 1: split into heads",
    reference=split_heads,
    visible=_split_visible,
    hidden=_split_hidden,
    mistakes=(
        Mistake("split without transpose", _SPLIT_NO_TRANSPOSE, _split_no_transpose),
        Mistake("strided split", _SPLIT_STRIDED, _split_strided),
    ),
))

register(Exercise(
    id="merge_heads",
    chapter=CHAPTER,
    title="Exercise 2: merge the heads",
    reference=merge_heads,
    visible=_merge_visible,
    hidden=_merge_hidden,
    mistakes=(
        Mistake("merge without transpose", _MERGE_NO_TRANSPOSE, _merge_no_transpose),
        Mistake("strided merge", _MERGE_STRIDED, _merge_strided),
    ),
))


# -- the attention modules ------------------------------------------------------------------

def _linear(d_model: int, bias: bool) -> nn.Linear:
    """nn.Linear(d_model, d_model) left uninitialised: the case's weights replace them."""
    return torch.nn.utils.skip_init(nn.Linear, d_model, d_model, bias=bias)


class TorchMultiHeadAttention(nn.Module):
    """``torch.nn.MultiheadAttention`` behind the course's parameter names.

    .query .key .value .out are nn.Linear(d_model, d_model); torch's module gets
    ``in_proj_weight = cat(query.weight, key.weight, value.weight)`` and the output
    projection, and runs with ``batch_first=True``.
    forward(x (B, T, d_model), causal=True, return_weights=False) -> out (B, T, d_model),
    or (out, weights (B, n_heads, T, T)).
    """

    def __init__(self, d_model: int, n_heads: int, bias: bool = True):
        super().__init__()
        self.d_model, self.n_heads, self.bias = d_model, n_heads, bias
        self.query = _linear(d_model, bias)
        self.key = _linear(d_model, bias)
        self.value = _linear(d_model, bias)
        self.out = _linear(d_model, bias)

    def forward(self, x, causal=True, return_weights=False):
        T = x.shape[1]
        # skip_init: the weights are overwritten at once, so do not spend time drawing them
        torch_mha = torch.nn.utils.skip_init(nn.MultiheadAttention, self.d_model, self.n_heads,
                                             bias=self.bias, batch_first=True, dtype=x.dtype)
        with torch.no_grad():
            torch_mha.in_proj_weight.copy_(
                torch.cat([self.query.weight, self.key.weight, self.value.weight]))
            torch_mha.out_proj.weight.copy_(self.out.weight)
            if self.bias:
                torch_mha.in_proj_bias.copy_(
                    torch.cat([self.query.bias, self.key.bias, self.value.bias]))
                torch_mha.out_proj.bias.copy_(self.out.bias)
        blocked = torch.ones(T, T, dtype=torch.bool).triu(1) if causal else None
        out, weights = torch_mha.eval()(x, x, x, attn_mask=blocked, need_weights=True,
                                        average_attn_weights=False)
        return (out, weights) if return_weights else out


class _MultiHeadVariant(nn.Module):
    """The batched module with one classic mistake switched on (same parameters)."""

    def __init__(self, d_model, n_heads, bias=True, *, mistake):
        super().__init__()
        self.d_model, self.n_heads, self.mistake = d_model, n_heads, mistake
        self.query = _linear(d_model, bias)
        self.key = _linear(d_model, bias)
        self.value = _linear(d_model, bias)
        self.out = _linear(d_model, bias)

    def _project(self, layer, x):
        if self.mistake != "slice input":
            return layer(x)
        # Head h sees only input dims h*d_head:(h+1)*d_head: a block-diagonal weight.
        d_head = self.d_model // self.n_heads
        blocks = torch.block_diag(*[torch.ones(d_head, d_head, dtype=x.dtype)] * self.n_heads)
        return F.linear(x, layer.weight * blocks, layer.bias)

    def forward(self, x, causal=True, return_weights=False):
        B, T, D = x.shape
        H, m = self.n_heads, self.mistake
        d_head = D // H
        split = (_split_no_transpose if m in ("split without transpose", "no transpose at all")
                 else split_heads)
        q, k, v = (split(self._project(layer, x), H)
                   for layer in (self.query, self.key, self.value))   # (B, H, T, d_head)
        scale = {"scaled by sqrt(d_model)": math.sqrt(D), "unscaled": 1.0}.get(
            m, math.sqrt(d_head))
        scores = q @ k.transpose(-2, -1) / scale                      # (B, H, T, T)
        masked = (causal or m == "causal ignored") and m not in (
            "no mask", "mask after softmax", "blocked scores set to 0")
        if masked:
            scores = scores + ref.causal_mask(T, x.dtype)
        if causal and m == "blocked scores set to 0":
            scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), 0.0)
        weights = torch.softmax(scores, dim=-2 if m == "softmax over the wrong dim" else -1)
        if causal and m == "mask after softmax":
            weights = weights * torch.ones(T, T, dtype=x.dtype).tril()
        y = weights @ v                                               # (B, H, T, d_head)
        merge = (_merge_no_transpose if m in ("merge without transpose", "no transpose at all")
                 else merge_heads)
        y = merge(y)                                                  # (B, T, d_model)
        if m != "no output projection":
            y = self.out(y)
        return (y, weights) if return_weights else y


def _variant(mistake):
    return functools.partial(_MultiHeadVariant, mistake=mistake)


_HEADS_DEPEND_ON_ALL = (
    "every head's query and key must come from a projection of ALL d_model input "
    "dimensions (an nn.Linear(d_model, d_model) whose rows h*d_head:(h+1)*d_head are head "
    "h's), not from a slice of the input vector")

MHA_MISTAKES = (
    Mistake("slice input",
            "Your heads are made by slicing the input vector before any projection, so head "
            "h only sees input dimensions h*d_head:(h+1)*d_head. Instead, "
            f"{_HEADS_DEPEND_ON_ALL}.",
            _variant("slice input")),
    Mistake("no transpose at all",
            "You split and merged the heads with reshape/view and no transpose, so a head "
            "mixes pieces of different tokens. Split: view (B, T, n_heads, d_head) then "
            ".transpose(1, 2); merge: .transpose(1, 2) back before the reshape.",
            _variant("no transpose at all")),
    Mistake("split without transpose",
            "You split into heads with a reshape/view to (B, n_heads, T, d_head) and no "
            "transpose, so a head mixes pieces of different tokens. View as "
            "(B, T, n_heads, d_head), then .transpose(1, 2).",
            _variant("split without transpose")),
    Mistake("merge without transpose",
            "Your attention weights are right, but the heads are merged with a reshape/view "
            "and no transpose, so a token's row gets pieces of other tokens. Transpose "
            "(B, n_heads, T, d_head) to (B, T, n_heads, d_head) before the reshape.",
            _variant("merge without transpose")),
    Mistake("scaled by sqrt(d_model)",
            "Your scores are divided by sqrt(d_model) instead of sqrt(d_head): each head's "
            "dot products have d_head terms, so scale by math.sqrt(d_head).",
            _variant("scaled by sqrt(d_model)")),
    Mistake("unscaled",
            "Your scores are not scaled at all: divide q @ k^T by math.sqrt(d_head) before "
            "the softmax.",
            _variant("unscaled")),
    Mistake("softmax over the wrong dim",
            "Your softmax runs over the queries (dim=-2), so columns sum to 1 instead of "
            "rows. Each query's weights over the keys must sum to 1: use dim=-1.",
            _variant("softmax over the wrong dim")),
    Mistake("mask after softmax",
            "You zero the future after the softmax, so the remaining weights no longer sum "
            "to 1. Add the -inf mask to the scores BEFORE the softmax.",
            _variant("mask after softmax")),
    Mistake("no mask",
            "Your attention ignores causal=True: every token also looks at later tokens. Add "
            "a causal mask (-inf above the diagonal) to the scores when causal is True.",
            _variant("no mask")),
    Mistake("blocked scores set to 0",
            "You set the blocked scores to 0 instead of -inf. A score of 0 still gets "
            "exp(0) = 1 and so a real share of the weight: fill them with float('-inf').",
            _variant("blocked scores set to 0")),
    Mistake("causal ignored",
            "Your attention masks the future even when causal=False: apply the mask only "
            "when causal is True (an encoder lets every token see every other).",
            _variant("causal ignored")),
    Mistake("no output projection",
            "Your heads are merged but never mixed: apply the output projection self.out to "
            "the merged (B, T, d_model) tensor.",
            _variant("no output projection")),
)

_SHAPE_HINTS = (
    ("weight", "If your heads project slices of the input with nn.Linear(d_head, d_head), "
               f"that is the mistake of slicing the input: {_HEADS_DEPEND_ON_ALL}."),
)


def _probe_dims(d_model: int) -> torch.Tensor:
    """At most 16 input dimensions spread evenly over d_model: enough to catch a head that
    sees only its own block of d_head dimensions, cheap enough for d_model = 512."""
    return torch.linspace(0, d_model - 1, steps=min(d_model, 16)).round().long()


def _head_dependence(module: nn.Module, x: torch.Tensor, causal: bool):
    """(n_heads, n_probes) bool: does head h's attention change when input dim i moves?

    The probed dims are :func:`_probe_dims`. Runs in float64 on the first sequence and its
    first 3 tokens, with one copy of it per probed dimension, that dimension raised by 1 at
    every position. ``None`` for one token (a single weight of 1 reacts to nothing).
    """
    x0 = x[:1, :3].detach().to(torch.float64)                         # (1, T0, d_model)
    if x0.shape[1] < 2:
        return None
    dims = _probe_dims(x0.shape[2])
    module = copy.deepcopy(module).to(torch.float64)
    nudged = x0.repeat(len(dims), 1, 1)                               # (P, T0, d_model)
    nudged[torch.arange(len(dims)), :, dims] += 1.0
    with torch.no_grad():
        _, base = _forward(module, x0, causal)                        # (1, H, T0, T0)
        _, moved = _forward(module, nudged, causal)                   # (P, H, T0, T0)
    change = (moved - base).abs().amax(dim=(2, 3))                    # (P, H)
    return (change > tolerance(torch.float32)[1]).T.contiguous()     # (H, P)


def _forward(module, x, causal):
    result = run_module(module, x, causal=causal, return_weights=True)
    if not isinstance(result, (tuple, list)) or len(result) != 2:
        raise TypeError("with return_weights=True your forward must return a tuple "
                        "(out, weights), weights of shape (B, n_heads, T, T)")
    return result


def _weights_shape(kw) -> tuple[int, int, int, int]:
    B, T, _ = kw["x"].shape
    return (B, kw["n_heads"], T, T)


def _run_attention(candidate, case):
    """Build the module from the case's sizes and weights; return out, weights, dependence.

    The dependence probe needs weights of shape (B, n_heads, T, T); with any other shape it
    is skipped and the comparison reports the shape.
    """
    kw = case.kwargs
    module = load_weights(candidate(kw["d_model"], kw["n_heads"], bias=kw["bias"]),
                          kw["state"], _SHAPE_HINTS)
    out, weights = _forward(module, kw["x"], kw["causal"])
    depends = None
    if isinstance(weights, torch.Tensor) and tuple(weights.shape) == _weights_shape(kw):
        depends = _head_dependence(module, kw["x"], kw["causal"])
    return {"out": out, "weights": weights, "depends": depends}


def _compare_attention(expected, actual):
    weights_e, weights_a = expected["weights"], actual["weights"]
    if isinstance(weights_a, torch.Tensor) and weights_a.shape != weights_e.shape:
        B, H, T, _ = weights_e.shape
        return (f"weights: expected shape (B, n_heads, T, T) = ({B}, {H}, {T}, {T}), got "
                f"{tuple(weights_a.shape)}; return every head's weights, stacked along "
                "dim 1, not their average or a single head's")
    values_e = {"out": expected["out"], "weights": expected["weights"]}
    values_a = {"out": actual["out"], "weights": actual["weights"]}
    if any(isinstance(t, torch.Tensor) and t.is_floating_point() and bool(t.isnan().any())
           for t in values_a.values()):
        # NaN reacts to nothing, so the dependence probe below would blame the heads.
        return compare_outputs(values_e, values_a)
    dep_e, dep_a = expected["depends"], actual["depends"]
    if dep_e is not None and isinstance(dep_a, torch.Tensor) and dep_a.shape == dep_e.shape:
        if not torch.equal(dep_a, dep_e):
            h, p = (dep_a != dep_e).nonzero()[0].tolist()
            i = int(_probe_dims(expected["out"].shape[-1])[p])
            return (f"head {h} does not react to input dimension {i}: "
                    f"{_HEADS_DEPEND_ON_ALL}")
    return compare_outputs(values_e, values_a)


def _attention_case(label, g, B, T, d_model, n_heads, dtype=torch.float32, bias=True,
                    causal=True):
    with torch.device("meta"):                    # only the parameters' names and shapes
        template = ref.MultiHeadAttention(d_model, n_heads, bias=bias)
    return Case(label, (), {
        "d_model": d_model, "n_heads": n_heads, "bias": bias, "causal": causal,
        "state": random_state(template, g, dtype),
        "x": torch.randn(B, T, d_model, generator=g, dtype=dtype),
    })


# The cases are as small as can still tell every mistake apart: at least 2 heads of at
# least 2 dimensions (so sqrt(d_head), sqrt(d_model) and 1 all differ) and at least 3
# tokens in every set of cases that has a causal one. The larger case comes last: a wrong
# answer usually fails a small case first, and the known mistakes are then tried on it.

def _attention_visible():
    g = torch.Generator().manual_seed(5121)
    return [
        _attention_case("bias=False, 2 heads of 3, B=2, T=4, causal", g, 2, 4, 6, 2,
                        bias=False),
        _attention_case("causal=False, 2 heads of 4, B=2, T=3", g, 2, 3, 8, 2, causal=False),
        _attention_case("8 heads of 64 from a 512-dimensional input, B=1, T=3, causal",
                        g, 1, 3, 512, 8),
    ]


def _attention_hidden():
    g = torch.Generator().manual_seed(5122)
    return [
        _attention_case("float64, 3 heads of 2, B=2, T=4, causal", g, 2, 4, 6, 3,
                        dtype=torch.float64),
        _attention_case("causal=False, bias=False, 4 heads of 2, B=1, T=3", g, 1, 3, 8, 4,
                        bias=False, causal=False),
        _attention_case("a single token, 2 heads of 4", g, 1, 1, 8, 2),
    ]


register(Exercise(
    id="MultiHeadAttentionLoop",
    chapter=CHAPTER,
    title="Exercise 3: multi-head attention, one head at a time",
    reference=ref.MultiHeadAttention,
    visible=_attention_visible,
    hidden=_attention_hidden,
    run=_run_attention,
    compare=_compare_attention,
    mistakes=MHA_MISTAKES,
    forbidden=("gptcourse.attention.MultiHeadAttention",),
))

register(Exercise(
    id="MultiHeadAttention",
    chapter=CHAPTER,
    title="Exercise 4: batched multi-head attention (compared with torch.nn.MultiheadAttention)",
    reference=TorchMultiHeadAttention,
    visible=_attention_visible,
    hidden=_attention_hidden,
    run=_run_attention,
    compare=_compare_attention,
    mistakes=MHA_MISTAKES,
    forbidden=("gptcourse.attention.MultiHeadAttention",),
))
