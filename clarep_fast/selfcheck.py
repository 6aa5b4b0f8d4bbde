"""``clarep-fast backends`` and ``clarep-fast selfcheck``: which backends run here, every usable
backend of every op in the op table against the float64 reference (forward and backward), then one
fused-against-eager CKA timing (the full comparison with torch.compile is benchmarks/run.py)."""

from __future__ import annotations

import statistics
import time

import torch

from clarep_fast.backends import BACKENDS, available_backends, unusable_reason
from clarep_fast.ops import OPS
from clarep_fast.ops.cka import cka
from clarep_fast.ops.spec import check_against_reference
from clarep_fast.reference import cka_reference


def print_backends() -> None:
    for name, status in available_backends().items():
        where = ", ".join(status.devices) if status.available else "unavailable"
        note = f"  ({status.reason})" if status.reason else ""
        print(f"  {name:7s} {where}{note}")


def median_seconds(fn, repeats: int, device: str) -> float:
    """The median wall time of ``fn`` over ``repeats`` calls after one warm-up (synchronized on CUDA)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_selfcheck(quick: bool = False) -> int:
    """Print the check and the timing; 0 when every backend agrees with the reference, else 1."""
    print(f"clarep_fast self-check: torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    print_backends()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    failures = 0
    print("\ncorrectness against the float64 reference, fp32 inputs (errors relative to the largest reference entry):")
    for spec in OPS:
        for device in devices:
            for backend in BACKENDS:
                if unusable_reason(backend, device):
                    continue
                result = check_against_reference(spec, backend, device)
                failures += not result.ok
                print(
                    f"  {spec.name:13s} {device:4s} {backend:7s} value {result.value_error:.1e}  grad {result.grad_error:.1e}  {'ok' if result.ok else 'FAIL'}"
                )
    n, d = (256, 8192) if quick else (512, 32768)
    print(f"\nspeed: CKA forward+backward of x, y: ({n}, {d}) fp32, median of 5 (one process, same inputs):")
    for device in devices:
        x = torch.randn(n, d, device=device, requires_grad=True)
        y = torch.randn(n, d, device=device, requires_grad=True)
        fused = median_seconds(lambda: torch.autograd.grad(cka(x, y), (x, y)), 5, device)
        eager = median_seconds(lambda: torch.autograd.grad(cka_reference(x, y), (x, y)), 5, device)
        print(
            f"  {device:4s} fused {fused * 1e3:8.1f} ms   eager {eager * 1e3:8.1f} ms   fused is {eager / fused:.2f}x eager"
        )
    print("\nfull comparison with torch.compile: python benchmarks/run.py [--quick]")
    print("self-check " + ("passed" if failures == 0 else f"FAILED ({failures} backend(s))"))
    return 1 if failures else 0
