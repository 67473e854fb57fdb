"""Checks for chapter 09, training on Tiny Shakespeare.

The exercises: the batch builder (random segments and their targets, shifted by one), the
loss at every position from one forward pass, the same losses from one forward pass per
prefix, the mean loss, one training step, the validation loss, and the training loop.

The batch builder runs on the corpus 0, 1, 2, ... so that each token's value is its
position: what y is relative to x, which starts were drawn and whether the generator's seed
decides them can be read off the batch. The loop is judged on a fixed tiny corpus whose
validation text is the training text read backwards: the learner's ``train`` runs there,
the optimizer's own step count and the returned history are compared with what the
exercise asks for, and the course's code measures the loss on each split afterwards, so
the verdict does not depend on anything left over in the learner's notebook.
"""

import math
import re

import torch
import torch.nn.functional as F

from gptcourse import training as ref
from gptcourse.checks import Case, Exercise, Mistake, compare_outputs, register
from gptcourse.checks.core import one_thread

CHAPTER = "09-training"


# -- the batch builder ------------------------------------------------------------------

_PAST_END = re.compile(r"stack expects each tensor to be equal size|out of bounds|"
                       r"out of range|size of tensor a .* must match")


def _batch(candidate, data, batch_size, context_length, seed):
    batch = candidate(data, batch_size, context_length,
                      generator=torch.Generator().manual_seed(seed))
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2
            and all(isinstance(t, torch.Tensor) for t in batch)):
        parts = (" of " + ", ".join(type(t).__name__ for t in batch)
                 if isinstance(batch, (tuple, list)) else "")
        raise TypeError("get_batch should return a pair of tensors (x, y), got "
                        f"{type(batch).__name__}{parts}")
    return batch


def _relation(x, y):
    """What y is, relative to x (B, T), on the corpus 0, 1, 2, ...: a word."""
    x, y = x.long(), y.long()
    if y.shape != x.shape:
        if y.numel() == x.size(0) and torch.equal(y.flatten(), x[:, -1] + 1):
            return "next token only"
        return "other shape"
    shift = torch.unique(y - x)
    if len(shift) == 1:
        return {1: "next", 0: "same", -1: "previous"}.get(int(shift), f"shift {int(shift)}")
    if torch.equal(y, torch.roll(x, -1, dims=1)):
        return "rolled"
    return "other"


def _probe(candidate, data, context_length, seed):
    """The relation of y to x in the first one-segment batch that does not fail, for an
    answer whose full batch reaches past the end of the corpus (None if all fail)."""
    for attempt in range(40):
        try:
            x, y = _batch(candidate, data, 1, context_length, seed + attempt)
        except (IndexError, RuntimeError):
            continue
        return _relation(x, y) if x.shape == (1, context_length) else None
    return None


def _run_get_batch(candidate, case):
    """Call ``get_batch`` on the corpus 0, 1, ..., N-1 (so a token's value is its position)
    and describe the batch: shapes, dtypes, what y is relative to x, which segments were
    drawn, and whether the generator's seed decides them."""
    n_tokens, batch_size, context_length, seed = case.args
    data = torch.arange(n_tokens)
    try:
        x, y = _batch(candidate, data, batch_size, context_length, seed)
    except (IndexError, RuntimeError) as exc:
        if _PAST_END.search(str(exc)):
            # Slicing past the corpus end yields a short segment, which cannot be stacked
            # with the others (or indexes outside the corpus). One-segment batches that do
            # not reach the end show whether the shift of y is to blame.
            return {"past_end": True, "y": _probe(candidate, data, context_length, seed)}
        raise
    summary = {"past_end": False, "x_shape": list(x.shape), "y_shape": list(y.shape),
               "n_tokens": n_tokens, "context_length": context_length}
    if list(x.shape) != [batch_size, context_length]:
        return summary

    summary["x_segments"] = bool((x[:, 1:] - x[:, :-1] == 1).all())
    summary["y"] = _relation(x, y)
    summary["dtypes"] = [str(x.dtype).replace("torch.", ""), str(y.dtype).replace("torch.", "")]
    if not summary["x_segments"] or summary["y"] != "next":
        return summary
    starts = torch.unique(x[:, 0].long()).tolist()
    summary["starts"] = starts[:8] + (["..."] if len(starts) > 8 else [])
    unused = sorted(set(range(n_tokens - context_length)) - set(starts))
    summary["past_last_start"] = max(starts) > n_tokens - context_length - 1
    summary["unused_starts"] = unused if len(unused) <= 2 else "many"
    again = _batch(candidate, data, batch_size, context_length, seed)
    other = _batch(candidate, data, batch_size, context_length, seed + 1)
    summary["repeatable"] = bool(torch.equal(x, again[0]) and torch.equal(y, again[1]))
    summary["seed_matters"] = not torch.equal(x, other[0])
    return summary


_SHOULD = ("on the corpus 0, 1, 2, ... (each token is its position) y[b, t] should be "
           "x[b, t] + 1, the token after x[b, t]; ")
