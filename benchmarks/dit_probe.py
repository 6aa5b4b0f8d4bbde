"""Seconds per Jacobian probe of CLARID's search tap on a DiT-XL/2-256 (random weights), fp32, bf16 and fp16.

    python benchmarks/dit_probe.py [--device cuda] [--probes 32] [--images 2] [--repeats 3]

The search tap is the network up to the searched block (transformer_blocks.13 of 28, pooled 2×2),
called as the search calls it (clarep_fast/pipeline/clarid/jacobian.py: one primal forward, then
r probes batched with torch.func.vmap, attention on SDPA's math backend). Per dtype it prints the
seconds per J v probe from each source (jvp: forward mode; jv-backward: the VJP of the pullback,
the search's default) and per VJP probe (each image's probe counted once), the FLOPs of one call
counted by torch.utils.flop_counter, and the achieved TFLOP/s (counted FLOPs / measured seconds).
These are the per-probe costs docs/scale.md projects from. Random weights: the cost of a product
does not depend on the weights (the number of products the iteration needs does).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.scale_check import dit_xl_2  # noqa: E402
from clarep_fast.pipeline.clarid.jacobian import _Linearization  # noqa: E402
from clarep_fast.taps import FeatureTap  # noqa: E402

SEARCH_LAYER = "transformer_blocks.13"


def seconds(fn, repeats: int, synchronize) -> float:
    fn()
    synchronize()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        synchronize()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def flops(fn) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def probe(tap: FeatureTap, dtype: torch.dtype, device: str, probes: int, images: int, repeats: int) -> dict:
    torch.manual_seed(0)
    latent = torch.randn(images, 4, 32, 32, device=device, dtype=dtype)
    times, labels = torch.full((images,), 600, device=device), torch.arange(images, device=device)
    synchronize = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def features(z, t, c):
        return tap(z, t, c).packed

    with sdpa_kernel(SDPBackend.MATH), torch.enable_grad():
        jvp = _Linearization(features, latent, (times, labels), "forward")
        double_backward = _Linearization(features, latent, (times, labels), "backward")
        width = jvp.features.shape[1]
        tangents = torch.randn(probes, *latent.shape, device=device, dtype=dtype)
        cotangents = torch.randn(probes, images, width, device=device, dtype=dtype)
        row = {"dtype": str(dtype).removeprefix("torch."), "images": images, "probes": probes, "width": width}
        for name, call in (
            ("forward", lambda: features(latent, times, labels)),
            ("jvp", lambda: jvp.forward_products(tangents)),
            ("jv-backward", lambda: double_backward.forward_products(tangents)),
            ("vjp", lambda: jvp.backward_products(cotangents)),
        ):
            counted = flops(call)
            elapsed = seconds(call, repeats, synchronize)
            per = images * (1 if name == "forward" else probes)
            row[name] = {
                "s_per_probe": elapsed / per,
                "gflop_per_probe": counted / per / 1e9,
                "tflops": counted / elapsed / 1e12,
            }
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--probes", type=int, default=32)
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(
        f"DiT-XL/2-256 search tap ({SEARCH_LAYER}, pool 2) on {name}, torch {torch.__version__}; {args.images} images × {args.probes} probes per call"
    )
    model = dit_xl_2().to(args.device).requires_grad_(False)
    # the search tap pools with the reference (forward-mode AD)
    tap = FeatureTap(model, [SEARCH_LAYER], pool=2, fused=False)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):  # fp16: TF32's 10-bit mantissa
        model.to(dtype)
        row = probe(tap, dtype, args.device, args.probes, args.images, args.repeats)
        cells = "  ".join(
            f"{kind}: {row[kind]['s_per_probe'] * 1e3:.2f} ms/probe, {row[kind]['gflop_per_probe']:.0f} GFLOP/probe, "
            f"{row[kind]['tflops']:.1f} TFLOP/s"
            for kind in ("forward", "jvp", "jv-backward", "vjp")
        )
        print(f"{row['dtype']:8s} D={row['width']}  {cells}")


if __name__ == "__main__":
    main()
