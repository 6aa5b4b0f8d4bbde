"""Fused projection off k directions per sample: custom ops, fake implementations, autograd, dispatch.

Math (clarep_fast/reference/project_out.py, csrc/project_out/project_out.h): per sample, c = Vᵀx, y = x - V c,
out = s·y with s = ‖x‖/‖y‖ when rescaling (else 1). Gradients, with gy the gradient reaching y:
    rescaled: gy = s g - (g·y) s y/‖y‖²,  plus (g·y) s x/‖x‖² straight to x (through ‖x‖)
    dx = gy - V (Vᵀ gy) (+ that direct term),   dV = -gy cᵀ - x (Vᵀ gy)ᵀ
One kernel per direction of a call; it reads x and V, writes out, and keeps only c (B, k) and four
scalars per sample for the backward, which recomputes y instead of storing it.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
from torch import Tensor

from clarep_fast.backends import Kernels, compiled_ops, resolve_backend, takes_whole_call
from clarep_fast.ops.autograd import wire
from clarep_fast.ops.batching import register_loop_vmap
from clarep_fast.dtypes import accumulation_dtype, non_finite_reason, require_bool, require_float
from clarep_fast.finite import refuse_non_finite
from clarep_fast.ops.spec import OpSpec, random_tensor
from clarep_fast.reference.project_out import (
    RESCALE_RTOL,
    project_out_grads_reference,
    project_out_apply_reference,
    project_out_reference,
)


# ----------------------------------------------------------------------------- backend kernels
# Every backend provides, on contiguous x (B, N) and vectors (B, N, K) (any strides) of one dtype:
#   project_out_apply(x, vectors, rescale, rtol) -> (out (B, N), coeffs (B, K), stats (B, 4))
#   project_out_grads(grad, x, vectors, coeffs, stats, rescale, rtol, need_vectors_grad) -> (grad_x, grad_vectors)
# coeffs and stats in the accumulation dtype; stats = [s, ‖x‖, ‖y‖, 1 if rescaled else 0].


class ProjectOutKernels(NamedTuple):
    """The forward and backward stages of one backend, by name (contract above)."""

    apply: Callable
    grads: Callable


def _triton_kernels():
    from clarep_fast.kernels import project_out as triton_project_out

    return ProjectOutKernels(triton_project_out.project_out_apply, triton_project_out.project_out_grads)


def _compiled_kernels():
    return ProjectOutKernels(compiled_ops().project_out_apply.default, compiled_ops().project_out_grads.default)


KERNELS = Kernels(
    torch=ProjectOutKernels(project_out_apply_reference, project_out_grads_reference),
    triton=_triton_kernels,
    compiled=_compiled_kernels,
)


# ----------------------------------------------------------------------------- custom ops


@torch.library.custom_op("clarep_fast::project_out_forward", mutates_args=())
def project_out_forward(x: Tensor, vectors: Tensor, rescale: bool, backend: str) -> tuple[Tensor, Tensor, Tensor]:
    """x (B, N), vectors (B, N, K) -> (out (B, N), coeffs (B, K), stats (B, 4))."""
    out, coeffs, stats = KERNELS.on(backend).apply(x.contiguous(), vectors, rescale, RESCALE_RTOL)  # V: any strides
    _raise_if_not_finite(stats, x, vectors)
    return out, coeffs, stats


@project_out_forward.register_fake
def _(x, vectors, rescale, backend):
    accumulate = accumulation_dtype(x)
    batch, rank = vectors.shape[0], vectors.shape[2]
    return torch.empty_like(x), x.new_empty(batch, rank, dtype=accumulate), x.new_empty(batch, 4, dtype=accumulate)


@torch.library.custom_op("clarep_fast::project_out_backward", mutates_args=())
def project_out_backward(
    grad: Tensor,
    x: Tensor,
    vectors: Tensor,
    coeffs: Tensor,
    stats: Tensor,
    rescale: bool,
    need_vectors_grad: bool,
    backend: str,
) -> tuple[Tensor, Tensor]:
    """-> (grad_x (B, N), grad_vectors (B, N, K), or an empty tensor unless need_vectors_grad)."""
    backward = KERNELS.on(backend).grads
    return backward(grad.contiguous(), x.contiguous(), vectors, coeffs, stats, rescale, RESCALE_RTOL, need_vectors_grad)


@project_out_backward.register_fake
def _(grad, x, vectors, coeffs, stats, rescale, need_vectors_grad, backend):
    return torch.empty_like(x), (x.new_empty(vectors.shape) if need_vectors_grad else x.new_empty(0))


register_loop_vmap(project_out_backward)  # jacrev: vmap over the backward (ops/batching.py)


def _setup_context(ctx, inputs, output):
    x, vectors, rescale, backend = inputs
    _, coeffs, stats = output
    ctx.mark_non_differentiable(coeffs, stats)
    ctx.save_for_backward(x, vectors, coeffs, stats)
    ctx.rescale, ctx.backend = rescale, backend


def _backward(ctx, needs, grad_out, unused_grad_coeffs, unused_grad_stats):
    x, vectors, coeffs, stats = ctx.saved_tensors
    need_x, need_vectors = needs[:2]
    grad_x, grad_v = project_out_backward(grad_out, x, vectors, coeffs, stats, ctx.rescale, need_vectors, ctx.backend)
    return (grad_x if need_x else None), (grad_v if need_vectors else None), None, None


project_out_function = wire(
    project_out_forward,
    _setup_context,
    _backward,
    "clarep_fast.project_out has no vmap rule: it already takes a batch x (B, ...) with per-sample vectors (B, N, k)",
)


# ----------------------------------------------------------------------------- public API


def project_out(x: Tensor, vectors: Tensor, *, rescale: bool = False) -> Tensor:
    """Remove from each sample of ``x`` (B, ...) its components along the orthonormal columns of
    ``vectors`` (B, N, k), N = x[0].numel(): (I - V Vᵀ) x, optionally rescaled to x's norm.
    Differentiable in both; the result has x's shape and dtype. On the cpu and cuda backends an
    eager call is one compiled operator with its autograd in C++ (csrc/project_out/project_out_call.cpp).
    """
    _validate(x, vectors)
    require_bool("rescale", rescale)
    backend = resolve_backend(x.device)
    if backend == "cuda":
        check_cuda_launch(vectors.shape[2], x.dtype)
    if backend == "triton":
        check_triton_launch(vectors.shape[2])
    if takes_whole_call(backend):
        out, stats = compiled_ops().project_out_call(x, vectors, rescale, RESCALE_RTOL)
        _raise_if_not_finite(stats, x.reshape(x.shape[0], -1), vectors)
        return out
    if torch.compiler.is_compiling():  # dynamo traces the custom op and its registered autograd
        out = project_out_forward(x.reshape(x.shape[0], -1), vectors, rescale, backend)[0]
    else:
        out = project_out_function(x.reshape(x.shape[0], -1), vectors, rescale, backend)[0]
    return out.reshape(x.shape)


CUDA_SHARED_BYTES = 48 * 1024  # dynamic shared memory a CUDA launch gets without opting in
TRITON_MAX_RANK = 4096  # the triton kernels hold a (rows, k) tile of V in registers: docs/gpu.md


def check_triton_launch(rank: int) -> None:
    """The triton kernels keep a (rows, BLOCK_K ≥ k) tile of V in registers: refuse, before
    launching, a k past the largest tile that compiles without spilling (docs/gpu.md)."""
    if rank > TRITON_MAX_RANK:
        raise ValueError(
            f"vectors has k = {rank:,} directions; the triton backend takes at most {TRITON_MAX_RANK:,}; "
            "use the cuda or torch backend, or fewer directions"
        )


def check_cuda_launch(rank: int, dtype: torch.dtype) -> None:
    """The CUDA backward keeps d = Vᵀ gy (k entries, accumulation dtype) in shared memory: refuse,
    before launching, a k whose entries do not fit."""
    width = torch.finfo(accumulation_dtype(torch.empty(0, dtype=dtype))).bits // 8
    largest = CUDA_SHARED_BYTES // width
    if rank > largest:
        raise ValueError(
            f"vectors has k = {rank} directions; the cuda backend holds at most {largest:,} in shared memory for "
            f"{str(dtype).removeprefix('torch.')} inputs; use the triton or torch backend, or fewer directions"
        )


def _validate(x, vectors) -> None:
    require_float("x", x)
    require_float("vectors", vectors)
    if x.dim() < 2 or x.numel() == 0:
        raise ValueError(f"x must be a non-empty batch (B, ...) with at least 2 dims, got shape {tuple(x.shape)}")
    size = x[0].numel()
    if vectors.dim() != 3 or vectors.shape[:2] != (x.shape[0], size):
        raise ValueError(
            f"vectors must have shape ({x.shape[0]}, {size}, k) for x of shape {tuple(x.shape)}, got {tuple(vectors.shape)}"
        )
    if vectors.shape[2] == 0:
        raise ValueError("vectors has k = 0 directions; pass at least one")
    if vectors.dtype != x.dtype:
        raise TypeError(f"vectors is {vectors.dtype} but x is {x.dtype}; they must share a dtype")
    if vectors.device != x.device:
        raise ValueError(f"vectors is on {vectors.device} but x is on {x.device}")


def _raise_if_not_finite(stats: Tensor, x: Tensor, vectors: Tensor) -> None:
    """NaN/Inf in x shows up in ‖x‖ (stats[:, 1]); in vectors (with x finite) in ‖y‖ (stats[:, 2]).
    So does a finite x whose squares overflow the accumulation dtype: the message tells which."""

    def explain(bad: Tensor) -> str:
        sample = int(bad.any(1).nonzero()[0])
        culprit, tensor = ("x", x[sample]) if bool(bad[sample, 0]) else ("vectors", vectors[sample])
        return f"project_out: {culprit} of sample {sample} {non_finite_reason(tensor, stats.dtype)}"

    refuse_non_finite(stats[:, 1:3], "project_out", explain)


# ----------------------------------------------------------------------------- op table row


def _example(device, dtype, generator):
    """A (3, 3, 5, 7) batch off 6 orthonormal directions each (a QR's column-major Q), rescaled."""
    x = random_tensor(generator, device, dtype, 3, 3, 5, 7, requires_grad=True)
    vectors = (
        torch.linalg.qr(random_tensor(generator, device, torch.float64, 3, 105, 6)).Q.to(dtype).requires_grad_(True)
    )
    return (x, vectors), {"rescale": True}


def _launch_cases(device, dtype):
    """k = 1 and every power of two from 16 up to the triton backend's limit (kernels/project_out.py
    picks the tiles from k, BLOCK_K >= 16), once with rescaling and V's gradient and once with
    neither (the flags only add work), V column-major (a QR's Q, as CLARID passes it); and at the
    pipeline's k + p = 116 and the limit, N a multiple of 16 and V row-major (Triton specializes
    ints divisible by 16 and strides of 1)."""
    generator = torch.Generator().manual_seed(0)

    def case(rank, size, column_major, rescale, need_vectors):
        x = random_tensor(generator, device, dtype, 2, size, requires_grad=True)
        shape = (2, rank, size) if column_major else (2, size, rank)
        vectors = random_tensor(generator, device, dtype, *shape) / size**0.5
        vectors = vectors.transpose(1, 2) if column_major else vectors
        return (x, vectors.requires_grad_(need_vectors)), {"rescale": rescale}

    for rank in [1] + [2**j for j in range(4, TRITON_MAX_RANK.bit_length())]:
        for flags in (False, True):
            yield case(rank, 21, True, flags, flags)
    for rank in (116, TRITON_MAX_RANK):
        for size, column_major in ((32, True), (21, False)):
            yield case(rank, size, column_major, True, True)


SPEC = OpSpec("project_out", project_out, project_out_reference, KERNELS, _example, _launch_cases)
