"""Training: from a corpus of token ids to a model that predicts the next one.

1. :func:`split_data` keeps the end of the corpus aside for validation, so the
   validation loss measures text the model never trained on.
2. :func:`get_batch` cuts random windows of ``context_length`` tokens; the targets are the
   same windows shifted one token to the right, so every position is a training example.
3. :func:`train` runs AdamW on such batches, shows a ``tqdm`` progress bar and every
   ``eval_interval`` steps estimates the mean train and validation loss
   (:func:`estimate_loss`), collecting them in a :class:`History`.
4. :func:`save_checkpoint` and :func:`load_checkpoint` store a model with its config.
"""

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import trange

from gptcourse.model import GPT, GPTConfig

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1


def split_data(data: torch.Tensor, val_fraction: float = 0.1) -> tuple[torch.Tensor,
                                                                     torch.Tensor]:
    """Split token ids (N,) into (train (N - n_val,), val (n_val,)), the last
    ``val_fraction`` of the corpus becoming validation data.

    The split is contiguous, not random: random windows from one text overlap their
    neighbours, so a shuffled split would leak training text into validation.
    """
    if data.dim() != 1:
        raise ValueError(f"data must be a 1-D tensor of token ids, got shape "
                         f"{tuple(data.shape)}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie strictly between 0 and 1, got {val_fraction}")

    n_train = int(len(data) * (1.0 - val_fraction))
    return data[:n_train], data[n_train:]


