"""The documented launch limits, checked against the compiled code.

Triton: ``project_out`` holds a (rows, k) tile of V in registers, so the triton backend takes at most
``TRITON_MAX_RANK`` directions. The op must refuse k = limit + 1 before launching anything, and
the next tile the launcher would pick (BLOCK_K = 2 × limit) must be where the compiled kernels
start to fail (a spill, the register ceiling or no resident block): a limit that is not tight
refuses work the GPU could do. (The tile keeps at most 2,048 elements, 1,024 in fp64, so past
that BLOCK_K only the (BLOCK_K,) coefficient vectors grow: at BLOCK_K = 8,192 the fp64 backward
spills and the fp32 one is within 16 registers of the ceiling.)
CUDA: the kernels that keep per-block sums in dynamic shared memory are launched with at most the
op's ``CUDA_SHARED_BYTES`` (48 KiB, what a launch gets without opting in); their refusals are
computed from it (ops/<op>.py: check_cuda_launch) and checked here at the boundary.
"""

from __future__ import annotations

import sys

import torch

from clarep_fast.ops import OPS
from scripts.gpu_gate.limits import DEVICES


def cuda_dynamic_caps() -> dict[str, int]:
    """csrc source stem -> the dynamic shared memory its op allows a launch (ops/<op>.py's CUDA_SHARED_BYTES)."""
    caps = {}
    for spec in OPS:
        module = sys.modules[spec.fused.__module__]
        if hasattr(module, "CUDA_SHARED_BYTES"):
            caps[f"{spec.name}_cuda"] = module.CUDA_SHARED_BYTES
    return caps


def _refuses(call) -> bool:
    try:
        call()
    except ValueError:
        return True
    return False


def _cuda_boundaries() -> list[str]:
    from clarep_fast.ops import feature_pool, project_out

    lines = []
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        width = 8 if dtype == torch.float64 else 4
        rank = project_out.CUDA_SHARED_BYTES // width
        size = int((feature_pool.CUDA_SHARED_BYTES // width) ** 0.5)
        for name, check, largest in (
            ("project_out k", project_out.check_cuda_launch, rank),
            ("feature_pool size", feature_pool.check_cuda_launch, size),
        ):
            tight = not _refuses(lambda: check(largest, dtype)) and _refuses(lambda: check(largest + 1, dtype))
            verdict = "ok" if tight else "FAIL"
            lines.append(
                f"{verdict} cuda {name} <= {largest:,} ({str(dtype).removeprefix('torch.')}): refused from {largest + 1:,} on"
            )
    return lines


def _triton_rank_limit(archs) -> list[str]:
    from scripts.gpu_gate.compile_triton import CompileError, compile_launch
    from scripts.gpu_gate.launches import stages_answered_by_the_reference, recording
    from scripts.gpu_gate.limits import DEVICES, problems

    from clarep_fast import project_out, use_backend
    from clarep_fast.dtypes import accumulation_dtype
    from clarep_fast.kernels import project_out as kernels
    from clarep_fast.ops.project_out import TRITON_MAX_RANK
    from clarep_fast.reference.project_out import RESCALE_RTOL

    lines, beyond = [], []
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        name = str(dtype).removeprefix("torch.")
        x = torch.randn(1, 21, dtype=dtype)
        with recording() as launched, stages_answered_by_the_reference(), use_backend("triton"):
            vectors = torch.randn(1, 21, TRITON_MAX_RANK + 1, dtype=dtype)
            refused = _refuses(lambda: project_out(x, vectors))
        verdict = "ok" if refused and not launched else "FAIL"
        lines.append(f"{verdict} triton project_out k = {TRITON_MAX_RANK + 1:,} ({name}) refused before any launch")
        with recording() as launches:
            wider = torch.randn(1, 2 * TRITON_MAX_RANK, 21, dtype=dtype).transpose(1, 2)  # a QR's layout
            kernels.project_out_apply(x, wider, True, RESCALE_RTOL)
            accumulate = accumulation_dtype(x)  # the stages' contract: coefficients and stats accumulate
            coeffs = torch.zeros(1, 2 * TRITON_MAX_RANK, dtype=accumulate)
            stats = torch.zeros(1, 4, dtype=accumulate)
            kernels.project_out_grads(x, x, wider, coeffs, stats, True, RESCALE_RTOL, True)
        beyond += launches
    failing = []
    for launch in beyond:
        for arch in archs:
            try:
                found = problems(compile_launch(launch, arch), DEVICES[arch])
            except CompileError as error:
                found = [f"does not compile: {error}"]
            failing += [f"{launch.kernel} [{launch.label()}] on sm_{arch}: {found[0]}"] if found else []
    if failing:
        lines.append(
            f"ok triton project_out past k = {TRITON_MAX_RANK:,} (BLOCK_K = {2 * TRITON_MAX_RANK:,}): {failing[0]}"
        )
    else:
        lines.append(
            f"FAIL triton project_out limit k <= {TRITON_MAX_RANK:,} is not tight: BLOCK_K = {2 * TRITON_MAX_RANK:,} compiles cleanly for every dtype and architecture"
        )
    return lines


def check(archs) -> list[str]:
    """One line per limit: 'ok ...' or 'FAIL ...'."""
    return _cuda_boundaries() + _triton_rank_limit(sorted(DEVICES))
