"""What a CLARep search settles before its first shard: the teacher's layers for 'auto', the two
feature taps (built once, checked on one tiny forward), the plan of every CLARep, the training
split, and the resolved config that is the bank's identity. search.py runs the shards."""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import torch
from torch import Tensor, nn

from clarep_fast.pipeline.clarid.config import DTYPES, SearchConfig, split_steps
from clarep_fast.pipeline.data.images import ImageSet
from clarep_fast.pipeline.data.source import dataset_classes, load_splits, resolve
from clarep_fast.pipeline.files import FORMAT_VERSION
from clarep_fast.pipeline.rundir import as_json
from clarep_fast.pipeline.runtime import Runtime
from clarep_fast.pipeline.teacher.classes import read_class_map, teacher_labels
from clarep_fast.pipeline.teacher.load import check_fits, load_teacher, teacher_fingerprint
from clarep_fast.pipeline.teacher.model import NO_NULL_LABEL, Teacher
from clarep_fast.taps import FeatureTap


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


def build_taps(config: SearchConfig, teacher: Teacher) -> tuple[FeatureTap, FeatureTap]:
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
    taps = build_taps(config, teacher)
    train = load_splits(config.data, resolution)["train"]
    return Prepared(config, teacher, taps, train, resolution, labels)
