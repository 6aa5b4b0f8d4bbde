"""Fused multi-layer feature pooling in Triton: one program per (b, c) plane of one tapped map.

Geometry as in csrc/feature_pool/feature_pool.h: cell (i, j) of an s×s adaptive average pool covers rows
[floor(i H / s), ceil((i + 1) H / s)) and columns [floor(j W / s), ceil((j + 1) W / s)).
forward:  for each of the s² cells, walk its window (flattened, h = h0 + e // width, w = w0 + e % width)
          in BLOCK-element chunks at the map's strides, and write the average into the layer's slice
          of the packed (B, Σ C_l s²) buffer (fp32/fp64). Each map element is read once per cell
          that holds it (once, unless windows overlap).
backward: walk the plane in BLOCK-element chunks; every element gets Σ grad_cell / |window| over
          the cells that contain it; the gradient is written contiguous.
Why flattened chunks: the block sizes depend on one number (the window's or the plane's element
count, capped at MAX_BLOCK), not on H and W apart, so a GPU compiles a handful of specializations,
each register use bounded whatever the map's size (a plane loaded whole spills past ~64×64).
The pool size s is a run-time argument: a new s is no new compile.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

NUM_WARPS = 4
MIN_BLOCK = 32 * NUM_WARPS  # elements per chunk: one per thread at least (smaller chunks leave threads idle)
MAX_BLOCK = 1024  # and at most 8 values per thread


@triton.jit
def _window(cell, H, W, S):
    """Cell's adaptive window: first row, first column, row count, column count."""
    h0 = (cell // S) * H // S
    h1 = ((cell // S + 1) * H + S - 1) // S
    w0 = (cell % S) * W // S
    w1 = ((cell % S + 1) * W + S - 1) // S
    return h0, w0, h1 - h0, w1 - w0


# Sizes, strides and offsets are index arithmetic only: not specialized on (a value of 1 or a
# multiple of 16 would otherwise compile a new kernel for a new map shape, with nothing gained).
_INDEX_ARGS = ["C", "H", "W", "S", "stride_b", "stride_c", "stride_h", "stride_w", "out_row", "offset"]


@triton.jit(do_not_specialize=_INDEX_ARGS)
def _feature_pool_pack_kernel(
    map_ptr,  # the (B, C, H, W) map, any strides
    out_ptr,  # the packed (B, total) buffer, accumulation dtype
    C,
    H,
    W,
    S,  # pool size s
    stride_b,  # elements between samples of the map
    stride_c,  # ... between channels
    stride_h,  # ... between rows
    stride_w,  # ... between columns
    out_row,  # elements between samples of the packed buffer
    offset,  # where this layer's C·s² columns start in a packed row
    BLOCK: tl.constexpr,  # window elements per chunk
):
    plane = tl.program_id(0)
    b = plane // C
    c = plane % C
    acc_ty = out_ptr.dtype.element_ty
    base = map_ptr + b.to(tl.int64) * stride_b + c.to(tl.int64) * stride_c
    cells = out_ptr + b.to(tl.int64) * out_row + offset + c * S * S
    for cell in range(S * S):
        h0, w0, height, width = _window(cell, H, W, S)
        count = height * width
        total = tl.zeros([BLOCK], dtype=acc_ty)
        for start in range(0, count, BLOCK):
            element = start + tl.arange(0, BLOCK)
            h = h0 + element // width
            w = w0 + element % width
            total += tl.load(base + h * stride_h + w * stride_w, mask=element < count, other=0.0).to(acc_ty)
        tl.store(cells + cell, tl.sum(total, axis=0) / count)


@triton.jit(do_not_specialize=[name for name in _INDEX_ARGS if not name.startswith("stride")])
def _feature_pool_spread_kernel(
    grad_ptr,  # the packed (B, total) gradient, accumulation dtype, contiguous
    grad_map_ptr,  # the (B, C, H, W) gradient of the map, contiguous, map dtype
    C,
    H,
    W,
    S,  # pool size s
    out_row,  # elements between samples of the packed gradient
    offset,  # where this layer's C·s² columns start in a packed row
    BLOCK: tl.constexpr,  # plane elements per chunk
):
    plane = tl.program_id(0)
    b = plane // C
    c = plane % C
    cells = grad_ptr + b.to(tl.int64) * out_row + offset + c * S * S
    target = grad_map_ptr + plane.to(tl.int64) * H * W
    for start in range(0, H * W, BLOCK):
        element = start + tl.arange(0, BLOCK)
        h = element // W
        w = element % W
        accumulated = tl.zeros([BLOCK], dtype=grad_ptr.dtype.element_ty)
        for cell in range(S * S):
            h0, w0, height, width = _window(cell, H, W, S)
            inside = (h >= h0) & (h < h0 + height) & (w >= w0) & (w < w0 + width)
            accumulated += tl.where(inside, tl.load(cells + cell) / (height * width), 0.0)
        tl.store(target + element, accumulated.to(grad_map_ptr.dtype.element_ty), mask=element < H * W)


def _chunk(elements: int) -> int:
    """A power of two from one element per thread (MIN_BLOCK) to MAX_BLOCK."""
    return min(MAX_BLOCK, max(MIN_BLOCK, triton.next_power_of_2(elements)))


def largest_window(height: int, width: int, size: int) -> int:
    """Elements of the largest adaptive window of an s×s pool over H×W: a window spans at most
    ceil(H/s) + 1 rows (and ceil(W/s) + 1 columns), and never more than the plane."""
    return min(height, -(-height // size) + 1) * min(width, -(-width // size) + 1)


def feature_pool_pack(feature_map: torch.Tensor, packed: torch.Tensor, offset: int, size: int) -> None:
    """Pool one (B, C, H, W) map into packed[:, offset : offset + C·size²] (one launch)."""
    batch, channels, height, width = feature_map.shape
    _feature_pool_pack_kernel[(batch * channels,)](
        feature_map,
        packed,
        channels,
        height,
        width,
        size,
        *feature_map.stride(),
        packed.stride(0),
        offset,
        BLOCK=_chunk(largest_window(height, width, size)),
        num_warps=NUM_WARPS,
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
        size,
        grad.stride(0),
        offset,
        BLOCK=_chunk(height * width),
        num_warps=NUM_WARPS,
    )
    return grad_map
