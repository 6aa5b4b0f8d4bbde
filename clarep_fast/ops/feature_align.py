"""Fused feature alignment loss (cosine / MSE over layer pairs): custom ops, autograd, dispatch.

Math (clarep_fast/reference/feature_align.py): per pair l and sample b the kernels compute only the
row statistics  st = s·t, ss = s·s, tt = t·t, dd = ‖s - t‖²  (one read of s and t); the loss is a
few scalar ops on the (P, B, 4) statistics in PyTorch, so its eps clamps differentiate exactly:
    cosine: 1 - st / (sqrt(max(ss, eps²)) · sqrt(max(tt, eps²)))      mse: dd / D_l
Backward: the chain rule through the statistics gives, per row, ds = A t + Bs s and dt = A s + Ct t
with A = g_st - 2 g_dd, Bs = 2 (g_ss + g_dd), Ct = 2 (g_tt + g_dd): one kernel pass over s and t
writes the gradients. Eager materializes normalized copies (cosine) or a difference tensor (mse)
and their gradients; nothing of size (B, D) is saved or created here beyond the input gradients.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import torch
from torch import Tensor

from clarep_fast.backends import Kernels, compiled_ops, resolve_backend, takes_whole_call
from clarep_fast.ops.autograd import per_tensor, wire
from clarep_fast.ops.batching import register_loop_vmap
from clarep_fast.dtypes import accumulation_dtype, non_finite_reason, require_float
from clarep_fast.finite import refuse_non_finite
from clarep_fast.ops.spec import OpSpec, random_tensor
from clarep_fast.reference.feature_align import (
    ALIGN_EPS,
    KINDS,
    REDUCTIONS,
    feature_align_grads_reference,
    feature_align_sums_reference,
    feature_align_reference,
)


# ----------------------------------------------------------------------------- backend kernels
# Every backend provides, for ONE contiguous (B, D) pair of one dtype:
#   feature_align_sums(s, t) -> stats (B, 4) [st, ss, tt, dd] in the accumulation dtype
#   feature_align_grads(s, t, coeffs (B, 3) [A, Bs, Ct], need_s, need_t) -> (grad_s, grad_t), empty where not needed


class FeatureAlignKernels(NamedTuple):
    """The forward (sums) and backward (grads) stages of one backend, by name (contract above)."""

    sums: Callable
    grads: Callable


def _triton_kernels():
    from clarep_fast.kernels import feature_align as triton_feature_align

    return FeatureAlignKernels(triton_feature_align.feature_align_sums, triton_feature_align.feature_align_grads)


def _compiled_kernels():
    return FeatureAlignKernels(compiled_ops().feature_align_sums.default, compiled_ops().feature_align_grads.default)


KERNELS = Kernels(
    torch=FeatureAlignKernels(feature_align_sums_reference, feature_align_grads_reference),
    triton=_triton_kernels,
    compiled=_compiled_kernels,
)


# ----------------------------------------------------------------------------- custom ops


@torch.library.custom_op("clarep_fast::feature_align_forward", mutates_args=())
def feature_align_forward(students: list[Tensor], teachers: list[Tensor], backend: str) -> Tensor:
    """(B, D_l) pairs -> (P, B, 4) row statistics [s·t, s·s, t·t, ‖s - t‖²]."""
    forward = KERNELS.on(backend).sums
    stats = torch.stack([forward(s.contiguous(), t.contiguous()) for s, t in zip(students, teachers)])
    # inside the op: torch.compile sees one opaque call, no data-dependent branch
    _raise_if_not_finite(stats, students, teachers)
    return stats


@feature_align_forward.register_fake
def _(students, teachers, backend):
    return students[0].new_empty(len(students), students[0].shape[0], 4, dtype=accumulation_dtype(*students))


@torch.library.custom_op("clarep_fast::feature_align_backward", mutates_args=())
def feature_align_backward(
    grad_stats: Tensor,
    students: list[Tensor],
    teachers: list[Tensor],
    need_students: bool,
    need_teachers: bool,
    backend: str,
) -> list[Tensor]:
    """[ds_1 .. ds_P, dt_1 .. dt_P] (empty tensors where not needed) from the statistics' gradient."""
    backward = KERNELS.on(backend).grads
    g_st, g_ss, g_tt, g_dd = grad_stats.unbind(-1)  # each (P, B)
    coeffs = torch.stack([g_st - 2 * g_dd, 2 * (g_ss + g_dd), 2 * (g_tt + g_dd)], dim=-1).contiguous()  # (P, B, 3)
    pairs = [
        backward(s.contiguous(), t.contiguous(), coeffs[p], need_students, need_teachers)
        for p, (s, t) in enumerate(zip(students, teachers))
    ]
    return [pair[0] for pair in pairs] + [pair[1] for pair in pairs]


