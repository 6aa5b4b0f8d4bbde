"""Shared test helpers: the tolerance table (clarep_fast/ops/spec.py) and comparisons that print the worst mismatches."""

from __future__ import annotations

import torch

from clarep_fast.backends import BACKENDS, unusable_reason
from clarep_fast.ops.spec import TOLERANCES  # noqa: F401  the one table, re-exported for the tests


def usable_backends(device: str) -> list[str]:
    return [name for name in BACKENDS if not unusable_reason(name, device)]


def assert_close(
    actual: torch.Tensor, expected: torch.Tensor, tolerance: float, name: str, relative_to_max: bool = True
) -> None:
    """|actual - expected| <= tolerance · max|expected| (or absolute); on failure list the worst elements."""
    actual = actual.detach().double().cpu()
    expected = expected.detach().double().cpu()
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert torch.isfinite(actual).all(), f"{name}: non-finite values in the result"
    # relative to the largest expected entry; a 1e-12 floor so that an all-zero expectation (say a
    # gradient that vanishes exactly) accepts rounding-level noise instead of demanding exact zeros
    scale = expected.abs().max().clamp_min(1e-12).item() if relative_to_max else 1.0
    error = (actual - expected).abs()
    bound = tolerance * scale + 1e-12  # absolute floor: below it, O(1) data only leaves rounding noise
    if error.numel() == 0 or error.max().item() <= bound:
        return
    worst = error.flatten().topk(min(5, error.numel()))
    lines = []
    for flat_index in worst.indices.tolist():
        index = tuple(torch.unravel_index(torch.tensor(flat_index), error.shape)) if error.dim() else ()
        index = tuple(int(i) for i in index)
        lines.append(f"  at {index}: got {actual[index].item():.8g}, expected {expected[index].item():.8g}")
    raise AssertionError(
        f"{name}: max error {error.max().item():.3g} > {bound:.3g}; worst elements:\n" + "\n".join(lines)
    )
