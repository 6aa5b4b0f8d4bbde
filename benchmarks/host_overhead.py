"""Host overhead per fused call: CKA forward + backward at a tiny shape on CPU, where the arithmetic
is negligible and what is left is dispatch (custom op, autograd, the compiled kernels' entry).

    python benchmarks/host_overhead.py [--repeats 2000]

Prints the median µs per call of the fused op (auto backend = cpu), of the torch backend and of
the eager reference, each at n = 8, d = 16 and at n = 64, d = 256. Timings, so not a test.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import clarep_fast
from clarep_fast.reference import cka_reference


def median_us(fn, repeats: int) -> float:
    for _ in range(50):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2000)
    args = parser.parse_args()
    torch.manual_seed(0)
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
            torch.autograd.grad(cka_reference(x, y), (x, y))

        row = {name: median_us(fn, args.repeats) for name, fn in (("fused (cpu)", fused), ("fused (torch backend)", torch_backend), ("eager reference", eager))}
        print(f"n={n:3d} d={d:4d}: " + "   ".join(f"{name} {value:7.1f}" for name, value in row.items()))


if __name__ == "__main__":
    main()
