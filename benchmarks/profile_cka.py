"""Where the time of one fused CKA forward+backward goes, kernel by kernel (CUDA), next to eager.

    python benchmarks/profile_cka.py [--n 512] [--d 65536] [--dtype float32]

Prints torch.profiler tables (device time per kernel) and the Gram GEMM alone, full product
against the 2-block symmetric (syrk-style) split, to decide whether the split pays on this GPU.
"""

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import gpu_quantiles_ms  # noqa: E402
from clarep_fast import cka  # noqa: E402
from clarep_fast.ops.gram import _syrk_into  # noqa: E402
from clarep_fast.reference import cka_reference  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--d", type=int, default=65536)
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    x = torch.randn(args.n, args.d, device="cuda", dtype=dtype, requires_grad=True)
    y = torch.randn(args.n, args.d, device="cuda", dtype=dtype, requires_grad=True)
    for name, fn in (("fused", cka), ("eager", cka_reference)):
        step = lambda: torch.autograd.grad(fn(x, y), (x, y))  # noqa: E731
        for _ in range(3):
            step()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                step()
            torch.cuda.synchronize()
        print(f"== {name}: n={args.n} d={args.d} {args.dtype}, 5 calls")
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12, max_name_column_width=60))
    if dtype == torch.float32:
        out = torch.empty(args.n, args.n, device="cuda")
        xd = x.detach()
        full = gpu_quantiles_ms(lambda: torch.mm(xd, xd.T, out=out))[0]
        split = gpu_quantiles_ms(lambda: _syrk_into(xd, out, accumulate=False))[0]
        print(f"Gram GEMM alone: full mm {full:.3f} ms, 2-block syrk split {split:.3f} ms")


if __name__ == "__main__":
    main()
