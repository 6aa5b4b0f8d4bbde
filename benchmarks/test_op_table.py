"""Every op of the op table (clarep_fast.ops.OPS) at its example shape: fused vs eager vs torch.compile.

The example inputs are tiny and odd-shaped, so these rows measure what a call costs beyond its
arithmetic (dispatch, autograd, launches): the host overhead that decides small problems. A new op
gets its row here without a line of benchmark code; its own module adds the realistic shapes.
Forward + backward to every input that requires grad, fp32.
"""

from __future__ import annotations

import pytest
import torch

from benchmarks.common import measure
from clarep_fast.ops import OPS
from clarep_fast.ops.spec import grad_leaves

CASES = [{"op": spec.name, "dtype": "float32"} for spec in OPS]
QUICK_CASES = CASES


def case_id(case: dict) -> str:
    return f"{case['op']}-example-{case['dtype']}"


@pytest.mark.parametrize("provider", ["fused", "eager", "compile"])
def test_op_table(benchmark, case, provider, bench_device):
    torch._dynamo.config.cache_size_limit = 64
    spec = next(spec for spec in OPS if spec.name == case["op"])
    dtype = getattr(torch, case["dtype"])
    args, kwargs = spec.example(torch.device(bench_device), dtype, torch.Generator().manual_seed(0))
    inputs = grad_leaves(args)
    function = {"fused": spec.fused, "eager": spec.reference, "compile": torch.compile(spec.reference, dynamic=False)}[
        provider
    ]

    def step():
        out = function(*args, **kwargs)
        torch.autograd.grad(out.float().sum(), inputs)
        if bench_device == "cuda":
            torch.cuda.synchronize()

    step()
    # read forward, read again and write the gradient backward
    moved = sum(t.numel() * t.element_size() for t in inputs) * 3
    shapes = " ".join("×".join(map(str, t.shape)) for t in inputs)
    measure(
        benchmark,
        step,
        bench_device,
        rounds=50,
        warmup_rounds=3,
        op=f"{spec.name} (example)",
        provider=provider,
        mode="fwd+bwd",
        shape=shapes,
        dtype=case["dtype"],
        min_mb_moved=moved / 2**20,
    )
