"""Fused multi-layer feature pooling in Triton: one program per (b, c) plane of one tapped map.

Geometry as in csrc/feature_pool/feature_pool.h: cell (i, j) of an s×s adaptive average pool covers rows
[floor(i H / s), ceil((i + 1) H / s)) and columns [floor(j W / s), ceil((j + 1) W / s)).
forward:  load the whole plane once (arbitrary strides), reduce each cell's window, write the s²
          averages into the layer's slice of the packed (B, Σ C_l s²) buffer (fp32/fp64).
backward: every element gets Σ grad_cell / |window| over the cells that contain it.
Planes are loaded whole (BLOCK_H × BLOCK_W = next powers of two), which suits tapped feature maps
(64×64 and smaller).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _cell(cell, rows, cols, H, W, S: tl.constexpr):
    """Mask of cell's adaptive window over the (BLOCK_H, BLOCK_W) plane, and the window's size."""
    h0 = (cell // S) * H // S
    h1 = ((cell // S + 1) * H + S - 1) // S
    w0 = (cell % S) * W // S
    w1 = ((cell % S + 1) * W + S - 1) // S
    window = (rows[:, None] >= h0) & (rows[:, None] < h1) & (cols[None, :] >= w0) & (cols[None, :] < w1)
    return window, (h1 - h0) * (w1 - w0)


@triton.jit
def _feature_pool_pack_kernel(
    map_ptr,
    out_ptr,
    C,
    H,
    W,
    stride_b,
    stride_c,
    stride_h,
    stride_w,
    out_row,
    offset,
    S: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_W: tl.constexpr,
):
    plane = tl.program_id(0)
    b = plane // C
    c = plane % C
    rows = tl.arange(0, BLOCK_H)
    cols = tl.arange(0, BLOCK_W)
    inside = (rows[:, None] < H) & (cols[None, :] < W)
    pointers = map_ptr + b.to(tl.int64) * stride_b + c * stride_c + rows[:, None] * stride_h + cols[None, :] * stride_w
    values = tl.load(pointers, mask=inside, other=0.0).to(out_ptr.dtype.element_ty)
    cells = out_ptr + b.to(tl.int64) * out_row + offset + c * S * S
    for cell in range(S * S):
        window, count = _cell(cell, rows, cols, H, W, S)
        total = tl.sum(tl.sum(tl.where(window, values, 0.0), axis=1), axis=0)
        tl.store(cells + cell, total / count)


@triton.jit
def _feature_pool_spread_kernel(
    grad_ptr,
    grad_map_ptr,
    C,
    H,
    W,
    out_row,
    offset,
    S: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_W: tl.constexpr,
):
    plane = tl.program_id(0)
    b = plane // C
    c = plane % C
    rows = tl.arange(0, BLOCK_H)
    cols = tl.arange(0, BLOCK_W)
    accumulated = tl.zeros([BLOCK_H, BLOCK_W], dtype=grad_ptr.dtype.element_ty)
    cells = grad_ptr + b.to(tl.int64) * out_row + offset + c * S * S
    for cell in range(S * S):
        window, count = _cell(cell, rows, cols, H, W, S)
        share = tl.load(cells + cell) / count
        accumulated += tl.where(window, share, 0.0)
    inside = (rows[:, None] < H) & (cols[None, :] < W)
    target = grad_map_ptr + plane.to(tl.int64) * H * W + rows[:, None] * W + cols[None, :]
    tl.store(target, accumulated.to(grad_map_ptr.dtype.element_ty), mask=inside)


def _blocks(feature_map: torch.Tensor) -> dict:
    return {
        "BLOCK_H": triton.next_power_of_2(feature_map.shape[2]),
        "BLOCK_W": triton.next_power_of_2(feature_map.shape[3]),
    }


def feature_pool_pack(feature_map: torch.Tensor, packed: torch.Tensor, offset: int, size: int) -> None:
    """Pool one (B, C, H, W) map into packed[:, offset : offset + C·size²] (one launch)."""
    batch, channels, height, width = feature_map.shape
    _feature_pool_pack_kernel[(batch * channels,)](
        feature_map,
        packed,
        channels,
        height,
        width,
        *feature_map.stride(),
        packed.stride(0),
        offset,
        S=size,
        **_blocks(feature_map),
        num_warps=4,
    )


def feature_pool_spread(grad: torch.Tensor, feature_map: torch.Tensor, offset: int, size: int) -> torch.Tensor:
    """Gradient of one map from packed grad[:, offset : offset + C·size²]; contiguous, map dtype."""
    batch, channels, height, width = feature_map.shape
    grad_map = torch.empty(feature_map.shape, dtype=feature_map.dtype, device=feature_map.device)
    _feature_pool_spread_kernel[(batch * channels,)](
        grad,
        grad_map,
        channels,
        height,
        width,
        grad.stride(0),
        offset,
        S=size,
        **_blocks(feature_map),
        num_warps=4,
    )
    return grad_map
