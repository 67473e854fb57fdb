"""A test-only exercise whose reference lives in the course library.

``toy_softmax`` is graded against ``gptcourse.attention.softmax`` and forbids it, so the
attacks that import or wrap the library's own implementation can be tried on it.
"""

import torch

from gptcourse import attention
from gptcourse.checks import Case, Exercise, register


def _visible() -> list[Case]:
    g = torch.Generator().manual_seed(0)
    return [Case("a (3, 5) matrix of scores", (torch.randn(3, 5, generator=g),))]


def _hidden() -> list[Case]:
    g = torch.Generator().manual_seed(1)
    return [Case("scores near 1000", (torch.randn(2, 4, generator=g) + 1000.0,)),
            Case("float64 scores", (torch.randn(4, 3, generator=g, dtype=torch.float64),))]


TOY = register(Exercise(
    id="toy_softmax", chapter="99-toy", title="Toy exercise: softmax",
    reference=attention.softmax, visible=_visible, hidden=_hidden,
    forbidden=("gptcourse.attention.softmax",),
))
