"""Checks for the training-across-processes chapter (10-data-parallel).

The graded pieces are plain functions that simulate what DistributedDataParallel does, so
they can be judged in one process: cutting the global batch into one shard per rank,
averaging the ranks' gradients (what an all-reduce followed by a division gives), one
simulated data-parallel SGD step, and the arithmetic of scale. The references live here,
next to their checks; the notebook's torchrun run shows the same step with real processes,
and :func:`check_ddp_run` compares that run's first step with one process's, saying which
of the script's given settings probably differs when they disagree.
"""

import ast
import copy
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from gptcourse.checks import Case, CheckFailed, Exercise, Mistake, compare_outputs, register
from gptcourse.tolerances import tolerance

CHAPTER = "10-data-parallel"


# ---- shard_batch -------------------------------------------------------------------------

def shard_batch(x: torch.Tensor, y: torch.Tensor, rank: int, world_size: int):
    """x (B, ...), y (B, ...) -> this rank's contiguous shard (B / world_size, ...) of both.

    Rank r gets rows ``r * b : (r + 1) * b`` with ``b = B // world_size``; the shards of all
    ranks are disjoint and together cover the batch. B must be divisible by world_size.
    """
    B = x.shape[0]
    if y.shape[0] != B:
        raise ValueError(f"x and y hold different numbers of examples: {B} and {y.shape[0]}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must lie in 0..{world_size - 1}, got {rank}")
    if B % world_size != 0:
        raise ValueError(f"a batch of {B} cannot be split evenly over {world_size} ranks; "
                         "choose a batch size divisible by the number of processes")
    b = B // world_size
    return x[rank * b:(rank + 1) * b], y[rank * b:(rank + 1) * b]


def _shard_cases(hidden):
    g = torch.Generator().manual_seed(10 if hidden else 0)
    cases = []
    sizes = [(8, 2), (12, 3)] if not hidden else [(8, 4), (6, 3), (10, 2), (9, 3)]
    for B, world_size in sizes:
        x = torch.randn(B, 5, generator=g)
        y = torch.randint(0, 7, (B, 5), generator=g)
        for rank in range(world_size):
            cases.append(Case(f"B={B} over {world_size} ranks, rank {rank}",
                              (x, y, rank, world_size)))
    # Distinct rows, so that the wrong ways of splitting an uneven batch tell apart.
    cases.append(Case("B=7 over 2 ranks (must raise ValueError)",
                      (torch.randn(7, 3, generator=g), torch.arange(7), 1, 2)))
    if hidden:
        cases.append(Case("B=10 over 4 ranks (must raise ValueError)",
                          (torch.randn(10, 2, generator=g), torch.arange(10), 3, 4)))
    return cases


_RAISES = "ValueError"


def _run_shard(candidate, case):
    try:
        return tuple(candidate(*copy.deepcopy(case.args)))
    except ValueError:
        return _RAISES


def _sizes(shards) -> str:
    return ", ".join(str(tuple(t.shape)) if isinstance(t, torch.Tensor) else type(t).__name__
                     for t in shards)


def _compare_shards(expected, actual):
    """Shards or the ValueError, said in words rather than as the repr of whole tensors."""
    if expected == _RAISES and actual != _RAISES:
        returned = _sizes(actual) if isinstance(actual, tuple) else type(actual).__name__
        return (f"expected a ValueError, since the batch does not split evenly, but your "
                f"function returned shards of shapes {returned}")
    if actual == _RAISES and expected != _RAISES:
        return "your function raised ValueError, but this batch splits evenly"
    if expected == _RAISES:
        return None
    if not isinstance(actual, tuple) or len(actual) != 2:
        return "return the pair (x_shard, y_shard)"
    for name, e, a in zip(("x_shard", "y_shard"), expected, actual):
        if (message := compare_outputs(e, a, name)) is not None:
            return message
    return None


def _check_divisible(x, world_size):
    if x.shape[0] % world_size:
        raise ValueError("uneven")


def _shard_overlapping(x, y, rank, world_size):
    _check_divisible(x, world_size)
    b = x.shape[0] // world_size
    return x[rank:rank + b], y[rank:rank + b]


def _shard_overlapping_unchecked(x, y, rank, world_size):
    b = x.shape[0] // world_size
    return x[rank:rank + b], y[rank:rank + b]


