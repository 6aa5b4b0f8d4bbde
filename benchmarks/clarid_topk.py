"""The top-k methods of CLARID side by side on the trained default teacher, at the search's settings:
products, seconds and agreement with the exact top-k, per CLARep.

    python benchmarks/clarid_topk.py [--teacher default] [--layer down_blocks.1 --pool 4] [--images 8] [-k 96]

The Jacobian problem is the search's (benchmarks/clarid_vs_park.py: x_{t_e} from the generative
route, the tap's pooled features). Methods, each on the same images in batches of --batch:
  exact-rows    the whole J by D VJPs, then an SVD (what exact did before; D products)
  exact-columns the whole J by N J v (what exact does when JV_COST · N < D; N products)
  subspace      randomized subspace iteration, forward mode (the search's iterative method before)
  krylov        block Krylov (Musco & Musco 2015)
  auto          the search's default: the cheaper of exact and krylov by predicted products
the iterative ones at each --tols and --oversamples, and block Krylov under the residual stopping
rule at each --residual-tols, from random probes and from a sibling's subspace (--starts: image i
starts from image i+1's exact top-k, another class, what a warm start from earlier work in a shard
can give at best when the classes differ; or from image i+K's, the same class, the most a running
class subspace could give), warm starts under the default rule too. With --jv forward backward,
exact-columns and block Krylov run with J v from each source (forward-mode AD, or the VJP of the
stored pullback: jacobian.py's JV_SOURCES); without it, from the default source. With --half bfloat16
float16, block Krylov also runs with every product in that dtype (a half-precision copy of the network,
float32 in and out; orthogonalization and Rayleigh–Ritz in float64 as always): what a GPU's 16-bit rate
would need (float16 has TF32's 10-bit mantissa); --half tf32 (CUDA only): the float32 network with
its matmuls and convolutions on TF32 tensor cores, the precision of the TF32 rate. With
--probes-per-call N M ..., exact (both sides) and block Krylov also run with N, M, ... probes per
batched network call (the search's default depends on the device: jacobian.py's PROBES_PER_CALL;
1000 = a step's probes at once). Agreement with exact, per image: the CLARep's
relative L2 difference ‖x' − x'_exact‖ / ‖x'_exact‖ (x' = x_{t_e} with the k directions projected
out and its norm restored, as the search writes it), the canonical sample's largest absolute pixel
difference after the DDIM steps to t = 0 (images in [0, 1]: below 1/510, half an 8-bit level, the
saved samples are the same images), and the largest principal angle. Writes
benchmarks/results/clarid/topk-<layer>-p<pool>-k<k>.{json,md} (topk-<teacher>-... for a teacher other
than the embedded UNet; --layer auto is written as the layer it resolves to).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import re
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.clarid_vs_park import search_problem  # noqa: E402
from benchmarks.common import device_name, git_sha, versions  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402

import clarep_fast.pipeline.clarid.jacobian as jacobian  # noqa: E402
from clarep_fast.ops.project_out import project_out  # noqa: E402
from clarep_fast.pipeline.clarid.jacobian import principal_angle, topk_right_singular  # noqa: E402
from clarep_fast.pipeline.clarid.config import SearchConfig, split_steps  # noqa: E402
from clarep_fast.pipeline.clarid.setup import with_layers  # noqa: E402
from clarep_fast.pipeline.teacher.ddim import ddim_move, time_grid  # noqa: E402
from clarep_fast.pipeline.teacher.load import load_teacher  # noqa: E402
from clarep_fast.taps import FeatureTap  # noqa: E402


def half_features(teacher, config: SearchConfig, dtype: torch.dtype):
    """The search tap on a ``dtype`` copy of the denoiser, float32 in and out: J v and J^T u in dtype."""
    tap = FeatureTap(copy.deepcopy(teacher.denoiser).to(dtype), [config.layer], pool=config.pool, fused=False)

    def features(z, t, c):
        return tap(z.to(dtype), t, c).packed.float()

    return features


@contextlib.contextmanager
def tf32(enabled: bool):
    """float32 matmuls and convolutions on TF32 tensor cores inside (CUDA), restored after."""
    matmul, cudnn = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    if enabled:
        torch.set_float32_matmul_precision("high")
        torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(matmul)
        torch.backends.cudnn.allow_tf32 = cudnn


def run_method(features, start, times, labels, k, batch, side=None, directions=None, **options):
    """(vectors, values, iterations, products, seconds) over the images in batches; ``side``: exact
    forced to form J by its rows (D VJPs) or its columns (N JVPs) whatever the costs say;
    ``directions`` (B, N, m): the iterative method's start per image."""
    began = time.perf_counter()
    vectors, values, iterations, products = [], [], [], 0
    for first in range(0, len(start), batch):
        part = slice(first, first + batch)
        conditions = (times[part], labels[part])
        if side is None:
            found = topk_right_singular(
                features,
                start[part],
                k,
                conditions=conditions,
                generator=torch.Generator().manual_seed(first),
                start=None if directions is None else directions[part],
                **options,
            )
        else:
            with sdpa_kernel(SDPBackend.MATH), torch.enable_grad():
                chunk = options.get("probes_per_call") or jacobian.PROBES_PER_CALL.get(start.device.type)
                linear = jacobian._Linearization(features, start[part].detach(), conditions, options["jv"], chunk)
                width = linear.features.shape[1]
                found = jacobian._exact(linear, len(start[part]), start[0].numel(), width, k, linear.features, side)
        vectors.append(found.vectors), values.append(found.values), iterations.append(found.iterations)
        products += found.products
    return torch.cat(vectors), torch.cat(values), torch.cat(iterations), products, time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--teacher",
        default="default",
        help="a --teacher value of search (a DiT too: --layer auto takes its middle block)",
    )
    parser.add_argument("--layer", default="down_blocks.1", help="a layer name, or auto (the teacher's search layer)")
    parser.add_argument("--pool", type=int, default=4)
    parser.add_argument("-k", type=int, default=SearchConfig().k)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--tols", type=float, nargs="+", default=[1e-2, 3e-3, 1e-3])
    parser.add_argument("--oversamples", type=int, nargs="+", default=[SearchConfig().oversample])
    parser.add_argument("--residual-tols", type=float, nargs="*", default=[1e-2, 3e-3, 1e-3])
    parser.add_argument("--max-iters", type=int, default=SearchConfig().max_iters)
    parser.add_argument("--iterative", nargs="+", default=["subspace", "krylov"], choices=["subspace", "krylov"])
    parser.add_argument(
        "--starts",
        nargs="+",
        default=["random", "sibling"],
        choices=["random", "sibling", "class"],
        help="starts of block Krylov: sibling = image i+1's exact top-k (another class), class = image i+K's "
        "(the same class; needs --images 2K): the most a running class subspace could give",
    )
    parser.add_argument(
        "--jv",
        nargs="+",
        choices=jacobian.JV_SOURCES,
        help="J v sources to compare on exact-columns and block Krylov (default: the search's, unnamed)",
    )
    parser.add_argument(
        "--half",
        nargs="*",
        default=[],
        choices=["bfloat16", "float16", "tf32"],
        help="block Krylov with products in these too (tf32: CUDA only)",
    )
    parser.add_argument("--probes-per-call", type=int, nargs="*", default=[], help="calls to compare (below)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "clarid")
    args = parser.parse_args()
    torch.set_num_threads(1)  # one core per process: the machine is shared, and the ratios are what is read
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if "tf32" in args.half and device != "cuda":
        parser.error("--half tf32 needs a CUDA device (TF32 is a tensor-core format)")
    teacher = load_teacher(args.teacher).to(device).requires_grad_(False)
    config = with_layers(SearchConfig(teacher=args.teacher, layer=args.layer, pool=args.pool, k=args.k), teacher)
    args.layer = config.layer
    if "class" in args.starts and args.images != 2 * teacher.num_classes:
        parser.error(f"--starts class needs --images {2 * teacher.num_classes} (image i and i+K share a class)")
    features, start, times, labels = search_problem(config, args.images, device, torch.Generator().manual_seed(0))
    steps_total = teacher.schedule.num_train_timesteps
    grid = time_grid(config.t_e, -1, split_steps(config, steps_total)[1], steps_total)
    latent, width = start[0].numel(), features(start[:1], times[:1], labels[:1]).shape[1]

    def outcome(vectors):
        clarep = project_out(start, vectors.to(start.dtype), rescale=True)
        sample = (ddim_move(teacher, clarep, labels, grid, config.guidance, clip=True) + 1) / 2
        return clarep.flatten(1), sample

    methods = [("exact-rows", {"mode": "exact", "_side": "rows", "jv": jacobian.JV_DEFAULT})]
    for jv in args.jv or [jacobian.JV_DEFAULT]:
        named = f" jv={jv}" if args.jv else ""
        methods.append((f"exact-columns{named}", {"mode": "exact", "_side": "columns", "jv": jv}))
    methods.append(("auto", {"mode": "auto"}))
    if args.jv:
        for jv in args.jv:
            for oversample in args.oversamples:
                options = {"mode": "krylov", "tol": args.tols[0], "oversample": oversample, "max_iters": args.max_iters}
                methods.append((f"krylov p={oversample} tol={args.tols[0]:g} jv={jv}", {**options, "jv": jv}))
    for oversample in args.oversamples:
        for tol in args.tols:
            for mode, name in (("jvp", "subspace"), ("krylov", "krylov")):
                if name not in args.iterative or (args.jv and name == "krylov"):  # krylov: once per source
                    continue
                methods.append(
                    (
                        f"{name} p={oversample} tol={tol:g}",
                        {"mode": mode, "tol": tol, "oversample": oversample, "max_iters": args.max_iters},
                    )
                )
    for calls in args.probes_per_call:
        exact = {"mode": "exact", "jv": jacobian.JV_DEFAULT, "probes_per_call": calls}
        methods.append((f"exact-rows calls={calls}", {**exact, "_side": "rows"}))
        methods.append((f"exact-columns calls={calls}", {**exact, "_side": "columns"}))
        options = {"mode": "krylov", "tol": args.tols[0], "max_iters": args.max_iters, "probes_per_call": calls}
        for oversample in args.oversamples:
            methods.append(
                (f"krylov p={oversample} tol={args.tols[0]:g} calls={calls}", {**options, "oversample": oversample})
            )
    for half in args.half:
        for oversample in args.oversamples:
            options = {"mode": "krylov", "tol": args.tols[0], "oversample": oversample, "max_iters": args.max_iters}
            methods.append((f"krylov p={oversample} tol={args.tols[0]:g} {half} products", {**options, "_half": half}))
    for oversample in args.oversamples:
        for begin in args.starts if "krylov" in args.iterative else ():
            if begin != "random":  # the default stopping rule from a warm start
                options = {"mode": "krylov", "tol": args.tols[0], "oversample": oversample, "max_iters": args.max_iters}
                methods.append(
                    (f"krylov p={oversample} tol={args.tols[0]:g} start={begin}", {**options, "_start": begin})
                )
        for tol in args.residual_tols:
            for begin in args.starts:
                options = {"mode": "krylov", "stop": "residual", "tol": tol, "oversample": oversample}
                methods.append((f"krylov residual p={oversample} tol={tol:g} start={begin}",
                                {**options, "max_iters": args.max_iters, "_start": begin}))  # fmt: skip
    run_method(features, start[:1], times[:1], labels[:1], args.k, 1, mode="krylov", max_iters=2)  # warm-up, untimed
    rows, reference = [], None
    for name, options in methods:
        side, begin = options.pop("_side", None), options.pop("_start", "random")
        half = options.pop("_half", None)
        network = features if half in (None, "tf32") else half_features(teacher, config, getattr(torch, half))
        # image i+1's exact top-k (another class), or image i+K's (image i has class i mod K: the same)
        shift = {"sibling": 1, "class": teacher.num_classes}.get(begin)
        directions = None if shift is None else reference[0].roll(-shift, 0)
        with tf32(half == "tf32"):
            vectors, values, iterations, products, seconds = run_method(
                network, start, times, labels, args.k, args.batch, side=side, directions=directions, **options
            )
        clarep, sample = outcome(vectors)
        if reference is None:
            reference = (vectors, clarep, sample)
        angle = principal_angle(reference[0], vectors)
        relative = (clarep - reference[1]).norm(dim=1) / reference[1].norm(dim=1)
        pixels = (sample - reference[2]).abs().flatten(1).max(1).values
        row = {
            "method": name,
            "products_per_clarep": products / args.images,
            "seconds_per_clarep": seconds / args.images,
            "iterations_median": statistics.median(iterations.tolist()),
            "iterations_range": [int(iterations.min()), int(iterations.max())],
            "clarep_relative_l2_median": statistics.median(relative.tolist()),
            "clarep_relative_l2_max": float(relative.max()),
            "sample_pixel_difference_max": float(pixels.max()),
            "angle_max": float(angle.max()),
        }
        rows.append(row)
        print(json.dumps(row))
    tag = "" if args.teacher == "default" else re.sub(r"[^\w.-]+", "_", args.teacher) + "-"  # a folder path: one name
    stem = f"topk-{tag}{args.layer}-p{args.pool}-k{args.k}"
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {
        "device": device_name(device),
        "git": git_sha(),
        "versions": versions(),
        "latent_N": latent,
        "width_D": width,
        "images": args.images,
        "batch": args.batch,
        "k": args.k,
        "teacher": args.teacher,
        "layer": args.layer,
        "pool": args.pool,
    }
    (args.out / f"{stem}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = [
        f"# CLARID top-k methods: teacher {args.teacher}, {args.layer} pooled {args.pool}×{args.pool} (D = {width}), N = {latent}, k = {args.k}",
        "",
        f"`python benchmarks/clarid_topk.py {' '.join(sys.argv[1:])}` "
        f"on {meta['device']} (git {meta['git']}); per CLARep, agreement against `exact`.",
        "",
        "| method | products | seconds | iterations (median, range) | CLARep rel. L2 (median / max) | sample max pixel diff | angle max (rad) |",
        "|---|---:|---:|---|---|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['products_per_clarep']:.0f} | {r['seconds_per_clarep']:.2f} | {r['iterations_median']:g} "
            f"({r['iterations_range'][0]}–{r['iterations_range'][1]}) | {r['clarep_relative_l2_median']:.1e} / {r['clarep_relative_l2_max']:.1e} "
            f"| {r['sample_pixel_difference_max']:.1e} | {r['angle_max']:.2e} |"
        )
    (args.out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print(f"written to {args.out / stem}.md")


if __name__ == "__main__":
    main()
