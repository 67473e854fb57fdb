"""Plots draw what they are given, label it, and never show a window themselves."""

import math

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from gptcourse import plots
from gptcourse.training import History


@pytest.fixture(autouse=True)
def no_show(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("plot functions must leave plt.show() to the caller")

    monkeypatch.setattr(plt, "show", forbidden)
    yield
    plt.close("all")


def _ticks(labels) -> list[str]:
    return [label.get_text() for label in labels]


def _weights(*shape: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.softmax(torch.randn(*shape, generator=g), dim=-1)


def test_attention_heatmap_shows_the_weights_with_token_labels():
    weights = _weights(4, 4)
    tokens = ["T", "o", " ", "\n"]

    ax = plots.plot_attention(weights, tokens, title="one head")

    image = ax.images[0]
    np.testing.assert_array_equal(image.get_array(), weights.numpy())
    assert image.get_cmap().name == "cividis"
    assert image.get_clim() == (0.0, 1.0)
    assert _ticks(ax.get_yticklabels()) == ["T", "o", "\u2423", "\\n"]
    assert _ticks(ax.get_xticklabels()) == ["T", "o", "\u2423", "\\n"]
    assert ax.get_title() == "one head"
    assert len(ax.figure.axes) == 2  # the heatmap and its colorbar


def test_attention_between_different_query_and_key_tokens():
    fig, ax = plt.subplots()

    returned = plots.plot_attention(_weights(2, 3), ["a", "b"], ["x", "y", "z"], ax=ax,
                                    colorbar=False)

    assert returned is ax and len(fig.axes) == 1
    assert _ticks(ax.get_yticklabels()) == ["a", "b"]
    assert _ticks(ax.get_xticklabels()) == ["x", "y", "z"]


def test_attention_rejects_the_wrong_number_of_labels_or_dimensions():
    with pytest.raises(ValueError, match="3 query tokens.*4 query positions"):
        plots.plot_attention(_weights(4, 4), ["a", "b", "c"])
    with pytest.raises(ValueError, match="2-D"):
        plots.plot_attention(_weights(2, 4, 4), ["a", "b", "c", "d"])


@pytest.mark.parametrize("n_heads, grid", [(3, (1, 3)), (4, (1, 4)), (6, (2, 4))])
def test_attention_heads_grid_has_one_panel_per_head(n_heads, grid):
    weights = _weights(n_heads, 5, 5)

    fig = plots.plot_attention_heads(weights, list("hello"))

    cells = fig.axes[:-1]  # the last axes is the shared colorbar
    heads = [ax for ax in cells if ax.get_visible()]
    assert len(fig.axes) == grid[0] * grid[1] + 1
    assert fig.axes[-1].get_ylabel() == "weight"
    assert [ax.get_title() for ax in heads] == [f"head {h}" for h in range(n_heads)]
    for h, ax in enumerate(heads):
        np.testing.assert_array_equal(ax.images[0].get_array(), weights[h].numpy())


def test_positional_encoding_heatmap():
    positions = torch.arange(10.0)[:, None]
    dims = torch.arange(16.0)[None, :]
    pe = torch.sin(positions / 10.0 ** (dims / 16))  # any (T, d) matrix will do

    ax = plots.plot_positional_encoding(pe)

    np.testing.assert_allclose(ax.images[0].get_array(), pe.numpy())
    assert ax.images[0].get_cmap().name == "viridis"
    assert ax.get_xlabel() == "dimension" and ax.get_ylabel() == "position"


@pytest.mark.parametrize("kind", ["additive", "boolean"])
def test_causal_mask_shows_allowed_cells_light(kind):
    t = 5
    additive = torch.full((t, t), -math.inf).triu(diagonal=1)
    mask = additive if kind == "additive" else torch.ones(t, t, dtype=torch.bool).tril()

    ax = plots.plot_causal_mask(mask, list("abcde"))

    np.testing.assert_array_equal(ax.images[0].get_array(), torch.ones(t, t).tril().numpy())
    assert _ticks(ax.get_xticklabels()) == list("abcde")


@pytest.mark.parametrize("as_dict", [False, True])
def test_loss_curves_draw_train_and_validation(as_dict):
    history = History(steps=[0, 5, 10], train_loss=[4.2, 3.0, 2.6], val_loss=[4.2, 3.1, 2.8],
                      iter_loss=[4.0 - 0.1 * i for i in range(10)])
    if as_dict:
        history = history.to_dict()

    ax = plots.plot_loss_curves(history)

    lines = {line.get_label(): line for line in ax.get_lines()}
    assert set(lines) == {"train", "validation", "train (each batch)"}
    np.testing.assert_array_equal(lines["validation"].get_xdata(), [0, 5, 10])
    np.testing.assert_array_equal(lines["validation"].get_ydata(), [4.2, 3.1, 2.8])
    np.testing.assert_array_equal(lines["train (each batch)"].get_xdata(), range(1, 11))
    assert len(ax.get_legend().get_texts()) == 3


def test_loss_curves_reject_mismatched_lengths():
    with pytest.raises(ValueError, match="3 steps but 2 validation"):
        plots.plot_loss_curves({"steps": [0, 1, 2], "train_loss": [3, 2, 1],
                                "val_loss": [3, 2]})
