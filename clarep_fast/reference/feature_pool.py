"""Multi-layer feature pooling in plain PyTorch: oracle, eager baseline and fallback backend.

For tapped maps m_l: (B, C_l, H_l, W_l) and pool size s:

    p_l = adaptive_avg_pool2d(m_l, s).flatten(1)            (B, C_l·s²), cell (i, j) averages rows
          [floor(i·H/s), ceil((i+1)·H/s)) and columns [floor(j·W/s), ceil((j+1)·W/s))
    p_l <- p_l / max(‖p_l‖₂, eps)   per sample, if normalize  (eps = 1e-12, as F.normalize)
    packed = concat_l p_l                                    (B, Σ_l C_l·s²), in out_dtype

Layer slices follow the order of ``maps``; inside a slice the layout is (C_l, s, s), row-major.
Accumulation is fp32 (fp64 for fp64 maps).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

NORMALIZE_EPS = 1e-12


def feature_pool_reference(
    maps: Sequence[torch.Tensor], size: int, normalize: bool = False, out_dtype: torch.dtype | None = None
) -> torch.Tensor:
    """Pool, optionally normalize, and pack maps (B, C_l, H_l, W_l) -> (B, Σ C_l·size²)."""
    accumulate = torch.float64 if any(m.dtype == torch.float64 for m in maps) else torch.float32
    parts = []
    for feature_map in maps:
        pooled = F.adaptive_avg_pool2d(feature_map.to(accumulate), size).flatten(1)  # (B, C·s²)
        if normalize:
            pooled = F.normalize(pooled, dim=1, eps=NORMALIZE_EPS)
        parts.append(pooled)
    return torch.cat(parts, dim=1).to(out_dtype or maps[0].dtype)
