"""The 10% ImageNet-1k bank on DiT-XL/2-256, projected in H200-hours, every factor from a source.

    python benchmarks/scale_projection.py      (about a minute on 2 cores; not in CI)

FLOPs (torch.utils.flop_counter, 2 per multiply-add) of a random DiT-XL/2-256 and the SD VAE
(benchmarks/scale_check.py's configs): the CFG forward, the decode, and the search tap cut at each
scenario's layer (pooled 2×2). The Krylov step counts are read from benchmarks/clarid_topk.py's results
on the two trained teachers (--steps-from), the latent size N = 4 · 32 · 32 = 4,096, and `auto`
chooses between exact and block Krylov with the search's own cost model
(clarep_fast/pipeline/clarid/jacobian.py `auto_mode`). FLOPs per CLARep:

  DDIM           (12 + 2 · 18) CFG forwards (30 steps split at t_e = 600; the part after t_e twice:
                 canonical and ordinary sample; once where a scenario keeps the canonical only)
  decodes        a VAE decode and a feature tap (≤ 1 network forward) per sample
  Jacobian       Krylov, s steps, r = k + p probes: s · r J v + (s − 1) · r VJPs + the linearization;
                 exact: D VJPs or N J v (its cheaper side) + the linearization. Each product's FLOPs
                 are counted at the scenario's tap as the search runs it (product_flops: J v from
                 the search's default source, the marginal FLOPs of one probe in a batched call)

Hours on one H200 = 128,116 CLAReps · FLOPs / (0.35 · peak): the 35% is an assumption, not a
measurement. Two peaks: 989 TFLOP/s (dense bf16/fp16), which needs the products in 16 bits, and
494.7 (dense TF32), the tensor-core rate of float32 work. 16-bit products move the canonical samples
of both trained teachers by more than half an 8-bit level (benchmarks/results/clarid/half/), so the
TF32 column is the one the measurements here support (whether TF32 itself keeps them within half a
level needs a GPU). Writes benchmarks/results/scale_projection.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import git_sha, versions  # noqa: E402
from benchmarks.scale_check import (  # noqa: E402
    ASSUMED_UTILIZATION,
    H200_BF16_DENSE_TFLOPS,
    H200_TF32_DENSE_TFLOPS,
    IMAGENET_TRAIN,
    dit_xl_2,
    flops,
    sd_vae,
)
from clarep_fast.pipeline.clarid.config import SearchConfig, split_steps  # noqa: E402
from clarep_fast.pipeline.clarid.jacobian import JV_DEFAULT, TOLERANCES, _Linearization, auto_mode, exact_side  # noqa: E402
from clarep_fast.pipeline.clarid.setup import build_taps  # noqa: E402
from clarep_fast.pipeline.teacher.model import Teacher  # noqa: E402
from clarep_fast.pipeline.teacher.schedule import NoiseSchedule  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
STEPS_FROM = (
    "clarid/topk-default-dit-transformer_blocks.3-p4-k96.json",  # the trained DiT, middle block, D > N
    "clarid/topk-down_blocks.1-p4-k96.json",  # the trained UNet's wide layer, D > N
)
GOAL_HOURS = 8.0
# (k, oversample p, search tap, ordinary samples too, why). Taps earlier than the middle block stand for the embedded
# DiT's own (6 blocks; docs/evidence/README.md): its block 1 ends a third of the depth (DiT-XL/2's
# block 9 ends 10 of 28 blocks), its block 0 a sixth (block 4: 5 of 28).
SCENARIOS = [
    (96, 20, "transformer_blocks.13", True, "today's defaults (k = 96, p = 20, the middle block)"),
    (96, 10, "transformer_blocks.13", True, "p = 10 (fewer probes, one step more on both teachers)"),
    (96, 20, "transformer_blocks.9", True, "the tap at a third of the depth"),
    (96, 20, "transformer_blocks.4", True, "the tap at a sixth of the depth"),
    (96, 20, "transformer_blocks.4", False, "the same, canonical samples only (no ordinary pass: not an option yet)"),
    (48, 20, "transformer_blocks.4", True, "k = 48, the tap at a sixth (the DiT here: no effect at k = 48)"),
    (24, 20, "transformer_blocks.13", True, "k = 24 at the middle block (the DiT here: no effect at k = 24)"),
    (512, 20, "transformer_blocks.13", True, "k grown with N (k / N = 1/8, as 96 / 768)"),
]


def krylov_steps(files) -> dict[int, list[dict]]:
    """Block Krylov's measured runs at its default tolerance, by oversampling p."""
    measured: dict[int, list[dict]] = {}
    for name in files:
        result = json.loads((RESULTS / name).read_text())
        for row in result["rows"]:
            match = re.fullmatch(r"krylov p=(\d+) tol=([\d.e-]+)", row["method"])
            if match and float(match[2]) == TOLERANCES["krylov"]:
                measured.setdefault(int(match[1]), []).append(
                    {
                        "file": Path(name).stem,
                        "steps": row["iterations_median"],
                        "products": row["products_per_clarep"],
                        "pixel_diff": row["sample_pixel_difference_max"],
                    }  # fmt: skip
                )
    return measured