def _shard_unchecked(x, y, rank, world_size):
    b = x.shape[0] // world_size
    return x[rank * b:(rank + 1) * b], y[rank * b:(rank + 1) * b]


def _shard_uneven(x, y, rank, world_size):
    return x.chunk(world_size)[rank], y.chunk(world_size)[rank]


def _shard_strided(x, y, rank, world_size):
    _check_divisible(x, world_size)
    return x[rank::world_size], y[rank::world_size]


register(Exercise(
    id="shard_batch", chapter=CHAPTER, title="Exercise 1: one shard of the batch per rank",
    reference=shard_batch, visible=lambda: _shard_cases(False),
    hidden=lambda: _shard_cases(True), run=_run_shard, compare=_compare_shards,
    mistakes=(
        Mistake("overlapping_shards",
                "Your shards overlap: rank r starts at row r instead of r * (B // "
                "world_size), so neighbouring ranks train on the same examples.",
                _shard_overlapping),
        Mistake("overlapping_shards_unchecked",
                "Your shards overlap: rank r starts at row r instead of r * (B // "
                "world_size), so neighbouring ranks train on the same examples. Also raise "
                "ValueError when B % world_size != 0.", _shard_overlapping_unchecked),
        Mistake("no_value_error",
                "A batch that does not divide evenly is split anyway (B // world_size rows "
                "each, the rest dropped): raise ValueError when B % world_size != 0, saying "
                "to choose a batch size divisible by the number of processes.",
                _shard_unchecked),
        Mistake("uneven_shards",
                "A batch that does not divide evenly gives shards of different sizes (as "
                "torch.chunk does): raise ValueError when B % world_size != 0, since uneven "
                "shards weigh examples unequally in the averaged gradient.", _shard_uneven),
        Mistake("strided_shards",
                "Your shards interleave (x[rank::world_size], like DistributedSampler): "
                "valid in practice, but this exercise asks for contiguous blocks, rows "
                "rank * b to (rank + 1) * b.", _shard_strided),
    ),
))


# ---- average_gradients -------------------------------------------------------------------

def average_gradients(grads_per_rank: list[list[torch.Tensor]]) -> list[torch.Tensor]:
    """grads_per_rank[r][i]: rank r's gradient of parameter i -> the mean over ranks, per
    parameter (what all-reduce with SUM followed by dividing by world_size gives)."""
    if not grads_per_rank:
        raise ValueError("grads_per_rank is empty: pass one list of gradients per rank")
    return [torch.stack(grads).mean(dim=0) for grads in zip(*grads_per_rank)]


def _average_cases(hidden):
    g = torch.Generator().manual_seed(11 if hidden else 1)
    shapes = [(3, 4), (4,)] if not hidden else [(2, 3, 2), (5,), (1, 1)]
    dtype = torch.float64 if hidden else torch.float32
    worlds = [2, 3] if not hidden else [4, 3, 1]
    cases = []
    for world_size in worlds:
        grads = [[torch.randn(s, generator=g, dtype=dtype) for s in shapes]
                 for _ in range(world_size)]
        cases.append(Case(f"{world_size} ranks, {len(shapes)} parameters", (grads,)))
    return cases


def _average_summed(grads_per_rank):
    return [torch.stack(grads).sum(dim=0) for grads in zip(*grads_per_rank)]


def _average_by_parameters(grads_per_rank):
    n = len(grads_per_rank[0])
    return [torch.stack(grads).sum(dim=0) / n for grads in zip(*grads_per_rank)]


def _average_rank_zero(grads_per_rank):
    return [grad.clone() for grad in grads_per_rank[0]]


register(Exercise(
    id="average_gradients", chapter=CHAPTER, title="Exercise 2: average the gradients",
    reference=average_gradients, visible=lambda: _average_cases(False),
    hidden=lambda: _average_cases(True),
    mistakes=(
        Mistake("summed_gradients",
                "You sum the gradients over ranks without dividing by world_size: all-reduce "
                "sums, so divide by the number of ranks, or the step grows with the number "
                "of processes.", _average_summed),
        Mistake("divided_by_parameters",
                "You divide by the number of parameters instead of the number of ranks: "
                "average over ranks, parameter by parameter.", _average_by_parameters),
        Mistake("rank_zero_only",
                "You return rank 0's gradients: every rank must contribute to the average.",
                _average_rank_zero),
    ),
))


# ---- ddp_step ----------------------------------------------------------------------------

