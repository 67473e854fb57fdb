"""Checks for the encoders-versus-decoders chapter (11-encoders-vs-decoders)."""

import copy

import torch
import torch.nn.functional as F

from gptcourse import encoder as ref
from gptcourse.attention import scaled_dot_product_attention
from gptcourse.checks import Case, Exercise, Mistake, compare_outputs, register

CHAPTER = "11-encoders-vs-decoders"


def _projections(g, d_model, d_head, dtype):
    return tuple(torch.randn(d_model, d_head, generator=g, dtype=dtype) / d_model ** 0.5
                 for _ in range(3))


# ---- self_attend -------------------------------------------------------------------------

def _self_attend_cases(hidden):
    g = torch.Generator().manual_seed(21 if hidden else 1)
    shapes = [(2, 5, 8, 4)] if not hidden else [(1, 7, 6, 3), (3, 4, 10, 5)]
    dtype = torch.float64 if hidden else torch.float32
    cases = []
    for B, T, d_model, d_head in shapes:
        x = torch.randn(B, T, d_model, generator=g, dtype=dtype)
        w = _projections(g, d_model, d_head, dtype)
        cases.append(Case(f"an encoder (causal=False), B={B}, T={T}", (x, *w, False)))
        cases.append(Case(f"a decoder (causal=True), B={B}, T={T}", (x, *w, True)))
    return cases


def _attend_always_masked(x, w_q, w_k, w_v, causal):
    return ref.self_attend(x, w_q, w_k, w_v, True)


def _attend_never_masked(x, w_q, w_k, w_v, causal):
    return ref.self_attend(x, w_q, w_k, w_v, False)


def _attend_mask_inverted(x, w_q, w_k, w_v, causal):
    return ref.self_attend(x, w_q, w_k, w_v, not causal)


register(Exercise(
    id="self_attend", chapter=CHAPTER,
    title="Exercise 1: one attention for encoder and decoder",
    reference=ref.self_attend, visible=lambda: _self_attend_cases(False),
    hidden=lambda: _self_attend_cases(True),
    mistakes=(
        Mistake("causal_mask_in_encoder",
                "The causal mask is on even with causal=False: an encoder's position must see "
                "the tokens after it too, so add the mask only when causal is True.",
                _attend_always_masked),
        Mistake("mask_never_applied",
                "No mask is applied with causal=True: the decoder would see the future; add "
                "the causal mask (-inf above the diagonal) before the softmax.",
                _attend_never_masked),
        Mistake("mask_inverted",
                "The mask is applied exactly when it should not be: causal=True means masked "
                "(decoder), causal=False means no mask (encoder).", _attend_mask_inverted),
    ),
    forbidden=("gptcourse.encoder.self_attend",),
))


# ---- mask_tokens -------------------------------------------------------------------------

def _mask_cases(hidden):
    g = torch.Generator().manual_seed(22 if hidden else 2)
    settings = [(4, 16, 0.15, 50), (2, 10, 0.5, 20)] if not hidden else [
        (8, 32, 0.15, 66), (3, 7, 0.9, 10), (5, 12, 0.3, 100)]
    cases = []
    for i, (B, T, mask_prob, vocab_size) in enumerate(settings):
        idx = torch.randint(0, vocab_size, (B, T), generator=g)
        cases.append(Case(f"B={B}, T={T}, mask_prob={mask_prob}, generator seed {i}",
                          (idx, mask_prob, vocab_size, vocab_size, 1000 + i)))
    return cases


def _run_mask(candidate, case):
    idx, mask_prob, mask_id, vocab_size, seed = copy.deepcopy(case.args)
    original = idx.clone()
    generator = torch.Generator().manual_seed(seed)
    inputs, mask = candidate(idx, mask_prob, mask_id, vocab_size, generator)
    if not torch.equal(idx, original):
        raise ValueError("mask_tokens changed idx in place: work on idx.clone(), since the "
                         "original tokens are the targets")
    return inputs, torch.as_tensor(mask)


