"""CLARep search per image: CLARID's batched top-k search vs the Park et al. loop, at equal accuracy.

The search's Jacobian problem on the default teacher (benchmarks/clarid_vs_park.py has the long
form with iteration and product counts): latents x_{t_e} of the generative route, features =
mid_block pooled 2×2 (D = 256 of N = 768), top k = 8 right singular vectors of J = df/dx.
Providers, time per CLARep (the table's "eager" column holds the Park et al. loop):
  fused  clarid.topk_right_singular as the search runs it (mode auto, oversampling 20, batches of 20)
  eager  the Park et al. power loop (benchmarks/park_loop.py): per image, directions batched in chunks
Both must reach 0.01 rad (largest principal angle to the exact subspace; the accuracy check is
outside the timing) or the benchmark fails: a speed-up at unequal accuracy means nothing. There is no
torch.compile column: the search runs the teacher under torch.func transforms, and the Park loop is
the eager baseline the issue-7 target (≥ 10× per CLARep) names. k = 8 because there the Park loop
reaches the accuracy in ~50 iterations; at the default k = 96 it does not within minutes
(benchmarks/results/clarid/).
"""

from __future__ import annotations

import time

import pytest
import torch

from benchmarks.clarid_vs_park import ACCURACY, search_problem
from benchmarks.common import BENCH_PASS, quantiles_ms, timed
from benchmarks.park_loop import park_power_loop
from clarep_fast.pipeline.clarid.jacobian import principal_angle, topk_right_singular
from clarep_fast.pipeline.clarid.search import SearchConfig, search_directions

CASES = [{"k": 8, "images": 20, "park_images": 2, "dtype": "float32"}]
QUICK_CASES = [{"k": 8, "images": 8, "park_images": 1, "dtype": "float32"}]
PARK_MAX_ITERATIONS = 200


def case_id(case: dict) -> str:
    return f"k{case['k']}-n{case['images']}"


@pytest.fixture(scope="module")
def problem(bench_device):
    cache = {}

    def build(case):
        key = (case["k"], case["images"])
        if key not in cache:
            config = SearchConfig(k=case["k"])
            features, start, times, labels = search_problem(
                config, case["images"], bench_device, torch.Generator().manual_seed(0)
            )
            exact = topk_right_singular(features, start, config.k, conditions=(times, labels), mode="exact")
            cache[key] = (config, features, start, times, labels, exact.vectors)
        return cache[key]

    return build


@pytest.mark.parametrize("provider", ["fused", "eager"])
def test_clarep_search(benchmark, case, provider, bench_device, problem):
    if BENCH_PASS == "peak":
        pytest.skip("no peak memory is measured for this row")
    config, features, start, times, labels, exact = problem(case)
    generator = torch.Generator().manual_seed(1)
    per_clarep_ms, angles = [], []

    def clarid():  # the search's own Jacobian batch loop
        return search_directions(features, start, times, labels, config, generator).vectors

    def fused_round():
        found, seconds = timed(clarid, bench_device)
        per_clarep_ms.append(seconds * 1e3 / len(start))
        angles.append(float(principal_angle(exact, found).max()))

    park_image = iter(range(case["park_images"]))

    def park_round():
        image = next(park_image)
        one = lambda z: features(z, times[image : image + 1], labels[image : image + 1])  # noqa: E731
        oracle = {"seconds": 0.0, "angle": float("inf")}

        def reached(iteration, vectors):
            began = time.perf_counter()
            oracle["angle"] = float(principal_angle(exact[image], vectors.to(exact.dtype)))
            oracle["seconds"] += time.perf_counter() - began
            return oracle["angle"] < ACCURACY

        _, seconds = timed(
            lambda: park_power_loop(
                one, start[image : image + 1], config.k, PARK_MAX_ITERATIONS, generator=generator, callback=reached
            ),
            bench_device,
        )
        per_clarep_ms.append((seconds - oracle["seconds"]) * 1e3)
        angles.append(oracle["angle"])

    if provider == "fused":
        # warm-up
        topk_right_singular(
            features,
            start[:2],
            config.k,
            conditions=(times[:2], labels[:2]),
            max_iters=2,
            mode=config.mode,
            generator=generator,
        )
        benchmark.pedantic(fused_round, rounds=3, iterations=1)
    else:
        benchmark.pedantic(park_round, rounds=case["park_images"], iterations=1)
    assert max(angles) < ACCURACY, (
        f"{provider} stopped at {max(angles):.4f} rad, not within {ACCURACY} rad of the exact subspace"
    )
    benchmark.extra_info.update(
        op="clarep_search",
        provider=provider,
        mode=f"per CLARep, top-{config.k} to {ACCURACY} rad; eager = Park et al. loop",
        shape=f"default teacher, D=256, N=768, {len(start)} images",
        dtype=case["dtype"],
        **quantiles_ms(per_clarep_ms),
    )
