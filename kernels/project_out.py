"""Projection off k directions in Triton: one program per sample. Math: csrc/project_out/project_out.h.

V may have any strides. The sample's N rows are walked in BLOCK_N chunks of (BLOCK_N, BLOCK_K) tiles of V (BLOCK_K ≥ k,
a power of two).
forward:  (1) c = Vᵀx, ‖x‖²   (2) y = x - V c → scratch, ‖y‖²   | barrier |   (3) out = s·y from the scratch
backward: (1) ds = g·y   (2) d = Vᵀ gy   (3) dx = gy - V d + direct·x, dV;  y and gy recomputed in every pass
Why no scratch in the backward and a barrier in the forward: the threads that store a scratch element
and the threads that load it back are laid out by the compiler, and differ for some block shapes
(BLOCK_K >= 64: one layout reads, another writes). A pass that reads what another thread of the
program wrote needs a barrier between them, and a pass that overwrites in place what it reads is a
race whatever the barriers. The backward's passes load the V tile anyway, so y = x - V c costs no
extra read there; the forward's pass (3) does not, so it reads y back after a CTA barrier
(tl.debug_barrier: bar.sync, which also orders the program's global-memory writes before its reads).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from clarep_fast.dtypes import accumulation_dtype


@triton.jit
def _v_tile(V_ptr, b, start, N, K, svb, svn, svk, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """Rows [start, start + BLOCK_N) of sample b's V (any strides): row indices, row mask, tile mask, tile."""
    rows = start + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_K)
    inside = rows < N
    tile_mask = inside[:, None] & (cols[None, :] < K)
    tile = tl.load(V_ptr + b.to(tl.int64) * svb + rows[:, None] * svn + cols[None, :] * svk, mask=tile_mask, other=0.0)
    return rows, inside, tile_mask, tile


@triton.jit
def _project_out_apply_kernel(
    x_ptr,  # x (B, N), contiguous
    V_ptr,  # V (B, N, K), any strides
    out_ptr,  # out (B, N), x's dtype
    coeffs_ptr,  # c = Vᵀx (B, K), accumulation dtype
    stats_ptr,  # (B, 4): s, ‖x‖, ‖y‖, rescaled (1/0)
    scratch_ptr,  # y (B, N), accumulation dtype, read back in pass (3)
    N,  # elements per sample
    K,  # directions per sample
    svb,  # V's stride between samples, in elements
    svn,  # ... between rows n (1 for a QR's column-major Q)
    svk,  # ... between directions k (1 for row-major V)
    rtol,  # rescale only when ‖y‖ > rtol ‖x‖
    RESCALE: tl.constexpr,
    BLOCK_N: tl.constexpr,  # rows of V per tile
    BLOCK_K: tl.constexpr,  # directions per tile: a power of two >= K
):
    b = tl.program_id(0)
    acc_ty = scratch_ptr.dtype.element_ty
    row0 = b.to(tl.int64) * N
    cols = tl.arange(0, BLOCK_K)
    c = tl.zeros([BLOCK_K], dtype=acc_ty)
    xx = tl.zeros([BLOCK_N], dtype=acc_ty)
    for start in range(0, N, BLOCK_N):  # (1)
        rows, inside, tile_mask, tile = _v_tile(V_ptr, b, start, N, K, svb, svn, svk, BLOCK_N, BLOCK_K)
        tile = tile.to(acc_ty)
        xv = tl.load(x_ptr + row0 + rows, mask=inside, other=0.0).to(acc_ty)
        c += tl.sum(tile * xv[:, None], axis=0)
        xx += xv * xv
    yy = tl.zeros([BLOCK_N], dtype=acc_ty)
    for start in range(0, N, BLOCK_N):  # (2)
        rows, inside, tile_mask, tile = _v_tile(V_ptr, b, start, N, K, svb, svn, svk, BLOCK_N, BLOCK_K)
        tile = tile.to(acc_ty)
        xv = tl.load(x_ptr + row0 + rows, mask=inside, other=0.0).to(acc_ty)
        y = xv - tl.sum(tile * c[None, :], axis=1)
        tl.store(scratch_ptr + row0 + rows, y, mask=inside)
        yy += y * y
    x_norm = tl.sqrt(tl.sum(xx, axis=0))
    y_norm = tl.sqrt(tl.sum(yy, axis=0))
    scaled = RESCALE & (y_norm > rtol * x_norm)
    s = tl.where(scaled, x_norm / tl.where(scaled, y_norm, 1.0), 1.0)
    tl.debug_barrier()  # every y of (2) is stored before any thread of this program reads one back
    for start in range(0, N, BLOCK_N):  # (3)
        rows = start + tl.arange(0, BLOCK_N)
        inside = rows < N
        y = tl.load(scratch_ptr + row0 + rows, mask=inside, other=0.0)
        tl.store(out_ptr + row0 + rows, (y * s).to(out_ptr.dtype.element_ty), mask=inside)
    tl.store(coeffs_ptr + b.to(tl.int64) * K + cols, c, mask=cols < K)
    tl.store(stats_ptr + b * 4 + 0, s)
    tl.store(stats_ptr + b * 4 + 1, x_norm)
    tl.store(stats_ptr + b * 4 + 2, y_norm)
    tl.store(stats_ptr + b * 4 + 3, tl.where(scaled, 1.0, 0.0))


