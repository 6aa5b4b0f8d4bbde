"""Fused multi-layer feature pooling: custom ops, fake implementations, autograd and dispatch.

Math (clarep_fast/reference/feature_pool.py): per tapped map m_l (B, C_l, H_l, W_l),
p_l = adaptive_avg_pool(m_l, s) flattened to (B, C_l·s²), optionally y_l = p_l / max(‖p_l‖, eps),
all written into one packed (B, Σ_l C_l·s²) buffer.

Gradient: for y = p/‖p‖ (‖p‖ > eps)  dp = (g - y (y·g)) / ‖p‖,  and dp = g/eps below eps;
then every map element gets Σ dp_cell / |window| over the cells whose window holds it.

Pipeline of one call:
  forward:  one kernel per map reads it once (any strides: channels-last and token-grid views
            need no copy) and writes its s² averages straight into its slice of the packed
            accumulation buffer (fp32; fp64 for fp64 maps). Normalization and the cast to
            out_dtype then touch only the small packed buffer.
  backward: the normalization's projection on the packed gradient, then one kernel per map.
Nothing of map size is saved for backward: only the packed output and the per-layer norms.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import torch
from torch import Tensor

from clarep_fast.backends import Kernels, compiled_ops, resolve_backend, takes_whole_call
from clarep_fast.ops.autograd import per_tensor, wire
from clarep_fast.ops.batching import register_loop_vmap
from clarep_fast.dtypes import FLOAT_DTYPES, accumulation_dtype, require_bool, require_float
from clarep_fast.finite import refuse_non_finite
from clarep_fast.ops.spec import OpSpec, random_tensor
from clarep_fast.reference.feature_pool import (
    NORMALIZE_EPS,
    feature_pool_spread_reference,
    feature_pool_pack_reference,
    feature_pool_reference,
)


# ----------------------------------------------------------------------------- backend kernels
# Every backend provides, for ONE map:
#   feature_pool_pack(map (B,C,H,W), packed (B,total) accumulation dtype, offset, size) -> None
#   feature_pool_spread(grad (B,total) accumulation dtype, map, offset, size) -> (B,C,H,W) map dtype


class FeaturePoolKernels(NamedTuple):
    """The forward (pack) and backward (spread) stages of one backend, by name (contract above)."""

    pack: Callable
    spread: Callable


def _triton_kernels():
    from clarep_fast.kernels import feature_pool as triton_feature_pool

    return FeaturePoolKernels(triton_feature_pool.feature_pool_pack, triton_feature_pool.feature_pool_spread)


def _compiled_kernels():
    return FeaturePoolKernels(compiled_ops().feature_pool_pack.default, compiled_ops().feature_pool_spread.default)


KERNELS = Kernels(
    torch=FeaturePoolKernels(feature_pool_pack_reference, feature_pool_spread_reference),
    triton=_triton_kernels,
    compiled=_compiled_kernels,
)


def _offsets(maps: Sequence[Tensor], size: int) -> list[int]:
    offsets, total = [], 0
    for feature_map in maps:
        offsets.append(total)
        total += feature_map.shape[1] * size * size
    return offsets + [total]


# ----------------------------------------------------------------------------- custom ops


@torch.library.custom_op("clarep_fast::feature_pool_forward", mutates_args=())
def feature_pool_forward(
    maps: list[Tensor], size: int, normalize: bool, out_dtype: torch.dtype, names: str, backend: str
) -> tuple[Tensor, Tensor]:
    """maps (B, C_l, H_l, W_l) -> (packed (B, Σ C_l·size²) in out_dtype, norms (B, L) of the pooled slices).
    ``names``: the maps' names for error messages, one per line (a schema takes no list of strings)."""
    offsets = _offsets(maps, size)
    accumulate = accumulation_dtype(*maps)
    batch = maps[0].shape[0]
    pooled = torch.empty(batch, offsets[-1], dtype=accumulate, device=maps[0].device)
    forward = KERNELS.on(backend).pack
    for layer, feature_map in enumerate(maps):
        forward(feature_map, pooled, offsets[layer], size)
    norms = torch.ones(batch, len(maps), dtype=accumulate, device=pooled.device)
    if normalize:
        for layer in range(len(maps)):
            piece = pooled[:, offsets[layer] : offsets[layer + 1]]
            norms[:, layer] = piece.norm(dim=1)
            piece.div_(norms[:, layer : layer + 1].clamp_min(NORMALIZE_EPS))
    packed = pooled if out_dtype == accumulate else pooled.to(out_dtype)
    _raise_if_not_finite(packed, maps, offsets, names.split("\n"))
    return packed, norms


@feature_pool_forward.register_fake
def _(maps, size, normalize, out_dtype, names, backend):
    total = sum(feature_map.shape[1] for feature_map in maps) * size * size
    batch = maps[0].shape[0]
    return maps[0].new_empty(batch, total, dtype=out_dtype), maps[0].new_empty(
        batch, len(maps), dtype=accumulation_dtype(*maps)
    )