def tiny_classifier(d_in: int = 4, d_hidden: int = 8, n_classes: int = 3) -> nn.Module:
    """The small model the ddp_step checks train: x (B, d_in) -> logits (B, n_classes)."""
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.Tanh(), nn.Linear(d_hidden, n_classes))


def _whole_batch(x, y, rank, world_size):
    return x, y


def _simulated_step(model, x, y, world_size, lr, shard, average):
    replicas = [copy.deepcopy(model) for _ in range(world_size)]
    grads_per_rank = []
    for rank, replica in enumerate(replicas):
        x_shard, y_shard = shard(x, y, rank, world_size)
        replica.zero_grad()
        F.cross_entropy(replica(x_shard), y_shard).backward()
        grads_per_rank.append([p.grad for p in replica.parameters()])

    grads = average(grads_per_rank) if average is not None else None
    with torch.no_grad():
        for rank, replica in enumerate(replicas):
            own = grads if grads is not None else grads_per_rank[rank]
            for p, grad in zip(replica.parameters(), own):
                p -= lr * grad
    return [[p.detach().clone() for p in replica.parameters()] for replica in replicas]


def ddp_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, world_size: int,
             lr: float) -> list[list[torch.Tensor]]:
    """One simulated data-parallel SGD step; returns every rank's parameters afterwards.

    x (B, d_in), y (B,) class ids. Each rank holds a copy of ``model``, computes the mean
    cross-entropy on its shard, the gradients are averaged over ranks, and every copy takes
    ``p -= lr * grad``. Result: ``params[rank][i]``, in ``model.parameters()`` order.
    """
    return _simulated_step(model, x, y, world_size, lr, shard_batch, average_gradients)


def _ddp_cases(hidden):
    g = torch.Generator().manual_seed(12 if hidden else 2)
    torch_state = torch.random.get_rng_state()
    cases = []
    settings = [(8, 2, 0.5)] if not hidden else [(12, 3, 0.3), (8, 4, 1.0), (6, 2, 0.1)]
    for B, world_size, lr in settings:
        torch.manual_seed(int(torch.randint(0, 10_000, (1,), generator=g)))
        state = {k: v.double() for k, v in tiny_classifier().state_dict().items()}
        x = torch.randn(B, 4, generator=g, dtype=torch.float64)
        y = torch.randint(0, 3, (B,), generator=g)
        cases.append(Case(f"B={B} over {world_size} ranks, lr={lr}",
                          (state, x, y, world_size, lr)))
    torch.random.set_rng_state(torch_state)
    return cases


def _run_ddp(candidate, case):
    """The parameters of every rank, and how often each example of x went through a
    forward pass (with gradients) of the model or of a copy of it.

    A hook on the model's first layer sees the inputs of every forward pass; copies made
    with copy.deepcopy keep the hook. Each example must be in exactly one rank's shard:
    giving every replica the whole batch averages to the same step, but is not data
    parallelism. When no forward pass is seen (the model was not called as a module),
    the count is None and not judged.
    """
    state, x, y, world_size, lr = copy.deepcopy(case.args)
    model = tiny_classifier().double()
    model.load_state_dict(state)
    seen = []

    def record(module, args):
        if torch.is_grad_enabled() and args and isinstance(args[0], torch.Tensor):
            seen.append(args[0].detach().clone())

    model[0].register_forward_pre_hook(record)
    params = candidate(model, x, y, world_size, lr)
    params = [[p.detach() for p in rank_params] for rank_params in params]
    if not seen:
        return params, None
    uses = torch.zeros(len(x), dtype=torch.long)
    for inputs in seen:
        if inputs.dim() == 2 and inputs.shape[-1] == x.shape[-1]:
            same = torch.isclose(inputs.to(x.dtype)[:, None, :], x[None]).all(-1)  # (n, B)
            uses += same.sum(0)
    return params, uses.tolist()


def _compare_ddp(expected, actual):
    params, uses = actual
    expected_params, expected_uses = expected
    if not isinstance(params, list) or len(params) != len(expected_params):
        return (f"expected the parameters of {len(expected_params)} ranks (a list with one "
                f"list of parameters per rank), got {type(params).__name__} of "
                f"{len(params) if isinstance(params, (list, tuple)) else 1}")
    for rank, (e, a) in enumerate(zip(expected_params, params)):
        if (message := compare_outputs(e, a, f"rank {rank}'s parameters")) is not None:
            return message
    if uses is None or uses == expected_uses:
        return None
    if len(set(uses)) == 1 and uses[0] > 1:
        return (f"every example of the batch went through {uses[0]} forward passes: each "
                "replica computed its loss on the whole batch instead of its own shard")
    return (f"the forward passes used the examples of the batch {uses} times (by row); each "
            "example belongs to exactly one rank's shard and is used once")