@triton.jit
def _project_out_grads_kernel(
    grad_ptr,  # g = dLoss/dout (B, N), contiguous
    x_ptr,  # x (B, N), contiguous
    V_ptr,  # V (B, N, K), any strides
    coeffs_ptr,  # c (B, K) from the forward, accumulation dtype
    stats_ptr,  # (B, 4) from the forward
    grad_x_ptr,  # dx (B, N), x's dtype
    grad_v_ptr,  # dV (B, N, K), contiguous (unused unless NEED_V)
    N,  # elements per sample
    K,  # directions per sample
    svb,  # V's stride between samples, in elements
    svn,  # ... between rows n
    svk,  # ... between directions k
    NEED_V: tl.constexpr,
    BLOCK_N: tl.constexpr,  # rows of V per tile
    BLOCK_K: tl.constexpr,  # directions per tile: a power of two >= K
):
    b = tl.program_id(0)
    acc_ty = coeffs_ptr.dtype.element_ty
    row0 = b.to(tl.int64) * N
    cols = tl.arange(0, BLOCK_K)
    c = tl.load(coeffs_ptr + b.to(tl.int64) * K + cols, mask=cols < K, other=0.0)
    s = tl.load(stats_ptr + b * 4 + 0)
    x_norm = tl.load(stats_ptr + b * 4 + 1)
    y_norm = tl.load(stats_ptr + b * 4 + 2)
    scaled = tl.load(stats_ptr + b * 4 + 3) != 0
    gy_dot = tl.zeros([BLOCK_N], dtype=acc_ty)
    for start in range(0, N, BLOCK_N):  # (1)
        rows, inside, tile_mask, tile = _v_tile(V_ptr, b, start, N, K, svb, svn, svk, BLOCK_N, BLOCK_K)
        tile = tile.to(acc_ty)
        xv = tl.load(x_ptr + row0 + rows, mask=inside, other=0.0).to(acc_ty)
        g = tl.load(grad_ptr + row0 + rows, mask=inside, other=0.0).to(acc_ty)
        y = xv - tl.sum(tile * c[None, :], axis=1)
        gy_dot += g * y
    ds = tl.sum(gy_dot, axis=0)
    y_coeff = tl.where(scaled, ds * s / tl.where(scaled, y_norm * y_norm, 1.0), 0.0)  # no 0/0 on either side
    direct = tl.where(scaled, ds * s / tl.where(scaled, x_norm * x_norm, 1.0), 0.0)
    d = tl.zeros([BLOCK_K], dtype=acc_ty)
    for start in range(0, N, BLOCK_N):  # (2)
        rows, inside, tile_mask, tile = _v_tile(V_ptr, b, start, N, K, svb, svn, svk, BLOCK_N, BLOCK_K)
        tile = tile.to(acc_ty)
        xv = tl.load(x_ptr + row0 + rows, mask=inside, other=0.0).to(acc_ty)
        g = tl.load(grad_ptr + row0 + rows, mask=inside, other=0.0).to(acc_ty)
        y = xv - tl.sum(tile * c[None, :], axis=1)
        gy = tl.where(scaled, s * g - y_coeff * y, g)
        d += tl.sum(tile * gy[:, None], axis=0)
    for start in range(0, N, BLOCK_N):  # (3)
        rows, inside, tile_mask, tile = _v_tile(V_ptr, b, start, N, K, svb, svn, svk, BLOCK_N, BLOCK_K)
        tile = tile.to(acc_ty)
        xv = tl.load(x_ptr + row0 + rows, mask=inside, other=0.0).to(acc_ty)
        g = tl.load(grad_ptr + row0 + rows, mask=inside, other=0.0).to(acc_ty)
        y = xv - tl.sum(tile * c[None, :], axis=1)
        gy = tl.where(scaled, s * g - y_coeff * y, g)
        grad_x = gy + direct * xv - tl.sum(tile * d[None, :], axis=1)
        tl.store(grad_x_ptr + row0 + rows, grad_x.to(grad_x_ptr.dtype.element_ty), mask=inside)
        if NEED_V:
            grad_v = -gy[:, None] * c[None, :] - xv[:, None] * d[None, :]
            tl.store(
                grad_v_ptr + (row0 + rows[:, None]) * K + cols[None, :],
                grad_v.to(grad_v_ptr.dtype.element_ty),
                mask=tile_mask,
            )