def product_flops(tap, latent, times, label) -> dict:
    """FLOPs at a search tap, as jacobian.py runs the products (J v from JV_DEFAULT): "jv" and "vjp",
    one probe's marginal FLOPs in a batched call, (F(4 probes) − F(2 probes)) / 2, so work the
    probes of a call share is charged once; "linearization", the primal forward with its stored
    pullback plus what the first J v call builds once (the double-backward graph); "forward", the tap."""

    def features(z, t, c):
        return tap(z, t, c).packed

    with sdpa_kernel(SDPBackend.MATH), torch.enable_grad():
        made = []
        primal = flops(lambda: made.append(_Linearization(features, latent, (times, label), JV_DEFAULT)))
        linear = made[0]
        width = linear.features.shape[1]

        def per_probe(call, shape):
            two, four = (flops(lambda: call(torch.randn(r, *shape))) for r in (2, 4))
            return (four - two) / 2

        first = flops(lambda: linear.forward_products(torch.randn(1, *latent.shape)))  # builds the graph once
        jv = per_probe(linear.forward_products, latent.shape)
        vjp = per_probe(linear.backward_products, (1, width))
    return {"forward": flops(lambda: features(latent, times, label)), "jv": jv, "vjp": vjp,
            "linearization": primal + first - jv, "width": width}  # fmt: skip


