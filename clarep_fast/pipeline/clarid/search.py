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

import dataclasses
import math
import time
from typing import NamedTuple
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm import tqdm

from clarep_fast.pipeline.clarid.bank import MAY_CHANGE, bank_identity, read_shard, shard_path, write_shard
from clarep_fast.pipeline.clarid.jacobian import KRYLOV_STEPS, MODES, topk_right_singular
from clarep_fast.pipeline.data.images import ImageSet
from clarep_fast.pipeline.data.source import DataConfig, dataset_classes, load_splits, resolve
from clarep_fast.pipeline.distributed import barrier, is_main_process, join_process_group
from clarep_fast.pipeline.files import FORMAT_VERSION
from clarep_fast.pipeline.options import check_ranges, option
from clarep_fast.pipeline.rundir import RunDir, as_json
from clarep_fast.pipeline.runtime import Runtime
from clarep_fast.pipeline.teacher.ddim import ddim_invert, ddim_move, time_grid
from clarep_fast.pipeline.teacher.classes import read_class_map, teacher_labels
from clarep_fast.pipeline.teacher.load import check_fits, load_teacher, teacher_fingerprint
from clarep_fast.pipeline.teacher.model import NO_NULL_LABEL, Teacher
from clarep_fast.ops.project_out import project_out
from clarep_fast.taps import FeatureTap

ROUTES = ("generative", "inversion")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class SearchConfig:
    teacher: str = option(
        "default", "'default' (the embedded teacher), a diffusers model folder or a pipeline folder (model_index.json)"
    )
    route: str = option(
        "generative",
        "where x_{t_e} comes from: CFG sampling from noise, or DDIM inversion of real images",
        choices=ROUTES,
    )
    t_e: int = option(600, "time of the projection, in [1, T-2] of the teacher's schedule", flag="--t-e")
    k: int = option(
        96,
        "directions projected out (docs/runs/clarid/sweep.md: the background spread falls with k, digits stay)",
        flag="-k",
        low=1,
    )
    layer: str = option(
        "auto",
        "teacher feature whose Jacobian is searched (auto: a UNet's mid_block, a DiT's middle transformer block)",
    )
    pool: int = option(2, "that feature pooled to pool×pool", low=1)
    guidance: float = option(3.0, "CFG scale of every DDIM move", low=0)
    rescale: bool = option(True, "restore x_{t_e}'s norm after the projection")
    steps: int = option(30, "DDIM steps of a full T -> 0 trajectory, split at t_e", low=2)
    count: int | None = option(None, "CLAReps in all (default: --fraction of the training set)", low=1)
    fraction: float = option(0.1, "CLAReps per class as a share of its training images", low=0, high=1, low_open=True)
    feature_layers: tuple[str, ...] = option(
        ("auto",),
        "layers of the cached canonical features (auto: a UNet's two deepest down blocks and mid_block, "
        "a DiT's blocks at 1/4, 1/2 and 3/4 of its depth)",
    )
    feature_pool: int = option(2, "cached features pooled to feature_pool×feature_pool", low=1)
    feature_from: str = option(
        "sample",
        "cached features of the samples re-noised to --feature-time (sample), or of the projected latent at t_e (latent: the earlier form)",
        choices=("sample", "latent"),
    )
    feature_time: int = option(
        200,
        "t_f, the time the samples are re-noised to for their features (chosen on the validation split: docs/runs/clarid/feature_time.md)",
        low=0,
    )
    feature_label: str = option(
        "null",
        "label the feature taps see: null (content only) or true (the class label: features largely read the label)",
        choices=("null", "true"),
    )
    directions: str = option(
        "top",
        "directions projected out: the Jacobian's top-k (CLARID), or k random orthonormal ones (the control)",
        choices=("top", "random"),
    )
    mode: str = option(
        "auto",
        "top-k method (auto: exact or block Krylov, whichever needs fewer Jacobian products; jvp/vjp: subspace "
        "iteration, vjp for models without forward-mode derivatives)",
        choices=MODES,
    )
    oversample: int = option(20, "extra probe vectors of the subspace iteration", low=0)
    tol: float | None = option(
        None,
        "stop when successive top-k subspaces are this close (radians; default: 1e-2 for block Krylov, 3e-3 for "
        "subspace iteration, benchmarks/results/clarid/topk-down_blocks.1-p4-k96.md)",
        low=0,
        low_open=True,
    )
    max_iters: int = option(50, "subspace iterations at most", low=1)
    shard_size: int = option(40, "CLAReps per bank shard (the unit of resume and of torchrun's split)", low=1)
    jacobian_batch: int = option(20, "images per batched Jacobian call (halved on a GPU out-of-memory error)", low=1)
    dtype: str = option(
        "float32", "the teacher network's precision (bfloat16/float16: for GPUs)", choices=tuple(DTYPES)
    )
    seed: int = option(0, "seed of the plan and of every shard's noise")
    class_map: str | None = option(
        None,
        "file mapping the data's class names to the teacher's (lines 'DATA_CLASS TEACHER_CLASS' as ImageNet's "
        "LOC_synset_mapping.txt, or JSON; default: by id2label name, or by count for a teacher without names)",
    )
    data: DataConfig = option(default_factory=DataConfig)

    def __post_init__(self):
        check_ranges(self)


