"""Feature alignment statistics and gradients in Triton: one program per row of one layer pair.

Math: csrc/feature_align/feature_align.h. forward: the row's [s·t, s·s, t·t, |s - t|²], one read of s and t in
BLOCK-wide chunks; backward: ds = A t + Bs s, dt = A s + Ct t with the row's coefficients.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from clarep_fast.dtypes import accumulation_dtype


@triton.jit
def _feature_align_sums_kernel(
    s_ptr,  # student rows (B, D), contiguous
    t_ptr,  # teacher rows (B, D), contiguous
    stats_ptr,  # (B, 4) [s·t, s·s, t·t, |s - t|²], accumulation dtype
    D,  # row width (also the stride between rows)
    BLOCK: tl.constexpr,  # columns per chunk
):
    row = tl.program_id(0).to(tl.int64)
    acc_ty = stats_ptr.dtype.element_ty
    st = tl.zeros([BLOCK], dtype=acc_ty)
    ss = tl.zeros([BLOCK], dtype=acc_ty)
    tt = tl.zeros([BLOCK], dtype=acc_ty)
    dd = tl.zeros([BLOCK], dtype=acc_ty)
    for start in range(0, D, BLOCK):
        columns = start + tl.arange(0, BLOCK)
        inside = columns < D
        a = tl.load(s_ptr + row * D + columns, mask=inside, other=0.0).to(acc_ty)
        c = tl.load(t_ptr + row * D + columns, mask=inside, other=0.0).to(acc_ty)
        st += a * c
        ss += a * a
        tt += c * c
        dd += (a - c) * (a - c)
    tl.store(stats_ptr + row * 4 + 0, tl.sum(st, axis=0))
    tl.store(stats_ptr + row * 4 + 1, tl.sum(ss, axis=0))
    tl.store(stats_ptr + row * 4 + 2, tl.sum(tt, axis=0))
    tl.store(stats_ptr + row * 4 + 3, tl.sum(dd, axis=0))


@triton.jit
def _feature_align_grads_kernel(
    s_ptr,  # student rows (B, D), contiguous
    t_ptr,  # teacher rows (B, D), contiguous
    coeffs_ptr,  # (B, 3) [A, Bs, Ct]: ds = A t + Bs s, dt = A s + Ct t
    grad_s_ptr,  # ds (B, D), unused unless NEED_S
    grad_t_ptr,  # dt (B, D), unused unless NEED_T
    D,  # row width (also the stride between rows)
    NEED_S: tl.constexpr,
    NEED_T: tl.constexpr,
    BLOCK: tl.constexpr,  # columns per chunk
):
    row = tl.program_id(0).to(tl.int64)
    cross = tl.load(coeffs_ptr + row * 3 + 0)
    self_s = tl.load(coeffs_ptr + row * 3 + 1)
    self_t = tl.load(coeffs_ptr + row * 3 + 2)
    for start in range(0, D, BLOCK):
        columns = start + tl.arange(0, BLOCK)
        inside = columns < D
        a = tl.load(s_ptr + row * D + columns, mask=inside, other=0.0).to(cross.dtype)
        c = tl.load(t_ptr + row * D + columns, mask=inside, other=0.0).to(cross.dtype)
        if NEED_S:
            tl.store(
                grad_s_ptr + row * D + columns, (cross * c + self_s * a).to(grad_s_ptr.dtype.element_ty), mask=inside
            )
        if NEED_T:
            tl.store(
                grad_t_ptr + row * D + columns, (cross * a + self_t * c).to(grad_t_ptr.dtype.element_ty), mask=inside
            )


MIN_BLOCK = 128  # one element per thread of the default 4 warps: a narrower block leaves threads idle
# Wider rows loop. The forward keeps four accumulators of BLOCK values: 4 × 32 fp32 registers per
# thread at 4096, and as many fp64 values at 1024 (fp64 at 4096 spills: docs/gpu.md).
MAX_BLOCK = {torch.float64: 1024}
DEFAULT_MAX_BLOCK = 4096


def _block(width: int, dtype: torch.dtype) -> int:
    return min(MAX_BLOCK.get(dtype, DEFAULT_MAX_BLOCK), max(MIN_BLOCK, triton.next_power_of_2(width)))


def feature_align_sums(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """(B, D) contiguous pair -> stats (B, 4) in the accumulation dtype."""
    rows, width = student.shape
    accumulate = accumulation_dtype(student)
    stats = torch.empty(rows, 4, dtype=accumulate, device=student.device)
    _feature_align_sums_kernel[(rows,)](student, teacher, stats, width, BLOCK=_block(width, student.dtype))
    return stats


def feature_align_grads(student, teacher, coeffs, need_student: bool, need_teacher: bool):
    rows, width = student.shape
    grad_s = torch.empty_like(student) if need_student else student.new_empty(0)
    grad_t = torch.empty_like(teacher) if need_teacher else teacher.new_empty(0)
    _feature_align_grads_kernel[(rows,)](
        student,
        teacher,
        coeffs,
        grad_s if need_student else student,
        grad_t if need_teacher else teacher,
        width,
        NEED_S=need_student,
        NEED_T=need_teacher,
        BLOCK=_block(width, student.dtype),
    )
    return grad_s, grad_t
