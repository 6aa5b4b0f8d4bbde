"""Feature alignment loss in plain PyTorch: oracle, eager baseline and fallback backend.

CaDistill's L_align (DESIGN.md §2): for layer pairs l = 1..P, student features s_l (B, D_l) already
mapped to the teacher's width by the learned projector P_l, and the teacher's cached canonical
features t_l (B, D_l), the per-sample loss averaged over pairs:

    cosine:  ℓ_b = (1/P) Σ_l [1 - <s_lb, t_lb> / (max(‖s_lb‖, eps) · max(‖t_lb‖, eps))]
    mse:     ℓ_b = (1/P) Σ_l ‖s_lb - t_lb‖² / D_l
reduction "mean" averages ℓ over the batch, "none" returns ℓ (B,). eps = 1e-8, as
torch.nn.functional.cosine_similarity. Accumulation in fp32 (fp64 for fp64 inputs).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

ALIGN_EPS = 1e-8
KINDS = ("cosine", "mse")
REDUCTIONS = ("mean", "none")


def accumulation_dtype(tensors: Sequence[Tensor]) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def feature_align_reference(students: Sequence[Tensor], teachers: Sequence[Tensor], kind: str = "cosine", reduction: str = "mean") -> Tensor:
    """The eager formula: normalized copies for cosine, a difference tensor for mse."""
    accumulate = accumulation_dtype(list(students) + list(teachers))
    per_pair = []
    for s, t in zip(students, teachers):
        s, t = s.reshape(s.shape[0], -1).to(accumulate), t.reshape(t.shape[0], -1).to(accumulate)
        if kind == "cosine":
            per_pair.append(1 - (F.normalize(s, dim=1, eps=ALIGN_EPS) * F.normalize(t, dim=1, eps=ALIGN_EPS)).sum(1))
        else:
            per_pair.append((s - t).square().mean(1))
    loss = torch.stack(per_pair).mean(0)
    return loss.mean() if reduction == "mean" else loss
