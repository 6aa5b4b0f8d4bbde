"""project_out: fused op vs the eager reference vs torch.compile(reference), in one run.

V is stored by rows (k unit-stride, what CLARID produces) or by columns (a QR's Q); no provider copies it.
Modes: "no_grad" (the CLARID hot path: project a batch of latents once) and "x grad" (forward +
backward to the latents, V fixed). Shapes: the default bank in one call (400 latents of 3×16×16,
k = 24) and a latent-diffusion-sized case (256 latents of 4×32×32, k = 64).
"""

from __future__ import annotations

import pytest
import torch

from benchmarks.common import measure
from clarep_fast import project_out
from clarep_fast.reference import project_out_reference

CASES = [
    {"batch": batch, "size": size, "rank": rank, "mode": mode, "layout": layout, "dtype": "float32"}
    for batch, size, rank in ((400, 768, 24), (256, 4096, 64))
    for mode in ("no_grad", "x grad")
    for layout in ("rows", "columns")
]
QUICK_CASES = [{"batch": 400, "size": 768, "rank": 24, "mode": "no_grad", "layout": "rows", "dtype": "float32"}]


def case_id(case: dict) -> str:
    return f"b{case['batch']}-n{case['size']}-k{case['rank']}-{case['mode'].replace(' ', '')}-{case['layout']}-{case['dtype']}"


@pytest.mark.parametrize("provider", ["fused", "eager", "compile"])
def test_project_out(benchmark, case, provider, bench_device):
    torch._dynamo.config.cache_size_limit = 64
    dtype = getattr(torch, case["dtype"])
    batch, size, rank = case["batch"], case["size"], case["rank"]
    x = torch.randn(batch, size, device=bench_device, dtype=dtype, requires_grad=case["mode"] == "x grad")
    # column-major per sample
    vectors = torch.linalg.qr(torch.randn(batch, size, rank, device=bench_device)).Q.to(dtype)
    if case["layout"] == "rows":  # k unit-stride, as CLARID produces V
        vectors = vectors.contiguous()
    function = {
        "fused": lambda a, v: project_out(a, v, rescale=True),
        "eager": lambda a, v: project_out_reference(a, v, True),
        "compile": torch.compile(lambda a, v: project_out_reference(a, v, True), dynamic=False),
    }[provider]
    if case["mode"] == "no_grad":

        def run():
            with torch.no_grad():
                return function(x, vectors)

    else:
        weights = torch.randn(batch, size, device=bench_device, dtype=dtype)

        def run():
            return torch.autograd.grad((function(x, vectors) * weights).sum(), x)

    def step():
        run()
        if bench_device == "cuda":
            torch.cuda.synchronize()

    step()
    element = x.element_size()
    out_bytes = batch * size * element
    moved = (batch * size * rank + 2 * batch * size) * element * (1 if case["mode"] == "no_grad" else 2)
    measure(
        benchmark,
        step,
        bench_device,
        rounds=7,
        kept_bytes=out_bytes,
        device_step=run,
        op="project_out",
        provider=provider,
        mode=case["mode"],
        shape=f"B={batch} N={size} k={rank} V {case['layout']}",
        dtype=case["dtype"],
        min_mb_moved=moved / 2**20,  # read V and x, write the output (and the same again backward)
        gflop=(4 * batch * size * rank * (1 if case["mode"] == "no_grad" else 2)) / 1e9,
    )