def _ddp_unsharded(model, x, y, world_size, lr):
    return _simulated_step(model, x, y, world_size, lr, _whole_batch, average_gradients)


def _ddp_summed(model, x, y, world_size, lr):
    return _simulated_step(model, x, y, world_size, lr, shard_batch, _average_summed)


def _ddp_unsynchronised(model, x, y, world_size, lr):
    return _simulated_step(model, x, y, world_size, lr, shard_batch, None)


def _ddp_overlapping(model, x, y, world_size, lr):
    return _simulated_step(model, x, y, world_size, lr, _shard_overlapping, average_gradients)


register(Exercise(
    id="ddp_step", chapter=CHAPTER, title="Exercise 3: one data-parallel step, simulated",
    reference=ddp_step, visible=lambda: _ddp_cases(False), hidden=lambda: _ddp_cases(True),
    run=_run_ddp, compare=_compare_ddp,
    mistakes=(
        Mistake("no_sharding",
                "Every replica computes its loss on the whole batch, so the step is right "
                "but each rank does all the work: give rank r only its shard, "
                "shard_batch(x, y, r, world_size), as in Exercise 1.", _ddp_unsharded),
        Mistake("summed_gradients",
                "Your step is world_size times too large: the gradients are summed over "
                "ranks, not averaged.", _ddp_summed),
        Mistake("no_gradient_sync",
                "Each rank steps with its own gradient, so the copies drift apart: average "
                "the gradients of all ranks before any rank takes its step.",
                _ddp_unsynchronised),
        Mistake("overlapping_shards",
                "The ranks' shards overlap (rank r starts at row r): use shard_batch, rows "
                "rank * b to (rank + 1) * b.", _ddp_overlapping),
    ),
))


# ---- the torchrun script ----------------------------------------------------------------

# The settings the notebook's script cell gives. After the run, check_ddp_run repeats the
# script's first step in one process with exactly these and compares the saved weights.
DDP_SCRIPT_SETTINGS = {
    "GLOBAL_BATCH": 16, "CONTEXT_LENGTH": 32, "LR": 0.3,
    "D_MODEL": 32, "N_HEADS": 2, "N_LAYERS": 2,
    "MODEL_SEED": 0, "BATCH_SEED": 1,
}

_HOW_TO_BUILD = ("torch.manual_seed(MODEL_SEED) just before GPT(GPTConfig(vocab_size="
                 "tokenizer.vocab_size, context_length=CONTEXT_LENGTH, d_model=D_MODEL, "
                 "n_heads=N_HEADS, n_layers=N_LAYERS))")
_HOW_TO_BATCH = ("one g = torch.Generator().manual_seed(BATCH_SEED) made before the loop, "
                 "get_batch(data, GLOBAL_BATCH, CONTEXT_LENGTH, generator=g) every step, and "
                 "rank r keeping rows r * b to (r + 1) * b with b = GLOBAL_BATCH // world_size")


def script_settings(script: str | Path) -> dict:
    """The constants a script assigns at module level (``A, B = 1, 2`` too), read without
    running it: only plain literals count."""
    found = {}
    for node in ast.parse(Path(script).read_text()).body:
        if not isinstance(node, ast.Assign):
            continue
        try:
            value = ast.literal_eval(node.value)
        except ValueError:
            continue
        for target in node.targets:
            if isinstance(target, ast.Name):
                found[target.id] = value
            elif (isinstance(target, ast.Tuple) and isinstance(value, tuple)
                  and len(target.elts) == len(value)):
                found.update({t.id: v for t, v in zip(target.elts, value)
                              if isinstance(t, ast.Name)})
    return found