_FROM_DATA = "take y from data[s + 1 : s + context_length + 1]"


def _y_message(relation, shapes):
    x_shape, y_shape = shapes
    if relation == "same":
        return _SHOULD + "your y equals x"
    if relation == "previous":
        return _SHOULD + "your y[b, t] is the token before x[b, t]"
    if relation is not None and relation.startswith("shift "):
        k = int(relation.split()[1])
        return _SHOULD + f"your y[b, t] is x[b, t] + {k}, {k} tokens ahead: " + _FROM_DATA
    if relation == "rolled":
        return (_SHOULD + "your y is x rolled by one, so its last token wraps around to "
                "x[b, 0] instead of being the token after the segment: " + _FROM_DATA)
    if relation == "next token only":
        return (f"your y holds only the token after each segment, shape {tuple(y_shape)}; "
                f"y should be a whole segment shifted by one, of the shape of x, "
                f"{tuple(x_shape)}: " + _FROM_DATA)
    if relation == "other shape":
        return f"y should have the shape of x, {tuple(x_shape)}; yours has {tuple(y_shape)}"
    return _SHOULD + "yours is not: " + _FROM_DATA


def _batch_messages(actual):
    """(summary key, message about the learner's x and y), in the order they are checked."""
    n, T = actual.get("n_tokens"), actual.get("context_length")
    last = "len(data) - context_length - 1" if n is None else f"{n - T - 1}"
    if actual["past_end"]:
        past_end = ("some of your segments reach past the end of the corpus (stacking or "
                    "indexing failed): the last valid start is len(data) - context_length "
                    "- 1, because the targets need one token more; torch.randint's upper "
                    "bound is exclusive")
        if actual["y"] in ("same", "previous", "rolled") or str(actual["y"]).startswith(
                "shift "):
            past_end = (_y_message(actual["y"], [["B", "T"], ["B", "T"]]) + " (it is this "
                        "shift that makes the segments near the end fail)")
        return [("past_end", past_end), ("y", past_end)]
    shapes = [actual["x_shape"], actual["y_shape"]]
    unused = actual.get("unused_starts")
    if unused == [0]:
        windows = ("you never draw the segment that starts at 0, the corpus's first: draw "
                   "the starts with torch.randint(len(data) - context_length, (batch_size,), "
                   "generator=generator)")
    elif unused and unused != "many" and unused[-1] == n - T - 1:
        windows = (f"you never draw the last segment (start {last}): torch.randint's upper "
                   "bound is exclusive, so use torch.randint(len(data) - context_length, ...)")
    else:
        windows = (f"your segments start only at {actual.get('starts')}: every start from 0 "
                   f"to {last} should be possible, torch.randint(len(data) - context_length, "
                   "(batch_size,), generator=generator)")
    x_shape = ("x should have shape (batch_size, context_length); yours has "
               f"{tuple(actual['x_shape'])}")
    x_segments = ("each row of x should be consecutive tokens of data, a segment "
                  "data[s : s + context_length]; yours are not")
    dtypes = ("x and y are pieces of data and should keep its dtype, int64 (the loss needs "
              f"int64 targets); yours are {' and '.join(actual.get('dtypes') or [])}: index "
              "data without converting")
    past_last = (f"one of your segments starts after {last}, so its last target lies past "
                 "the end of the corpus")
    repeatable = ("two calls with generators seeded alike gave different batches: pass "
                  "generator=generator to torch.randint, so that a seeded generator makes the "
                  "batches repeatable")
    seed_matters = ("generators with different seeds gave the same batch: draw the starts at "
                    "random with torch.randint(..., generator=generator)")
    return [("x_shape", x_shape), ("x_segments", x_segments),
            ("y", _y_message(actual.get("y"), shapes)), ("dtypes", dtypes),
            ("past_last_start", past_last), ("unused_starts", windows),
            ("repeatable", repeatable), ("seed_matters", seed_matters)]


def compare_batches(expected, actual):
    """The summaries of :func:`_run_get_batch` agree key by key; the first difference is
    described in terms of the learner's x and y."""
    if not isinstance(expected, dict) or not isinstance(actual, dict):
        return compare_outputs(expected, actual)
    for key, message in _batch_messages(actual):
        if actual.get(key) != expected.get(key):
            return message
    return None


def _get_batch_visible():
    return [Case("a corpus of 20 tokens, batch_size=200, context_length=8", (20, 200, 8, 1))]


def _get_batch_hidden():
    return [Case("a corpus of 50 tokens, batch_size=600, context_length=16", (50, 600, 16, 2)),
            Case("a corpus of 12 tokens, batch_size=200, context_length=3", (12, 200, 3, 3))]


def _windows(data, batch_size, context_length, generator, high):
    starts = torch.randint(high, (batch_size,), generator=generator)
    offsets = starts[:, None] + torch.arange(context_length)          # (B, T)
    return offsets


def _offsets(data, batch_size, context_length, generator):
    return _windows(data, batch_size, context_length, generator, len(data) - context_length)