@feature_align_backward.register_fake
def _(grad_stats, students, teachers, need_students, need_teachers, backend):
    grads_s = [torch.empty_like(s) if need_students else s.new_empty(0) for s in students]
    grads_t = [torch.empty_like(t) if need_teachers else t.new_empty(0) for t in teachers]
    return grads_s + grads_t


register_loop_vmap(feature_align_backward)  # jacrev: vmap over the backward (ops/batching.py)


def _setup_context(ctx, inputs, output):
    students, teachers, backend = inputs
    ctx.save_for_backward(*students, *teachers)
    ctx.pairs, ctx.backend = len(students), backend


def _backward(ctx, needs, grad_stats):
    saved = ctx.saved_tensors
    students, teachers = list(saved[: ctx.pairs]), list(saved[ctx.pairs :])
    need_s, need_t = per_tensor(needs[0], ctx.pairs), per_tensor(needs[1], ctx.pairs)
    grads = feature_align_backward(grad_stats.contiguous(), students, teachers, any(need_s), any(need_t), ctx.backend)
    grads_s = [g if need else None for g, need in zip(grads[: ctx.pairs], need_s)]
    grads_t = [g if need else None for g, need in zip(grads[ctx.pairs :], need_t)]
    return grads_s, grads_t, None


feature_align_function = wire(
    feature_align_forward,
    _setup_context,
    _backward,
    "clarep_fast.feature_align has no vmap rule: it already takes a batch (B, ...) and every layer pair in one call",
)


# ----------------------------------------------------------------------------- public API


def feature_align(
    students: Sequence[Tensor], teachers: Sequence[Tensor], *, kind: str = "cosine", reduction: str = "mean"
) -> Tensor:
    """CaDistill's alignment loss between projected student features and teacher features.

    ``students[l]`` and ``teachers[l]`` (B, ...) are one layer pair (flattened per sample; the
    student side already projected to the teacher's width). Per sample, averaged over pairs:
    ``1 - cos`` (kind="cosine") or the mean squared difference (kind="mse"); reduction "mean"
    (a scalar) or "none" ((B,)). fp32 result (fp64 for fp64 inputs); differentiable in both sides.
    On the cpu and cuda backends an eager call is one compiled operator with its autograd in C++
    (csrc/feature_align/feature_align_call.cpp); elsewhere the same steps run from Python.
    """
    students, teachers = _validated(students, teachers, kind, reduction)
    backend = resolve_backend(students[0].device)
    if takes_whole_call(backend):
        loss, stats = compiled_ops().feature_align_call(students, teachers, kind == "cosine", reduction == "mean")
        _raise_if_not_finite(stats, students, teachers)
        return loss
    if torch.compiler.is_compiling():  # dynamo traces the custom op and its registered autograd
        stats = feature_align_forward(students, teachers, backend)
    else:
        stats = feature_align_function(students, teachers, backend)
    st, ss, tt, dd = stats.unbind(-1)  # (P, B)
    if kind == "cosine":
        floor = ALIGN_EPS**2
        per_pair = 1 - st / (ss.clamp_min(floor).sqrt() * tt.clamp_min(floor).sqrt())
    else:
        # Python divisors: no host-to-device copy
        per_pair = torch.stack([dd[pair] / s.shape[1] for pair, s in enumerate(students)])
    loss = per_pair.mean(0)
    return loss.mean() if reduction == "mean" else loss


