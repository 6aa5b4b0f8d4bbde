"""Fused linear-CKA n×n kernels in Triton (the dense Gram products run on cuBLAS beforehand).

Layout and math as in csrc/cka/cka.h:
    grams (P, 2, n, n): K = x xᵀ, L = y yᵀ;  rowsums (P, 2, n);  stats (P, 8);  coeffs (P, 2, n, n)
    C(K)_ij = K_ij - a (r_i + r_j) + b S       a = 1/n, b = 1/n²  (biased)
                                                a = 1/(n-2), b = 1/((n-1)(n-2)), zero diagonal (unbiased)
    hkl = Σ C(K)∘C(L), hkk = Σ C(K)², hll = Σ C(L)²,  CKA = hkl / (sqrt(hkk) sqrt(hll))
    degenerate (CKA := 0, zero gradient) unless hkk > rtol (tr K)² and hll > rtol (tr L)²
Gradient (C is a self-adjoint projection):
    dCKA/dK = C(L) / (sqrt(hkk) sqrt(hll)) - CKA · C(K) / hkk;  coeffs[p, 0] = 2 g dCKA/dK (dx = coeffs x)

_cka_stats_kernel: all the n×n forward work in one launch over (pair, row block), each Gram entry
read once. Centering is algebraic, so one pass suffices:
    <C(K), C(L)> = <K°, L°> - 2a r_K·r_L + b S_K S_L      (K° = K, or K with zeroed diagonal)
Each program stores its rows' row sums and fp64 partial sums; the last program of a pair (atomic
counter) adds the partials in a fixed order, forms the row-sum dot products and the ratio. fp64
accumulation keeps this as accurate as explicit centering (the Gram's own fp32 rounding dominates).
_cka_grads_kernel: one program per (pair, tile), elementwise.
On CPU run them with TRITON_INTERPRET=1 (slow: small n).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from clarep_fast.reference.cka import PARTIAL_FIELDS, STATS_FIELDS

# The stats row's and the partials' fields as constexprs (kernels may only read constexpr globals),
# from the one named source of each layout: STATS_FIELDS and PARTIAL_FIELDS in
# clarep_fast/reference/cka.py (csrc/cka/cka.h's CkaStat and CkaPartial too).
NUM_STATS = len(STATS_FIELDS)
_NUM_STATS = tl.constexpr(NUM_STATS)
_CKA, _HKL, _HKK, _HLL = (tl.constexpr(STATS_FIELDS.index(name)) for name in ("cka", "hkl", "hkk", "hll"))
_TRACE_X, _TRACE_Y, _SUM_X, _SUM_Y = (
    tl.constexpr(STATS_FIELDS.index(name)) for name in ("trace_x", "trace_y", "sum_x", "sum_y")
)
NUM_PARTIALS = len(PARTIAL_FIELDS)
_NUM_PARTIALS = tl.constexpr(NUM_PARTIALS)
_P_KL, _P_KK, _P_LL, _P_TRACE_X, _P_TRACE_Y = (tl.constexpr(PARTIAL_FIELDS.index(name)) for name in PARTIAL_FIELDS)


@triton.jit
def _centering(n, UNBIASED: tl.constexpr, dtype: tl.constexpr):
    nf = n.to(dtype)
    if UNBIASED:
        return 1.0 / (nf - 2.0), 1.0 / ((nf - 1.0) * (nf - 2.0))
    return 1.0 / nf, 1.0 / (nf * nf)


@triton.jit
def _cka_stats_kernel(
    grams_ptr,  # (P, 2, n, n) K and L per pair, contiguous
    rowsums_ptr,  # (P, 2, n) row sums of K and L, written here
    stats_ptr,  # (P, NUM_STATS) in STATS_FIELDS order, written by each pair's last program
    partials_ptr,  # (P, row blocks, NUM_PARTIALS) fp64 workspace, PARTIAL_FIELDS order
    counters_ptr,  # (P,) int32, zeroed: programs of the pair that have finished
    n,  # samples
    rtol,  # the degenerate rule's tolerance
    UNBIASED: tl.constexpr,
    BLOCK_M: tl.constexpr,  # rows per program
    BLOCK_N: tl.constexpr,  # columns per chunk
    FINAL_BLOCK: tl.constexpr,  # entries per chunk of the last program's sums
):
    dtype = grams_ptr.dtype.element_ty
    pair = tl.program_id(0).to(tl.int64)
    block = tl.program_id(1)
    blocks = tl.num_programs(1)
    nn = n.to(tl.int64) * n
    k_ptr = grams_ptr + 2 * pair * nn
    l_ptr = k_ptr + nn
    rk_ptr = rowsums_ptr + 2 * pair * n
    rl_ptr = rk_ptr + n

    # One pass over rows [block·BLOCK_M, +BLOCK_M): row sums and fp64 partial inner products.
    rows = block * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < n
    sum_k = tl.zeros([BLOCK_M], dtype=tl.float64)
    sum_l = tl.zeros([BLOCK_M], dtype=tl.float64)
    kl = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float64)
    kk = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float64)
    ll = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float64)
    for col_start in range(0, n, BLOCK_N):
        cols = col_start + tl.arange(0, BLOCK_N)
        keep = row_ok[:, None] & (cols < n)[None, :]
        if UNBIASED:
            keep = keep & (rows[:, None] != cols[None, :])
        index = rows.to(tl.int64)[:, None] * n + cols[None, :]  # int64: n² overflows int32 above n = 46,340
        k = tl.load(k_ptr + index, mask=keep, other=0.0).to(tl.float64)
        l = tl.load(l_ptr + index, mask=keep, other=0.0).to(tl.float64)
        sum_k += tl.sum(k, axis=1)
        sum_l += tl.sum(l, axis=1)
        kl += k * l
        kk += k * k
        ll += l * l
    tl.store(rk_ptr + rows, sum_k.to(dtype), mask=row_ok)
    tl.store(rl_ptr + rows, sum_l.to(dtype), mask=row_ok)
    trace_k = tl.sum(tl.load(k_ptr + rows.to(tl.int64) * n + rows, mask=row_ok, other=0.0).to(tl.float64), axis=0)
    trace_l = tl.sum(tl.load(l_ptr + rows.to(tl.int64) * n + rows, mask=row_ok, other=0.0).to(tl.float64), axis=0)
    mine = partials_ptr + (pair * blocks + block) * _NUM_PARTIALS
    tl.store(mine + _P_KL, tl.sum(tl.sum(kl, axis=1), axis=0))
    tl.store(mine + _P_KK, tl.sum(tl.sum(kk, axis=1), axis=0))
    tl.store(mine + _P_LL, tl.sum(tl.sum(ll, axis=1), axis=0))
    tl.store(mine + _P_TRACE_X, trace_k)
    tl.store(mine + _P_TRACE_Y, trace_l)
    tl.debug_barrier()  # every thread's stores precede the release below
    finished = tl.atomic_add(counters_ptr + pair, 1, sem="acq_rel")
    if finished == blocks - 1:
        # Last program of this pair: row-sum dot products and partials, in a fixed order.
        s_k = tl.zeros([FINAL_BLOCK], dtype=tl.float64)
        s_l = tl.zeros([FINAL_BLOCK], dtype=tl.float64)
        r_kl = tl.zeros([FINAL_BLOCK], dtype=tl.float64)
        r_kk = tl.zeros([FINAL_BLOCK], dtype=tl.float64)
        r_ll = tl.zeros([FINAL_BLOCK], dtype=tl.float64)
        for start in range(0, n, FINAL_BLOCK):
            index = start + tl.arange(0, FINAL_BLOCK)
            rk = tl.load(rk_ptr + index, mask=index < n, other=0.0, cache_modifier=".cg").to(tl.float64)
            rl = tl.load(rl_ptr + index, mask=index < n, other=0.0, cache_modifier=".cg").to(tl.float64)
            s_k += rk
            s_l += rl
            r_kl += rk * rl
            r_kk += rk * rk
            r_ll += rl * rl
        p_kl = tl.zeros([FINAL_BLOCK], dtype=tl.float64)
        p_kk = tl.zeros([FINAL_BLOCK], dtype=tl.float64)
        p_ll = tl.zeros([FINAL_BLOCK], dtype=tl.float64)
        p_tk = tl.zeros([FINAL_BLOCK], dtype=tl.float64)
        p_tl = tl.zeros([FINAL_BLOCK], dtype=tl.float64)
        for start in range(0, blocks, FINAL_BLOCK):
            index = start + tl.arange(0, FINAL_BLOCK)
            theirs = partials_ptr + (pair * blocks + index) * _NUM_PARTIALS
            valid = index < blocks
            p_kl += tl.load(theirs + _P_KL, mask=valid, other=0.0, cache_modifier=".cg")
            p_kk += tl.load(theirs + _P_KK, mask=valid, other=0.0, cache_modifier=".cg")
            p_ll += tl.load(theirs + _P_LL, mask=valid, other=0.0, cache_modifier=".cg")
            p_tk += tl.load(theirs + _P_TRACE_X, mask=valid, other=0.0, cache_modifier=".cg")
            p_tl += tl.load(theirs + _P_TRACE_Y, mask=valid, other=0.0, cache_modifier=".cg")
        a, b = _centering(n, UNBIASED, tl.float64)
        sk = tl.sum(s_k, axis=0)
        sl = tl.sum(s_l, axis=0)
        hkl = tl.sum(p_kl, axis=0) - 2.0 * a * tl.sum(r_kl, axis=0) + b * sk * sl
        hkk = tl.sum(p_kk, axis=0) - 2.0 * a * tl.sum(r_kk, axis=0) + b * sk * sk
        hll = tl.sum(p_ll, axis=0) - 2.0 * a * tl.sum(r_ll, axis=0) + b * sl * sl
        tk = tl.sum(p_tk, axis=0)
        tl_ = tl.sum(p_tl, axis=0)
        ok = (hkk > rtol * tk * tk) & (hll > rtol * tl_ * tl_)
        safe_kk = tl.where(ok, hkk, 1.0)
        safe_ll = tl.where(ok, hll, 1.0)
        value = tl.where(ok, hkl / (tl.sqrt(safe_kk) * tl.sqrt(safe_ll)), 0.0)
        out = stats_ptr + pair * _NUM_STATS
        tl.store(out + _CKA, value.to(dtype))
        tl.store(out + _HKL, hkl.to(dtype))
        tl.store(out + _HKK, hkk.to(dtype))
        tl.store(out + _HLL, hll.to(dtype))
        tl.store(out + _TRACE_X, tk.to(dtype))
        tl.store(out + _TRACE_Y, tl_.to(dtype))
        tl.store(out + _SUM_X, sk.to(dtype))
        tl.store(out + _SUM_Y, sl.to(dtype))


@triton.jit
def _cka_grads_kernel(
    grams_ptr,  # (P, 2, n, n) K and L per pair, contiguous
    rowsums_ptr,  # (P, 2, n) from the stats kernel
    stats_ptr,  # (P, NUM_STATS) from the stats kernel
    grad_ptr,  # (P,) dLoss/dCKA
    coeffs_ptr,  # (P, 2, n, n) 2g dCKA/dK and 2g dCKA/dL, written here
    n,  # samples
    rtol,  # the degenerate rule's tolerance
    UNBIASED: tl.constexpr,
    BLOCK: tl.constexpr,  # tile side
):
    dtype = grams_ptr.dtype.element_ty
    pair = tl.program_id(0).to(tl.int64)
    rows = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    cols = tl.program_id(2) * BLOCK + tl.arange(0, BLOCK)
    nn = n.to(tl.int64) * n
    a, b = _centering(n, UNBIASED, dtype)
    stats = stats_ptr + pair * _NUM_STATS
    value = tl.load(stats + _CKA)
    hkk = tl.load(stats + _HKK)
    hll = tl.load(stats + _HLL)
    tk = tl.load(stats + _TRACE_X)
    tl_ = tl.load(stats + _TRACE_Y)
    sum_k = tl.load(stats + _SUM_X)
    sum_l = tl.load(stats + _SUM_Y)
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
    index = rows.to(tl.int64)[:, None] * n + cols[None, :]  # int64: n² overflows int32 above n = 46,340
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


# Tiles, the same on a GPU and in the interpreter (the CPU tests run what a GPU compiles). The
# stats kernel keeps three fp64 (BLOCK_M, BLOCK_N) accumulators: 24 fp64 values per thread at
# 16 × 64 with 4 warps. The grads kernel holds about eight values per tile element: 64 × 64 fp32
# tiles over 8 warps (4 warps reach 254 registers when n is not a multiple of 16), 32 × 32 fp64
# ones (64 × 64 fp64 spills at the register ceiling; docs/gpu.md).
STATS_BLOCK_M, STATS_BLOCK_N, FINAL_BLOCK, STATS_WARPS = 16, 64, 256, 4
GRADS_BLOCK = {torch.float32: 64, torch.float64: 32}
GRADS_WARPS = 8


def _check(grams: torch.Tensor) -> tuple[int, int]:
    if grams.dim() != 4 or grams.shape[1] != 2 or grams.shape[2] != grams.shape[3]:
        raise ValueError(f"grams must have shape (P, 2, n, n), got {tuple(grams.shape)}")
    if grams.dtype not in (torch.float32, torch.float64) or not grams.is_contiguous():
        raise ValueError(f"grams must be contiguous float32/float64, got {grams.dtype}")
    return grams.shape[0], grams.shape[2]


def cka_stats(grams: torch.Tensor, unbiased: bool, rtol: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(P, 2, n, n) Grams -> stats (P, 8), rowsums (P, 2, n): one launch over (pair, row block)."""
    pairs, n = _check(grams)
    blocks = triton.cdiv(n, STATS_BLOCK_M)
    stats = grams.new_empty(pairs, NUM_STATS)
    rowsums = grams.new_empty(pairs, 2, n)
    partials = grams.new_empty(pairs, blocks, NUM_PARTIALS, dtype=torch.float64)
    counters = torch.zeros(pairs, dtype=torch.int32, device=grams.device)
    _cka_stats_kernel[(pairs, blocks)](
        grams,
        rowsums,
        stats,
        partials,
        counters,
        n,
        rtol,
        UNBIASED=unbiased,
        BLOCK_M=STATS_BLOCK_M,
        BLOCK_N=STATS_BLOCK_N,
        FINAL_BLOCK=FINAL_BLOCK,
        num_warps=STATS_WARPS,
    )
    return stats, rowsums


def cka_grads(
    grams: torch.Tensor, rowsums: torch.Tensor, stats: torch.Tensor, grad: torch.Tensor, unbiased: bool, rtol: float
) -> torch.Tensor:
    """Coefficient matrices 2g dCKA/dK, 2g dCKA/dL (P, 2, n, n): one launch over (pair, tile, tile)."""
    pairs, n = _check(grams)
    coeffs = torch.empty_like(grams)
    block = GRADS_BLOCK[grams.dtype]
    grid = (pairs, triton.cdiv(n, block), triton.cdiv(n, block))
    _cka_grads_kernel[grid](
        grams, rowsums, stats, grad, coeffs, n, rtol, UNBIASED=unbiased, BLOCK=block, num_warps=GRADS_WARPS
    )
    return coeffs
