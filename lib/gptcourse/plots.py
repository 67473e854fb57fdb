"""Pictures of the building: attention weights, positional encodings, the causal mask and
loss curves.

Every function draws with matplotlib on the axes it is given (or a new figure), uses a
colour-blind-safe colormap (cividis for weights and masks, viridis for encodings), and
returns the Axes or Figure it drew; none calls ``plt.show()``, so a notebook decides when
to show and a test can inspect the result.
"""

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

WEIGHTS_CMAP = "cividis"
ENCODING_CMAP = "viridis"

# Label every token up to this many; past it the tick labels would overlap.
MAX_TICK_LABELS = 48


def _as_2d(values: Any, name: str) -> torch.Tensor:
    values = torch.as_tensor(values).detach().to("cpu", torch.float32)
    if values.dim() != 2:
        raise ValueError(f"{name} must be a 2-D matrix, got shape {tuple(values.shape)}; "
                         "pick one batch element and one head first, e.g. weights[0, 0].")
    return values


def _token_labels(tokens: Sequence[Any] | None, n: int, axis: str) -> list[str] | None:
    if tokens is None:
        return None
    # Show whitespace: a space as an open box, a newline as \n.
    labels = [repr(t)[1:-1].replace(" ", "\u2423") if isinstance(t, str) else str(t)
              for t in tokens]
    if len(labels) != n:
        raise ValueError(f"got {len(labels)} {axis} tokens for a matrix with {n} {axis} "
                         "positions; pass one label per position.")
    return labels


def _label_axes(ax: Axes, x_labels: list[str] | None, y_labels: list[str] | None) -> None:
    if x_labels is not None and len(x_labels) <= MAX_TICK_LABELS:
        ax.set_xticks(range(len(x_labels)), x_labels, rotation=90)
    if y_labels is not None and len(y_labels) <= MAX_TICK_LABELS:
        ax.set_yticks(range(len(y_labels)), y_labels)


def _new_axes(ax: Axes | None, size: tuple[float, float] = (5, 4.5)) -> Axes:
    if ax is None:
        _, ax = plt.subplots(figsize=size)
    return ax


def plot_attention(weights: Any, query_tokens: Sequence[Any] | None = None,
                   key_tokens: Sequence[Any] | None = None, ax: Axes | None = None,
                   title: str | None = None, colorbar: bool = True) -> Axes:
    """Heatmap of attention weights (T_q, T_k): row i shows where query i looks.

    ``key_tokens`` defaults to ``query_tokens`` (self-attention). Returns the Axes.
    """
    weights = _as_2d(weights, "weights")
    t_q, t_k = weights.shape
    key_tokens = query_tokens if key_tokens is None else key_tokens

    ax = _new_axes(ax)
    image = ax.imshow(weights.numpy(), cmap=WEIGHTS_CMAP, vmin=0.0, vmax=1.0,
                      aspect="auto", interpolation="nearest")
    y_labels = _token_labels(query_tokens, t_q, "query")
    _label_axes(ax, _token_labels(key_tokens, t_k, "key"), y_labels)
    ax.set_xlabel("key (attended to)")
    ax.set_ylabel("query (attending)")
    if title:
        ax.set_title(title)
    if colorbar:
        ax.figure.colorbar(image, ax=ax, label="weight")
    return ax


def plot_attention_heads(weights: Any, tokens: Sequence[Any] | None = None,
                         ncols: int | None = None, title: str | None = None) -> Figure:
    """A grid with one attention heatmap per head. ``weights``: (H, T_q, T_k).

    Returns the Figure; its first H axes hold the heads (unused grid cells are hidden).
    """
    weights = torch.as_tensor(weights).detach().to("cpu", torch.float32)
    if weights.dim() != 3:
        raise ValueError(f"weights must have shape (H, T_q, T_k), got {tuple(weights.shape)}; "
                         "pick one batch element first, e.g. weights[0].")
    n_heads = weights.shape[0]
    ncols = ncols or min(n_heads, 4)
    nrows = -(-n_heads // ncols)

    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 3.0 * nrows),
                             squeeze=False, constrained_layout=True)
    for h, ax in enumerate(axes.flat):
        if h >= n_heads:
            ax.set_visible(False)
            continue
        plot_attention(weights[h], tokens, ax=ax, title=f"head {h}", colorbar=False)
        if h % ncols:
            ax.set_ylabel("")
        if h < n_heads - ncols:
            ax.set_xlabel("")

    fig.colorbar(axes.flat[0].images[0], ax=axes, label="weight", shrink=0.8)
    if title:
        fig.suptitle(title)
    return fig


