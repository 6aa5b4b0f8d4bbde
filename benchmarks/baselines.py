"""The eager code a user writes for each fused op: the baselines of the per-call rows.

Not the references (clarep_fast/reference/), which are written to be the test oracle: they handle
degenerate inputs, accumulate low precision in fp32 and say in their structure what the kernels
compute, and they cost more per call than the few lines below. A user who wants one of these
quantities in a training loop writes this, so the fused op has to beat this.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cka_gram_form(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Linear CKA from centered n×n Grams (the form for wide features)."""
    x = x.flatten(1)
    y = y.flatten(1)
    x = x - x.mean(0)
    y = y - y.mean(0)
    k, l = x @ x.T, y @ y.T
    return (k * l).sum() / (k.norm() * l.norm())


def cka_feature_form(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Linear CKA from the d×d cross-covariances (the form for narrow features: ‖xᵀy‖² / ‖xᵀx‖ ‖yᵀy‖)."""
    x = x.flatten(1)
    y = y.flatten(1)
    x = x - x.mean(0)
    y = y - y.mean(0)
    return (x.T @ y).square().sum() / ((x.T @ x).norm() * (y.T @ y).norm())


def feature_align(students, teachers, kind: str = "cosine") -> torch.Tensor:
    """Mean over layer pairs of the mean per-sample 1 - cos (or mean squared error)."""
    if kind == "cosine":
        terms = [
            (1 - F.cosine_similarity(s.flatten(1), t.flatten(1), dim=1)).mean() for s, t in zip(students, teachers)
        ]
    else:
        terms = [F.mse_loss(s.flatten(1), t.flatten(1)) for s, t in zip(students, teachers)]
    return torch.stack(terms).mean()


def project_out(x: torch.Tensor, vectors: torch.Tensor, rescale: bool = False) -> torch.Tensor:
    """(I - V Vᵀ) x per sample, optionally back to x's norm."""
    flat = x.flatten(1)  # (B, N)
    y = flat - torch.bmm(vectors, torch.bmm(vectors.transpose(1, 2), flat.unsqueeze(2))).squeeze(2)
    if rescale:
        y = y * (flat.norm(dim=1, keepdim=True) / y.norm(dim=1, keepdim=True))
    return y.view_as(x)


def feature_pool(maps, size: int, normalize: bool = False) -> torch.Tensor:
    """Adaptive-average-pool every map to size×size, flatten, optionally L2-normalize each, concatenate."""
    pooled = [F.adaptive_avg_pool2d(m, size).flatten(1) for m in maps]
    if normalize:
        pooled = [F.normalize(p, dim=1) for p in pooled]
    return torch.cat(pooled, dim=1)