NUM_WARPS = 8  # one program per sample: 256 threads share its V tile (more warps, fewer registers each)
TILE = {torch.float64: 1024}  # elements of the (BLOCK_N, BLOCK_K) tile of V; 4 fp64 / 8 fp32 values per thread
DEFAULT_TILE = 2048  # fp32 accumulation (fp16, bf16, fp32 inputs)


def _blocks(rank: int, dtype: torch.dtype) -> dict:
    """BLOCK_K: k rounded up to a power of two (at least 16); BLOCK_N: rows per tile within the
    dtype's register budget (docs/gpu.md: larger tiles reach the register ceiling or spill)."""
    block_k = max(16, triton.next_power_of_2(rank))
    return {"BLOCK_K": block_k, "BLOCK_N": max(1, TILE.get(dtype, DEFAULT_TILE) // block_k), "num_warps": NUM_WARPS}


def project_out_apply(x: torch.Tensor, vectors: torch.Tensor, rescale: bool, rtol: float):
    """x (B, N) contiguous, vectors (B, N, K) any strides -> (out, coeffs (B, K), stats (B, 4)) as csrc/project_out/project_out.h."""
    batch, size = x.shape
    rank = vectors.shape[2]
    accumulate = accumulation_dtype(x)
    out = torch.empty_like(x)
    coeffs = torch.empty(batch, rank, dtype=accumulate, device=x.device)
    stats = torch.empty(batch, 4, dtype=accumulate, device=x.device)
    scratch = torch.empty(batch, size, dtype=accumulate, device=x.device)
    _project_out_apply_kernel[(batch,)](
        x,
        vectors,
        out,
        coeffs,
        stats,
        scratch,
        size,
        rank,
        *vectors.stride(),
        rtol,
        RESCALE=rescale,
        **_blocks(rank, x.dtype),
    )
    return out, coeffs, stats


def project_out_grads(grad, x, vectors, coeffs, stats, rescale: bool, rtol: float, need_vectors_grad: bool):
    """-> (grad_x (B, N), grad_vectors (B, N, K) or an empty tensor)."""
    batch, size = x.shape
    rank = vectors.shape[2]
    grad_x = torch.empty_like(x)
    grad_v = (
        torch.empty(vectors.shape, dtype=x.dtype, device=x.device)
        if need_vectors_grad
        else torch.empty(0, dtype=x.dtype, device=x.device)
    )
    _project_out_grads_kernel[(batch,)](
        grad,
        x,
        vectors,
        coeffs,
        stats,
        grad_x,
        grad_v if need_vectors_grad else grad_x,
        size,
        rank,
        *vectors.stride(),
        NEED_V=need_vectors_grad,
        **_blocks(rank, x.dtype),
    )
    return grad_x, grad_v
