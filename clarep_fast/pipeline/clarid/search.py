"""CLARep search (CLARID) over a dataset's classes, written as a bank (clarep_fast/pipeline/clarid/bank.py).

For every planned item (a class c, and for the inversion route a real training image):
  1. x_{t_e}: DDIM with CFG from noise at T down to t_e (generative route), or DDIM inversion of the
     image up to t_e (inversion route);
  2. V_k, σ_k: top-k right singular pairs of J = d f_l(x_{t_e}, t_e, c)/d x_{t_e}, f_l the teacher's
     feature at ``layer`` pooled to pool×pool (randomized subspace iteration, clarid/jacobian.py;
     the tap stops after ``layer``);
  3. the CLARep x~ = (I - V_k V_kᵀ) x_{t_e}, rescaled to the old norm if ``rescale`` (fused project_out);
  4. its canonical sample: DDIM with CFG from x~ at t_e to 0; the ordinary sample from x_{t_e} alike;
  5. canonical features: the teacher's features at ``feature_layers`` of (x~, t_e, c), computed once.
The plan (which classes, which images, which noise) depends only on the config, and each shard's
randomness only on (seed, shard number): a resumed run, or one split over torchrun ranks (shard s
goes to rank s mod world size), writes the same bank as one uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm import tqdm

from clarep_fast.pipeline.clarid.bank import read_shard, shard_path, write_shard
from clarep_fast.pipeline.clarid.jacobian import MODES, topk_right_singular
from clarep_fast.pipeline.data.default import DataConfig, default_splits
from clarep_fast.pipeline.distributed import barrier, default_device, rank_and_world
from clarep_fast.pipeline.files import FORMAT_VERSION
from clarep_fast.pipeline.options import check_ranges, option
from clarep_fast.pipeline.rundir import RunDir, as_json
from clarep_fast.pipeline.teacher.ddim import NUM_TRAIN_TIMESTEPS, ddim_invert, ddim_move, time_grid
from clarep_fast.pipeline.teacher.model import DEFAULT_TEACHER, load_teacher, num_classes_of
from clarep_fast.ops.project_out import project_out
from clarep_fast.taps import FeatureTap

ROUTES = ("generative", "inversion")


@dataclass(frozen=True)
class SearchConfig:
    teacher: str = option("default", "'default' (the embedded teacher) or a diffusers model folder")
    route: str = option("generative", "where x_{t_e} comes from: CFG sampling from noise, or DDIM inversion of real images", choices=ROUTES)
    t_e: int = option(600, "time of the projection, in [1, 998]", flag="--t-e")
    k: int = option(96, "directions projected out (docs/runs/clarid/sweep.md: the background spread falls with k, digits stay)", flag="-k", low=1)
    layer: str = option("mid_block", "teacher feature whose Jacobian is searched")
    pool: int = option(2, "that feature pooled to pool×pool", low=1)
    guidance: float = option(3.0, "CFG scale of every DDIM move", low=0)
    rescale: bool = option(True, "restore x_{t_e}'s norm after the projection")
    steps: int = option(30, "DDIM steps of a full T -> 0 trajectory, split at t_e", low=2)
    count: int | None = option(None, "CLAReps in all (default: --fraction of the training set)", low=1)
    fraction: float = option(0.1, "CLAReps per class as a share of its training images", low=0, high=1, low_open=True)
    feature_layers: tuple[str, ...] = option(("down_blocks.1", "down_blocks.2", "mid_block"), "layers of the cached canonical features")
    feature_pool: int = option(2, "cached features pooled to feature_pool×feature_pool", low=1)
    mode: str = option("auto", "top-k method (auto: exact for narrow features; vjp: VJP-only)", choices=MODES)
    oversample: int = option(20, "extra probe vectors of the subspace iteration", low=0)
    tol: float = option(3e-3, "stop when successive top-k subspaces are this close (radians)", low=0, low_open=True)
    max_iters: int = option(50, "subspace iterations at most", low=1)
    shard_size: int = option(40, "CLAReps per bank shard (the unit of resume and of torchrun's split)", low=1)
    jacobian_batch: int = option(20, "images per batched Jacobian call", low=1)
    seed: int = option(0, "seed of the plan and of every shard's noise")
    data: DataConfig = option(default_factory=DataConfig)

    def __post_init__(self):
        check_ranges(self)


def split_steps(config: SearchConfig) -> tuple[int, int]:
    """DDIM steps before t_e (T -> t_e) and after it (t_e -> 0), proportional to the time covered."""
    before = max(1, round(config.steps * (NUM_TRAIN_TIMESTEPS - 1 - config.t_e) / NUM_TRAIN_TIMESTEPS))
    return before, max(1, config.steps - before)


def plan(config: SearchConfig, train_labels: Tensor) -> tuple[Tensor, Tensor]:
    """(classes (M,), source image index (M,), -1 for the generative route) of every CLARep, shuffled.

    Per class: `fraction` of its training images (or `count` split in proportion to class sizes).
    """
    num_classes = int(train_labels.max()) + 1
    sizes = torch.bincount(train_labels, minlength=num_classes).double()
    wanted = sizes * config.fraction if config.count is None else sizes * config.count / sizes.sum()
    per_class = wanted.floor().long()
    shortfall = int(round(float(wanted.sum()))) - int(per_class.sum())
    per_class[(wanted - per_class).argsort(descending=True)[:shortfall]] += 1  # largest remainders
    generator = torch.Generator().manual_seed(config.seed)
    classes, sources = [], []
    for label in range(num_classes):
        members = (train_labels == label).nonzero().flatten()
        chosen = members[torch.randperm(len(members), generator=generator)[: per_class[label]]]
        classes.append(torch.full((int(per_class[label]),), label))
        sources.append(chosen if config.route == "inversion" else torch.full_like(chosen, -1))
    order = torch.randperm(int(per_class.sum()), generator=generator)
    return torch.cat(classes)[order], torch.cat(sources)[order]


def load_search_teacher(config: SearchConfig) -> tuple[nn.Module, Path]:
    path = DEFAULT_TEACHER if config.teacher == "default" else Path(config.teacher)
    return load_teacher(path, resolution=config.data.resolution), path


def teacher_fingerprint(path: Path) -> str:
    """sha256 over the teacher's config.json and weight files: a copy with another activation or
    other weights is another teacher, and a bank never mixes shards of two."""
    digest = hashlib.sha256()
    for file in sorted([path / "config.json", *path.glob("*.safetensors"), *path.glob("*.bin")]):
        if file.exists():
            digest.update(file.name.encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()


def validate(config: SearchConfig, teacher: nn.Module) -> tuple[FeatureTap, FeatureTap]:
    """Clear errors for hyper-parameters the teacher or the schedule cannot take; the two taps
    (search layer, cached feature layers), built once per run: a tap on a nested module registers
    a forward hook, so building one per shard would pile hooks up."""
    if config.route not in ROUTES:
        raise ValueError(f"route must be one of {ROUTES}, got {config.route!r}")
    if not 1 <= config.t_e <= NUM_TRAIN_TIMESTEPS - 2:
        raise ValueError(f"t_e must be inside the schedule, in [1, {NUM_TRAIN_TIMESTEPS - 2}], got {config.t_e}")
    channels, size = teacher.config.in_channels, teacher.config.sample_size
    latent = channels * size * size
    if not 1 <= config.k < latent:
        raise ValueError(f"k must be in [1, {latent}) (the latent has {channels}×{size}×{size} = {latent} entries), got {config.k}")
    if config.mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {config.mode!r}")
    if config.steps < 2:
        raise ValueError(f"steps must be >= 2 (some before t_e, some after), got {config.steps}")
    if config.count is not None and config.count < 1:
        raise ValueError(f"count must be >= 1, got {config.count}")
    if not 0 < config.fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {config.fraction}")
    if config.shard_size < 1 or config.jacobian_batch < 1:
        raise ValueError("shard_size and jacobian_batch must be >= 1")
    taps = []
    # the search tap runs under torch.func.jvp: it pools with the reference (custom ops have no forward-mode AD)
    for name, layers, pool, fused in (("layer", [config.layer], config.pool, False), ("feature_layers", list(config.feature_layers), config.feature_pool, True)):
        try:
            taps.append(FeatureTap(teacher, layers, pool=pool, fused=fused))
        except ValueError as error:
            raise ValueError(f"{name}: {error}") from None
    device = next(teacher.parameters()).device
    probe = (torch.zeros(1, channels, size, size, device=device), torch.tensor([config.t_e], device=device), torch.zeros(1, dtype=torch.long, device=device))
    for name, tap in zip(("pool", "feature_pool"), taps):  # one tiny forward: a pool size the maps cannot take fails here, before any file
        try:
            with torch.no_grad():
                tap(*probe)
        except ValueError as error:
            raise ValueError(f"{name}: {error}") from None
    return taps[0], taps[1]


def resolved_config(config: SearchConfig, count: int, teacher_path: Path) -> dict:
    before, after = split_steps(config)
    resolved = dataclasses.asdict(config)
    resolved.update(count=count, shards=math.ceil(count / config.shard_size), steps_before=before, steps_after=after,
                    teacher_path="embedded" if config.teacher == "default" else str(teacher_path),
                    teacher_sha256=teacher_fingerprint(teacher_path), bank_format=FORMAT_VERSION)  # fmt: skip
    return as_json(resolved)


def search_shard(
    teacher: nn.Module, taps: tuple[FeatureTap, FeatureTap], config: SearchConfig, classes: Tensor, sources: Tensor, images: Tensor, shard: int
) -> dict[str, Tensor]:
    """Steps 1–5 of the module docstring for one shard's items; the shard's tensors."""
    device = next(teacher.parameters()).device
    generator = torch.Generator().manual_seed(config.seed * 1_000_003 + shard)
    before, after = split_steps(config)
    labels = classes.to(device)
    count = len(labels)
    if config.route == "generative":  # step 1
        noise = torch.randn(count, *images.shape[1:], generator=generator).to(device)
        start = ddim_move(teacher, noise, labels, time_grid(NUM_TRAIN_TIMESTEPS - 1, config.t_e, before), config.guidance, clip=True)
    else:
        start = ddim_invert(teacher, (images[sources] * 2 - 1).to(device), labels, end=config.t_e, steps=before)
    times = torch.full((count,), config.t_e, device=device, dtype=torch.long)
    search_tap, feature_tap = taps

    def features(z: Tensor, t: Tensor, c: Tensor) -> Tensor:
        return search_tap(z, t, c).packed

    vectors, values, iterations = [], [], []
    for first in range(0, count, config.jacobian_batch):  # step 2
        part = slice(first, first + config.jacobian_batch)
        found = topk_right_singular(
            features, start[part], config.k, conditions=(times[part], labels[part]), oversample=config.oversample,
            max_iters=config.max_iters, tol=config.tol, mode=config.mode, generator=generator,
        )  # fmt: skip
        vectors.append(found.vectors)
        values.append(found.values)
        iterations.append(found.iterations)
    latents = project_out(start, torch.cat(vectors), rescale=config.rescale)  # step 3
    grid = time_grid(config.t_e, -1, after)
    samples = ddim_move(teacher, latents, labels, grid, config.guidance, clip=True)  # step 4
    ordinary = ddim_move(teacher, start, labels, grid, config.guidance, clip=True)
    with torch.no_grad():  # step 5
        canonical_features = feature_tap(latents, times, labels).features
        ordinary_features = feature_tap(start, times, labels).features
    tensors = {
        "classes": classes, "latents": latents, "start_latents": start, "samples": samples, "ordinary_samples": ordinary,
        "singular_values": torch.cat(values), "iterations": torch.cat(iterations),
    }  # fmt: skip
    for layer in config.feature_layers:
        tensors[f"features.{layer}"] = canonical_features[layer].flatten(1)
        tensors[f"ordinary_features.{layer}"] = ordinary_features[layer].flatten(1)
    return tensors


def run_search(config: SearchConfig, bank_dir: str | Path, *, device: str | None = None, progress: bool = True) -> Path:
    """Search (or resume) into ``bank_dir``; rank 0 then writes the figures and summary.json."""
    bank = Path(bank_dir)
    rank, world = rank_and_world()
    if device is None:
        device = default_device()
    teacher, teacher_path = load_search_teacher(config)
    teacher = teacher.to(device).requires_grad_(False)
    taps = validate(config, teacher)
    train = default_splits(config.data)["train"]
    if num_classes_of(teacher) != int(train.labels.max()) + 1:
        raise ValueError(f"teacher {teacher_path} knows {num_classes_of(teacher)} classes but the data has {int(train.labels.max()) + 1}")
    classes, sources = plan(config, train.labels)
    resolved = resolved_config(config, len(classes), teacher_path)
    RunDir(bank, command="search").claim(resolved, write=rank == 0)
    barrier(world)

    shards = resolved["shards"]
    mine = [s for s in range(shards) if s % world == rank]
    todo = [s for s in mine if not shard_path(bank, s).exists()]
    for shard in sorted(set(mine) - set(todo)):  # a shard found on disk counts as done only once it checks out
        read_shard(bank, shard)
    sizes = {s: len(classes[s * config.shard_size : (s + 1) * config.shard_size]) for s in mine}
    done = sum(sizes[s] for s in mine if s not in todo)
    bar = tqdm(total=sum(sizes.values()), initial=done, desc=f"CLARID rank {rank}" if world > 1 else "CLARID", unit="CLARep", disable=not progress, position=rank)
    started = time.perf_counter()
    for shard in todo:
        part = slice(shard * config.shard_size, (shard + 1) * config.shard_size)
        tensors = search_shard(teacher, taps, config, classes[part], sources[part], train.images, shard)
        tensors["index"] = torch.arange(shards * config.shard_size)[part][: sizes[shard]]
        write_shard(bank, shard, tensors)
        bar.update(sizes[shard])
    bar.close()
    seconds = time.perf_counter() - started
    barrier(world)
    if rank == 0:
        from clarep_fast.pipeline.clarid.figures import write_bank_figures

        summary = write_bank_figures(bank)
        summary["search_seconds_rank0"] = round(seconds, 2)
        summary["clareps_computed_rank0"] = sum(sizes[s] for s in todo)
        RunDir(bank, command="search").write_json("summary.json", summary)
    barrier(world)
    return bank
