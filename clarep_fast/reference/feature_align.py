"""Feature alignment loss in plain PyTorch: oracle, eager baseline and fallback backend.

CaDistill's L_align (docs/design.md): for layer pairs l = 1..P, student features s_l (B, D_l) already
mapped to the teacher's width by the learned projector P_l, and the teacher's cached canonical
features t_l (B, D_l), the per-sample loss averaged over pairs:

    cosine:  ℓ_b = (1/P) Σ_l [1 - <s_lb, t_lb> / (max(‖s_lb‖, eps) · max(‖t_lb‖, eps))]
    mse:     ℓ_b = (1/P) Σ_l ‖s_lb - t_lb‖² / D_l
reduction "mean" averages ℓ over the batch, "none" returns ℓ (B,). eps = 1e-8, as
torch.nn.functional.cosine_similarity. Accumulation in fp32 (fp64 for fp64 inputs).

``feature_align_reference`` is the textbook formula (the oracle and the eager baseline). The torch
backend of the fused op runs ``feature_align_sums_reference`` / ``feature_align_grads_reference``
on one layer pair at a time, the kernels' contract (row statistics and their chain rule).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from clarep_fast.dtypes import accumulation_dtype

ALIGN_EPS = 1e-8
KINDS = ("cosine", "mse")
REDUCTIONS = ("mean", "none")


def feature_align_reference(
    students: Sequence[Tensor], teachers: Sequence[Tensor], kind: str = "cosine", reduction: str = "mean"
) -> Tensor:
    """The eager formula: normalized copies for cosine, a difference tensor for mse."""
    accumulate = accumulation_dtype(*students, *teachers)
    per_pair = []
    for s, t in zip(students, teachers):
        s, t = s.reshape(s.shape[0], -1).to(accumulate), t.reshape(t.shape[0], -1).to(accumulate)
        if kind == "cosine":
            per_pair.append(1 - (F.normalize(s, dim=1, eps=ALIGN_EPS) * F.normalize(t, dim=1, eps=ALIGN_EPS)).sum(1))
        else:
            per_pair.append((s - t).square().mean(1))
    loss = torch.stack(per_pair).mean(0)
    return loss.mean() if reduction == "mean" else loss


def feature_align_sums_reference(s: Tensor, t: Tensor) -> Tensor:
    """One (B, D) pair -> row statistics (B, 4) [s·t, s·s, t·t, ‖s - t‖²] in the accumulation dtype."""
    accumulate = accumulation_dtype(s)
    s, t = s.to(accumulate), t.to(accumulate)
    return torch.stack([(s * t).sum(1), (s * s).sum(1), (t * t).sum(1), (s - t).square().sum(1)], dim=1)


def feature_align_grads_reference(s: Tensor, t: Tensor, coeffs: Tensor, need_s: bool, need_t: bool):
    """(grad_s, grad_t) = (A t + Bs s, A s + Ct t) from coeffs (B, 3) = [A, Bs, Ct]; empty where not needed."""
    a, c = s.to(coeffs.dtype), t.to(coeffs.dtype)
    cross, self_s, self_t = coeffs[:, 0:1], coeffs[:, 1:2], coeffs[:, 2:3]
    grad_s = (cross * c + self_s * a).to(s.dtype) if need_s else s.new_empty(0)
    grad_t = (cross * a + self_t * c).to(t.dtype) if need_t else t.new_empty(0)
    return grad_s, grad_t
