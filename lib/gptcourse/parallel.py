"""Data-parallel training: several processes, one model each, one batch split between them.

Every process (a *rank*) holds a full copy of the model. For each step all ranks draw the
same global batch (B, T), each takes its own B / world_size rows, runs forward and
backward on them, and :class:`~torch.nn.parallel.DistributedDataParallel` averages the
gradients across ranks (an all-reduce) during ``backward``. Because the shards have equal
size, the averaged gradient is exactly the gradient of the mean loss over the whole
batch: every rank takes the same optimizer step a single process would take on the whole
batch, and the copies stay identical.

Start it with torchrun, here two processes on one CPU machine (the gloo backend)::

    python -m torch.distributed.run --standalone --nproc_per_node=2 \\
        -m gptcourse.parallel --steps 200

Rank 0 shows the progress; :func:`launch` does the same from Python (e.g. a notebook).

Drawing the whole batch on every rank and keeping a slice is the simplest way to make the
equivalence visible; large-scale training gives each rank its own data instead
(``torch.utils.data.distributed.DistributedSampler``).
"""

import argparse
import logging
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import trange

from gptcourse.model import GPT, GPTConfig
from gptcourse.training import History, estimate_loss, get_batch, make_optimizer, split_data

logger = logging.getLogger(__name__)


def init_distributed(backend: str = "gloo") -> tuple[int, int]:
    """Join the process group that torchrun set up; return (rank, world_size).

    torchrun passes the rendezvous address, the rank and the world size in environment
    variables (MASTER_ADDR, RANK, WORLD_SIZE, ...), which ``init_process_group`` reads.
    """
    if "RANK" not in os.environ:
        raise RuntimeError(
            "gptcourse.parallel must be started by torchrun, which sets RANK and WORLD_SIZE: "
            "python -m torch.distributed.run --standalone --nproc_per_node=2 "
            "-m gptcourse.parallel")
    if not dist.is_initialized():
        dist.init_process_group(backend)
    return dist.get_rank(), dist.get_world_size()


def shard(batch: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """This rank's rows of a global batch: (B, ...) -> (B / world_size, ...)."""
    if batch.shape[0] % world_size:
        raise ValueError(f"batch_size {batch.shape[0]} does not split evenly over "
                         f"{world_size} processes; use a multiple of {world_size} so every "
                         "rank's loss carries the same weight")
    return batch.chunk(world_size)[rank]


def parallel_step(ddp_model: DistributedDataParallel, optimizer: torch.optim.Optimizer,
                  x: torch.Tensor, y: torch.Tensor, rank: int, world_size: int,
                  grad_clip: float | None = 1.0) -> float:
    """One optimizer step on this rank's shard of the global batch x, y (B, T).

    ``backward`` all-reduces the gradients, so after the step every rank holds the same
    parameters. Returns the mean loss over the whole batch (averaged across ranks).
    """
    _, loss = ddp_model(shard(x, rank, world_size), shard(y, rank, world_size))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()  # DDP averages the gradients across ranks here
    if grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(ddp_model.parameters(), grad_clip)
    optimizer.step()

    # Only for reporting: the mean of the ranks' losses is the loss of the whole batch.
    mean_loss = loss.detach().clone()
    dist.all_reduce(mean_loss, op=dist.ReduceOp.SUM)
    return mean_loss.item() / world_size


def train_parallel(config: GPTConfig, data: torch.Tensor, *, steps: int, batch_size: int,
                   lr: float = 1e-3, weight_decay: float = 0.1, grad_clip: float | None = 1.0,
                   eval_iters: int = 20, seed: int = 0, save_dir: str | Path | None = None,
                   progress: bool = True) -> History | None:
    """Train a new GPT with every process of the group; returns the History on rank 0
    (None elsewhere). ``data`` (N,) are token ids; the last 10 % are for validation.

    With ``save_dir``, rank 0 writes ``initial.pt`` (config and initial weights) and
    ``batches.pt`` (the global batches), and every rank writes ``rank<r>.pt`` (its final
    weights), so that the run can be compared with a single process.
    """
    rank, world_size = init_distributed()
    train_data, val_data = split_data(data)

    # Same seed everywhere; DDP also copies rank 0's weights to the others at start.
    torch.manual_seed(seed)
    model = GPT(config)
    save_dir = Path(save_dir) if save_dir is not None else None
    if save_dir is not None and rank == 0:
        save_dir.mkdir(parents=True, exist_ok=True)
        torch.save({"config": asdict(config), "model": model.state_dict()},
                   save_dir / "initial.pt")

    ddp_model = DistributedDataParallel(model)
    optimizer = make_optimizer(model, lr, weight_decay)
    batch_rng = torch.Generator().manual_seed(seed)
    history = History()
    batches = []

    bar = trange(steps, desc=f"training on {world_size} processes", disable=not progress
                 or rank != 0)
    for _ in bar:
        x, y = get_batch(train_data, batch_size, config.context_length, batch_rng)  # (B, T)
        if save_dir is not None:
            batches.append((x, y))
        loss = parallel_step(ddp_model, optimizer, x, y, rank, world_size, grad_clip)
        history.iter_loss.append(loss)
        bar.set_postfix(loss=f"{loss:.3f}")
    bar.close()

    if save_dir is not None:
        torch.save(model.state_dict(), save_dir / f"rank{rank}.pt")
        if rank == 0:
            torch.save(batches, save_dir / "batches.pt")

    if rank != 0:
        return None

    losses = estimate_loss(model, {"train": train_data, "val": val_data}, eval_iters,
                           batch_size, torch.Generator().manual_seed(seed + 1))
    history.steps.append(steps)
    history.train_loss.append(losses["train"])
    history.val_loss.append(losses["val"])
    return history


def launch(nproc_per_node: int = 2, args: Sequence[str] = (),
           **run_kwargs) -> subprocess.CompletedProcess:
    """Run ``python -m gptcourse.parallel ARGS`` in ``nproc_per_node`` processes with
    torchrun and wait for it (keyword arguments go to :func:`subprocess.run`)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={nproc_per_node}", "-m", "gptcourse.parallel", *args]
    return subprocess.run(command, **run_kwargs)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gptcourse.parallel",
        description="Data-parallel GPT training on Tiny Shakespeare (start with torchrun).")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=16,
                        help="global batch size, split evenly over the processes")
    parser.add_argument("--context-length", type=int, default=64)
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--n-heads", type=int, default=4)
    parser.add_argument("--n-layers", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--eval-iters", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--corpus", help="a text file (default: Tiny Shakespeare)")
    parser.add_argument("--save-dir", help="write initial, final weights and batches here")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    from gptcourse.data import load_corpus
    from gptcourse.tokens import CharTokenizer

    text = load_corpus(args.corpus).text
    tokenizer = CharTokenizer.from_text(text)
    data = torch.tensor(tokenizer.encode(text))  # (N,)
    config = GPTConfig(vocab_size=tokenizer.vocab_size, context_length=args.context_length,
                       d_model=args.d_model, n_heads=args.n_heads, n_layers=args.n_layers)

    try:
        history = train_parallel(config, data, steps=args.steps, batch_size=args.batch_size,
                                 lr=args.lr, weight_decay=args.weight_decay,
                                 eval_iters=args.eval_iters, seed=args.seed,
                                 save_dir=args.save_dir, progress=not args.no_progress)
        if history is not None:
            print(f"after {args.steps} steps on {dist.get_world_size()} processes: "
                  f"train loss {history.train_loss[-1]:.4f}, "
                  f"val loss {history.val_loss[-1]:.4f}", flush=True)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