def _not_shifted(data, batch_size, context_length, generator=None):
    offsets = _offsets(data, batch_size, context_length, generator)
    return data[offsets], data[offsets]


def _wrong_way(data, batch_size, context_length, generator=None):
    offsets = _offsets(data, batch_size, context_length, generator)
    return data[offsets + 1], data[offsets]


def _past_end(data, batch_size, context_length, generator=None):
    offsets = _windows(data, batch_size, context_length, generator,
                       len(data) - context_length + 1)
    return data[offsets], data[offsets + 1]


def _never_last(data, batch_size, context_length, generator=None):
    offsets = _windows(data, batch_size, context_length, generator,
                       len(data) - context_length - 1)
    return data[offsets], data[offsets + 1]


def _shifted_by_two(data, batch_size, context_length, generator=None):
    offsets = _offsets(data, batch_size, context_length, generator)
    return data[offsets], data[offsets + 2]


def _shifted_by_two_in_bounds(data, batch_size, context_length, generator=None):
    offsets = _windows(data, batch_size, context_length, generator,
                       len(data) - context_length - 1)
    return data[offsets], data[offsets + 2]


def _rolled(data, batch_size, context_length, generator=None):
    x = data[_offsets(data, batch_size, context_length, generator)]
    return x, torch.roll(x, -1, dims=1)


def _next_token_only(data, batch_size, context_length, generator=None):
    offsets = _offsets(data, batch_size, context_length, generator)
    return data[offsets], data[offsets[:, -1] + 1]


def _ignores_generator(data, batch_size, context_length, generator=None):
    offsets = _offsets(data, batch_size, context_length, None)
    return data[offsets], data[offsets + 1]


def _fixed_starts(data, batch_size, context_length, generator=None):
    starts = torch.arange(batch_size) % (len(data) - context_length)
    offsets = starts[:, None] + torch.arange(context_length)
    return data[offsets], data[offsets + 1]


def _converted(dtype):
    def get_batch(data, batch_size, context_length, generator=None):
        x, y = ref.get_batch(data, batch_size, context_length, generator)
        return x.to(dtype), y.to(dtype)
    return get_batch


_SHIFTED_BY_TWO = ("Your targets are two tokens ahead: y[b, t] is the token right after "
                   "x[b, t], so take y from data[s + 1 : s + T + 1].")
_CONVERTED = ("Your x and y are not int64 token ids: they are pieces of data and keep its "
              "dtype (F.cross_entropy needs int64 targets). Index data and do not convert.")


register(Exercise(
    id="get_batch", chapter=CHAPTER, title="Exercise 1: segments and targets",
    reference=ref.get_batch, visible=_get_batch_visible, hidden=_get_batch_hidden,
    run=_run_get_batch, compare=compare_batches,
    mistakes=(
        Mistake("not_shifted", "Your targets equal your inputs: the target at position t is "
                "the token at t + 1, so take y from data[start + 1 : start + T + 1].",
                _not_shifted),
        Mistake("wrong_way", "Your targets are shifted the wrong way: y[t] must be the token "
                "AFTER x[t] (x = data[s:s+T], y = data[s+1:s+T+1]), not the one before.",
                _wrong_way),
        Mistake("past_end", "Some of your segments reach past the end of the corpus: the last "
                "valid start is len(data) - context_length - 1, because the targets need one "
                "token more. torch.randint's upper bound is exclusive.", _past_end),
        Mistake("never_last", "You never use the last segment of the corpus: the starts "
                "should range over 0 .. len(data) - context_length - 1 inclusive, i.e. "
                "torch.randint(len(data) - context_length, ...).", _never_last),
        Mistake("shifted_by_two", _SHIFTED_BY_TWO, _shifted_by_two),
        Mistake("shifted_by_two_in_bounds", _SHIFTED_BY_TWO, _shifted_by_two_in_bounds),
        Mistake("rolled", "You made y by rolling x (torch.roll), so the last target wraps "
                "around to the segment's first token; it should be the token AFTER the "
                "segment: take y from data[s + 1 : s + T + 1].", _rolled),
        Mistake("next_token_only", "Your y holds only the token after each segment, but "
                "training scores every position: y is a whole segment, data[s + 1 : s + T + "
                "1], of shape (batch_size, context_length).", _next_token_only),
        Mistake("ignores_generator", "Your batches ignore the generator: pass "
                "generator=generator to torch.randint, so that a seeded generator makes the "
                "batches repeatable.", _ignores_generator),
        Mistake("fixed_starts", "Your starts are not random (another seed gives the same "
                "batch): draw them with torch.randint(len(data) - context_length, "
                "(batch_size,), generator=generator).", _fixed_starts),
        Mistake("float", _CONVERTED, _converted(torch.float32)),
        Mistake("int32", _CONVERTED, _converted(torch.int32)),
    ),
    forbidden=("gptcourse.training.get_batch",),
))


# -- the loss at every position ---------------------------------------------------------

def position_losses(logits, targets):
    """logits (B, T, V), targets (B, T) -> (B, T): the cross-entropy at every position."""
    return F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")


