"""Floor 4: the position-wise feed-forward network.

The same two-layer network is applied to every position on its own: expand d_model to
d_ff (4 * d_model by default), apply a non-linearity, contract back. Attention only mixes
vectors linearly (weighted sums); this is where the model gets its non-linear capacity.
"""

import torch
from torch import nn

ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU}


class FeedForward(nn.Module):
    """d_model -> d_ff -> d_model with an activation in between, per position."""

    def __init__(self, d_model: int, d_ff: int | None = None, dropout: float = 0.0,
                 activation: str = "gelu", bias: bool = True):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose from "
                             f"{sorted(ACTIVATIONS)}")
        d_ff = 4 * d_model if d_ff is None else d_ff
        self.expand = nn.Linear(d_model, d_ff, bias=bias)
        self.activation = ACTIVATIONS[activation]()
        self.contract = nn.Linear(d_ff, d_model, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., d_model) -> (..., d_model); each position independently."""
        return self.dropout(self.contract(self.activation(self.expand(x))))
