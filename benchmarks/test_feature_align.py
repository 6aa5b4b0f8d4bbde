"""feature_align forward+backward: fused op vs the eager reference vs torch.compile(reference).

The distillation setting: student features (already projected) trainable, teacher features frozen
(cached in the bank). Three layer pairs per call; cosine and mse.
"""

from __future__ import annotations

import pytest
import torch

from benchmarks.common import measure
from clarep_fast import feature_align
from clarep_fast.reference import feature_align_reference

CASES = [
    {"batch": batch, "widths": widths, "kind": kind, "dtype": "float32"}
    for batch, widths in ((256, (4096, 1024, 256)), (1024, (16384, 4096, 1024)))
    for kind in ("cosine", "mse")
]
QUICK_CASES = [{"batch": 256, "widths": (4096, 1024, 256), "kind": "cosine", "dtype": "float32"}]


def case_id(case: dict) -> str:
    return f"b{case['batch']}-w{'+'.join(map(str, case['widths']))}-{case['kind']}-{case['dtype']}"


@pytest.mark.parametrize("provider", ["fused", "eager", "compile"])
def test_feature_align_forward_backward(benchmark, case, provider, bench_device):
    torch._dynamo.config.cache_size_limit = 64
    dtype = getattr(torch, case["dtype"])
    students = [
        torch.randn(case["batch"], width, device=bench_device, dtype=dtype, requires_grad=True)
        for width in case["widths"]
    ]
    teachers = [torch.randn(case["batch"], width, device=bench_device, dtype=dtype) for width in case["widths"]]
    kind = case["kind"]
    function = {
        "fused": lambda s, t: feature_align(s, t, kind=kind),
        "eager": lambda s, t: feature_align_reference(s, t, kind),
        "compile": torch.compile(lambda s, t: feature_align_reference(s, t, kind), dynamic=False),
    }[provider]

    def step():
        torch.autograd.grad(function(students, teachers), students)
        if bench_device == "cuda":
            torch.cuda.synchronize()

    step()
    element = students[0].element_size()
    features = sum(s.numel() for s in students)
    measure(
        benchmark,
        step,
        bench_device,
        rounds=7,
        kept_bytes=features * element,
        op="feature_align",
        provider=provider,
        mode=f"{kind}, student grad",
        shape=f"B={case['batch']} D={'+'.join(map(str, case['widths']))}",
        dtype=case["dtype"],
        min_mb_moved=(3 * features * element) / 2**20,  # read s and t once, write ds once
        gflop=(8 * features + 4 * features) / 1e9,
    )
