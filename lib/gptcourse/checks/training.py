"""Checks for chapter 09, training on Tiny Shakespeare.

The exercises: the batch builder (random segments and their targets, shifted by one), the
loss at every position from one forward pass, the same losses from one forward pass per
prefix, the mean loss, one training step, the validation loss, and the training loop. The
loop is judged on a fixed tiny corpus: the learner's ``train`` runs there and the course's
code measures the validation loss it reached, so the verdict does not depend on anything
left over in the learner's notebook.
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


def _run_get_batch(candidate, case):
    """Call ``get_batch`` on the corpus 0, 1, ..., N-1 (so a token's value is its position)
    and describe the batch: shapes, the shift from x to y and which windows were used."""
    n_tokens, batch_size, context_length, seed = case.args
    data = torch.arange(n_tokens)
    generator = torch.Generator().manual_seed(seed)
    try:
        x, y = candidate(data, batch_size, context_length, generator=generator)
    except (IndexError, RuntimeError) as exc:
        if _PAST_END.search(str(exc)):
            # Slicing past the corpus end yields a short segment, which cannot be stacked
            # with the others (or indexes outside the corpus).
            return {"past_end": True}
        raise
    summary = {"past_end": False, "x_shape": list(x.shape), "y_shape": list(y.shape)}
    if list(x.shape) != [batch_size, context_length] or x.shape != y.shape:
        return summary

    steps = x[:, 1:] - x[:, :-1]
    summary["contiguous"] = bool((steps == 1).all())
    shift = torch.unique(y - x)
    summary["shift"] = int(shift[0]) if len(shift) == 1 else "mixed"
    if summary["shift"] != 1:
        return summary                     # which segments were used matters only after
    window_starts = x[:, 0]                                            # (B,)
    summary["last_window_used"] = int(window_starts.max()) == n_tokens - context_length - 1
    summary["first_window_used"] = int(window_starts.min()) == 0
    return summary


def _get_batch_visible():
    return [Case("a corpus of 20 tokens, batch_size=200, context_length=8", (20, 200, 8, 1))]


def _get_batch_hidden():
    return [Case("a corpus of 50 tokens, batch_size=600, context_length=16", (50, 600, 16, 2)),
            Case("a corpus of 12 tokens, batch_size=100, context_length=3", (12, 100, 3, 3))]


def _windows(data, batch_size, context_length, generator, high):
    starts = torch.randint(high, (batch_size,), generator=generator)
    offsets = starts[:, None] + torch.arange(context_length)          # (B, T)
    return offsets


def _not_shifted(data, batch_size, context_length, generator=None):
    offsets = _windows(data, batch_size, context_length, generator, len(data) - context_length)
    return data[offsets], data[offsets]


def _wrong_way(data, batch_size, context_length, generator=None):
    offsets = _windows(data, batch_size, context_length, generator, len(data) - context_length)
    return data[offsets + 1], data[offsets]


def _past_end(data, batch_size, context_length, generator=None):
    offsets = _windows(data, batch_size, context_length, generator,
                       len(data) - context_length + 1)
    return data[offsets], data[offsets + 1]


def _never_last(data, batch_size, context_length, generator=None):
    offsets = _windows(data, batch_size, context_length, generator,
                       len(data) - context_length - 1)
    return data[offsets], data[offsets + 1]


register(Exercise(
    id="get_batch", chapter=CHAPTER, title="Exercise 1: segments and targets",
    reference=ref.get_batch, visible=_get_batch_visible, hidden=_get_batch_hidden,
    run=_run_get_batch,
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
    _, loss = model(x, y)
    optimizer.zero_grad()
    optimizer.step()
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
    chars = sorted(set(_VERSE))
    ids = torch.tensor([chars.index(c) for c in _VERSE * 8])
    return ids, len(chars)


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


@one_thread
def _run_train(candidate, case):
    """Train with the learner's loop on the tiny corpus -> the validation loss the course's
    code measures afterwards, and the keys of the returned history."""
    from gptcourse.model import GPT, GPTConfig

    data, vocab_size = _tiny_corpus()
    n_train = int(0.9 * len(data))
    train_data, val_data = data[:n_train], data[n_train:]
    torch.manual_seed(case.kwargs["seed"])
    model = GPT(GPTConfig(vocab_size=vocab_size, **_LOOP_CONFIG))
    optimizer = torch.optim.AdamW(model.parameters(), lr=case.kwargs["lr"])
    generator = torch.Generator().manual_seed(case.kwargs["seed"])
    history = candidate(model, optimizer, train_data, val_data, steps=case.kwargs["steps"],
                        batch_size=16, eval_every=case.kwargs["steps"] // 2, eval_batches=2,
                        generator=generator, progress=False)
    keys = sorted(history) if isinstance(history, dict) else []
    return {"val_loss": _segments_loss(model, val_data), "history_keys": keys,
            "threshold": case.kwargs["threshold"], "chance": math.log(vocab_size)}


def compare_training(expected, actual):
    """The learner's loop passes when its validation loss is below the case's threshold
    and it returned the history the notebook plots."""
    if not isinstance(actual, dict) or "val_loss" not in actual:
        return compare_outputs(expected, actual)
    if actual["history_keys"] != expected["history_keys"]:
        return (f"train should return a dict with the keys {expected['history_keys']}, "
                f"got {actual['history_keys'] or type(actual).__name__}")
    if actual["val_loss"] > expected["threshold"]:
        return (f"after training, the validation loss is {actual['val_loss']:.3f}; it should "
                f"be below {expected['threshold']:.2f} (guessing gives "
                f"{expected['chance']:.2f}, the course's loop reaches "
                f"{expected['val_loss']:.2f}). Check that each step draws a fresh batch with "
                "get_batch and calls train_step")
    return None


def _train_visible():
    return [Case("150 steps on 12 lines of verse", (),
                 {"seed": 941, "steps": 150, "lr": 1e-2, "threshold": 1.6})]


def _train_hidden():
    return [Case("150 steps with another seed", (),
                 {"seed": 942, "steps": 150, "lr": 1e-2, "threshold": 1.6})]


def train(model, optimizer, train_data, val_data, steps, batch_size, eval_every,
          eval_batches=10, generator=None, progress=True):
    """Train for ``steps`` steps; every ``eval_every`` steps (and after the last) record the
    mean loss of ``eval_batches`` fresh batches of each split.

    Returns {"steps": [...], "train_loss": [...], "val_loss": [...], "iter_loss": [...]}.
    ``progress`` shows a tqdm progress bar.
    """
    from tqdm.auto import trange

    T = model.config.context_length
    history = {"steps": [], "train_loss": [], "val_loss": [], "iter_loss": []}

    def record(step):
        for name, data in (("train_loss", train_data), ("val_loss", val_data)):
            batches = [ref.get_batch(data, batch_size, T, generator)
                       for _ in range(eval_batches)]
            history[name].append(evaluate_loss(model, batches))
        history["steps"].append(step)

    for step in trange(1, steps + 1, desc="training", disable=not progress):
        x, y = ref.get_batch(train_data, batch_size, T, generator)
        history["iter_loss"].append(train_step(model, optimizer, x, y))
        if step % eval_every == 0 or step == steps:
            record(step)
    return history


register(Exercise(
    id="train", chapter=CHAPTER, title="Exercise 7: the training loop",
    reference=train, visible=_train_visible, hidden=_train_hidden, run=_run_train,
    compare=compare_training,
    forbidden=("gptcourse.training.train",),
))