def _validated(students, teachers, kind, reduction) -> tuple[list[Tensor], list[Tensor]]:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    for name, value in (("students", students), ("teachers", teachers)):
        if isinstance(value, Tensor):
            raise TypeError(f"{name} must be a sequence of (B, ...) tensors (one per layer pair), not a single tensor")
    students, teachers = list(students), list(teachers)
    if not students or len(students) != len(teachers):
        raise ValueError(
            f"need one teacher per student and at least one pair, got {len(students)} students and {len(teachers)} teachers"
        )
    batch = None
    flat_s, flat_t = [], []
    for pair, (s, t) in enumerate(zip(students, teachers)):
        for side, tensor in (("students", s), ("teachers", t)):
            require_float(f"{side}[{pair}]", tensor)
            if tensor.dim() < 2 or tensor.numel() == 0:
                raise ValueError(f"{side}[{pair}] must be a non-empty (B, ...) tensor, got shape {tuple(tensor.shape)}")
        batch = s.shape[0] if batch is None else batch
        if s.shape[0] != batch or t.shape[0] != batch:
            raise ValueError(
                f"pair {pair} has batch {s.shape[0]} (student) and {t.shape[0]} (teacher); every pair needs batch {batch}"
            )
        if s[0].numel() != t[0].numel():
            raise ValueError(
                f"pair {pair}: student has {s[0].numel()} features per sample but teacher has {t[0].numel()}; project the student to the teacher's width first"
            )
        if s.dtype != t.dtype:
            raise TypeError(f"pair {pair}: student is {s.dtype} but teacher is {t.dtype}; cast one side")
        if s.device != t.device or s.device != students[0].device:
            raise ValueError(
                f"pair {pair}: all features must be on {students[0].device}, got {s.device} and {t.device}"
            )
        flat_s.append(s.reshape(batch, -1))
        flat_t.append(t.reshape(batch, -1))
    return flat_s, flat_t


def _raise_if_not_finite(stats: Tensor, students: list[Tensor], teachers: list[Tensor]) -> None:
    """NaN/Inf in a student shows up in its s·s, in a teacher in its t·t (both non-negative sums);
    so does a finite row whose squares overflow the accumulation dtype: the message tells which."""

    def explain(bad: Tensor) -> str:
        pair, sample, side = (int(i) for i in bad.nonzero()[0])
        name, rows = ("students", students) if side == 0 else ("teachers", teachers)
        return f"feature_align: {name}[{pair}] {non_finite_reason(rows[pair][sample], stats.dtype)} (sample {sample})"

    refuse_non_finite(stats[..., 1:3], "feature_align", explain)


# ----------------------------------------------------------------------------- op table row


def _example(device, dtype, generator):
    """Two pairs at odd widths (one student side 4-d), cosine, per-sample losses; both sides trainable."""
    students = [
        random_tensor(generator, device, dtype, 5, 37, requires_grad=True),
        random_tensor(generator, device, dtype, 5, 3, 4, 4, requires_grad=True),
    ]
    teachers = [
        random_tensor(generator, device, dtype, 5, 37, requires_grad=True),
        random_tensor(generator, device, dtype, 5, 48, requires_grad=True),
    ]
    return (students, teachers), {"kind": "cosine", "reduction": "none"}


def _launch_cases(device, dtype):
    """Widths from 1 to past the kernels' largest block (kernels/feature_align.py picks a power of two
    from 128 to 4096 from the width), each block once with an odd width and once with a multiple of
    16 (Triton specializes ints divisible by 16), both sides trainable; one side alone (the kernels'
    NEED flags, which only drop work) at the smallest and largest block."""
    generator = torch.Generator().manual_seed(0)

    def case(width, need_student, need_teacher):
        student = random_tensor(generator, device, dtype, 3, width, requires_grad=need_student)
        teacher = random_tensor(generator, device, dtype, 3, width, requires_grad=need_teacher)
        # both kinds; not cosine at width 1, where it is constant and its zero gradient tests only rounding
        return ([student], [teacher]), {"kind": "cosine" if width % 2 and width > 1 else "mse"}

    for block in (128, 256, 512, 1024, 2048, 4096, 8192):
        for width in (block - 1, block):
            yield case(width, True, True)
    yield case(1, True, True)
    for width in (1, 8192):
        yield case(width, True, False)
        yield case(width, False, True)


SPEC = OpSpec("feature_align", feature_align, feature_align_reference, KERNELS, _example, _launch_cases)