def single_process_step(data: torch.Tensor, vocab_size: int,
                        settings: dict = DDP_SCRIPT_SETTINGS) -> tuple[dict, dict]:
    """One process's plain SGD step on the script's whole first global batch.

    data (N,) token ids. Returns the state dicts (initial, after the step).
    """
    from gptcourse.model import GPT, GPTConfig
    from gptcourse.training import get_batch

    torch.manual_seed(settings["MODEL_SEED"])
    model = GPT(GPTConfig(vocab_size=vocab_size, context_length=settings["CONTEXT_LENGTH"],
                          d_model=settings["D_MODEL"], n_heads=settings["N_HEADS"],
                          n_layers=settings["N_LAYERS"]))
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    generator = torch.Generator().manual_seed(settings["BATCH_SEED"])
    x, y = get_batch(data, settings["GLOBAL_BATCH"], settings["CONTEXT_LENGTH"],
                     generator=generator)                                      # (B, T)
    _, loss = model(x, y)
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= settings["LR"] * p.grad
    return initial, {k: v.detach().clone() for k, v in model.state_dict().items()}


def _flat(state: dict, keys) -> torch.Tensor:
    return torch.cat([state[k].flatten().double() for k in keys])


def ddp_run_problem(ranks: list[dict], initial: dict, expected: dict,
                    lr: float = DDP_SCRIPT_SETTINGS["LR"]) -> str | None:
    """What probably differs between the weights each rank saved after its first step and
    one process's step (``initial`` -> ``expected``), in words; None when they agree."""
    first = ranks[0]
    if any(k.startswith("module.") for k in first):
        return ("the saved names start with 'module.': that is the DDP wrapper's state dict; "
                "save model.module.state_dict(), the GPT inside it")
    missing, extra = sorted(set(expected) - set(first)), sorted(set(first) - set(expected))
    wrong_shape = [k for k in expected if k in first and first[k].shape != expected[k].shape]
    if missing or extra or wrong_shape:
        if wrong_shape:
            k = wrong_shape[0]
            what = (f"{k} has shape {tuple(first[k].shape)}, expected "
                    f"{tuple(expected[k].shape)}")
        else:
            what = (f"the saved model has {len(first)} tensors, expected {len(expected)} "
                    f"(e.g. {(missing or extra)[0]} is {'missing' if missing else 'extra'})")
        return f"the model differs: {what}. Build it as given: {_HOW_TO_BUILD}"

    for rank, other in enumerate(ranks[1:], start=1):
        for k in expected:
            if not torch.equal(other[k], first[k]):
                return (f"rank 0 and rank {rank} hold different weights ({k}): wrap the "
                        "model in DDP(model) before training, so that backward averages the "
                        "gradients of all ranks and every copy takes the same step")

    keys = list(expected)
    saved, start, target = _flat(first, keys), _flat(initial, keys), _flat(expected, keys)
    step, wanted = saved - start, target - start
    rtol, atol = tolerance(torch.float32)
    if torch.allclose(saved, target, rtol=rtol, atol=atol):
        return None
    where = next(k for k in keys
                 if not torch.allclose(first[k], expected[k], rtol=rtol, atol=atol))
    if torch.allclose(saved, start, rtol=rtol, atol=atol):
        return ("the saved weights are the initial ones: save them after the first "
                "optimizer.step(), when step == 0")
    scale = float(step @ wanted / (wanted @ wanted))
    if float((step - scale * wanted).norm()) < 1e-3 * float(wanted.norm()):
        return (f"the step has the right direction but is {scale:.3g} times the single "
                "process's: use plain torch.optim.SGD(model.parameters(), lr=LR), the mean "
                "loss of each rank's shard (as model(x, y) returns it), and no gradient "
                "clipping")
    if abs(float(step.abs().median()) / lr - 1.0) < 0.2:
        return (f"the weights moved by about lr in every entry (first in {where}), as "
                "Adam's first step does: the optimizer must be plain "
                "torch.optim.SGD(model.parameters(), lr=LR)")
    if float(step.norm()) > 3 * float(wanted.norm()):
        return (f"the weights differ by far more than one step (first in {where}), so the "
                f"starting weights are probably not the same: {_HOW_TO_BUILD}, with nothing "
                "random drawn in between")
    return (f"the step differs from one process's (first in {where}), though the model and "
            f"its start agree: the first global batch probably differs ({_HOW_TO_BATCH}), or "
            "the optimizer is not plain SGD with lr=LR (no momentum, weight decay or "
            "clipping)")


