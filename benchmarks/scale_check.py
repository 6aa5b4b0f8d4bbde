"""Scale check (not in CI): does CLARID reach the paper's setting, a DiT-XL/2-256 latent teacher on ImageNet-1k?

Builds a random DiT-XL/2 (diffusers DiTTransformer2DModel with DiT-XL/2-256's config: 28 blocks, width
1152, 16 heads, patch 2, 32×32×4 latents, 1000 classes) and the SD VAE's AutoencoderKL config
(no weights needed: cost does not depend on them), then:
  1. counts the FLOPs of each network call CLARID makes (torch.utils.flop_counter): a CFG denoiser
     forward (batch 2), the search tap's forward (the network up to the searched layer), a VAE decode;
  2. times them, and times one batched JVP and VJP of the search tap with r probes (the subspace
     iteration's unit of work);
  3. runs one whole CLARep through the search code (`search_shard`) at reduced settings (few DDIM
     steps, few probes, 2 iterations) on this machine: seconds and peak resident memory;
  4. projects the cost of one CLARep at the default settings (30 DDIM steps, k = 96, 20 extra
     probes, I subspace iterations) and of a 10% bank for ImageNet-1k (128,117 CLAReps) on one H200
     and on eight, from the FLOP counts and an assumed achieved throughput (printed with it).
Per-probe costs: a JVP costs about one extra tap forward per probe, a VJP about two (the backward of
a matmul is two matmuls); step 2 measures both ratios on this machine.

    python benchmarks/scale_check.py [--out benchmarks/results/scale_check.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import git_sha, versions  # noqa: E402
from clarep_fast.pipeline.clarid.config import SearchConfig, split_steps  # noqa: E402
from clarep_fast.pipeline.clarid.search import search_shard  # noqa: E402
from clarep_fast.pipeline.clarid.setup import build_taps  # noqa: E402
from clarep_fast.pipeline.teacher.model import Teacher  # noqa: E402
from clarep_fast.pipeline.teacher.schedule import NoiseSchedule  # noqa: E402

IMAGENET_TRAIN = 1_281_167
H200_BF16_DENSE_TFLOPS = 989.0  # NVIDIA's H200 SXM datasheet, dense (no sparsity); fp16 the same
H200_TF32_DENSE_TFLOPS = 494.7  # the same datasheet: TF32 tensor cores, dense (fp32 without them: 66.9)
ASSUMED_UTILIZATION = 0.35  # an assumption for batched transformer inference + JVPs, not a measurement


def dit_xl_2(classes: int = 1000):
    from diffusers import DiTTransformer2DModel

    return DiTTransformer2DModel(
        num_attention_heads=16,
        attention_head_dim=72,
        in_channels=4,
        out_channels=8,
        num_layers=28,
        sample_size=32,
        patch_size=2,
        num_embeds_ada_norm=classes,
        norm_type="ada_norm_zero",
        activation_fn="gelu-approximate",
    ).eval()


def sd_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        scaling_factor=0.18215,
    ).eval()


def flops(fn) -> float:
    """FLOPs of one no-grad call of ``fn`` (2 per multiply-add)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def flops_and_seconds(fn) -> tuple[float, float]:
    counted = flops(fn)
    started = time.perf_counter()
    with torch.no_grad():
        fn()
    return counted, time.perf_counter() - started


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/scale_check.json"))
    parser.add_argument("--probes", type=int, default=6, help="r of the measured JVP/VJP and of the reduced CLARep")
    parser.add_argument("--iterations", type=int, default=5, help="subspace iterations I assumed in the projection")
    args = parser.parse_args()
    torch.manual_seed(0)
    teacher = Teacher(dit_xl_2(), NoiseSchedule.default(), sd_vae()).requires_grad_(False)
    parameters = sum(p.numel() for p in teacher.denoiser.parameters())
    config = SearchConfig(
        layer="transformer_blocks.13", feature_layers=("transformer_blocks.13", "transformer_blocks.27"), pool=2
    )
    search_tap, feature_tap = build_taps(config, teacher)
    latent = torch.randn(1, *teacher.latent_shape)
    label, times = torch.tensor([207]), torch.tensor([config.t_e])
    print(
        f"DiT-XL/2: {parameters / 1e6:.0f} M parameters, latent {teacher.latent_shape}, images {teacher.resolution}×{teacher.resolution}"
    )

    cfg_forward, cfg_seconds = flops_and_seconds(lambda: teacher.epsilon(latent, config.t_e, label, guidance=3.0))
    tap_forward, tap_seconds = flops_and_seconds(lambda: search_tap(latent, times, label))
    decode, decode_seconds = flops_and_seconds(lambda: teacher.decode(latent))
    width = search_tap(latent, times, label).packed.shape[1]
    print(
        f"CFG forward (batch 2): {cfg_forward / 1e9:.0f} GFLOP, {cfg_seconds:.1f} s; search tap forward: {tap_forward / 1e9:.0f} GFLOP, {tap_seconds:.1f} s;"
        f" VAE decode: {decode / 1e9:.0f} GFLOP, {decode_seconds:.1f} s; feature width D = {width}"
    )

    def features(z):
        return search_tap(z, times, label).packed

    probes = torch.randn(args.probes, 1, *teacher.latent_shape)
    started = time.perf_counter()
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
        torch.func.vmap(lambda v: torch.func.jvp(features, (latent,), (v,))[1])(probes)
    jvp_seconds = time.perf_counter() - started
    started = time.perf_counter()
    with torch.enable_grad(), torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
        _, pullback = torch.func.vjp(features, latent)
        torch.func.vmap(pullback)(torch.randn(args.probes, 1, width))
    vjp_seconds = time.perf_counter() - started
    print(
        f"{args.probes} probes: JVP {jvp_seconds:.1f} s ({jvp_seconds / args.probes / tap_seconds:.2f} tap forwards per probe), "
        f"VJP incl. its forward {vjp_seconds:.1f} s ({(vjp_seconds - tap_seconds) / args.probes / tap_seconds:.2f} per probe)"
    )

    reduced = dataclasses.replace(
        config, k=args.probes - 2, oversample=2, max_iters=2, steps=4, tol=1e-9, jacobian_batch=1, mode="jvp"
    )
    started = time.perf_counter()
    search_shard(teacher, (search_tap, feature_tap), reduced, torch.tensor([207]), torch.tensor([-1]), None, shard=0)
    clarep_seconds = time.perf_counter() - started
    print(
        f"one CLARep at reduced settings (4 DDIM steps, r = {args.probes}, 2 iterations): {clarep_seconds:.0f} s, peak RSS {peak_rss_gib():.1f} GiB"
    )

    # the default settings: CFG forwards along the whole trajectory (T -> t_e once, t_e -> 0 twice:
    # canonical and ordinary), two decodes, two feature taps (the full network at most), and per
    # iteration r JVP probes (1 tap forward each) and r VJP probes (2 each), plus one primal forward
    before, after = split_steps(config, teacher.schedule.num_train_timesteps)
    r = config.k + config.oversample
    ddim = (before + 2 * after) * cfg_forward
    jacobian = args.iterations * r * 3 * tap_forward + tap_forward
    total = ddim + jacobian + 2 * decode + 2 * cfg_forward / 2
    bank = IMAGENET_TRAIN // 10
    achieved = H200_BF16_DENSE_TFLOPS * 1e12 * ASSUMED_UTILIZATION
    hours_one = bank * total / achieved / 3600
    result = {
        "model": "DiT-XL/2-256 config, random weights; SD VAE config", "parameters_millions": round(parameters / 1e6, 1),
        "flops_gflop": {"cfg_forward_batch2": cfg_forward / 1e9, "search_tap_forward": tap_forward / 1e9, "vae_decode": decode / 1e9},
        "cpu_seconds": {"cfg_forward_batch2": cfg_seconds, "search_tap_forward": tap_seconds, "vae_decode": decode_seconds,
                        f"jvp_{args.probes}_probes": jvp_seconds, f"vjp_{args.probes}_probes": vjp_seconds, "one_clarep_reduced": clarep_seconds},
        "peak_rss_gib": peak_rss_gib(), "feature_width": width,
        "default_settings": {"ddim_steps": config.steps, "steps_before_after": [before, after], "k": config.k, "probes": r, "iterations_assumed": args.iterations},
        "per_clarep_tflop": {"ddim": ddim / 1e12, "jacobian": jacobian / 1e12, "total": total / 1e12},
        "network_calls_per_clarep": {"cfg_forwards": before + 2 * after, "jvp_probes": args.iterations * r, "vjp_probes": args.iterations * r},
        "imagenet_10pct_bank": {"clareps": bank, "assumed_h200_tflops": achieved / 1e12, "hours_one_h200": hours_one, "hours_eight_h200": hours_one / 8},
        "machine": "this CPU (2 cores)", "git_sha": git_sha(), **versions(),
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        json.dumps(
            {k: result[k] for k in ("per_clarep_tflop", "network_calls_per_clarep", "imagenet_10pct_bank")}, indent=2
        )
    )
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