def split_steps(config: SearchConfig, num_train_timesteps: int) -> tuple[int, int]:
    """DDIM steps before t_e (T -> t_e) and after it (t_e -> 0), proportional to the time covered."""
    before = max(1, round(config.steps * (num_train_timesteps - 1 - config.t_e) / num_train_timesteps))
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


def validate(config: SearchConfig, teacher: Teacher) -> tuple[FeatureTap, FeatureTap]:
    """Clear errors for hyper-parameters the teacher or the schedule cannot take; the two taps
    (search layer, cached feature layers), built once per run: a tap on a nested module registers
    a forward hook, so building one per shard would pile hooks up."""
    last = teacher.schedule.num_train_timesteps - 1
    if not 1 <= config.t_e <= last - 1:
        raise ValueError(f"t_e must be inside the teacher's schedule, in [1, {last - 1}], got {config.t_e}")
    if config.feature_time > last:
        raise ValueError(
            f"feature_time must be inside the teacher's schedule, in [0, {last}], got {config.feature_time}"
        )
    channels, size, _ = teacher.latent_shape
    latent = channels * size * size
    if not 1 <= config.k < latent:
        what = "VAE latent" if teacher.is_latent else "latent"
        raise ValueError(
            f"k must be in [1, {latent}) (the {what} has {channels}×{size}×{size} = {latent} entries), got {config.k}"
        )
    if teacher.null_label is None:  # a teacher trained without a CFG row
        if config.guidance != 1.0:
            raise ValueError(f"guidance {config.guidance}: {NO_NULL_LABEL}; pass --guidance 1")
        if config.feature_label == "null":
            raise ValueError(f"feature_label null: {NO_NULL_LABEL}; pass --feature-label true")
    device = teacher.device
    probe = (
        torch.zeros(1, channels, size, size, device=device, dtype=teacher.dtype),
        torch.tensor([config.t_e], device=device),
        torch.zeros(1, dtype=torch.long, device=device),
    )
    taps = []
    try:
        # the search tap runs under torch.func.jvp: it pools with the reference (custom ops have no forward-mode AD)
        for name, pool_name, layers, pool, fused in (
            ("layer", "pool", [config.layer], config.pool, False),
            ("feature_layers", "feature_pool", list(config.feature_layers), config.feature_pool, True),
        ):
            try:
                taps.append(FeatureTap(teacher.denoiser, layers, pool=pool, fused=fused))
            except ValueError as error:
                raise ValueError(f"{name}: {error}") from None
            try:  # one tiny forward: a pool size the maps cannot take fails here, before any file
                with torch.no_grad():
                    taps[-1](*probe)
            except ValueError as error:
                raise ValueError(f"{pool_name}: {error}") from None
    except BaseException:
        for tap in taps:  # a refused setting leaves no hook on the teacher
            tap.close()
        raise
    return taps[0], taps[1]


def resolved_config(
    config: SearchConfig, count: int, teacher: Teacher, resolution: int, classes: list[str], labels: list[int]
) -> dict:
    before, after = split_steps(config, teacher.schedule.num_train_timesteps)
    resolved = dataclasses.asdict(config)
    if labels != list(range(len(classes))):  # written only when it is not the identity: older banks keep theirs
        resolved["teacher_labels"] = labels
    resolved.update(
        count=count,
        shards=math.ceil(count / config.shard_size),
        steps_before=before,
        steps_after=after,
        resolution=resolution,
        classes=classes,
        latent_shape=list(teacher.latent_shape),
        latent_teacher=teacher.is_latent,
        schedule=teacher.schedule.describe(),
        teacher_sha256=teacher_fingerprint(config.teacher),
        bank_format=FORMAT_VERSION,
    )
    return as_json(resolved)


