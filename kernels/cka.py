"""Fused linear-CKA n×n kernels in Triton (the dense Gram products run on cuBLAS beforehand).

Layout and math as in csrc/cka.h:
    grams (P, 2, n, n): K = x xᵀ, L = y yᵀ;  rowsums (P, 2, n);  stats (P, 8);  coeffs (P, 2, n, n)
    C(K)_ij = K_ij - a (r_i + r_j) + b S       a = 1/n, b = 1/n²  (biased)
                                                a = 1/(n-2), b = 1/((n-1)(n-2)), zero diagonal (unbiased)
    hkl = Σ C(K)∘C(L), hkk = Σ C(K)², hll = Σ C(L)²,  CKA = hkl / (sqrt(hkk) sqrt(hll))
    degenerate (CKA := 0, zero gradient) unless hkk > rtol (tr K)² and hll > rtol (tr L)²
Gradient (C is a self-adjoint projection):
    dCKA/dK = C(L) / (sqrt(hkk) sqrt(hll)) - CKA · C(K) / hkk;  coeffs[p, 0] = 2 g dCKA/dK (dx = coeffs x)

_cka_stats_kernel: one program per pair, all the n×n forward work: pass 1 row sums and traces,
barrier, pass 2 centered inner products, then the ratio. _cka_grads_kernel: one program per
(pair, tile), elementwise. On CPU run them with TRITON_INTERPRET=1 (slow: small n, big blocks).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

NUM_STATS = 8


@triton.jit
def _centering(n, UNBIASED: tl.constexpr, dtype: tl.constexpr):
    nf = n.to(dtype)
    if UNBIASED:
        return 1.0 / (nf - 2.0), 1.0 / ((nf - 1.0) * (nf - 2.0))
    return 1.0 / nf, 1.0 / (nf * nf)


@triton.jit
def _cka_stats_kernel(grams_ptr, rowsums_ptr, stats_ptr, n, rtol, UNBIASED: tl.constexpr, BLOCK: tl.constexpr):
    dtype = grams_ptr.dtype.element_ty
    pair = tl.program_id(0).to(tl.int64)
    nn = n.to(tl.int64) * n
    k_ptr = grams_ptr + 2 * pair * nn
    l_ptr = k_ptr + nn
    rk_ptr = rowsums_ptr + 2 * pair * n
    rl_ptr = rk_ptr + n
    offsets = tl.arange(0, BLOCK)
    a, b = _centering(n, UNBIASED, dtype)

    # Pass 1: row sums (off-diagonal when unbiased) and traces.
    trace_k = tl.zeros([BLOCK], dtype=dtype)
    trace_l = tl.zeros([BLOCK], dtype=dtype)
    for row_start in range(0, n, BLOCK):
        rows = row_start + offsets
        row_ok = rows < n
        sum_k = tl.zeros([BLOCK], dtype=dtype)
        sum_l = tl.zeros([BLOCK], dtype=dtype)
        for col_start in range(0, n, BLOCK):
            cols = col_start + offsets
            mask = row_ok[:, None] & (cols < n)[None, :]
            index = rows[:, None] * n + cols[None, :]
            sum_k += tl.sum(tl.load(k_ptr + index, mask=mask, other=0.0), axis=1)
            sum_l += tl.sum(tl.load(l_ptr + index, mask=mask, other=0.0), axis=1)
        diag_k = tl.load(k_ptr + rows * n + rows, mask=row_ok, other=0.0)
        diag_l = tl.load(l_ptr + rows * n + rows, mask=row_ok, other=0.0)
        trace_k += diag_k
        trace_l += diag_l
        if UNBIASED:
            sum_k -= diag_k
            sum_l -= diag_l
        tl.store(rk_ptr + rows, sum_k, mask=row_ok)
        tl.store(rl_ptr + rows, sum_l, mask=row_ok)
    tl.debug_barrier()  # pass 2 reads row sums other threads of this program wrote

    total_k = tl.zeros([BLOCK], dtype=dtype)
    total_l = tl.zeros([BLOCK], dtype=dtype)
    for start in range(0, n, BLOCK):
        index = start + offsets
        total_k += tl.load(rk_ptr + index, mask=index < n, other=0.0)
        total_l += tl.load(rl_ptr + index, mask=index < n, other=0.0)
    sum_k = tl.sum(total_k, axis=0)
    sum_l = tl.sum(total_l, axis=0)

    # Pass 2: centered inner products.
    hkl = tl.zeros([BLOCK, BLOCK], dtype=dtype)
    hkk = tl.zeros([BLOCK, BLOCK], dtype=dtype)
    hll = tl.zeros([BLOCK, BLOCK], dtype=dtype)
    for row_start in range(0, n, BLOCK):
        rows = row_start + offsets
        row_ok = rows < n
        rk_i = tl.load(rk_ptr + rows, mask=row_ok, other=0.0)
        rl_i = tl.load(rl_ptr + rows, mask=row_ok, other=0.0)
        for col_start in range(0, n, BLOCK):
            cols = col_start + offsets
            keep = row_ok[:, None] & (cols < n)[None, :]
            if UNBIASED:
                keep = keep & (rows[:, None] != cols[None, :])
            index = rows[:, None] * n + cols[None, :]
            rk_j = tl.load(rk_ptr + cols, mask=cols < n, other=0.0)
            rl_j = tl.load(rl_ptr + cols, mask=cols < n, other=0.0)
            kc = tl.load(k_ptr + index, mask=keep, other=0.0) + b * sum_k - a * (rk_i[:, None] + rk_j[None, :])
            lc = tl.load(l_ptr + index, mask=keep, other=0.0) + b * sum_l - a * (rl_i[:, None] + rl_j[None, :])
            kc = tl.where(keep, kc, 0.0)
            lc = tl.where(keep, lc, 0.0)
            hkl += kc * lc
            hkk += kc * kc
            hll += lc * lc
    hkl_total = tl.sum(tl.sum(hkl, axis=1), axis=0)
    hkk_total = tl.sum(tl.sum(hkk, axis=1), axis=0)
    hll_total = tl.sum(tl.sum(hll, axis=1), axis=0)
    tk = tl.sum(trace_k, axis=0)
    tl_ = tl.sum(trace_l, axis=0)
    ok = (hkk_total > rtol * tk * tk) & (hll_total > rtol * tl_ * tl_)
    safe_kk = tl.where(ok, hkk_total, 1.0)
    safe_ll = tl.where(ok, hll_total, 1.0)
    value = tl.where(ok, hkl_total / (tl.sqrt(safe_kk) * tl.sqrt(safe_ll)), 0.0)
    out = stats_ptr + pair * NUM_STATS
    tl.store(out + 0, value)
    tl.store(out + 1, hkl_total)
    tl.store(out + 2, hkk_total)
    tl.store(out + 3, hll_total)
    tl.store(out + 4, tk)
    tl.store(out + 5, tl_)
    tl.store(out + 6, sum_k)
    tl.store(out + 7, sum_l)


@triton.jit
def _cka_grads_kernel(grams_ptr, rowsums_ptr, stats_ptr, grad_ptr, coeffs_ptr, n, rtol, UNBIASED: tl.constexpr, BLOCK: tl.constexpr):
    dtype = grams_ptr.dtype.element_ty
    pair = tl.program_id(0).to(tl.int64)
    rows = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    cols = tl.program_id(2) * BLOCK + tl.arange(0, BLOCK)
    nn = n.to(tl.int64) * n
    a, b = _centering(n, UNBIASED, dtype)
    stats = stats_ptr + pair * NUM_STATS
    value = tl.load(stats + 0)
    hkk = tl.load(stats + 2)
    hll = tl.load(stats + 3)
    tk = tl.load(stats + 4)
    tl_ = tl.load(stats + 5)
    sum_k = tl.load(stats + 6)
    sum_l = tl.load(stats + 7)
    ok = (hkk > rtol * tk * tk) & (hll > rtol * tl_ * tl_)
    hkk = tl.where(ok, hkk, 1.0)
    hll = tl.where(ok, hll, 1.0)
    scale = tl.where(ok, 2.0 * tl.load(grad_ptr + pair), 0.0)
    inv_norm = 1.0 / (tl.sqrt(hkk) * tl.sqrt(hll))

    row_ok = rows < n
    col_ok = cols < n
    mask = row_ok[:, None] & col_ok[None, :]
    keep = mask
    if UNBIASED:
        keep = keep & (rows[:, None] != cols[None, :])
    rk_ptr = rowsums_ptr + 2 * pair * n
    rl_ptr = rk_ptr + n
    rk_i = tl.load(rk_ptr + rows, mask=row_ok, other=0.0)
    rk_j = tl.load(rk_ptr + cols, mask=col_ok, other=0.0)
    rl_i = tl.load(rl_ptr + rows, mask=row_ok, other=0.0)
    rl_j = tl.load(rl_ptr + cols, mask=col_ok, other=0.0)
    index = rows[:, None] * n + cols[None, :]
    k_ptr = grams_ptr + 2 * pair * nn
    kc = tl.load(k_ptr + index, mask=mask, other=0.0) + b * sum_k - a * (rk_i[:, None] + rk_j[None, :])
    lc = tl.load(k_ptr + nn + index, mask=mask, other=0.0) + b * sum_l - a * (rl_i[:, None] + rl_j[None, :])
    kc = tl.where(keep, kc, 0.0)
    lc = tl.where(keep, lc, 0.0)
    d_k = scale * (lc * inv_norm - (value / hkk) * kc)
    d_l = scale * (kc * inv_norm - (value / hll) * lc)
    out = coeffs_ptr + 2 * pair * nn
    tl.store(out + index, d_k.to(dtype), mask=mask)
    tl.store(out + nn + index, d_l.to(dtype), mask=mask)


def _block(n: int) -> int:
    """64×64 tiles on a GPU; in the interpreter (CPU) fewer, larger programs run much faster."""
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        return min(128, triton.next_power_of_2(n))
    return 64


def _check(grams: torch.Tensor) -> tuple[int, int]:
    if grams.dim() != 4 or grams.shape[1] != 2 or grams.shape[2] != grams.shape[3]:
        raise ValueError(f"grams must have shape (P, 2, n, n), got {tuple(grams.shape)}")
    if grams.dtype not in (torch.float32, torch.float64) or not grams.is_contiguous():
        raise ValueError(f"grams must be contiguous float32/float64, got {grams.dtype}")
    return grams.shape[0], grams.shape[2]


def cka_stats(grams: torch.Tensor, unbiased: bool, rtol: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(P, 2, n, n) Grams -> stats (P, 8), rowsums (P, 2, n): one launch, one program per pair."""
    pairs, n = _check(grams)
    stats = grams.new_empty(pairs, NUM_STATS)
    rowsums = grams.new_empty(pairs, 2, n)
    _cka_stats_kernel[(pairs,)](grams, rowsums, stats, n, rtol, UNBIASED=unbiased, BLOCK=_block(n), num_warps=8)
    return stats, rowsums


def cka_grads(grams: torch.Tensor, rowsums: torch.Tensor, stats: torch.Tensor, grad: torch.Tensor, unbiased: bool, rtol: float) -> torch.Tensor:
    """Coefficient matrices 2g dCKA/dK, 2g dCKA/dL (P, 2, n, n): one launch over (pair, tile, tile)."""
    pairs, n = _check(grams)
    coeffs = torch.empty_like(grams)
    block = _block(n)
    grid = (pairs, triton.cdiv(n, block), triton.cdiv(n, block))
    _cka_grads_kernel[grid](grams, rowsums, stats, grad, coeffs, n, rtol, UNBIASED=unbiased, BLOCK=block, num_warps=4)
    return coeffs