def _loss_inputs(g, B, T, V, dtype=torch.float32):
    logits = torch.randn(B, T, V, generator=g, dtype=torch.float64).to(dtype)
    targets = torch.randint(0, V, (B, T), generator=g)
    return logits, targets


def _position_visible():
    g = torch.Generator().manual_seed(901)
    return [Case("logits (2, 7, 10)", _loss_inputs(g, 2, 7, 10))]


def _position_hidden():
    g = torch.Generator().manual_seed(902)
    return [Case("logits (3, 5, 13)", _loss_inputs(g, 3, 5, 13)),
            Case("float64 logits (1, 9, 6)", _loss_inputs(g, 1, 9, 6, torch.float64))]


def _positions_shifted_again(logits, targets):
    return position_losses(logits[:, :-1], targets[:, 1:])


def _positions_time_softmax(logits, targets):
    log_probs = F.log_softmax(logits, dim=1)                         # over T: the bug
    return -log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def _positions_probabilities(logits, targets):
    return -F.softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def _positions_no_minus(logits, targets):
    return -position_losses(logits, targets)


register(Exercise(
    id="position_losses", chapter=CHAPTER, title="Exercise 2: the loss at every position",
    reference=position_losses, visible=_position_visible, hidden=_position_hidden,
    mistakes=(
        Mistake("shifted_again", "You shifted the targets a second time: get_batch already "
                "did, so logits[:, t] is scored against targets[:, t] as they are.",
                _positions_shifted_again),
        Mistake("time_softmax", "Your log-softmax runs over the time dimension; the "
                "distribution is over the vocabulary, the last dimension (dim=-1).",
                _positions_time_softmax),
        Mistake("probabilities", "You returned minus the probability of the target, not minus "
                "its log-probability: use log_softmax.", _positions_probabilities),
        Mistake("no_minus", "Your losses are negative: the cross-entropy is MINUS the "
                "log-probability of the target.", _positions_no_minus),
    ),
))


# -- the same losses, one forward pass per prefix ---------------------------------------

def prefix_losses(model, idx, targets):
    """idx, targets (B, T) -> (B, T): the loss at position t from a forward pass over the
    prefix idx[:, :t + 1] alone, using that pass's last position."""
    losses = []
    for t in range(idx.size(1)):
        logits, _ = model(idx[:, :t + 1])                              # (B, t + 1, V)
        losses.append(F.cross_entropy(logits[:, -1, :], targets[:, t], reduction="none"))
    return torch.stack(losses, dim=1)                                  # (B, T)


_TINY = {"vocab_size": 12, "context_length": 8, "d_model": 16, "n_heads": 2, "n_layers": 2}


def _model(config: dict, seed: int):
    from gptcourse.model import GPT, GPTConfig

    torch.manual_seed(seed)
    return GPT(GPTConfig(**config))


@one_thread
def _run_prefix(candidate, case):
    model = _model(case.kwargs["config"], case.kwargs["seed"]).eval()
    idx, targets = case.args
    with torch.no_grad():
        return candidate(model, idx.clone(), targets.clone())


def _prefix_case(label, seed, B, T):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, _TINY["vocab_size"], (B, T + 1), generator=g)
    return Case(label, (idx[:, :-1], idx[:, 1:]), {"config": dict(_TINY), "seed": seed})


def _prefix_visible():
    return [_prefix_case("2 sequences of 7 tokens", 911, 2, 7)]


def _prefix_hidden():
    return [_prefix_case("3 sequences of 8 tokens (a full context)", 912, 3, 8),
            _prefix_case("1 sequence of 4 tokens", 913, 1, 4)]


def _prefix_first_position(model, idx, targets):
    losses = []
    for t in range(idx.size(1)):
        logits, _ = model(idx[:, :t + 1])
        losses.append(F.cross_entropy(logits[:, 0, :], targets[:, t], reduction="none"))
    return torch.stack(losses, dim=1)


def _prefix_one_too_long(model, idx, targets):
    losses = []
    for t in range(idx.size(1)):
        logits, _ = model(idx[:, :t + 2])
        losses.append(F.cross_entropy(logits[:, -1, :], targets[:, t], reduction="none"))
    return torch.stack(losses, dim=1)


register(Exercise(
    id="prefix_losses", chapter=CHAPTER, title="Exercise 3: one forward pass per prefix",
    reference=prefix_losses, visible=_prefix_visible, hidden=_prefix_hidden,
    run=_run_prefix,
    mistakes=(
        Mistake("first_position", "You scored the first position of each prefix; the "
                "prediction for the token after the prefix is at its LAST position "
                "(logits[:, -1, :]).", _prefix_first_position),
        Mistake("one_too_long", "Your prefix for position t includes token t + 1, the very "
                "token it should predict: use idx[:, :t + 1].", _prefix_one_too_long),
    ),
))


# -- the mean loss ----------------------------------------------------------------------

