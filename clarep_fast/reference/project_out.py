"""Projection of latents off a set of directions, in plain PyTorch: oracle, eager baseline, fallback.

Per sample b, with x_b ∈ R^N (the flattened latent) and V_b ∈ R^{N×k} (orthonormal columns: the
top right singular vectors of the feature Jacobian found by CLARID):

    c_b = V_bᵀ x_b                      coefficients along the directions       (k,)
    y_b = x_b - V_b c_b                 the projection (I - V_b V_bᵀ) x_b       (N,)
    z_b = s_b y_b,  s_b = ‖x_b‖/‖y_b‖   if rescale (keep the latent's norm, which DDIM expects of
                                        a noisy latent), and only when ‖y_b‖ > RESCALE_RTOL·‖x_b‖;
                                        otherwise s_b = 1 (x_b lies in span V_b: nothing to rescale)
Accumulation in fp32 (fp64 for fp64 inputs); the result is cast back to x's dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor

RESCALE_RTOL = 1e-6


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def project_out_reference(x: Tensor, vectors: Tensor, rescale: bool = False) -> Tensor:
    """x (B, ...) and vectors (B, N, k) with N = x[0].numel() -> (I - V Vᵀ) x, optionally rescaled."""
    accumulate = accumulation_dtype(x.dtype)
    flat = x.reshape(x.shape[0], -1).to(accumulate)
    basis = vectors.to(accumulate)
    coefficients = torch.einsum("bnk,bn->bk", basis, flat)
    projected = flat - torch.einsum("bnk,bk->bn", basis, coefficients)
    if rescale:
        x_norm = flat.norm(dim=1, keepdim=True)
        y_norm = projected.norm(dim=1, keepdim=True)
        scaled = y_norm > RESCALE_RTOL * x_norm
        scale = torch.where(scaled, x_norm / torch.where(scaled, y_norm, torch.ones_like(y_norm)), torch.ones_like(y_norm))
        projected = projected * scale
    return projected.to(x.dtype).reshape(x.shape)
