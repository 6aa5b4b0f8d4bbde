"""One small call per fused kernel, forward and backward, for compute-sanitizer (memcheck, racecheck).

    python scripts/gpu_cases.py --backends cuda triton     # run every case on each backend (CUDA tensors)
    python scripts/gpu_cases.py --list                     # name the cases (no GPU needed)
    python scripts/gpu_cases.py --device cpu --backends cpu torch   # the same calls on CPU tensors

The cases are the op table's odd-shaped examples in fp32, bf16 and fp64, plus shapes that reach a
kernel's other code paths: project_out at k = 64 with rescaling (the backward's scratch reuse at
BLOCK_K >= 64), unbiased CKA, MSE alignment, un-normalized pooling to 1×1. Each value is compared
with the float64 reference so that a kernel that reads the wrong memory fails here too.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from clarep_fast import cka, feature_align, feature_pool, project_out, use_backend  # noqa: E402
from clarep_fast.ops import OPS  # noqa: E402
from clarep_fast.ops.spec import check_against_reference  # noqa: E402


def _extra_cases(device):
    """(name, thunk) pairs: a call whose forward and backward run the kernel's other branches."""

    def tensor(*shape, dtype=torch.float32):
        return torch.randn(*shape, device=device, dtype=dtype, requires_grad=True)

    def project_out_k64():
        x = tensor(4, 32, 32)
        vectors = torch.linalg.qr(torch.randn(4, 1024, 64, device=device)).Q.requires_grad_(True)
        return project_out(x, vectors, rescale=True), (x, vectors)

    def cka_unbiased():
        x, y = tensor(37, 65), tensor(37, 20)
        return cka(x, y, unbiased=True), (x, y)

    def align_mse():
        s, t = tensor(9, 300), tensor(9, 300)
        return feature_align([s], [t], kind="mse"), (s, t)

    def pool_1x1():
        maps = [tensor(3, 7, 5, 6), tensor(3, 2, 9, 9)]
        return feature_pool(maps, 1), tuple(maps)

    return [
        ("project_out k=64 rescale", project_out_k64),
        ("cka unbiased", cka_unbiased),
        ("feature_align mse", align_mse),
        ("feature_pool 1x1", pool_1x1),
    ]


def case_names() -> list[str]:
    table = [f"{spec.name} example {dtype}" for spec in OPS for dtype in ("float32", "bfloat16", "float64")]
    return table + [name for name, _ in _extra_cases("cpu")]


def run(backend: str, device: str) -> int:
    failures = 0
    for spec in OPS:
        for dtype in (torch.float32, torch.float64):
            result = check_against_reference(spec, backend, device, dtype)
            failures += not result.ok
            print(
                f"{backend} {spec.name} {dtype}: value error {result.value_error:.2g}, gradient error {result.grad_error:.2g} {'ok' if result.ok else 'FAILED'}"
            )
        generator = torch.Generator().manual_seed(0)
        args, kwargs = spec.example(torch.device(device), torch.bfloat16, generator)
        with use_backend(backend):
            out = spec.fused(*args, **kwargs)
            out.float().sum().backward()
        print(f"{backend} {spec.name} bfloat16: ran")
    for name, thunk in _extra_cases(device):
        torch.manual_seed(0)
        with use_backend(backend):
            out, inputs = thunk()
            grads = torch.autograd.grad(out.sum(), inputs)
        finite = bool(torch.isfinite(out).all()) and all(bool(torch.isfinite(g).all()) for g in grads)
        failures += not finite
        print(f"{backend} {name}: {'ok' if finite else 'NON-FINITE'}")
    if device == "cuda":
        torch.cuda.synchronize()
    return failures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", choices=("cuda", "triton", "cpu", "torch"), default=["cuda", "triton"])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--list", action="store_true", help="print the cases and exit")
    args = parser.parse_args()
    if args.list:
        print("\n".join(case_names()))
        print(f"{len(case_names())} cases per backend")
        return
    failures = sum(run(backend, args.device) for backend in args.backends)
    print(f"{failures} failed cases" if failures else "all cases ok")
    raise SystemExit(1 if failures else 0)


if __name__ == "__main__":
    main()