def lm_loss(logits, targets):
    """logits (B, T, V), targets (B, T) -> scalar: the mean cross-entropy over all B*T
    positions."""
    B, T, V = logits.shape
    return F.cross_entropy(logits.reshape(B * T, V), targets.reshape(B * T))


def _loss_sum(logits, targets):
    return position_losses(logits, targets).sum()


def _loss_sequence_sums(logits, targets):
    return position_losses(logits, targets).sum(dim=1).mean()


def _loss_last_position(logits, targets):
    return F.cross_entropy(logits[:, -1, :], targets[:, -1])


register(Exercise(
    id="lm_loss", chapter=CHAPTER, title="Exercise 4: the mean loss",
    reference=lm_loss, visible=_position_visible, hidden=_position_hidden,
    mistakes=(
        Mistake("sum", "You summed the losses instead of averaging them: the loss would then "
                "grow with batch_size and context_length, and so would the step size.",
                _loss_sum),
        Mistake("sequence_sums", "You summed over positions and averaged over sequences; "
                "average over all B*T positions.", _loss_sequence_sums),
        Mistake("last_position", "You scored only the last position, as in generation; "
                "training scores every position.", _loss_last_position),
    ),
))


# -- one training step ------------------------------------------------------------------

_DROPOUT = dict(_TINY, dropout=0.2)


@one_thread
def _run_train_step(candidate, case):
    """Four steps on the same batch, starting from a model left in eval mode (as an
    evaluation would leave it) -> the losses and the final loss measured without dropout."""
    model = _model(case.kwargs["config"], case.kwargs["seed"]).eval()
    optimizer = torch.optim.AdamW(model.parameters(), lr=case.kwargs["lr"])
    x, y = case.args
    torch.manual_seed(case.kwargs["seed"])
    losses = []
    for _ in range(case.kwargs["steps"]):
        loss = candidate(model, optimizer, x, y)
        if not isinstance(loss, (int, float, torch.Tensor)):
            raise TypeError("train_step should return the loss of the batch (a number), "
                            f"got {type(loss).__name__}")
        losses.append(float(loss))
    model.eval()
    with torch.no_grad():
        _, final = model(x, y)
    return {"losses": losses, "final_loss": final.item()}


def _step_case(label, seed, B, T, lr=1e-2):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, _TINY["vocab_size"], (B, T + 1), generator=g)
    return Case(label, (idx[:, :-1], idx[:, 1:]),
                {"config": dict(_DROPOUT), "seed": seed, "lr": lr, "steps": 4})


def _step_visible():
    return [_step_case("4 steps on one batch of 4 x 8 tokens", 921, 4, 8)]


def _step_hidden():
    return [_step_case("4 steps on one batch of 2 x 6 tokens", 922, 2, 6, lr=3e-3)]


