"""CKA forward+backward: fused op vs the eager reference vs torch.compile(reference), in one run.

Each benchmark computes the loss sum_p CKA(x_p, y_p) and its input gradients with
torch.autograd.grad (fresh gradient tensors each call, the same work for every provider).
Modes: "x+y" (both sides trainable) and "x only" (frozen teacher side, as in distillation).
Run through benchmarks/run.py, which also writes the results files and the markdown table.
"""

from __future__ import annotations

import pytest
import torch

from benchmarks.common import measure
from clarep_fast import cka_pairs, use_backend
from clarep_fast.reference import cka_reference

CASES = [
    {"n": n, "d": d, "pairs": pairs, "mode": mode, "dtype": dtype, "devices": devices}
    for n in (128, 512)
    for d in (4096, 65536)
    for pairs in (1, 4)
    for mode in ("x+y", "x only")
    for dtype, devices in (("float32", ("cpu", "cuda")), ("bfloat16", ("cuda",)))
]
QUICK_CASES = [
    {"n": 128, "d": 4096, "pairs": 1, "mode": "x+y", "dtype": "float32"},
    {"n": 512, "d": 65536, "pairs": 1, "mode": "x+y", "dtype": "float32"},
    {"n": 512, "d": 65536, "pairs": 1, "mode": "x only", "dtype": "float32"},
    {"n": 512, "d": 16384, "pairs": 4, "mode": "x+y", "dtype": "float32"},
    {"n": 512, "d": 65536, "pairs": 1, "mode": "x+y", "dtype": "bfloat16", "devices": ("cuda",)},
    {"n": 512, "d": 16384, "pairs": 4, "mode": "x+y", "dtype": "bfloat16", "devices": ("cuda",)},
]
PROVIDERS = {"cpu": ("fused", "eager", "compile"), "cuda": ("fused", "fused-triton", "eager", "compile")}


def case_id(case: dict) -> str:
    return f"n{case['n']}-d{case['d']}-p{case['pairs']}-{case['mode'].replace(' ', '')}-{case['dtype']}"


def _inputs(case: dict, device: str):
    dtype = getattr(torch, case["dtype"])
    xs = [
        torch.randn(case["n"], case["d"], device=device, dtype=dtype).requires_grad_(True) for _ in range(case["pairs"])
    ]
    ys = [torch.randn(case["n"], case["d"], device=device, dtype=dtype) for _ in range(case["pairs"])]
    ys = [y.requires_grad_(case["mode"] == "x+y") for y in ys]
    wrt = xs + ys if case["mode"] == "x+y" else xs
    return xs, ys, wrt


def _eager_loss(xs, ys):
    return sum(cka_reference(x, y) for x, y in zip(xs, ys))


def _step(provider: str, xs, ys, wrt):
    """A callable doing forward + backward for one provider."""
    if provider.startswith("fused"):
        backend = "triton" if provider == "fused-triton" else "auto"

        def fused():
            with use_backend(backend):
                return torch.autograd.grad(cka_pairs(xs, ys).sum(), wrt)

        return fused
    if provider == "eager":
        return lambda: torch.autograd.grad(_eager_loss(xs, ys), wrt)
    if provider == "compile":
        compiled = torch.compile(_eager_loss, dynamic=False)
        return lambda: torch.autograd.grad(compiled(xs, ys), wrt)
    raise ValueError(provider)


@pytest.mark.parametrize("provider", ["fused", "fused-triton", "eager", "compile"])
def test_cka_forward_backward(benchmark, case, provider, bench_device):
    if provider not in PROVIDERS[bench_device]:
        pytest.skip(f"{provider} is not a {bench_device} provider")
    torch._dynamo.config.cache_size_limit = 64
    xs, ys, wrt = _inputs(case, bench_device)
    run = _step(provider, xs, ys, wrt)

    def step():  # synchronized, so that wall-clock rounds measure the device work
        run()
        if bench_device == "cuda":
            torch.cuda.synchronize()

    step()  # warm-up: compilation, kernel autotuning, allocator
    element = xs[0].element_size()
    n, d, pairs = case["n"], case["d"], case["pairs"]
    grad_bytes = sum(t.numel() for t in wrt) * element
    measure(
        benchmark,
        step,
        bench_device,
        rounds=3 if n * d * pairs >= 512 * 65536 else 7,
        kept_bytes=grad_bytes,
        device_step=run,
        op="cka_pairs" if pairs > 1 else "cka",
        provider=provider,
        mode=case["mode"],
        shape=f"n={n} d={d} pairs={pairs}",
        dtype=case["dtype"],
        # one pass: read every x and y once, write every gradient once
        min_mb_moved=(2 * pairs * n * d * element + grad_bytes) / 2**20,
        # nominal: one Gram per input (2 n² d) + one n×n-by-(n, d) product per gradient
        gflop=(2 * pairs * 2 * n * n * d + len(wrt) * 2 * n * n * d) / 1e9,
    )
