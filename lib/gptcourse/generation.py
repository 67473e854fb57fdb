"""Generating text one token at a time, with and without a KV cache.

The loop: run the model on the context, keep only the last position's logits, turn them
into a choice (greedy, or sampling shaped by temperature, top-k and top-p), append the
choice, repeat. A sequence that emits the end-of-sequence token is finished; it is padded
with that token while the others go on.

Without a cache every step recomputes keys and values for every earlier position. The KV
cache keeps them, so each step only processes the newest token.

Past the context length. Positions are absolute: each cached key was computed from a token
embedding plus the embedding of its position, and that sum flows through every layer. When
the sequence outgrows the context, the window has to move and every token gets a new
position number, so the cached keys and values are simply wrong for the new window: an
exact cache cannot slide one token at a time. The course's generator therefore moves the
window in jumps: when the window is full it restarts it at the most recent
``context_length // 2`` tokens (renumbered from position 0), rebuilds the cache for them
in one forward pass, and grows it token by token again. Recomputation without a cache uses
the very same windows, so both paths give the same tokens. (nanoGPT instead slides the
window by one token and recomputes everything at every step.)
"""

import torch
import torch.nn.functional as F

from gptcourse.attention import softmax


def greedy(logits: torch.Tensor) -> torch.Tensor:
    """The most likely token: logits (..., V) -> ids (...)."""
    return logits.argmax(dim=-1)


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Divide logits by ``temperature`` (> 0): below 1 sharpens, above 1 flattens."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 for sampling, got {temperature}; "
                         "use greedy() (or temperature=0 in generate) for the argmax")
    return logits / temperature


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest logits in the last dimension; set the rest to ``-inf``.

    logits (..., V) -> (..., V). Exactly k survive, ties broken by ``torch.topk``.
    """
    if k < 1:
        raise ValueError(f"top_k must be at least 1, got {k}")
    if k >= logits.size(-1):
        return logits
    values, indices = torch.topk(logits, k, dim=-1)
    filtered = torch.full_like(logits, float("-inf"))
    return filtered.scatter(-1, indices, values)


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filter: keep the smallest set of most likely tokens whose probability
    reaches ``p``; set the rest to ``-inf``. logits (..., V) -> (..., V).

    A token is kept when the probability of the tokens ranked above it is still below p,
    so the token that crosses p is kept and the most likely token always is.
    """
    if not 0 < p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {p}")
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = softmax(sorted_logits, dim=-1)
    mass_above = torch.cumsum(probs, dim=-1) - probs                  # (..., V)
    sorted_logits = sorted_logits.masked_fill(mass_above >= p, float("-inf"))
    filtered = torch.full_like(logits, float("-inf"))
    return filtered.scatter(-1, order, sorted_logits)


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None
                ) -> torch.Tensor:
    """Choose one token per row: logits (B, V) -> ids (B,). ``temperature=0`` is greedy."""
    if temperature == 0:
        return greedy(logits)
    logits = apply_temperature(logits, temperature)
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    probs = F.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)


def window_start(length: int, start: int, context_length: int) -> int:
    """Where the model's window begins for a sequence of ``length`` tokens.

    The window stays put while it fits; when it would hold more than ``context_length``
    tokens it jumps to the most recent ``context_length // 2`` (at least one) tokens.
    """
    if length - start <= context_length:
        return start
    return length - max(1, context_length // 2)


@torch.no_grad()
def generate(model, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, eos_id: int | None = None,
             use_cache: bool = True, generator: torch.Generator | None = None) -> torch.Tensor:
    """Extend ``idx`` (B, T0) by up to ``max_new_tokens`` tokens -> (B, T0 + n).

    ``temperature=0`` is greedy decoding. With ``eos_id``, a sequence that produces it keeps
    producing it, and generation stops as soon as every sequence has. ``use_cache`` turns
    the KV cache on; both paths use the same windows past the context length (see the
    module docstring), so they produce the same tokens.
    """
    if idx.dim() != 2 or idx.size(1) == 0:
        raise ValueError(f"idx must have shape (B, T) with T >= 1, got {tuple(idx.shape)}")
    was_training = model.training
    model.eval()
    context_length = model.config.context_length
    finished = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
    start, caches = None, None

    for _ in range(max_new_tokens):
        new_start = window_start(idx.size(1), start or 0, context_length)
        if not use_cache:
            logits, _ = model(idx[:, new_start:])
        elif new_start != start:
            caches = model.new_kv_caches()                      # (re)build the whole window
            logits, _ = model(idx[:, new_start:], kv_caches=caches)
        else:
            logits, _ = model(idx[:, -1:], kv_caches=caches)    # only the newest token
        start = new_start

        next_id = sample_next(logits[:, -1, :], temperature, top_k, top_p, generator)
        if eos_id is not None:
            next_id = torch.where(finished, torch.full_like(next_id, eos_id), next_id)
            finished |= next_id == eos_id
        idx = torch.cat([idx, next_id.unsqueeze(1)], dim=1)
        if eos_id is not None and bool(finished.all()):
            break

    model.train(was_training)
    return idx
