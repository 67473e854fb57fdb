"""Checks of chapter 00 (welcome): the warm-up exercise ``mean_squared_error``.

The warm-up is there to show how an exercise, its check and its grading work, so the
function is small: the mean of the squared differences between two tensors of the same
shape, the loss a regression model minimises. The course's own GPT is trained with
cross-entropy instead (chapter 09), but the habits are the same: elementwise operations
on whole tensors, then one reduction.
"""

import torch

from gptcourse.checks import Case, Exercise, Mistake, register


def reference_mean_squared_error(predictions: torch.Tensor,
                                 targets: torch.Tensor) -> torch.Tensor:
    """predictions, targets: (...) of the same shape -> () the mean of squared differences.

    Computed with torch's built-in loss, an implementation independent of the learner's.
    """
    return torch.nn.functional.mse_loss(predictions, targets, reduction="mean")


def _pair(shape: tuple[int, ...], seed: int, dtype: torch.dtype = torch.float32):
    g = torch.Generator().manual_seed(seed)
    predictions = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    targets = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    return predictions, targets


def _visible() -> list[Case]:
    return [
        Case("two vectors of 5 numbers", _pair((5,), seed=0)),
        Case("a (3, 4) matrix of predictions and targets", _pair((3, 4), seed=1)),
        Case("float64 tensors of shape (2, 3) (the result keeps their dtype)",
             _pair((2, 3), seed=2, dtype=torch.float64)),
    ]


def _hidden() -> list[Case]:
    return [
        Case("a batch of shape (2, 3, 7)", _pair((2, 3, 7), seed=11)),
        Case("float64 tensors of shape (6, 2)", _pair((6, 2), seed=12, dtype=torch.float64)),
        Case("a single number", _pair((1,), seed=13)),
        Case("identical tensors (the error must be exactly 0)",
             (torch.arange(6.0).reshape(2, 3), torch.arange(6.0).reshape(2, 3))),
    ]


def _sum_not_mean(predictions, targets):
    return ((predictions - targets) ** 2).sum()


def _no_square(predictions, targets):
    return (predictions - targets).mean()


def _absolute(predictions, targets):
    return (predictions - targets).abs().mean()


def _square_of_mean(predictions, targets):
    return (predictions - targets).mean() ** 2


def _n_minus_1(predictions, targets):
    return ((predictions - targets) ** 2).sum() / (predictions.numel() - 1)


def _root(predictions, targets):
    return ((predictions - targets) ** 2).mean().sqrt()


register(Exercise(
    id="mean_squared_error",
    chapter="00-welcome",
    title="Exercise 1: mean squared error",
    reference=reference_mean_squared_error,
    visible=_visible,
    hidden=_hidden,
    mistakes=(
        Mistake("sum", "You add the squared differences up instead of averaging them: divide "
                       "by the number of elements, or use .mean().", _sum_not_mean),
        Mistake("no_square", "You average the differences without squaring them, so positive "
                             "and negative errors cancel out: square each difference first.",
                _no_square),
        Mistake("absolute", "You average the absolute differences (the mean absolute error): "
                            "square each difference instead of taking .abs().", _absolute),
        Mistake("square_of_mean", "You square the mean of the differences; square each "
                                  "difference first, then take the mean.", _square_of_mean),
        Mistake("n - 1", "You divide by n - 1, as the unbiased variance does. The mean "
                         "squared error divides by n, the number of elements: use .mean().",
                _n_minus_1),
        Mistake("root", "You take the square root at the end (that is the root mean squared "
                        "error): return the mean of the squares itself.", _root),
    ),
    forbidden=("gptcourse.checks.welcome.reference_mean_squared_error",),
))