def _compare_masking(expected, actual):
    """The mask must be boolean, as the exercise asks: logits[mask] selects positions only
    with a bool mask (an int mask would index rows 0 and 1 instead)."""
    mask, expected_mask = actual[1], expected[1]
    if (mask.dtype == torch.bool) != (expected_mask.dtype == torch.bool):
        return (f"dtype of mask: expected {expected_mask.dtype}, got {mask.dtype}: return the "
                "comparison itself (torch.rand(...) < mask_prob), without .long() or .int()")
    # A mask of any number type stands for every other (the wrong variant returns int64).
    return compare_outputs((expected[0], expected_mask.bool()), (actual[0], mask.bool()))


def _mask_as_integers(idx, mask_prob, mask_id, vocab_size, generator):
    inputs, mask = ref.mask_tokens(idx, mask_prob, mask_id, vocab_size, generator)
    return inputs, mask.long()


def _mask_scores_replaced_only(idx, mask_prob, mask_id, vocab_size, generator):
    inputs, _ = ref.mask_tokens(idx, mask_prob, mask_id, vocab_size, generator)
    return inputs, inputs == mask_id


def _mask_all_with_mask_id(idx, mask_prob, mask_id, vocab_size, generator):
    mask = torch.rand(idx.shape, generator=generator) < mask_prob
    return idx.masked_fill(mask, mask_id), mask


def _mask_prob_inverted(idx, mask_prob, mask_id, vocab_size, generator):
    mask = torch.rand(idx.shape, generator=generator) >= mask_prob
    action = torch.rand(idx.shape, generator=generator)
    random_ids = torch.randint(0, vocab_size, idx.shape, generator=generator)
    inputs = idx.clone()
    inputs[mask & (action < 0.8)] = mask_id
    randomised = mask & (action >= 0.8) & (action < 0.9)
    inputs[randomised] = random_ids[randomised]
    return inputs, mask


register(Exercise(
    id="mask_tokens", chapter=CHAPTER, title="Exercise 2: hide tokens (80/10/10)",
    reference=ref.mask_tokens, visible=lambda: _mask_cases(False),
    hidden=lambda: _mask_cases(True), run=_run_mask, compare=_compare_masking,
    mistakes=(
        Mistake("mask_not_bool",
                "Your mask holds numbers, not booleans: masked_lm_loss selects the scored "
                "positions with logits[mask], which only works with a bool mask (an integer "
                "tensor picks rows by number instead). Return the comparison itself.",
                _mask_as_integers),
        Mistake("scored_only_replaced",
                "Your mask marks only the positions that became mask_id: the positions that "
                "got a random token or kept theirs were selected too and must be scored.",
                _mask_scores_replaced_only),
        Mistake("no_80_10_10",
                "Every selected position becomes mask_id: of the selected positions, 80% "
                "become mask_id, 10% a random token and 10% stay, decided by the second "
                "draw.", _mask_all_with_mask_id),
        Mistake("mask_prob_inverted",
                "You select the positions where the draw is at least mask_prob, so most "
                "tokens are hidden: select rand < mask_prob.", _mask_prob_inverted),
    ),
    forbidden=("gptcourse.encoder.mask_tokens",),
))


# ---- masked_lm_loss ----------------------------------------------------------------------

def _loss_cases(hidden):
    g = torch.Generator().manual_seed(23 if hidden else 3)
    settings = [(2, 6, 11, 0.3)] if not hidden else [(3, 9, 7, 0.2), (1, 12, 30, 0.5),
                                                       (4, 5, 5, 0.15)]
    dtype = torch.float64 if hidden else torch.float32
    cases = []
    for B, T, V, p in settings:
        logits = torch.randn(B, T, V, generator=g, dtype=dtype)
        targets = torch.randint(0, V, (B, T), generator=g)
        mask = torch.rand(B, T, generator=g) < p
        mask[0, 1] = True  # at least one scored position
        mask[-1, -1] = False
        cases.append(Case(f"B={B}, T={T}, V={V}, {int(mask.sum())} masked positions",
                          (logits, targets, mask)))
    return cases


def _loss_all_positions(logits, targets, mask):
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def _loss_unmasked(logits, targets, mask):
    return F.cross_entropy(logits[~mask], targets[~mask])