def get_batch(data: torch.Tensor, batch_size: int, context_length: int,
              generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows of token ids: x (B, T) and y (B, T) with y[b, t] = x[b, t + 1].

    ``data`` is (N,); every window starts at a uniformly random offset in
    0 .. N - T - 1, so its targets still lie inside the corpus.
    """
    if data.dim() != 1:
        raise ValueError(f"data must be a 1-D tensor of token ids, got shape "
                         f"{tuple(data.shape)}")
    if len(data) < context_length + 1:
        raise ValueError(
            f"data holds {len(data)} tokens, too few for one window of context_length "
            f"{context_length} plus its shifted target ({context_length + 1} tokens); use "
            "more text or a smaller context_length")

    starts = torch.randint(len(data) - context_length, (batch_size,), generator=generator)
    offsets = starts[:, None] + torch.arange(context_length)  # (B, T)
    return data[offsets], data[offsets + 1]


@torch.no_grad()
def estimate_loss(model: torch.nn.Module, splits: dict[str, torch.Tensor], eval_iters: int,
                  batch_size: int, generator: torch.Generator | None = None,
                  context_length: int | None = None) -> dict[str, float]:
    """Mean loss over ``eval_iters`` random batches of each split, e.g.
    ``{"train": 2.1, "val": 2.3}``. The model is evaluated without dropout and put back
    in the mode it was in."""
    context_length = context_length or model.config.context_length
    was_training = model.training
    model.eval()
    try:
        means = {}
        for name, data in splits.items():
            losses = torch.empty(eval_iters)
            for i in range(eval_iters):
                x, y = get_batch(data, batch_size, context_length, generator)
                _, loss = model(x, y)
                losses[i] = loss.item()
            means[name] = losses.mean().item()
    finally:
        model.train(was_training)
    return means


@dataclass
class History:
    """The loss curves of a training run.

    ``steps[i]`` is the number of optimizer steps taken when ``train_loss[i]`` and
    ``val_loss[i]`` (means over evaluation batches) were measured; ``iter_loss[k]`` is
    the loss of the batch of step k + 1; ``seconds`` is the wall time of the run.
    """

    steps: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    iter_loss: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def make_optimizer(model: torch.nn.Module, lr: float = 1e-3,
                   weight_decay: float = 0.1) -> torch.optim.AdamW:
    """AdamW that decays only the matrices (weights and embeddings), not biases or
    LayerNorm gains: shrinking those towards zero would not make the model simpler."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr)


def cosine_lr(step: int, max_iters: int, lr: float, min_lr: float,
              warmup_iters: int = 0) -> float:
    """Learning rate at ``step``: linear warm-up, then a cosine from ``lr`` to ``min_lr``."""
    if step < warmup_iters:
        return lr * (step + 1) / warmup_iters
    progress = (step - warmup_iters) / max(1, max_iters - warmup_iters)
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def train(model: torch.nn.Module, train_data: torch.Tensor, val_data: torch.Tensor, *,
          max_iters: int, batch_size: int, lr: float = 1e-3, eval_interval: int | None = None,
          eval_iters: int = 20, weight_decay: float = 0.1, seed: int | None = 0,
          min_lr: float | None = None, warmup_iters: int = 0, grad_clip: float | None = 1.0,
          optimizer: torch.optim.Optimizer | None = None, progress: bool = True) -> History:
    """Train ``model`` on random windows of ``train_data`` (N,) with AdamW.

    Evaluates the mean train and validation loss before the first step, every
    ``eval_interval`` steps (default: 10 evaluations in all) and after the last step.
    ``min_lr`` turns on a cosine decay of the learning rate from ``lr`` to ``min_lr``
    (after ``warmup_iters`` steps of linear warm-up); without it ``lr`` stays constant.
    ``grad_clip`` caps the gradient norm (None: no clipping). ``seed`` fixes the batches
    and, through ``torch.manual_seed``, dropout. Returns the :class:`History`.
    """
    if max_iters < 0 or batch_size < 1 or eval_iters < 1:
        raise ValueError("max_iters must be >= 0, batch_size and eval_iters >= 1")
    eval_interval = eval_interval or max(1, max_iters // 10)
    context_length = model.config.context_length

    if seed is not None:
        torch.manual_seed(seed)
    batch_rng = torch.Generator().manual_seed(0 if seed is None else seed)
    # Evaluation draws from its own generator so that evaluating more or less often does
    # not change which batches training sees.
    eval_rng = torch.Generator().manual_seed(1 if seed is None else seed + 1)
    optimizer = optimizer or make_optimizer(model, lr, weight_decay)
    splits = {"train": train_data, "val": val_data}
    history = History()
    start = time.perf_counter()

    def evaluate(step: int) -> None:
        losses = estimate_loss(model, splits, eval_iters, batch_size, eval_rng)
        history.steps.append(step)
        history.train_loss.append(losses["train"])
        history.val_loss.append(losses["val"])
        logger.info("step %d: train loss %.4f, val loss %.4f", step, losses["train"],
                    losses["val"])
        bar.set_postfix(train=f"{losses['train']:.3f}", val=f"{losses['val']:.3f}")

    model.train()
    bar = trange(max_iters, desc="training", disable=not progress, leave=True)
    evaluate(0)
    for step in bar:
        if min_lr is not None:
            for group in optimizer.param_groups:
                group["lr"] = cosine_lr(step, max_iters, lr, min_lr, warmup_iters)

        x, y = get_batch(train_data, batch_size, context_length, batch_rng)
        _, loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        history.iter_loss.append(loss.item())

        done = step + 1
        if done % eval_interval == 0 or done == max_iters:
            evaluate(done)
    bar.close()

    history.seconds = time.perf_counter() - start
    return history


def save_checkpoint(path: str | Path, model: GPT, optimizer: torch.optim.Optimizer | None = None,
                    step: int = 0, history: History | None = None) -> Path:
    """Save the model's config (as a plain dict) and weights, and optionally the optimizer
    state, the step count and the history, in one file readable with
    ``torch.load(weights_only=True)``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({
        "format": CHECKPOINT_FORMAT,
        "config": asdict(model.config),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "step": int(step),
        "history": history.to_dict() if history is not None else None,
    }, path)
    return path


def read_checkpoint(path: str | Path) -> dict:
    """The raw contents saved by :func:`save_checkpoint` (tensors, numbers, strings only)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict) or "config" not in checkpoint or "model" not in checkpoint:
        raise ValueError(f"{path} is not a gptcourse checkpoint (no 'config' and 'model'); "
                         "save one with gptcourse.training.save_checkpoint")
    return checkpoint


def load_checkpoint(path: str | Path) -> GPT:
    """Rebuild the GPT saved at ``path`` (on the CPU).

    To resume training, restore the optimizer too::

        model = load_checkpoint(path)
        optimizer = make_optimizer(model)
        optimizer.load_state_dict(read_checkpoint(path)["optimizer"])
    """
    checkpoint = read_checkpoint(path)
    model = GPT(GPTConfig(**checkpoint["config"]))
    model.load_state_dict(checkpoint["model"])
    return model
