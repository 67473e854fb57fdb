"""Checks for the training-across-processes chapter (10-data-parallel).

The graded pieces are plain functions that simulate what DistributedDataParallel does, so
they can be judged in one process: cutting the global batch into one shard per rank,
averaging the ranks' gradients (what an all-reduce followed by a division gives), one
simulated data-parallel SGD step, and the arithmetic of scale. The references live here,
next to their checks; the notebook's torchrun run shows the same step with real processes.
"""

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from gptcourse.checks import Case, Exercise, Mistake, register

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
    cases.append(Case("B=7 over 2 ranks (must raise ValueError)",
                      (torch.zeros(7, 3), torch.zeros(7, 3), 1, 2)))
    if hidden:
        cases.append(Case("B=10 over 4 ranks (must raise ValueError)",
                          (torch.zeros(10, 2), torch.zeros(10, 2), 3, 4)))
    return cases


def _run_shard(candidate, case):
    try:
        return tuple(candidate(*copy.deepcopy(case.args)))
    except ValueError:
        return "ValueError"


def _shard_overlapping(x, y, rank, world_size):
    b = x.shape[0] // world_size
    return x[rank:rank + b], y[rank:rank + b]


def _shard_uneven(x, y, rank, world_size):
    return x.chunk(world_size)[rank], y.chunk(world_size)[rank]


def _shard_strided(x, y, rank, world_size):
    if x.shape[0] % world_size:
        raise ValueError("uneven")
    return x[rank::world_size], y[rank::world_size]


register(Exercise(
    id="shard_batch", chapter=CHAPTER, title="Exercise 1: one shard of the batch per rank",
    reference=shard_batch, visible=lambda: _shard_cases(False),
    hidden=lambda: _shard_cases(True), run=_run_shard,
    mistakes=(
        Mistake("overlapping_shards",
                "Your shards overlap: rank r starts at row r instead of r * (B // "
                "world_size), so neighbouring ranks train on the same examples.",
                _shard_overlapping),
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
    state, x, y, world_size, lr = copy.deepcopy(case.args)
    model = tiny_classifier().double()
    model.load_state_dict(state)
    params = candidate(model, x, y, world_size, lr)
    return [[p.detach() for p in rank_params] for rank_params in params]


def _ddp_summed(model, x, y, world_size, lr):
    return _simulated_step(model, x, y, world_size, lr, shard_batch, _average_summed)


def _ddp_unsynchronised(model, x, y, world_size, lr):
    return _simulated_step(model, x, y, world_size, lr, shard_batch, None)


def _ddp_overlapping(model, x, y, world_size, lr):
    return _simulated_step(model, x, y, world_size, lr, _shard_overlapping, average_gradients)


register(Exercise(
    id="ddp_step", chapter=CHAPTER, title="Exercise 3: one data-parallel step, simulated",
    reference=ddp_step, visible=lambda: _ddp_cases(False), hidden=lambda: _ddp_cases(True),
    run=_run_ddp,
    mistakes=(
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