def search_directions(
    features, start: Tensor, times: Tensor, labels: Tensor, config: SearchConfig, generator: torch.Generator
):
    """Step 2 over the shard in Jacobian batches of at most ``jacobian_batch`` images. A batch that
    runs out of GPU memory is halved and retried from the same generator state. Under --mode auto
    the block Krylov steps a batch took are the cost model's expectation for the next batch of the
    shard (the first starts from KRYLOV_STEPS): the choice follows what this teacher and layer
    actually need, and stays a function of the shard alone (a resumed shard chooses alike)."""
    batch, first = config.jacobian_batch, 0
    expected_steps = KRYLOV_STEPS
    vectors, values, iterations = [], [], []
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
        vectors.append(found.vectors)
        values.append(found.values)
        iterations.append(found.iterations)
        first += batch
    return torch.cat(vectors), torch.cat(values), torch.cat(iterations)


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
        vectors, values, iterations = search_directions(features, start, times, labels, config, generator)  # step 2
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


def auto_layers(denoiser: nn.Module) -> tuple[str, tuple[str, ...]]:
    """(search layer, feature layers) for --layer auto / --feature-layers auto. UNet2DModel: mid_block,
    and the two deepest down blocks with mid_block (the embedded teacher's choice, docs/runs/clarid);
    DiTTransformer2DModel with N blocks: block N/2, and blocks N/4, N/2, 3N/4 (the middle of the
    depth holds the most semantic features of a DiT, as the middle of a UNet does)."""
    if type(denoiser).__name__ == "DiTTransformer2DModel":
        blocks = len(denoiser.transformer_blocks)
        spread = sorted({blocks // 4, blocks // 2, min(blocks - 1, 3 * blocks // 4)})
        return f"transformer_blocks.{blocks // 2}", tuple(f"transformer_blocks.{i}" for i in spread)
    downs = len(denoiser.down_blocks)
    return "mid_block", tuple(f"down_blocks.{i}" for i in range(max(0, downs - 2), downs)) + ("mid_block",)


def with_layers(config: SearchConfig, teacher: Teacher) -> SearchConfig:
    """``config`` with 'auto' layers replaced by the teacher's (auto_layers): the bank records names."""
    layer, feature_layers = auto_layers(teacher.denoiser)
    if config.layer == "auto":
        config = dataclasses.replace(config, layer=layer)
    if "auto" in config.feature_layers:
        if len(config.feature_layers) != 1:
            raise ValueError(f"feature_layers: 'auto' stands alone, got {list(config.feature_layers)}")
        config = dataclasses.replace(config, feature_layers=feature_layers)
    return config


class Prepared(NamedTuple):
    config: SearchConfig  # 'auto' layers resolved
    teacher: Teacher
    taps: tuple[FeatureTap, FeatureTap]
    train: ImageSet  # the training split
    resolution: int
    labels: list[int]  # the teacher label of each data class (teacher/classes.py)


def prepare(config: SearchConfig, runtime: Runtime = Runtime()) -> Prepared:
    """The config with the teacher's layers for 'auto', the teacher on the runtime's device in
    --dtype, its taps, the training split, the image side and the teacher label of each class, all
    checked against each other before any file is written."""
    teacher = load_teacher(config.teacher).to(device=runtime.torch_device, dtype=DTYPES[config.dtype])
    teacher.requires_grad_(False)
    config = with_layers(config, teacher)
    resolution = resolve(config.data, teacher.resolution)
    class_map = read_class_map(config.class_map) if config.class_map else None
    labels = teacher_labels(dataset_classes(config.data), teacher.class_names, teacher.num_classes, class_map)
    check_fits(teacher, resolution=resolution, where=f"teacher {config.teacher}")
    taps = validate(config, teacher)
    train = load_splits(config.data, resolution)["train"]
    return Prepared(config, teacher, taps, train, resolution, labels)


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