def plot_positional_encoding(pe: Any, ax: Axes | None = None,
                             title: str | None = "positional encoding") -> Axes:
    """Heatmap of a positional-encoding matrix ``pe`` (T, d_model): one row per position.

    Returns the Axes.
    """
    pe = _as_2d(pe, "pe")
    ax = _new_axes(ax, size=(7, 4))
    limit = float(pe.abs().max()) or 1.0
    image = ax.imshow(pe.numpy(), cmap=ENCODING_CMAP, vmin=-limit, vmax=limit,
                      aspect="auto", interpolation="nearest")
    ax.set_xlabel("dimension")
    ax.set_ylabel("position")
    if title:
        ax.set_title(title)
    ax.figure.colorbar(image, ax=ax, label="value")
    return ax


def plot_causal_mask(mask: Any, tokens: Sequence[Any] | None = None, ax: Axes | None = None,
                     title: str | None = "causal mask") -> Axes:
    """Show a causal mask (T, T): allowed cells (0, or True) light, blocked cells
    (-inf, or False) dark. Accepts the additive float mask or a boolean keep-mask.

    Returns the Axes.
    """
    mask = torch.as_tensor(mask).detach().cpu()
    if mask.dtype == torch.bool:
        allowed = mask
    else:
        allowed = torch.isfinite(mask) & (mask == 0)
    allowed = _as_2d(allowed.float(), "mask")
    t_q, t_k = allowed.shape

    ax = _new_axes(ax)
    ax.imshow(allowed.numpy(), cmap=WEIGHTS_CMAP, vmin=0.0, vmax=1.0, interpolation="nearest")
    _label_axes(ax, _token_labels(tokens, t_k, "key"), _token_labels(tokens, t_q, "query"))
    ax.set_xlabel("key (light: may attend)")
    ax.set_ylabel("query")
    if title:
        ax.set_title(title)
    return ax


def _history_field(history: Any, name: str) -> list:
    if isinstance(history, Mapping):
        return list(history.get(name, []))
    return list(getattr(history, name, []))


def plot_loss_curves(history: Any, ax: Axes | None = None,
                     title: str | None = "loss") -> Axes:
    """Training and validation loss against the step.

    ``history`` is a :class:`gptcourse.training.History` or a dict with ``steps``,
    ``train_loss`` and ``val_loss`` (equal-length lists) and optionally ``iter_loss``
    (the loss of every training batch, drawn faintly). Returns the Axes.
    """
    steps = _history_field(history, "steps")
    curves = {"train": _history_field(history, "train_loss"),
              "validation": _history_field(history, "val_loss")}
    for name, values in curves.items():
        if values and len(values) != len(steps):
            raise ValueError(f"history has {len(steps)} steps but {len(values)} {name} "
                             "losses; they must be evaluated at the same steps.")

    ax = _new_axes(ax, size=(6, 4))
    colors = plt.get_cmap(WEIGHTS_CMAP)
    iter_loss = _history_field(history, "iter_loss")
    if iter_loss:
        ax.plot(range(1, len(iter_loss) + 1), iter_loss, color=colors(0.4), alpha=0.35,
                linewidth=0.8, label="train (each batch)")
    for (name, values), shade in zip(curves.items(), (0.0, 0.7), strict=True):
        if values:
            ax.plot(steps, values, marker="o", markersize=3, color=colors(shade), label=name)

    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy loss")
    if title:
        ax.set_title(title)
    ax.legend()
    return ax