@torch.library.custom_op("clarep_fast::feature_pool_backward", mutates_args=())
def feature_pool_backward(
    grad: Tensor, packed: Tensor, norms: Tensor, maps: list[Tensor], size: int, normalize: bool, backend: str
) -> list[Tensor]:
    """Gradients of every map (contiguous, map dtype) from the packed gradient."""
    offsets = _offsets(maps, size)
    grad = grad.to(norms.dtype)
    if normalize:
        pieces = []
        for layer in range(len(maps)):
            g = grad[:, offsets[layer] : offsets[layer + 1]]
            y = packed[:, offsets[layer] : offsets[layer + 1]].to(norms.dtype)
            norm = norms[:, layer : layer + 1]
            projected = (g - y * (y * g).sum(1, keepdim=True)) / norm.clamp_min(NORMALIZE_EPS)
            pieces.append(torch.where(norm > NORMALIZE_EPS, projected, g / NORMALIZE_EPS))
        grad = torch.cat(pieces, dim=1)
    grad = grad.contiguous()
    backward = KERNELS.on(backend).spread
    return [backward(grad, feature_map, offsets[layer], size) for layer, feature_map in enumerate(maps)]


@feature_pool_backward.register_fake
def _(grad, packed, norms, maps, size, normalize, backend):
    return [torch.empty(feature_map.shape, dtype=feature_map.dtype, device=feature_map.device) for feature_map in maps]


register_loop_vmap(feature_pool_backward)  # jacrev: vmap over the backward (ops/batching.py)


def _setup_context(ctx, inputs, output):
    maps, size, normalize, out_dtype, names, backend = inputs
    packed, norms = output
    ctx.mark_non_differentiable(norms)
    ctx.save_for_backward(packed, norms, *maps)
    ctx.size, ctx.normalize, ctx.backend = size, normalize, backend


def _backward(ctx, needs, grad_packed, unused_grad_norms):
    packed, norms, *maps = ctx.saved_tensors
    grads = feature_pool_backward(grad_packed, packed, norms, maps, ctx.size, ctx.normalize, ctx.backend)
    return (
        [g if need else None for g, need in zip(grads, per_tensor(needs[0], len(maps)))],
        None,
        None,
        None,
        None,
        None,
    )


feature_pool_function = wire(
    feature_pool_forward,
    _setup_context,
    _backward,
    "clarep_fast.feature_pool has no vmap rule: it already takes a batch of maps (B, C, H, W)",
)


# ----------------------------------------------------------------------------- public API


def feature_pool(
    maps: Sequence[Tensor],
    size: int,
    *,
    normalize: bool = False,
    out_dtype: torch.dtype | None = None,
    names: Sequence[str] | None = None,
) -> Tensor:
    """Pool each (B, C_l, H_l, W_l) map to size×size, optionally L2-normalize each layer's slice
    per sample, cast, and pack: -> (B, Σ_l C_l·size²). ``names`` label the maps in error messages.
    Differentiable in every map. ``split_packed`` gives the per-layer views back.
    """
    maps = validated_maps(maps, size, out_dtype, names)
    require_bool("normalize", normalize)
    out_dtype = out_dtype or maps[0].dtype
    labels = "\n".join(names) if names is not None else "\n".join(f"maps[{i}]" for i in range(len(maps)))
    backend = resolve_backend(maps[0].device)
    if backend == "cuda":
        check_cuda_launch(size, maps[0].dtype)
        for name, feature_map in zip(labels.split("\n"), maps):
            if feature_map.shape[2] * feature_map.shape[3] >= 2**31:
                raise ValueError(
                    f"{name} has {feature_map.shape[2]}×{feature_map.shape[3]} planes; the cuda backend indexes a plane in 32 bits (under 2^31 elements)"
                )
    if takes_whole_call(backend):
        packed, _ = compiled_ops().feature_pool_call(maps, size, normalize, out_dtype)
        _raise_if_not_finite(packed, maps, _offsets(maps, size), labels.split("\n"))
        return packed
    if torch.compiler.is_compiling():  # dynamo traces the custom op and its registered autograd
        return feature_pool_forward(maps, size, normalize, out_dtype, labels, backend)[0]
    return feature_pool_function(maps, size, normalize, out_dtype, labels, backend)[0]


CUDA_SHARED_BYTES = 48 * 1024  # dynamic shared memory a CUDA launch gets without opting in


