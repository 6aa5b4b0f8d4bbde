"""CLARep search (CLARID) over a dataset's classes, written as a bank (clarep_fast/pipeline/clarid/bank.py).

For every planned item (a class c, and for the inversion route a real training image):
  1. x_{t_e}: DDIM with CFG from noise at T down to t_e (generative route), or DDIM inversion of the
     image up to t_e (inversion route);
  2. V_k, σ_k: top-k right singular pairs of J = d f_l(x_{t_e}, t_e, c)/d x_{t_e}, f_l the teacher's
     feature at ``layer`` pooled to pool×pool (randomized subspace iteration, clarid/jacobian.py;
     the tap stops after ``layer``). The control ``directions = random`` takes k random orthonormal
     directions instead (no Jacobian): what projecting out *any* k directions does;
  3. the CLARep x~ = (I - V_k V_kᵀ) x_{t_e}, rescaled to the old norm if ``rescale`` (fused project_out);
  4. its canonical sample: DDIM with CFG from x~ at t_e to 0, decoded by the VAE for a latent
     teacher (the bank holds images in [0, 1] at the data resolution); the ordinary sample from x_{t_e} alike;
  5. canonical features, cached once for distillation: the canonical sample x~_0 (in the diffusion's
     space, before decoding) re-noised to the feature time t_f with a fixed noise draw ε_f,
         x_f = sqrt(ā_{t_f}) x~_0 + sqrt(1 - ā_{t_f}) ε_f,
     tapped at ``feature_layers`` with the null label (``feature_label = null``): features of the
     image's content, which cannot read the class from the label input (a class-conditional network
     adds the label embedding in every block, so true-label features are largely class vectors).
     The ordinary sample's features alike, with the same ε_f. ``feature_from = latent`` keeps the
     earlier form f(x~, t_e, label) as an explicit option.
For a latent teacher x_{t_e} is a VAE latent, the Jacobian is taken w.r.t. it, and the inversion
route encodes the real image first. The teacher's network may run in bfloat16/float16 (--dtype);
the DDIM updates, the projection and the subspace iteration's QR and Rayleigh–Ritz stay in
float32/float64 (clarid/jacobian.py). A Jacobian batch that runs out of GPU memory is halved and
retried (from the same random state) instead of failing.
The plan (which classes, which images, which noise) depends only on the config, and each shard's
randomness only on (seed, shard number): a resumed run, or one split over torchrun ranks (shard s
goes to rank s mod world size), writes the same bank as one uninterrupted run.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from torch import Tensor
from tqdm import tqdm

from clarep_fast.pipeline.clarid.bank import MAY_CHANGE, bank_identity, read_shard, shard_path, write_shard
from clarep_fast.pipeline.clarid.config import SearchConfig, split_steps
from clarep_fast.pipeline.clarid.jacobian import KRYLOV_STEPS, TopK, topk_right_singular
from clarep_fast.pipeline.clarid.setup import Prepared, plan, prepare, resolved_config
from clarep_fast.pipeline.distributed import barrier, is_main_process, join_process_group
from clarep_fast.pipeline.rundir import RunDir
from clarep_fast.pipeline.runtime import Runtime
from clarep_fast.pipeline.teacher.ddim import ddim_invert, ddim_move, time_grid
from clarep_fast.pipeline.teacher.model import Teacher
from clarep_fast.ops.project_out import project_out
from clarep_fast.taps import FeatureTap

__all__ = ["SearchConfig", "run_search", "search_directions", "search_shard"]


def search_directions(
    features, start: Tensor, times: Tensor, labels: Tensor, config: SearchConfig, generator: torch.Generator
) -> TopK:
    """Step 2 over the shard in Jacobian batches of at most ``jacobian_batch`` images, merged into
    one TopK (the benchmarks call this too, so they time what the search runs). A batch that
    runs out of GPU memory is halved and retried from the same generator state. Under --mode auto
    the block Krylov steps a batch took are the cost model's expectation for the next batch of the
    shard (the first starts from KRYLOV_STEPS): the choice follows what this teacher and layer
    actually need, and stays a function of the shard alone (a resumed shard chooses alike)."""
    batch, first = config.jacobian_batch, 0
    expected_steps = KRYLOV_STEPS
    found_parts = []
    while first < len(start):
        part = slice(first, first + batch)
        state = generator.get_state()
        try:
            found = topk_right_singular(
                features,
                start[part],
                config.k,
                conditions=(times[part], labels[part]),
                oversample=config.oversample,
                max_iters=config.max_iters,
                tol=config.tol,
                mode=config.mode,
                generator=generator,
                expected_steps=expected_steps,
            )
        except torch.OutOfMemoryError:
            if batch == 1:
                raise MemoryError(
                    "one image's Jacobian products do not fit in GPU memory: lower --oversample or -k, or use --dtype bfloat16"
                ) from None
            generator.set_state(state)
            batch = max(1, batch // 2)
            torch.cuda.empty_cache()
            tqdm.write(f"CLARID: out of GPU memory; Jacobian batch lowered to {batch}")
            continue
        if bool((found.iterations > 0).all()):  # iterated (exact leaves 0): what the next batch may expect
            expected_steps = int(found.iterations.float().median().ceil())
        found_parts.append(found)
        first += batch
    return TopK(
        torch.cat([f.vectors for f in found_parts]),
        torch.cat([f.values for f in found_parts]),
        torch.cat([f.iterations for f in found_parts]),
        sum(f.calls for f in found_parts),
        sum(f.products for f in found_parts),
    )


def random_directions(count: int, latent_shape: tuple[int, ...], k: int, generator: torch.Generator) -> Tensor:
    """k random orthonormal directions per item (count, N, k): QR of a Gaussian matrix (Haar-distributed span)."""
    gaussian = torch.randn(count, math.prod(latent_shape), k, generator=generator, dtype=torch.float64)
    return torch.linalg.qr(gaussian).Q.float()


def cached_features(
    teacher: Teacher,
    feature_tap: FeatureTap,
    config: SearchConfig,
    latent: Tensor,
    clean: Tensor,
    noise: Tensor,
    labels: Tensor,
) -> dict[str, Tensor]:
    """Step 5 for one kind of sample: {layer: (n, C_l·s²)} float32."""
    if config.feature_from == "latent":
        inputs, t = latent, config.t_e
    else:
        alpha = teacher.schedule.alpha_bar(config.feature_time)
        inputs, t = alpha**0.5 * clean + (1 - alpha) ** 0.5 * noise, config.feature_time
    shown = torch.full_like(labels, teacher.null_label) if config.feature_label == "null" else labels
    times = torch.full_like(labels, t)
    with torch.no_grad():
        found = feature_tap(inputs.to(teacher.dtype), times, shown).features
    return {layer: found[layer].flatten(1).float() for layer in config.feature_layers}


def search_shard(
    teacher: Teacher,
    taps: tuple[FeatureTap, FeatureTap],
    config: SearchConfig,
    classes: Tensor,
    sources: Tensor,
    train,
    shard: int,
    labels_of_classes: Tensor | None = None,
    workers: int = 0,
) -> dict[str, Tensor]:
    """Steps 1–5 of the module docstring for one shard's items; the shard's tensors.
    ``labels_of_classes[c]``: the teacher label of data class c (None: the same number); source
    images are decoded in ``workers`` DataLoader workers."""
    device = teacher.device
    generator = torch.Generator().manual_seed(config.seed * 1_000_003 + shard)
    feature_generator = torch.Generator().manual_seed(config.seed * 1_000_003 + shard + 500_009)  # ε_f: its own stream
    steps_total = teacher.schedule.num_train_timesteps
    before, after = split_steps(config, steps_total)
    labels = (classes if labels_of_classes is None else labels_of_classes[classes]).to(device)
    count = len(labels)
    clip = not teacher.is_latent  # x̂_0 lies in [-1, 1] for pixels only
    if config.route == "generative":  # step 1
        noise = torch.randn(count, *teacher.latent_shape, generator=generator).to(device)
        start = ddim_move(
            teacher,
            noise,
            labels,
            time_grid(steps_total - 1, config.t_e, before, steps_total),
            config.guidance,
            clip=clip,
        )
    else:
        clean = teacher.encode((train.take(sources, workers) * 2 - 1).to(device))
        start = ddim_invert(teacher, clean, labels, end=config.t_e, steps=before)
    times = torch.full((count,), config.t_e, device=device, dtype=torch.long)
    search_tap, feature_tap = taps

    def features(z: Tensor, t: Tensor, c: Tensor) -> Tensor:
        return search_tap(z.to(teacher.dtype), t, c).packed.float()

    if config.directions == "random":  # step 2, the control
        vectors = random_directions(count, teacher.latent_shape, config.k, generator).to(device)
        values, iterations = torch.zeros(count, config.k), torch.zeros(count, dtype=torch.long)
    else:
        found = search_directions(features, start, times, labels, config, generator)  # step 2
        vectors, values, iterations = found.vectors, found.values, found.iterations
    latents = project_out(start, vectors, rescale=config.rescale)  # step 3
    grid = time_grid(config.t_e, -1, after, steps_total)
    canonical_clean = ddim_move(teacher, latents, labels, grid, config.guidance, clip=clip)  # step 4
    ordinary_clean = ddim_move(teacher, start, labels, grid, config.guidance, clip=clip)
    feature_noise = torch.randn(count, *teacher.latent_shape, generator=feature_generator).to(device)  # step 5
    canonical_features = cached_features(teacher, feature_tap, config, latents, canonical_clean, feature_noise, labels)
    ordinary_features = cached_features(teacher, feature_tap, config, start, ordinary_clean, feature_noise, labels)
    tensors = {
        "classes": classes, "latents": latents, "start_latents": start,
        "samples": (teacher.decode(canonical_clean) + 1) / 2, "ordinary_samples": (teacher.decode(ordinary_clean) + 1) / 2,
        "singular_values": values, "iterations": iterations,
    }  # fmt: skip
    for layer in config.feature_layers:
        tensors[f"features.{layer}"] = canonical_features[layer]
        tensors[f"ordinary_features.{layer}"] = ordinary_features[layer]
    return tensors


def run_search(
    config: SearchConfig, bank_dir: str | Path, *, runtime: Runtime = Runtime(), progress: bool = True
) -> Path:
    """Search (or resume) into ``bank_dir``; rank 0 then writes the figures and summary.json."""
    prepared = prepare(config, runtime)
    resolved = prepared.config
    if progress and is_main_process() and resolved != config:
        print(
            f"search: layer {resolved.layer}, feature layers {' '.join(resolved.feature_layers)} (auto, for this teacher)"
        )
    try:
        return _search_into(Path(bank_dir), prepared, progress, runtime.workers)
    finally:
        for tap in prepared.taps:  # the hooks leave the teacher with the search
            tap.close()


def _search_into(bank: Path, prepared: Prepared, progress: bool, workers: int) -> Path:
    """run_search's body, with the teacher, its two taps and the training split loaded (its images
    decoded in ``workers`` DataLoader workers)."""
    config, teacher, taps, train = prepared.config, prepared.teacher, prepared.taps, prepared.train
    rank, world = join_process_group()
    classes, sources = plan(config, train.labels)
    resolved = resolved_config(config, len(classes), teacher, prepared.resolution, train.classes, prepared.labels)
    labels_of_classes = torch.tensor(prepared.labels)
    RunDir(bank, command="search", may_change=MAY_CHANGE).claim(resolved, write=rank == 0)
    identity = bank_identity(resolved)
    barrier(world)

    shards = resolved["shards"]
    mine = [s for s in range(shards) if s % world == rank]
    todo = [s for s in mine if not shard_path(bank, s).exists()]
    for shard in sorted(set(mine) - set(todo)):  # a shard found on disk counts as done only once it checks out
        read_shard(bank, shard, identity)
    sizes = {s: len(classes[s * config.shard_size : (s + 1) * config.shard_size]) for s in mine}
    done = sum(sizes[s] for s in mine if s not in todo)
    bar = tqdm(
        total=sum(sizes.values()),
        initial=done,
        desc=f"CLARID rank {rank}" if world > 1 else "CLARID",
        unit="CLARep",
        disable=not progress,
        position=rank,
    )
    started = time.perf_counter()
    for shard in todo:
        part = slice(shard * config.shard_size, (shard + 1) * config.shard_size)
        tensors = search_shard(
            teacher, taps, config, classes[part], sources[part], train, shard, labels_of_classes, workers
        )
        tensors["index"] = torch.arange(shards * config.shard_size)[part][: sizes[shard]]
        write_shard(bank, shard, tensors, identity)
        bar.update(sizes[shard])
    bar.close()
    seconds = time.perf_counter() - started
    barrier(world)
    if rank == 0:
        from clarep_fast.pipeline.clarid.figures import write_bank_figures

        summary = write_bank_figures(bank)
        summary["search_seconds_rank0"] = round(seconds, 2)
        summary["clareps_computed_this_run_rank0"] = sum(sizes[s] for s in todo)
        RunDir(bank, command="search").write_json("summary.json", summary)
    barrier(world)
    return bank
