"""Projection of latents off a set of directions, in plain PyTorch: oracle, eager baseline, fallback.

Per sample b, with x_b ∈ R^N (the flattened latent) and V_b ∈ R^{N×k} (orthonormal columns: the
top right singular vectors of the feature Jacobian found by CLARID):

    c_b = V_bᵀ x_b                      coefficients along the directions       (k,)
    y_b = x_b - V_b c_b                 the projection (I - V_b V_bᵀ) x_b       (N,)
    z_b = s_b y_b,  s_b = ‖x_b‖/‖y_b‖   if rescale (keep the latent's norm, which DDIM expects of
                                        a noisy latent), and only when ‖y_b‖ > RESCALE_RTOL·‖x_b‖;
                                        otherwise s_b = 1 (x_b lies in span V_b: nothing to rescale)
Accumulation in fp32 (fp64 for fp64 inputs); the result is cast back to x's dtype.

``project_out_reference`` is the textbook formula (autograd differentiates it: the oracle and the
eager baseline). The torch backend of the fused op runs ``project_out_apply_reference`` and
``project_out_grads_reference``: the kernels' contract, with the hand-derived gradient
    rescaled: gy = s g - (g·y) s y/‖y‖²,  plus (g·y) s x/‖x‖² straight to x (through ‖x‖)
    dx = gy - V (Vᵀ gy) (+ that direct term),   dV = -gy cᵀ - x (Vᵀ gy)ᵀ
that the tests hold against autograd of the textbook formula.
"""

from __future__ import annotations

import torch
from torch import Tensor

from clarep_fast.dtypes import accumulation_dtype

RESCALE_RTOL = 1e-6


def project_out_reference(x: Tensor, vectors: Tensor, rescale: bool = False) -> Tensor:
    """x (B, ...) and vectors (B, N, k) with N = x[0].numel() -> (I - V Vᵀ) x, optionally rescaled."""
    accumulate = accumulation_dtype(x)
    flat = x.reshape(x.shape[0], -1).to(accumulate)
    basis = vectors.to(accumulate)
    coefficients = torch.einsum("bnk,bn->bk", basis, flat)
    projected = flat - torch.einsum("bnk,bk->bn", basis, coefficients)
    if rescale:
        x_norm = flat.norm(dim=1, keepdim=True)
        y_norm = projected.norm(dim=1, keepdim=True)
        scaled = y_norm > RESCALE_RTOL * x_norm
        scale = torch.where(
            scaled, x_norm / torch.where(scaled, y_norm, torch.ones_like(y_norm)), torch.ones_like(y_norm)
        )
        projected = projected * scale
    return projected.to(x.dtype).reshape(x.shape)


def project_out_apply_reference(x: Tensor, vectors: Tensor, rescale: bool, rtol: float):
    """x (B, N), vectors (B, N, K) -> (out (B, N), coeffs (B, K), stats (B, 4) = [s, ‖x‖, ‖y‖, rescaled])."""
    accumulate = accumulation_dtype(x)
    flat, basis = x.to(accumulate), vectors.to(accumulate)
    coeffs = torch.einsum("bnk,bn->bk", basis, flat)
    projected = flat - torch.einsum("bnk,bk->bn", basis, coeffs)
    x_norm, y_norm = flat.norm(dim=1), projected.norm(dim=1)
    scaled = (y_norm > rtol * x_norm) & rescale
    scale = torch.where(scaled, x_norm / torch.where(scaled, y_norm, torch.ones_like(y_norm)), torch.ones_like(y_norm))
    stats = torch.stack([scale, x_norm, y_norm, scaled.to(accumulate)], dim=1)
    return (projected * scale[:, None]).to(x.dtype), coeffs, stats


def project_out_grads_reference(
    grad: Tensor,
    x: Tensor,
    vectors: Tensor,
    coeffs: Tensor,
    stats: Tensor,
    rescale: bool,
    rtol: float,
    need_vectors_grad: bool,
):
    """-> (grad_x (B, N), grad_vectors (B, N, K), or an empty tensor unless need_vectors_grad)."""
    accumulate = coeffs.dtype
    g, flat, basis = grad.to(accumulate), x.to(accumulate), vectors.to(accumulate)
    scale, x_norm, y_norm, scaled = stats.unbind(1)
    scaled = scaled != 0
    projected = flat - torch.einsum("bnk,bk->bn", basis, coeffs)
    ds = (g * projected).sum(1)
    one = torch.ones_like(ds)
    y_coeff = torch.where(scaled, ds * scale / torch.where(scaled, y_norm**2, one), torch.zeros_like(ds))
    direct = torch.where(scaled, ds * scale / torch.where(scaled, x_norm**2, one), torch.zeros_like(ds))
    gy = torch.where(scaled[:, None], scale[:, None] * g - y_coeff[:, None] * projected, g)
    d = torch.einsum("bnk,bn->bk", basis, gy)
    grad_x = gy - torch.einsum("bnk,bk->bn", basis, d) + direct[:, None] * flat
    grad_v = (
        -(gy[:, :, None] * coeffs[:, None, :] + flat[:, :, None] * d[:, None, :])
        if need_vectors_grad
        else grad_x.new_empty(0)
    )
    return grad_x.to(x.dtype), grad_v.to(x.dtype)
