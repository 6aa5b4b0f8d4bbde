"""Multi-layer feature pooling in plain PyTorch: oracle, eager baseline and fallback backend.

For tapped maps m_l: (B, C_l, H_l, W_l) and pool size s:

    p_l = adaptive_avg_pool2d(m_l, s).flatten(1)            (B, C_l·s²), cell (i, j) averages rows
          [floor(i·H/s), ceil((i+1)·H/s)) and columns [floor(j·W/s), ceil((j+1)·W/s))
    p_l <- p_l / max(‖p_l‖₂, eps)   per sample, if normalize  (eps = 1e-12, as F.normalize)
    packed = concat_l p_l                                    (B, Σ_l C_l·s²), in out_dtype

Layer slices follow the order of ``maps``; inside a slice the layout is (C_l, s, s), row-major.
Accumulation is fp32 (fp64 for fp64 maps).

``feature_pool_reference`` is the textbook formula (the oracle and the eager baseline). The torch
backend of the fused op runs ``feature_pool_pack_reference`` / ``feature_pool_spread_reference``
on one map at a time, the kernels' contract.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from clarep_fast.dtypes import accumulation_dtype

NORMALIZE_EPS = 1e-12


def feature_pool_reference(
    maps: Sequence[torch.Tensor], size: int, normalize: bool = False, out_dtype: torch.dtype | None = None
) -> torch.Tensor:
    """Pool, optionally normalize, and pack maps (B, C_l, H_l, W_l) -> (B, Σ C_l·size²)."""
    accumulate = accumulation_dtype(*maps)
    parts = []
    for feature_map in maps:
        pooled = F.adaptive_avg_pool2d(feature_map.to(accumulate), size).flatten(1)  # (B, C·s²)
        if normalize:
            pooled = F.normalize(pooled, dim=1, eps=NORMALIZE_EPS)
        parts.append(pooled)
    return torch.cat(parts, dim=1).to(out_dtype or maps[0].dtype)


def feature_pool_pack_reference(feature_map: torch.Tensor, packed: torch.Tensor, offset: int, size: int) -> None:
    """Pool one map (B, C, H, W) into packed[:, offset : offset + C·size²] (the accumulation dtype)."""
    width = feature_map.shape[1] * size * size
    pooled = F.adaptive_avg_pool2d(feature_map.to(packed.dtype), size)
    packed[:, offset : offset + width] = pooled.flatten(1)


def feature_pool_spread_reference(
    grad: torch.Tensor, feature_map: torch.Tensor, offset: int, size: int
) -> torch.Tensor:
    """Gradient of one map (map dtype) from the packed gradient (B, total)."""
    batch, channels = feature_map.shape[:2]
    cells = grad[:, offset : offset + channels * size * size].reshape(batch, channels, size, size)
    like = torch.empty(feature_map.shape, dtype=grad.dtype, device=grad.device)
    return torch.ops.aten._adaptive_avg_pool2d_backward(cells.contiguous(), like).to(feature_map.dtype)