def jacobian_flops(mode: str, latent: int, width: int, probes: int, steps: int, cost: dict) -> float:
    """FLOPs of one CLARep's top-k, from product_flops' ``cost``."""
    if mode == "krylov":
        return steps * probes * cost["jv"] + (steps - 1) * probes * cost["vjp"] + cost["linearization"]
    side = exact_side(latent, width)
    return (latent * cost["jv"] if side == "columns" else width * cost["vjp"]) + cost["linearization"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=RESULTS / "scale_projection")
    args = parser.parse_args()
    torch.manual_seed(0)
    teacher = Teacher(dit_xl_2(), NoiseSchedule.default(), sd_vae()).requires_grad_(False)
    latent = torch.randn(1, *teacher.latent_shape)
    n = latent.numel()
    config = SearchConfig()
    label, times = torch.tensor([207]), torch.tensor([config.t_e])
    cfg = flops(lambda: teacher.epsilon(latent, config.t_e, label, guidance=config.guidance))
    decode = flops(lambda: teacher.decode(latent))
    before, after = split_steps(config, teacher.schedule.num_train_timesteps)
    passes = {True: 2, False: 1}  # the part after t_e: canonical and ordinary sample, or canonical only
    ddim = {ordinary: (before + passes[ordinary] * after) * cfg for ordinary in passes}
    # a decode and a feature tap (at most half a CFG forward, one network forward) per sample
    decodes = {ordinary: passes[ordinary] * (decode + cfg / 2) for ordinary in passes}
    taps = {}
    for layer in sorted({scenario[2] for scenario in SCENARIOS}):
        tap, _ = build_taps(SearchConfig(layer=layer, feature_layers=(layer,), pool=2), teacher)
        cost = product_flops(tap, latent, times, label)
        taps[layer] = {"gflop": cost["forward"] / 1e9, "width": cost["width"], "cost": cost,
                       "per_probe_in_tap_forwards": {kind: cost[kind] / cost["forward"] for kind in ("jv", "vjp")}}  # fmt: skip
    measured = krylov_steps(STEPS_FROM)
    rate = H200_BF16_DENSE_TFLOPS * 1e12 * ASSUMED_UTILIZATION
    rate_tf32 = H200_TF32_DENSE_TFLOPS * 1e12 * ASSUMED_UTILIZATION
    scenarios = []
    for k, oversample, layer, ordinary, why in SCENARIOS:
        width, tap = taps[layer]["width"], taps[layer]["gflop"] * 1e9
        probes = k + oversample
        steps = int(max(run["steps"] for run in measured[oversample]))  # the slowest teacher's
        mode = auto_mode(n, width, probes, steps)
        jacobian = jacobian_flops(mode, n, width, probes, steps, taps[layer]["cost"])
        forwards = round(jacobian / tap)
        total = ddim[ordinary] + decodes[ordinary] + jacobian
        hours = IMAGENET_TRAIN // 10 * total / rate / 3600
        hours_tf32 = IMAGENET_TRAIN // 10 * total / rate_tf32 / 3600
        scenarios.append({"why": why, "k": k, "oversample": oversample, "tap": layer, "width_D": width, "mode": mode, "krylov_steps": steps,
                          "jacobian_tap_forwards": forwards, "jacobian_tflop": jacobian / 1e12,
                          "total_tflop": total / 1e12, "h200_hours": hours, "meets_goal": hours <= GOAL_HOURS,
                          "h200_hours_tf32": hours_tf32, "meets_goal_tf32": hours_tf32 <= GOAL_HOURS})  # fmt: skip
    result = {
        "model": "DiT-XL/2-256 config (random weights), SD VAE config", "latent_N": n,
        "gflop": {"cfg_forward_batch2": cfg / 1e9, "vae_decode": decode / 1e9, "taps": taps},
        "per_clarep_tflop": {"ddim": ddim[True] / 1e12, "decodes_and_feature_taps": decodes[True] / 1e12},
        "krylov_measured": measured, "clareps": IMAGENET_TRAIN // 10,
        "assumed_h200_tflops": rate / 1e12, "assumed_h200_tflops_tf32": rate_tf32 / 1e12, "goal_h200_hours": GOAL_HOURS, "scenarios": scenarios,
        "git_sha": git_sha(), **versions(),
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [
        f"# The 10% ImageNet-1k bank on DiT-XL/2-256 (N = {n}): `python benchmarks/scale_projection.py` (git {result['git_sha']})",
        "",
        f"CFG forward {cfg / 1e9:.1f} GFLOP, decode {decode / 1e9:.1f} GFLOP; DDIM {ddim[True] / 1e12:.1f} TFLOP and decodes + feature "
        f"taps {decodes[True] / 1e12:.1f} TFLOP per CLARep (canonical samples only: {ddim[False] / 1e12:.1f} and {decodes[False] / 1e12:.1f}); block Krylov at tol {TOLERANCES['krylov']:g} takes the most steps "
        f"measured on the two trained teachers at D > N ("
        + "; ".join(
            f"p = {p}: " + ", ".join(f"{run['steps']:g} in {run['file']}" for run in runs)
            for p, runs in measured.items()
        )
        + f"); {IMAGENET_TRAIN // 10:,} CLAReps at an assumed {rate / 1e12:.0f} TFLOP/s per H200 with 16-bit products, "
        f"{rate_tf32 / 1e12:.0f} with TF32 (the precision the samples need: docs/scale.md). One probe, in tap forwards "
        f"(J v by {JV_DEFAULT!r}, VJP): "
        + "; ".join(
            f"{layer} {t['per_probe_in_tap_forwards']['jv']:.2f}, {t['per_probe_in_tap_forwards']['vjp']:.2f}"
            for layer, t in taps.items()
        )
        + ".",
        "",
        "| scenario | k | p | tap (GFLOP, D) | method (Krylov steps) | Jacobian, in tap forwards | TFLOP per CLARep | H200-hours, 16-bit | H200-hours, TF32 | ≤ 8 h (16-bit / TF32) |",
        "|---|---:|---:|---|---|---:|---:|---:|---:|---|",
    ]
    for s in scenarios:
        method = f"krylov ({s['krylov_steps']})" if s["mode"] == "krylov" else s["mode"]
        lines.append(
            f"| {s['why']} | {s['k']} | {s['oversample']} | {s['tap']} ({taps[s['tap']]['gflop']:.1f}, {s['width_D']}) | {method} | "
            f"{s['jacobian_tap_forwards']:,} | {s['total_tflop']:.1f} | {s['h200_hours']:.1f} | {s['h200_hours_tf32']:.1f} | "
            f"{'yes' if s['meets_goal'] else 'no'} / {'yes' if s['meets_goal_tf32'] else 'no'} |"
        )
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
