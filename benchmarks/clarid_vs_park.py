"""CLARID's batched top-k search vs the Park et al. power loop, at equal accuracy, on the default teacher.

    python benchmarks/clarid_vs_park.py [--images 20] [--park-images 3] [--max-park-iterations 80]

Setup (the default search config): the embedded teacher, latents x_{t_e} from the generative route,
features = mid_block pooled 2×2 (D = 256 of N = 768 latent entries), k = the search default (96) or -k.
Accuracy: the largest principal angle to the exact top-k subspace (full Jacobian + SVD).
  clarid  topk_right_singular with the search defaults (oversampling 20, tol 3e-3), batches of 20
  clarid  also in VJP-only mode, and in "auto" mode (the search default, which picks the exact
          Jacobian when D <= 6 (k + p): here D = 256 <= 264, so it is the oracle's method)
  park    benchmarks/park_loop.py, run until its subspace is within 0.01 rad of the exact one
          (checked every iteration by an oracle whose time is excluded), capped
Counts per CLARep: batched network calls, and per-sample Jacobian products (each J v or Jᵀu for
one direction of one image; the forwards are counted as calls). Writes
benchmarks/results/clarid/<device>-k<k>.{json,md}.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import device_name, git_sha, timed, versions  # noqa: E402
from benchmarks.park_loop import park_power_loop  # noqa: E402
from clarep_fast.pipeline.clarid.jacobian import principal_angle, topk_right_singular  # noqa: E402
from clarep_fast.pipeline.clarid.config import SearchConfig, split_steps  # noqa: E402
from clarep_fast.pipeline.clarid.search import search_directions  # noqa: E402
from clarep_fast.pipeline.clarid.setup import with_layers  # noqa: E402
from clarep_fast.pipeline.teacher.ddim import ddim_move, time_grid  # noqa: E402
from clarep_fast.pipeline.teacher.load import load_teacher  # noqa: E402
from clarep_fast.taps import FeatureTap  # noqa: E402

ACCURACY = 0.01  # radians


def search_problem(config: SearchConfig, images: int, device: str, generator: torch.Generator):
    """The search's Jacobian problem on config.teacher (the embedded UNet by default): (features(z, t, c)
    -> (B, D), latents x_{t_e} from the generative route, their times, their classes (image i has
    class i mod K))."""
    teacher = load_teacher(config.teacher).to(device).requires_grad_(False)
    last = teacher.schedule.num_train_timesteps - 1
    labels = (torch.arange(images) % teacher.num_classes).to(device)
    side = teacher.resolution
    noise = torch.randn(images, 3, side, side, generator=generator).to(device)
    start = ddim_move(
        teacher,
        noise,
        labels,
        time_grid(last, config.t_e, split_steps(config, last + 1)[0], last + 1),
        config.guidance,
        clip=True,
    )
    times = torch.full((images,), config.t_e, device=device)
    layer = with_layers(config, teacher).layer  # --layer auto: the teacher's
    tap = FeatureTap(teacher.denoiser, [layer], pool=config.pool, fused=False)

    def features(z, t, c):
        return tap(z, t, c).packed

    return features, start, times, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--park-images", type=int, default=3)
    parser.add_argument("--max-park-iterations", type=int, default=80)
    parser.add_argument("-k", type=int, default=None, help="directions (default: the search default)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "clarid")
    args = parser.parse_args()
    config = SearchConfig() if args.k is None else SearchConfig(k=args.k)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    generator = torch.Generator().manual_seed(0)
    features, start, times, labels = search_problem(config, args.images, device, generator)

    exact, exact_seconds = timed(
        lambda: topk_right_singular(features, start, config.k, conditions=(times, labels), mode="exact"), device
    )

    def ours(mode):  # the search's own Jacobian batch loop (search_directions), in this mode
        return search_directions(features, start, times, labels, dataclasses.replace(config, mode=mode), generator)

    rows = []
    for mode, label in (
        ("jvp", "clarid jvp (batched subspace iteration)"),
        ("vjp", "clarid vjp-only (batched subspace iteration)"),
        ("auto", "clarid auto (the search default)"),
    ):
        # warm-up
        topk_right_singular(
            features,
            start[:2],
            config.k,
            conditions=(times[:2], labels[:2]),
            max_iters=2,
            mode=mode,
            generator=generator,
        )
        found, our_seconds = timed(lambda: ours(mode), device)
        rows.append({
            "method": label, "images": args.images,
            "seconds_per_clarep": our_seconds / args.images,
            "iterations": float(found.iterations.float().mean()),
            "calls_per_clarep": found.calls / args.images,
            "products_per_clarep": found.products / args.images,
            "max_angle": float(principal_angle(exact.vectors, found.vectors).max()),
            "max_sigma_rel_error": float(((found.values - exact.values).abs() / exact.values).max()),
        })  # fmt: skip

    park_seconds, park_counts, park_angles = [], [], []
    for image in range(args.park_images):
        one = lambda z, b=image: features(z, times[b : b + 1], labels[b : b + 1])  # noqa: E731
        oracle = {"seconds": 0.0, "angle": float("inf")}

        def reached(iteration, vectors, b=image):
            began = time.perf_counter()
            oracle["angle"] = float(principal_angle(exact.vectors[b], vectors.to(exact.vectors.dtype)))
            oracle["seconds"] += time.perf_counter() - began
            return oracle["angle"] < ACCURACY

        (_, _, counts), seconds = timed(
            lambda: park_power_loop(
                one, start[image : image + 1], config.k, args.max_park_iterations, generator=generator, callback=reached
            ),
            device,
        )
        park_seconds.append(seconds - oracle["seconds"])
        park_counts.append(counts)
        park_angles.append(oracle["angle"])
        print(
            f"park image {image}: {counts['iterations']} iterations, {seconds - oracle['seconds']:.1f} s, angle {oracle['angle']:.4f}",
            flush=True,
        )
    rows.append({
        "method": "park et al. power loop (per image, JVPs/VJPs batched in chunks of 32)", "images": args.park_images,
        "seconds_per_clarep": statistics.mean(park_seconds),
        "iterations": statistics.mean(c["iterations"] for c in park_counts),
        "calls_per_clarep": statistics.mean(c["calls"] for c in park_counts),
        "products_per_clarep": statistics.mean(c["products"] for c in park_counts),
        "max_angle": max(park_angles), "max_sigma_rel_error": None,
        "reached_accuracy": all(angle < ACCURACY for angle in park_angles),
    })  # fmt: skip
    park = rows[-1]
    speedups = {row["method"]: park["seconds_per_clarep"] / row["seconds_per_clarep"] for row in rows[:-1]}
    speedup = speedups["clarid jvp (batched subspace iteration)"]
    header = (
        f"Device: {device_name(device)}; torch {versions()['torch']}; git {git_sha()}; {torch.get_num_threads()} threads. "
        f"Default teacher, t_e={config.t_e}, layer {with_layers(config, load_teacher('default')).layer} pooled {config.pool}×{config.pool} (D=256), N=768, k={config.k}. "
        f"Accuracy = largest principal angle to the exact top-k subspace; Park et al. is stopped once it is below {ACCURACY} rad "
        f"(at most {args.max_park_iterations} iterations; if it never gets there, the ratios are lower bounds). "
        f"Per CLARep, the Park et al. loop takes {speedup:.1f}× the time of CLARID's subspace iteration (jvp) and "
        f"{speedups['clarid auto (the search default)']:.1f}× that of the search default. The oracle's exact Jacobian + SVD took "
        f"{exact_seconds / args.images:.3f} s per image."
    )
    lines = ["| method | images | s per CLARep | iterations | batched calls per CLARep | per-sample products per CLARep | max angle (rad) |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for row in rows:
        lines.append(
            f"| {row['method']} | {row['images']} | {row['seconds_per_clarep']:.3f} | {row['iterations']:.1f} | {row['calls_per_clarep']:.1f} | {row['products_per_clarep']:.0f} | {row['max_angle']:.4f} |"
        )
    table = header + "\n\n" + "\n".join(lines) + "\n"
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = (device_name(device).replace(" ", "_").lower() if device == "cuda" else "cpu") + f"-k{config.k}"
    for suffix, text in (
        (".json", json.dumps({"rows": rows, "speedup": speedup, "header": header}, indent=1)),
        (".md", table),
    ):
        temporary = args.out / f".{stem}{suffix}.tmp"
        temporary.write_text(text)
        os.replace(temporary, args.out / f"{stem}{suffix}")


if __name__ == "__main__":
    main()
