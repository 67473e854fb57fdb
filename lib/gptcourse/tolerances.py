"""The course's numeric tolerance policy, stated once and used everywhere.

Two results count as equal when ``|actual - expected| <= atol + rtol * |expected|`` holds
element-wise, with ``rtol`` and ``atol`` chosen by the dtype of the expected tensor. The
float32 values leave room for a different but valid order of summation (a batched matmul
against a per-head loop, torch's fused attention against the explicit formula); they are
far tighter than any of the classic mistakes the checks recognise, which move outputs by
whole percent.
"""

import math
from typing import Any

import torch

TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    # dtype: (rtol, atol)
    torch.float64: (1e-7, 1e-9),
    torch.float32: (1e-4, 1e-5),
    torch.float16: (1e-2, 1e-3),
    torch.bfloat16: (2e-2, 1e-2),
}

# Statistical checks (sampling frequencies) use a separate, looser bound: the largest
# allowed gap between an observed and an expected frequency, in standard errors.
SAMPLING_Z = 5.0


def tolerance(dtype: torch.dtype = torch.float32) -> tuple[float, float]:
    """Return ``(rtol, atol)`` for comparing tensors of ``dtype``."""
    return TOLERANCES.get(dtype, TOLERANCES[torch.float32])


def close(actual: Any, expected: Any) -> bool:
    """True when ``actual`` equals ``expected`` within the policy (tensors or numbers)."""
    if isinstance(expected, torch.Tensor):
        if not isinstance(actual, torch.Tensor) or actual.shape != expected.shape:
            return False
        rtol, atol = tolerance(expected.dtype)
        return bool(
            torch.allclose(actual.to(expected.dtype), expected, rtol=rtol, atol=atol,
                           equal_nan=False)
        )
    rtol, atol = tolerance(torch.float64 if isinstance(expected, float) else torch.float32)
    return math.isclose(float(actual), float(expected), rel_tol=rtol, abs_tol=atol)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, msg: str | None = None) -> None:
    """``torch.testing.assert_close`` with the course's tolerances for ``expected.dtype``."""
    rtol, atol = tolerance(expected.dtype)
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, msg=msg)