def check_cuda_launch(size: int, dtype: torch.dtype) -> None:
    """The CUDA forward sums one plane's size² cells in shared memory (accumulation dtype): refuse,
    before launching, a size whose sums do not fit."""
    width = torch.finfo(accumulation_dtype(torch.empty(0, dtype=dtype))).bits // 8
    largest = int((CUDA_SHARED_BYTES // width) ** 0.5)
    if size > largest:
        raise ValueError(
            f"size {size} needs {size * size * width:,} bytes of shared memory per block on the cuda backend, over its "
            f"{CUDA_SHARED_BYTES:,}; use size <= {largest} for {str(dtype).removeprefix('torch.')} maps, or the triton backend"
        )


def split_packed(packed: Tensor, channels: Sequence[int], size: int) -> list[Tensor]:
    """Per-layer views (B, C_l, size, size) of a packed (B, Σ C_l·size²) tensor, in packing order."""
    needed = sum(channels) * size * size
    if needed != packed.shape[1]:
        raise ValueError(
            f"packed has {packed.shape[1]} columns but channels {list(channels)} at size {size} need {needed}"
        )
    views, start = [], 0
    for width in channels:
        views.append(packed[:, start : start + width * size * size].unflatten(1, (width, size, size)))
        start += width * size * size
    return views


def validated_maps(maps, size, out_dtype=None, names=None) -> list[Tensor]:
    """The maps as a list, or a clear error naming the bad one (shape, dtype, device, batch, a pool size above the map)."""
    if isinstance(maps, Tensor):
        raise TypeError("maps must be a sequence of (B, C, H, W) tensors, not a single tensor")
    maps = list(maps)
    names = list(names) if names is not None else [f"maps[{i}]" for i in range(len(maps))]
    if not maps:
        raise ValueError("maps is empty: tap at least one layer")
    if len(names) != len(maps):
        raise ValueError(f"names has {len(names)} entries for {len(maps)} maps")
    # they travel to the op joined by newlines
    if not all(isinstance(name, str) and "\n" not in name for name in names):
        raise ValueError(f"names must be strings without newlines, got {names!r}")
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    if out_dtype is not None and out_dtype not in FLOAT_DTYPES:
        raise TypeError(f"out_dtype must be float16, bfloat16, float32 or float64, got {out_dtype}")
    first = maps[0]
    for name, feature_map in zip(names, maps):
        require_float(name, feature_map)
        if feature_map.dim() != 4:
            raise ValueError(f"{name} must have shape (B, C, H, W), got {tuple(feature_map.shape)}")
        if feature_map.dtype != first.dtype:
            raise TypeError(
                f"{name} is {feature_map.dtype} but {names[0]} is {first.dtype}; tapped maps must share a dtype"
            )
        if feature_map.device != first.device:
            raise ValueError(f"{name} is on {feature_map.device} but {names[0]} is on {first.device}")
        if feature_map.shape[0] != first.shape[0]:
            raise ValueError(f"{name} has batch {feature_map.shape[0]} but {names[0]} has {first.shape[0]}")
        if feature_map.numel() == 0:
            raise ValueError(f"{name} is empty (shape {tuple(feature_map.shape)})")
        height, width = feature_map.shape[2:]
        if size > height or size > width:
            raise ValueError(
                f"pool size {size} is larger than {name}'s {height}×{width} map; use size <= {min(height, width)}"
            )
    return maps


def _raise_if_not_finite(packed: Tensor, maps: list[Tensor], offsets: list[int], names: list[str]) -> None:
    """Pooling averages every element of a map into its cells and normalization keeps NaN/Inf, so
    NaN/Inf anywhere in a map shows up in its slice of the (small) packed output; so does a pooled
    value that overflows out_dtype in the final cast (fp32 -> fp16 above 65504)."""

    def explain(bad: Tensor) -> str:
        sample, column = (int(i) for i in bad.nonzero()[0])
        layer = next(layer for layer in range(len(maps)) if column < offsets[layer + 1])
        if not bool(torch.isfinite(maps[layer][sample]).all()):
            return f"feature_pool: {names[layer]} holds NaN or Inf (sample {sample})"
        return (
            f"feature_pool: {names[layer]} pools to values too large for {str(packed.dtype).removeprefix('torch.')} "
            f"(sample {sample}); pass a wider out_dtype or scale the features down"
        )

    refuse_non_finite(packed, "feature_pool", explain)


# ----------------------------------------------------------------------------- op table row


def _example(device, dtype, generator):
    """Two maps with uneven pooling windows (7×9 and 4×4 to 3×3), normalized, one channels-last."""
    first = random_tensor(generator, device, dtype, 3, 5, 7, 9, requires_grad=True)
    second = (
        random_tensor(generator, device, dtype, 3, 4, 4, 4).to(memory_format=torch.channels_last).requires_grad_(True)
    )
    return ([first, second], 3), {"normalize": True}


def _launch_cases(device, dtype):
    """Windows and planes from 1 to past the kernels' largest chunk (kernels/feature_pool.py picks
    the chunk from the window's and the plane's element counts), contiguous and channels-last maps
    (Triton specializes a stride of 1), an uneven 3×3 pool, normalized and not."""
    generator = torch.Generator().manual_seed(0)
    for side in (1, 2, 4, 8, 12, 16, 23, 32, 48):
        for channels_last in (False, True):
            feature_map = random_tensor(generator, device, dtype, 2, 3, side, side)
            if channels_last:
                feature_map = feature_map.to(memory_format=torch.channels_last)
            yield ([feature_map.requires_grad_(True)], 1), {"normalize": channels_last}
    uneven = random_tensor(generator, device, dtype, 2, 3, 7, 9, requires_grad=True)
    yield ([uneven], 3), {}


SPEC = OpSpec("feature_pool", feature_pool, feature_pool_reference, KERNELS, _example, _launch_cases)