def train_step(model, optimizer, x, y):
    """One optimizer step on the batch x, y (B, T) -> the batch's loss before the step."""
    model.train()
    _, loss = model(x, y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


def _step_no_zero_grad(model, optimizer, x, y):
    model.train()
    _, loss = model(x, y)
    loss.backward()
    optimizer.step()
    return loss.item()


def _step_no_train_mode(model, optimizer, x, y):
    _, loss = model(x, y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


def _step_before_backward(model, optimizer, x, y):
    model.train()
    optimizer.step()                       # the bug: uses the previous call's gradients
    _, loss = model(x, y)
    optimizer.zero_grad()
    loss.backward()
    return loss.item()


def _step_no_step(model, optimizer, x, y):
    model.train()
    _, loss = model(x, y)
    optimizer.zero_grad()
    loss.backward()
    return loss.item()


register(Exercise(
    id="train_step", chapter=CHAPTER, title="Exercise 5: one training step",
    reference=train_step, visible=_step_visible, hidden=_step_hidden, run=_run_train_step,
    mistakes=(
        Mistake("no_zero_grad", "Your gradients accumulate from step to step: call "
                "optimizer.zero_grad() before loss.backward().", _step_no_zero_grad),
        Mistake("no_train_mode", "Your step trains the model in evaluation mode, so dropout "
                "is off: call model.train() at the start (an evaluation may have left the "
                "model in eval mode).", _step_no_train_mode),
        Mistake("step_before_backward", "You call optimizer.step() before loss.backward(), so "
                "each step uses the previous batch's gradients (and the first does "
                "nothing).", _step_before_backward),
        Mistake("no_step", "Your weights never change, so the loss stays where it started: "
                "call optimizer.step() after loss.backward(). (A step taken right after "
                "zero_grad() and before backward() finds no gradients and does nothing.)",
                _step_no_step),
    ),
))


# -- the validation loss ----------------------------------------------------------------

def evaluate_loss(model, batches):
    """The mean loss over ``batches`` (a list of (x, y) pairs) with dropout off and no
    gradients; the model is put back in training mode afterwards."""
    model.eval()
    with torch.no_grad():
        losses = [model(x, y)[1].item() for x, y in batches]
    model.train()
    return sum(losses) / len(losses)


@one_thread
def _run_evaluate(candidate, case):
    model = _model(case.kwargs["config"], case.kwargs["seed"]).train()
    torch.manual_seed(case.kwargs["seed"])
    loss = candidate(model, [tuple(pair) for pair in case.args[0]])
    if not isinstance(loss, (int, float, torch.Tensor)):
        raise TypeError(f"evaluate_loss should return a number, got {type(loss).__name__}")
    return {"loss": float(loss), "training_after": model.training}


def _evaluate_case(label, seed, n_batches, B, T):
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(n_batches):
        idx = torch.randint(0, _TINY["vocab_size"], (B, T + 1), generator=g)
        batches.append((idx[:, :-1], idx[:, 1:]))
    return Case(label, (batches,), {"config": dict(_DROPOUT), "seed": seed})


def _evaluate_visible():
    return [_evaluate_case("3 batches of 4 x 8 tokens", 931, 3, 4, 8)]


def _evaluate_hidden():
    return [_evaluate_case("5 batches of 2 x 5 tokens", 932, 5, 2, 5)]


def _evaluate_no_eval(model, batches):
    with torch.no_grad():
        losses = [model(x, y)[1].item() for x, y in batches]
    model.train()
    return sum(losses) / len(losses)


def _evaluate_not_restored(model, batches):
    model.eval()
    with torch.no_grad():
        losses = [model(x, y)[1].item() for x, y in batches]
    return sum(losses) / len(losses)


def _evaluate_sum(model, batches):
    return evaluate_loss(model, batches) * len(batches)


register(Exercise(
    id="evaluate_loss", chapter=CHAPTER, title="Exercise 6: the validation loss",
    reference=evaluate_loss, visible=_evaluate_visible, hidden=_evaluate_hidden,
    run=_run_evaluate,
    mistakes=(
        Mistake("no_eval", "Dropout was active while you measured the loss: call "
                "model.eval() first, so the loss measures the model, not a noisy version "
                "of it.", _evaluate_no_eval),
        Mistake("not_restored", "You left the model in evaluation mode: call model.train() "
                "before returning, or dropout stays off for the rest of training.",
                _evaluate_not_restored),
        Mistake("sum", "You added the batches' losses instead of averaging them.",
                _evaluate_sum),
    ),
))


# -- the training loop ------------------------------------------------------------------

# Twelve lines of the public-domain Sonnet 18; repeated, they are a corpus small enough to
# learn in a second, which is all the check needs: a loop that trains gets far below the
# loss of guessing.
_VERSE = """Shall I compare thee to a summer's day?
Thou art more lovely and more temperate:
Rough winds do shake the darling buds of May,
And summer's lease hath all too short a date;
Sometime too hot the eye of heaven shines,
And often is his gold complexion dimm'd;
And every fair from fair sometime declines,
By chance or nature's changing course untrimm'd;
But thy eternal summer shall not fade,
Nor lose possession of that fair thou ow'st;
Nor shall death brag thou wander'st in his shade,
When in eternal lines to time thou grow'st:
"""

_LOOP_CONFIG = {"context_length": 16, "d_model": 32, "n_heads": 2, "n_layers": 1}


def _tiny_corpus():
    """-> (train_data, val_data, vocab_size). The validation text is the verse read
    backwards: the same characters, but nothing a model of the verse predicts well, so a
    loop that trains on it or evaluates the wrong split shows in the losses."""
    chars = sorted(set(_VERSE))
    train_data = torch.tensor([chars.index(c) for c in _VERSE * 7])
    val_data = torch.tensor([chars.index(c) for c in _VERSE[::-1]])
    return train_data, val_data, len(chars)


def _segments_loss(model, data):
    """Mean loss over every non-overlapping segment of ``data``, without dropout."""
    T = model.config.context_length
    n = (len(data) - 1) // T
    x = data[:n * T].view(n, T)
    y = data[1:n * T + 1].view(n, T)
    model.eval()
    with torch.no_grad():
        _, loss = model(x, y)
    return loss.item()


def _steps_taken(optimizer):
    """How many steps ``optimizer`` (an AdamW) has taken: the count in its state."""
    counts = [int(state["step"]) for state in optimizer.state.values() if "step" in state]
    return max(counts, default=0)


def _closer(value, to, other):
    """Which of two measured losses a recorded loss is closer to: "to" or "other"."""
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return "to" if abs(value - to) <= abs(value - other) else "other"


_REFERENCE_RUNS: dict = {}  # the course's own loop is deterministic: run it once per case


def _run_train(candidate, case):
    """Train with the learner's loop on the tiny corpus -> what the loop did (optimizer
    steps, the history it returned) and the losses the course's code measures afterwards
    on each split."""
    if candidate is not train:
        return _train_and_measure(candidate, case)
    key = tuple(sorted(case.kwargs.items()))
    if key not in _REFERENCE_RUNS:
        _REFERENCE_RUNS[key] = _train_and_measure(candidate, case)
    return dict(_REFERENCE_RUNS[key])


@one_thread
def _train_and_measure(candidate, case):
    from gptcourse.model import GPT, GPTConfig

    train_data, val_data, vocab_size = _tiny_corpus()
    steps, eval_every = case.kwargs["steps"], case.kwargs["eval_every"]
    torch.manual_seed(case.kwargs["seed"])
    model = GPT(GPTConfig(vocab_size=vocab_size, **_LOOP_CONFIG))
    optimizer = torch.optim.AdamW(model.parameters(), lr=case.kwargs["lr"])
    generator = torch.Generator().manual_seed(case.kwargs["seed"])
    history = candidate(model, optimizer, train_data, val_data, steps=steps, batch_size=16,
                        eval_every=eval_every, eval_batches=2, generator=generator,
                        progress=False)
    train_loss, val_loss = _segments_loss(model, train_data), _segments_loss(model, val_data)
    if val_loss < train_loss:
        learned = "val"
    else:
        learned = "train" if train_loss < case.kwargs["threshold"] else "nothing"
    summary = {"history_keys": sorted(history) if isinstance(history, dict) else [],
               "steps_taken": _steps_taken(optimizer), "learned": learned,
               "train_loss": train_loss, "val_loss": val_loss, "steps": steps,
               "eval_every": eval_every, "threshold": case.kwargs["threshold"],
               "chance": math.log(vocab_size)}
    if summary["history_keys"] != ["iter_loss", "steps", "train_loss", "val_loss"]:
        return summary

    lists = {key: list(history[key]) for key in summary["history_keys"]}
    summary["n_iter_loss"] = len(lists["iter_loss"])
    summary["eval_steps"] = [int(step) for step in lists["steps"]]
    summary["n_losses"] = [len(lists["train_loss"]), len(lists["val_loss"])]
    if lists["val_loss"] and lists["train_loss"]:
        last_train, last_val = float(lists["train_loss"][-1]), float(lists["val_loss"][-1])
        summary["last_recorded"] = [last_train, last_val]
        summary["val_recorded"] = _closer(last_val, val_loss, train_loss)
        summary["train_recorded"] = _closer(last_train, train_loss, val_loss)
    return summary


def _expected_eval_steps(steps, eval_every):
    marks = list(range(eval_every, steps + 1, eval_every))
    return marks if marks and marks[-1] == steps else marks + [steps]


def _training_messages(actual):
    """(summary key, message about the learner's loop), in the order they are checked."""
    steps, eval_every = actual["steps"], actual["eval_every"]
    taken, n_iter = actual["steps_taken"], actual.get("n_iter_loss")
    if taken == 0 and n_iter == steps:
        steps_message = ("the optimizer you were given took no steps: use it in train_step "
                         "(train(..., optimizer, ...) passes it on), do not create another")
    else:
        steps_message = (f"with steps={steps} your loop took {taken} optimizer steps; it "
                         "should take one train_step per step, for step in trange(1, steps "
                         "+ 1)" + (" (trange(1, steps) stops one short)"
                                   if taken == steps - 1 else ""))
    expected_marks = _expected_eval_steps(steps, eval_every)
    eval_steps = actual.get("eval_steps")
    if eval_steps == []:
        marks_message = (f"your loop never evaluates: history['steps'] is empty, but with "
                         f"steps={steps} and eval_every={eval_every} it should be "
                         f"{expected_marks}")
    else:
        marks_message = (f"history['steps'] is {eval_steps}; with steps={steps} and "
                         f"eval_every={eval_every} it should be {expected_marks}: evaluate "
                         "when step % eval_every == 0 and after the last step")
    n_train, n_val = actual.get("n_losses") or (None, None)
    lengths = (f"history['train_loss'] and history['val_loss'] should hold one loss per "
               f"evaluation, {len(eval_steps or [])} each; yours hold {n_train} and {n_val}")
    measured = (f"the model's loss is {actual['train_loss']:.2f} on train_data and "
                f"{actual['val_loss']:.2f} on val_data")
    if actual["learned"] == "val":
        learned = (f"after training, {measured}: your model learned the validation text. "
                   "Draw the training batches from train_data")
    else:
        learned = (f"after training, {measured}; on train_data it should be below "
                   f"{actual['threshold']:.2f} (guessing gives {actual['chance']:.2f}). Check "
                   "that each step draws a fresh batch of train_data with get_batch and calls "
                   "train_step")
    last_train, last_val = actual.get("last_recorded") or (float("nan"), float("nan"))
    val_recorded = (f"your last history['val_loss'] is {last_val:.2f}, but {measured}: "
                    "measure history['val_loss'] on batches of val_data, "
                    "history['train_loss'] on batches of train_data")
    train_recorded = (f"your last history['train_loss'] is {last_train:.2f}, but {measured}: "
                      "measure history['train_loss'] on batches of train_data")
    keys = ("train should return a dict with the keys ['iter_loss', 'steps', 'train_loss', "
            f"'val_loss'], got {actual['history_keys'] or 'something else'}")
    iter_loss = (f"history['iter_loss'] holds {n_iter} losses; it should hold one per step, "
                 f"{steps}: append what each train_step returns")
    return [("history_keys", keys), ("steps_taken", steps_message), ("n_iter_loss", iter_loss),
            ("eval_steps", marks_message), ("n_losses", lengths), ("learned", learned),
            ("val_recorded", val_recorded), ("train_recorded", train_recorded)]


def compare_training(expected, actual):
    """The learner's loop passes when it took every step, recorded what the exercise asks
    for, and left a model that learned the training split."""
    if not isinstance(expected, dict) or not isinstance(actual, dict):
        return compare_outputs(expected, actual)
    for key, message in _training_messages(actual):
        if actual.get(key) != expected.get(key):
            return message
    return None


def _train_case(label, seed):
    return Case(label, (), {"seed": seed, "steps": 150, "eval_every": 40, "lr": 1e-2,
                            "threshold": 1.7})


def _train_visible():
    return [_train_case("150 steps on 12 lines of verse", 941)]


def _train_hidden():
    return [_train_case("150 steps with another seed", 942)]


def train(model, optimizer, train_data, val_data, steps, batch_size, eval_every,
          eval_batches=10, generator=None, progress=True):
    """Train for ``steps`` steps; every ``eval_every`` steps (and after the last) record the
    mean loss of ``eval_batches`` fresh batches of each split.

    Returns {"steps": [...], "train_loss": [...], "val_loss": [...], "iter_loss": [...]}.
    ``progress`` shows a tqdm progress bar.
    """
    return _loop(model, optimizer, train_data, val_data, steps, batch_size, eval_every,
                 eval_batches, generator, progress)


def _loop(model, optimizer, train_data, val_data, steps, batch_size, eval_every,
          eval_batches=10, generator=None, progress=True, *, stop=None, train_split=None,
          eval_splits=None, evaluate=True):
    """The course's loop, with the knobs its wrong variants turn: where the range of steps
    stops (exclusive), the split trained on, the splits evaluated for (train_loss,
    val_loss), and whether it evaluates at all."""
    from tqdm.auto import trange

    T = model.config.context_length
    history = {"steps": [], "train_loss": [], "val_loss": [], "iter_loss": []}
    train_split = train_data if train_split is None else train_split
    eval_splits = eval_splits or (train_data, val_data)

    def record(step):
        for name, data in zip(("train_loss", "val_loss"), eval_splits):
            batches = [ref.get_batch(data, batch_size, T, generator)
                       for _ in range(eval_batches)]
            history[name].append(evaluate_loss(model, batches))
        history["steps"].append(step)

    stop = steps + 1 if stop is None else stop
    for step in trange(1, stop, desc="training", disable=not progress):
        x, y = ref.get_batch(train_split, batch_size, T, generator)
        history["iter_loss"].append(train_step(model, optimizer, x, y))
        if evaluate and (step % eval_every == 0 or step == steps):
            record(step)
    return history


def _train_never_evaluates(model, optimizer, train_data, val_data, steps, batch_size,
                           eval_every, eval_batches=10, generator=None, progress=True):
    return _loop(model, optimizer, train_data, val_data, steps, batch_size, eval_every,
                 eval_batches, generator, progress, evaluate=False)


def _train_evaluates_train_as_val(model, optimizer, train_data, val_data, steps, batch_size,
                                  eval_every, eval_batches=10, generator=None, progress=True):
    return _loop(model, optimizer, train_data, val_data, steps, batch_size, eval_every,
                 eval_batches, generator, progress, eval_splits=(train_data, train_data))


def _train_on_val(model, optimizer, train_data, val_data, steps, batch_size, eval_every,
                  eval_batches=10, generator=None, progress=True):
    return _loop(model, optimizer, train_data, val_data, steps, batch_size, eval_every,
                 eval_batches, generator, progress, train_split=val_data)


def _train_one_short(model, optimizer, train_data, val_data, steps, batch_size, eval_every,
                     eval_batches=10, generator=None, progress=True):
    return _loop(model, optimizer, train_data, val_data, steps, batch_size, eval_every,
                 eval_batches, generator, progress, stop=steps)


register(Exercise(
    id="train", chapter=CHAPTER, title="Exercise 7: the training loop",
    reference=train, visible=_train_visible, hidden=_train_hidden, run=_run_train,
    compare=compare_training,
    mistakes=(
        Mistake("one_step_short", "Your loop takes one step too few: trange(1, steps) stops "
                "at steps - 1; loop over trange(1, steps + 1).", _train_one_short),
        Mistake("never_evaluates", "Your loop never evaluates: every eval_every steps, and "
                "after the last, append the step to history['steps'] and the losses of both "
                "splits (your evaluate_loss) to history['train_loss'] and "
                "history['val_loss'].", _train_never_evaluates),
        Mistake("trains_on_val", "You train on the validation split: draw each step's batch "
                "from train_data; val_data is only measured, never trained on.",
                _train_on_val),
        Mistake("evaluates_train_as_val", "Your history['val_loss'] measures the training "
                "text: evaluate batches of val_data for it.", _train_evaluates_train_as_val),
    ),
    forbidden=("gptcourse.training.train",),
))
