"""Host overhead per fused call, at tiny shapes where the arithmetic is negligible and what is left
is dispatch (custom op, autograd, the kernels' entry) and, on CUDA, host syncs.

    python benchmarks/host_overhead.py [--device cpu|cuda] [--repeats 2000]

cpu:  median µs per CKA forward + backward of the fused op (auto backend = cpu), of the torch
      backend, of the plain eager CKA a user writes (benchmarks/baselines.py, the faster of its two
      forms) and of the reference (the test oracle, slower by design), at n = 8, d = 16 and at
      n = 64, d = 256.
cuda: for every op of the op table (its odd-shaped example call, forward + backward), µs per call
      with the NaN/Inf check in "sync" mode (one host read per call: the behaviour before the
      device-side check) and in "async" mode (the CUDA default: a device-side assert, no sync),
      beside the eager reference. Calls are timed in blocks of 100 with one synchronize per block,
      so a per-call sync shows up as the queue draining; the median over blocks is printed.
Timings, so not a test.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import clarep_fast  # noqa: E402
from benchmarks import baselines  # noqa: E402
from clarep_fast.finite import finite_check  # noqa: E402
from clarep_fast.ops import OPS  # noqa: E402
from clarep_fast.ops.spec import grad_leaves  # noqa: E402
from clarep_fast.reference import cka_reference  # noqa: E402


def median_us(fn, repeats: int, block: int = 1, synchronize=lambda: None) -> float:
    """Median over ``repeats // block`` blocks of the µs per call of ``block`` back-to-back calls."""
    for _ in range(20):
        fn()
    synchronize()
    times = []
    for _ in range(max(1, repeats // block)):
        start = time.perf_counter()
        for _ in range(block):
            fn()
        synchronize()
        times.append((time.perf_counter() - start) / block)
    return statistics.median(times) * 1e6


def cpu_rows(repeats: int) -> None:
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; median µs per forward+backward call")
    for n, d in ((8, 16), (64, 256)):
        x = torch.randn(n, d, requires_grad=True)
        y = torch.randn(n, d, requires_grad=True)

        def fused():
            torch.autograd.grad(clarep_fast.cka(x, y), (x, y))

        def torch_backend():
            with clarep_fast.use_backend("torch"):
                torch.autograd.grad(clarep_fast.cka(x, y), (x, y))

        def eager():
            best = min(
                baselines.cka_gram_form,
                baselines.cka_feature_form,
                key=lambda form: median_us(lambda: torch.autograd.grad(form(x, y), (x, y)), 200),
            )
            return lambda: torch.autograd.grad(best(x, y), (x, y))

        def reference():
            torch.autograd.grad(cka_reference(x, y), (x, y))

        row = {
            name: median_us(fn, repeats)
            for name, fn in (
                ("fused (cpu)", fused),
                ("fused (torch backend)", torch_backend),
                ("plain eager", eager()),
                ("reference", reference),
            )
        }
        print(f"n={n:3d} d={d:4d}: " + "   ".join(f"{name} {value:7.1f}" for name, value in row.items()))


def cuda_rows(repeats: int) -> None:
    print(
        f"torch {torch.__version__}, {torch.cuda.get_device_name()}; µs per forward+backward call (median over blocks of 100)"
    )
    for spec in OPS:
        args, kwargs = spec.example(torch.device("cuda"), torch.float32, torch.Generator().manual_seed(0))
        inputs = grad_leaves(args)

        def call(op):
            return lambda: torch.autograd.grad(op(*args, **kwargs).sum(), inputs)

        row = {}
        for mode in ("sync", "async"):
            with finite_check(mode):
                row[f"fused, {mode} check"] = median_us(call(spec.fused), repeats, 100, torch.cuda.synchronize)
        row["eager reference"] = median_us(call(spec.reference), repeats, 100, torch.cuda.synchronize)
        ratio = row["fused, sync check"] / row["fused, async check"]
        print(
            f"{spec.name:14s} "
            + "   ".join(f"{name} {value:7.1f}" for name, value in row.items())
            + f"   sync/async {ratio:.2f}×"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--repeats", type=int, default=2000)
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.device == "cuda":
        cuda_rows(args.repeats)
    else:
        cpu_rows(args.repeats)


if __name__ == "__main__":
    main()