def _loss_divided_by_all(logits, targets, mask):
    losses = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
    return (losses * mask.flatten()).sum() / mask.numel()


def _loss_summed(logits, targets, mask):
    return F.cross_entropy(logits[mask], targets[mask], reduction="sum")


register(Exercise(
    id="masked_lm_loss", chapter=CHAPTER, title="Exercise 3: score the masked positions",
    reference=ref.masked_lm_loss, visible=lambda: _loss_cases(False),
    hidden=lambda: _loss_cases(True),
    mistakes=(
        Mistake("loss_over_all_positions",
                "The loss averages over every position: the unmasked tokens are visible in "
                "the input, so predicting them is copying; score only where mask is True.",
                _loss_all_positions),
        Mistake("loss_over_unmasked",
                "You score the positions where mask is False: the loss belongs to the "
                "hidden (masked) positions, logits[mask].", _loss_unmasked),
        Mistake("divided_by_all_positions",
                "The masked losses are summed but divided by all B*T positions: take the "
                "mean over the masked positions only.", _loss_divided_by_all),
        Mistake("summed_not_mean",
                "The loss is a sum over masked positions: take their mean, so it does not "
                "grow with the number of masked tokens.", _loss_summed),
    ),
    forbidden=("gptcourse.encoder.masked_lm_loss",),
))


# ---- cross_attention ---------------------------------------------------------------------

def _cross_cases(hidden):
    g = torch.Generator().manual_seed(24 if hidden else 4)
    shapes = [(2, 3, 5, 8, 4), (1, 4, 4, 6, 3)] if not hidden else [
        (3, 6, 2, 10, 5), (2, 5, 9, 4, 4), (1, 3, 3, 6, 2)]
    dtype = torch.float64 if hidden else torch.float32
    cases = []
    for B, T_dec, T_enc, d_model, d_head in shapes:
        x = torch.randn(B, T_dec, d_model, generator=g, dtype=dtype)
        memory = torch.randn(B, T_enc, d_model, generator=g, dtype=dtype)
        w = _projections(g, d_model, d_head, dtype)
        cases.append(Case(f"B={B}, T_dec={T_dec}, T_enc={T_enc}, d_model={d_model}",
                          (x, memory, *w)))
    return cases


def _cross_kv_from_decoder(x, memory, w_q, w_k, w_v):
    return scaled_dot_product_attention(x @ w_q, x @ w_k, x @ w_v)


def _cross_roles_swapped(x, memory, w_q, w_k, w_v):
    return scaled_dot_product_attention(memory @ w_q, x @ w_k, x @ w_v)


def _cross_causal(x, memory, w_q, w_k, w_v):
    T_dec, T_enc = x.shape[-2], memory.shape[-2]
    blocked = torch.full((T_dec, T_enc), float("-inf"), dtype=x.dtype)
    mask = torch.triu(blocked, diagonal=1)
    return scaled_dot_product_attention(x @ w_q, memory @ w_k, memory @ w_v, mask)


register(Exercise(
    id="cross_attention", chapter=CHAPTER, title="Exercise 4: cross-attention",
    reference=ref.cross_attention, visible=lambda: _cross_cases(False),
    hidden=lambda: _cross_cases(True),
    mistakes=(
        Mistake("kv_from_decoder",
                "Keys and values come from the decoder (x): that is self-attention again. "
                "In cross-attention keys and values come from the encoder's output, memory.",
                _cross_kv_from_decoder),
        Mistake("roles_swapped",
                "Queries come from the encoder and keys/values from the decoder: the "
                "decoder asks (queries from x), the encoder answers (keys and values from "
                "memory); weights must be (B, T_dec, T_enc).", _cross_roles_swapped),
        Mistake("causal_cross_attention",
                "Your cross-attention applies a causal mask, and it must not: the whole "
                "source sentence is known before the decoder starts, so every decoder "
                "position may see every encoder position. Leave the mask out here.",
                _cross_causal),
    ),
    forbidden=("gptcourse.encoder.cross_attention",),
))

