"""Feature tap on a small UNet (the default-teacher size): fused tap vs forward hooks + eager pooling.

Providers, all under torch.no_grad (teacher feature extraction) on the same inputs:
  fused       FeatureTap(stop_early=True): staged forward up to the deepest tap, fused pooling
  eager       torchdistill-style: forward hooks keep every tapped map, the whole model runs,
              then eager adaptive pooling + normalization + concatenation (the reference)
  compile     torch.compile of that hooks + eager function
  model-only  the plain full forward, no features (what a forward costs at all)
  activations the staged forward up to the deepest tap, no features: the memory the model's own
              activations need, which the tap's peak should stay within 10% of (plus its output)
gflop counts each provider's forward FLOPs (torch.utils.flop_counter): fused/eager is the fraction
of the compute that early exit keeps. extra_mb = peak memory minus the packed output.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DModel
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import measure
from clarep_fast import FeatureTap
from clarep_fast.reference import feature_pool_reference
from clarep_fast.taps.stages import as_map

LAYERS = ["down_blocks.0", "down_blocks.1", "down_blocks.2", "mid_block"]
CASES = [{"batch": batch, "layers": "down+mid", "dtype": "float32"} for batch in (64, 256)]
QUICK_CASES = [{"batch": 64, "layers": "down+mid", "dtype": "float32"}]


def case_id(case: dict) -> str:
    return f"b{case['batch']}-{case['layers']}-{case['dtype']}"


def small_unet() -> UNet2DModel:
    """docs/design.md's default teacher: channels 32/64/64, one attention level, 16×16 RGB, 11 labels."""
    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=16,
        in_channels=3,
        out_channels=3,
        layers_per_block=2,
        block_out_channels=(32, 64, 64),
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        num_class_embeds=11,
        norm_num_groups=8,
    ).eval()


def hooks_and_eager(model, layers, pool, normalize):
    """Forward hooks that keep each tapped map, the full forward, then pool + normalize + concat."""

    def run(x, t, c):
        captured, handles = {}, []
        for name in layers:
            hook = lambda m, i, out, name=name: captured.__setitem__(name, as_map(out, name))  # noqa: E731
            handles.append(model.get_submodule(name).register_forward_hook(hook))
        try:
            model(x, t, c)
        finally:
            for handle in handles:
                handle.remove()
        return feature_pool_reference([captured[name] for name in layers], pool, normalize)

    return run


def _flops(fn) -> float:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops() / 1e9


@pytest.mark.parametrize("provider", ["fused", "eager", "compile", "model-only", "activations"])
def test_feature_tap_forward(benchmark, case, provider, bench_device):
    torch._dynamo.config.cache_size_limit = 64
    model = small_unet().to(bench_device)
    batch = case["batch"]
    x = torch.randn(batch, 3, 16, 16, device=bench_device)
    t = torch.randint(0, 1000, (batch,), device=bench_device)
    c = torch.randint(0, 10, (batch,), device=bench_device)
    pool, normalize = 2, True
    if provider == "fused":
        tap = FeatureTap(model, LAYERS, pool=pool, normalize=normalize)
        call = lambda: tap(x, t, c).packed  # noqa: E731
    elif provider == "eager":
        call = lambda: hooks_and_eager(model, LAYERS, pool, normalize)(x, t, c)  # noqa: E731
    elif provider == "compile":
        compiled = torch.compile(hooks_and_eager(model, LAYERS, pool, normalize))
        call = lambda: compiled(x, t, c)  # noqa: E731
    elif provider == "activations":
        stages = FeatureTap(model, LAYERS)._stages
        deepest = max(stages.names.index(name) for name in LAYERS)
        call = lambda: stages.run(set(), deepest, x, t, c)  # noqa: E731
    else:
        call = lambda: model(x, t, c).sample  # noqa: E731

    def step():
        with torch.no_grad():
            out = call()
        if bench_device == "cuda":
            torch.cuda.synchronize()
        return out

    output = step()  # warm-up (and compilation)
    packed_bytes = (
        output.numel() * output.element_size() if isinstance(output, torch.Tensor) and provider != "model-only" else 0
    )
    measure(
        benchmark,
        step,
        bench_device,
        rounds=5,
        kept_bytes=packed_bytes,
        op="feature_tap",
        provider=provider,
        mode="no_grad",
        shape=f"B={batch} taps={case['layers']} pool={pool}",
        dtype=case["dtype"],
        gflop=_flops(step) if provider != "compile" else None,
    )