def check_ddp_run(run_dir: str | Path, script: str | Path | None = None,
                  n_ranks: int = 2) -> None:
    """Compare the weights the ranks of the notebook's torchrun script saved after their
    first step (``run_dir/step1_rank<r>.pt``) with one process's step on the whole global
    batch; print a tick or raise :class:`CheckFailed` saying what probably differs."""
    from gptcourse.data import load_tiny_shakespeare
    from gptcourse.tokens import CharTokenizer

    run_dir = Path(run_dir)
    paths = [run_dir / f"step1_rank{rank}.pt" for rank in range(n_ranks)]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise CheckFailed(f"the script did not save {', '.join(missing)}: read the first error "
                          "printed by the run above")
    ranks = [torch.load(p, weights_only=True) for p in paths]

    text = load_tiny_shakespeare()
    tokenizer = CharTokenizer.from_text(text)
    data = torch.tensor(tokenizer.encode(text), dtype=torch.long)                # (N,)
    initial, expected = single_process_step(data, tokenizer.vocab_size)
    problem = ddp_run_problem(ranks, initial, expected)
    if problem is None:
        print(f"\u2713 both ranks identical; equal to one process's step on the whole global "
              f"batch ({len(expected)} tensors)")
        return
    if script is not None:
        given = script_settings(script)
        changed = [f"{name} = {given[name]!r} (given: {value!r})"
                   for name, value in DDP_SCRIPT_SETTINGS.items()
                   if name in given and given[name] != value]
        if changed:
            problem = (f"the script changes the given settings, {', '.join(changed)}: the "
                       f"comparison repeats the step with the given values ({problem})")
    raise CheckFailed(f"The torchrun script: {problem}")


# ---- training_flops ----------------------------------------------------------------------

def training_flops(n_params: float, n_tokens: float) -> float:
    """Approximate floating-point operations to train on ``n_tokens``: 6 * N * D.

    Per parameter and token: 2 in the forward pass (a multiply and an add) and 4 in the
    backward pass (gradients with respect to both the input and the weight).
    """
    return float(6 * n_params * n_tokens)  # a float, so int and float answers compare alike


def _flops_cases(hidden):
    values = [(124_000_000, 1_000_000), (10, 7)] if not hidden else [
        (175_000_000_000, 300_000_000_000), (3, 5), (1_000_000, 2_048)]
    return [Case(f"N={n:,} parameters, D={d:,} tokens", (n, d)) for n, d in values]


register(Exercise(
    id="training_flops", chapter=CHAPTER, title="Exercise 4: training FLOPs",
    reference=training_flops, visible=lambda: _flops_cases(False),
    hidden=lambda: _flops_cases(True),
    mistakes=(
        Mistake("forward_only_flops",
                "You count 2 * N * D, the forward pass only: the backward pass costs about "
                "twice the forward, so training is about 6 * N * D.",
                lambda n, d: float(2 * n * d)),
        Mistake("backward_only_flops",
                "You count 4 * N * D, the backward pass only: add the forward pass's "
                "2 * N * D.", lambda n, d: float(4 * n * d)),
    ),
))


# ---- adam_memory_bytes -------------------------------------------------------------------

def adam_memory_bytes(n_params: float, bytes_per_value: int = 4) -> float:
    """Bytes to train with Adam: parameters, gradients and Adam's two moment estimates,
    each one value per parameter (activations not included)."""
    return float(4 * n_params * bytes_per_value)


def _memory_cases(hidden):
    values = [(124_000_000, 4), (1_000, 2)] if not hidden else [
        (175_000_000_000, 4), (7, 8), (350_000_000, 2)]
    return [Case(f"N={n:,} parameters, {b} bytes per value", (n, b)) for n, b in values]


register(Exercise(
    id="adam_memory_bytes", chapter=CHAPTER, title="Exercise 5: memory for Adam training",
    reference=adam_memory_bytes, visible=lambda: _memory_cases(False),
    hidden=lambda: _memory_cases(True),
    mistakes=(
        Mistake("parameters_only",
                "You count the parameters only: training also keeps one gradient and two "
                "Adam moments per parameter.", lambda n, b: float(n * b)),
        Mistake("no_adam_states",
                "You count parameters and gradients but not Adam's two moment estimates "
                "(exp_avg and exp_avg_sq), one value each per parameter.",
                lambda n, b: float(2 * n * b)),
        Mistake("one_copy_missing",
                "One copy is missing: parameters, gradients, and Adam's first AND second "
                "moments make four values per parameter.", lambda n, b: float(3 * n * b)),
        Mistake("bits_not_bytes",
                "The result ignores bytes_per_value: multiply the number of values by the "
                "bytes each one takes.", lambda n, b: float(4 * n)),
    ),
))
