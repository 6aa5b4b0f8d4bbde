"""Every op at the batch sizes training loops use (n = 8, 64, 128): fused vs the eager code a user
writes (benchmarks/baselines.py) vs torch.compile of that code, forward + backward, fp32.

At these sizes a call's fixed cost (dispatch, autograd, launches, Python) decides; the realistic
large shapes are in each op's own module. The crossover (the smallest n from which the fused op
wins) is read off these rows: docs/benchmarks.md.
"""

from __future__ import annotations

import statistics
import time

import pytest
import torch

from benchmarks import baselines
from benchmarks.common import measure
import clarep_fast

SIZES = (8, 64, 128)
CKA_WIDTH = {8: 16, 64: 256, 128: 4096}  # the shapes of the per-call table in docs/benchmarks.md
CASES = [
    {"op": op, "n": n, "dtype": "float32"}
    for op in ("cka", "feature_align", "project_out", "feature_pool")
    for n in SIZES
]
QUICK_CASES = [case for case in CASES if case["n"] in (8, 128)]


def case_id(case: dict) -> str:
    return f"{case['op']}-n{case['n']}-{case['dtype']}"


def _faster_cka_form(x: torch.Tensor, y: torch.Tensor):
    """The eager CKA a user who tried both forms keeps: the faster of the n×n (Gram) and the d×d
    (feature) form, forward + backward on these inputs, by the median of 30 timed calls each."""

    def median_seconds(form) -> float:
        times = []
        for _ in range(35):
            began = time.perf_counter()
            torch.autograd.grad(form(x, y), x)
            if x.is_cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - began)
        return statistics.median(times[5:])

    return min((baselines.cka_gram_form, baselines.cka_feature_form), key=median_seconds)


def _call(case: dict, device: str, provider: str):
    """(a callable doing forward + backward, the shape text, bytes one pass must move)."""
    n, dtype = case["n"], getattr(torch, case["dtype"])
    generator = torch.Generator().manual_seed(0)

    def tensor(*shape, grad=False):
        return torch.randn(*shape, generator=generator).to(device=device, dtype=dtype).requires_grad_(grad)

    def pick(fused, eager):
        return fused if provider == "fused" else eager if provider == "eager" else torch.compile(eager, dynamic=False)

    if case["op"] == "cka":
        d = CKA_WIDTH[n]
        x, y = tensor(n, d, grad=True), tensor(n, d)
        eager = _faster_cka_form(x, y) if provider != "fused" else None
        fn, args, inputs, shape = pick(clarep_fast.cka, eager), (x, y), (x,), f"n={n} d={d}"
    elif case["op"] == "feature_align":
        widths = (512, 256, 128)
        students = [tensor(n, w, grad=True) for w in widths]
        teachers = [tensor(n, w) for w in widths]
        fn, args, inputs, shape = (
            pick(clarep_fast.feature_align, baselines.feature_align),
            (students, teachers),
            students,
            f"B={n} D=512+256+128 cosine",
        )
    elif case["op"] == "project_out":
        x = tensor(n, 3, 16, 16, grad=True)
        vectors = torch.linalg.qr(tensor(n, 768, 24)).Q.contiguous()
        fused = lambda x, v: clarep_fast.project_out(x, v, rescale=True)  # noqa: E731
        eager = lambda x, v: baselines.project_out(x, v, rescale=True)  # noqa: E731
        fn, args, inputs, shape = pick(fused, eager), (x, vectors), (x,), f"B={n} N=768 k=24 rescale"
    else:
        maps = [tensor(n, 32, 16, 16, grad=True), tensor(n, 64, 8, 8, grad=True)]
        fn, args, inputs, shape = (
            pick(clarep_fast.feature_pool, baselines.feature_pool),
            (maps, 2),
            maps,
            f"B={n} 32×16² + 64×8² pool=2",
        )
    moved = sum(t.numel() * t.element_size() for t in inputs) * 3 + sum(
        t.numel() * t.element_size() for t in args[1:] if isinstance(t, torch.Tensor)
    )

    def step():
        out = fn(*args)
        torch.autograd.grad(out.float().sum(), inputs)
        if device == "cuda":
            torch.cuda.synchronize()

    return step, shape, moved


@pytest.mark.parametrize("provider", ["fused", "eager", "compile"])
def test_per_call(benchmark, case, provider, bench_device):
    torch._dynamo.config.cache_size_limit = 64
    step, shape, moved = _call(case, bench_device, provider)
    step()
    measure(
        benchmark,
        step,
        bench_device,
        rounds=200 if case["n"] <= 64 else 50,
        warmup_rounds=5,
        op=f"{case['op']} (per call)",
        provider=provider,
        mode="fwd+bwd",
        shape=shape,
        dtype=case["dtype"],
        min_mb_moved=moved / 2**20,
    )
