"""The element types the fused ops take and the type they accumulate in, written once.

Every op reads float16, bfloat16, float32 and float64 tensors and sums in float64 when any input
is float64, else in float32: low-precision inputs are upcast inside the kernels (and in the
references), never summed in their own precision. csrc/common/kernel.h states the same rule.
"""

from __future__ import annotations

import torch
from torch import Tensor

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def accumulation_dtype(*tensors: Tensor) -> torch.dtype:
    """float64 if any input is float64, else float32."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def require_float(name: str, value) -> None:
    """A clear error unless ``value`` is a dense tensor of one of FLOAT_DTYPES (ints and bools are
    refused, not cast; sparse tensors are refused, not densified)."""
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {value.dtype}")
    if value.layout != torch.strided:
        raise TypeError(f"{name} must be a dense (strided) tensor, got layout {value.layout}; pass {name}.to_dense()")


def require_bool(name: str, value) -> None:
    """A clear error unless ``value`` is a bool (a string such as "no" would read as True)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")


def non_finite_reason(tensor: Tensor, accumulate: torch.dtype) -> str:
    """Why sums over ``tensor`` came out NaN/Inf (asked only on that error path): NaN/Inf entries, or
    finite entries too large for squares in the accumulation dtype."""
    if not bool(torch.isfinite(tensor).all()):
        return "holds NaN or Inf"
    largest = float(tensor.detach().abs().max())
    return (
        f"holds values up to {largest:.3g}, too large for sums of squares in {str(accumulate).removeprefix('torch.')} "
        f"(squares overflow above ~{torch.finfo(accumulate).max ** 0.5:.2g}); scale it down"
    )
