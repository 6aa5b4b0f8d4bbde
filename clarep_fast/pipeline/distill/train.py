"""CaDistill training (and the plain baseline) of a timm student on the full training set.

One step (docs/design.md), with a batch (x, y) of real training images and a batch (x~_0, c, F_T) from
the CLARep bank (canonical samples, their classes, the teacher's cached canonical features):
  loss = CE(student(x), y)
       + λ_align · L_align   mean over layer pairs of 1 - cos(P_l(s_l(x~_0)), F_T,l)       (fused feature_align)
       + λ_cano  · L_cano    CE over cos(P_L(s_L(x)), prototype_k) / τ, prototype_k the class-k mean of
                             the bank's last-pair teacher features: real images pulled to their class's
                             canonical prototype
       + λ_dist  · L_dist    mean over pairs of 1 - CKA(s_l(x~_0), F_T,l)                  (fused cka_pairs)
The teacher never runs: F_T comes from the bank. Real and canonical batches go through the student
in separate forwards, so the real batch's BatchNorm statistics are its own. The canonical forward
normalizes with its own batch statistics but does not write BatchNorm's running statistics
(momentum 0 for that forward): test time uses statistics of real images only, as the baseline's
(docs/pipeline.md has the measurement). With every λ = 0 the canonical forward is skipped and the
run is exactly the baseline (same data order, same seed). ``bank_samples = ordinary`` is the
control: the same loss on the bank's ordinary CFG samples and their features (no projection).
Under torchrun every rank takes its slice of each global batch and DDP averages the gradients.

The data order comes from a generator seeded by (seed, epoch); folder data streams through
DataLoader workers. Each epoch is scored on the validation split (never on test); the student kept
is the last epoch's (nothing is picked).

Run folder: config.json, metrics.csv / metrics.json (per epoch), checkpoint.pt (atomic, per epoch;
rerun the command to resume), student.pt (the final student: weights + what rebuilds it, the data
spec included, so `clarep-fast evaluate` finds its test split).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from clarep_fast.pipeline.clarid.bank import bank_identity, load_bank, read_bank_config
from clarep_fast.pipeline.data.source import DataConfig, load_splits, resolve
from clarep_fast.pipeline.distributed import barrier, join_process_group
from clarep_fast.pipeline.options import check_ranges, option
from clarep_fast.pipeline.files import load_checked, read_json, save_checked
from clarep_fast.pipeline.rundir import RunDir, as_json, is_runtime_setting
from clarep_fast.pipeline.runtime import Runtime
from clarep_fast.pipeline.distill.student import DistillModel, Student, accuracy, last_stages
from clarep_fast.ops.cka import cka_pairs
from clarep_fast.ops.feature_align import feature_align
from clarep_fast.finite import finite_check


@dataclass(frozen=True)
class DistillConfig:
    bank: str = option("runs/default-bank", "CLARep bank folder (clarep-fast search)")
    student: str = option("resnet18", "timm model name")
    student_layers: tuple[int, ...] | None = option(
        None,
        "timm forward_intermediates indices, paired in order with the teacher layers "
        "(default: the student's last L stages, L the number of teacher layers)",
    )
    teacher_layers: tuple[str, ...] | None = option(
        None, "the bank's feature layers to distill (default: all of them, in order)"
    )
    student_pool: int = option(1, "student features pooled to this size", low=1)
    epochs: int = option(8, "training epochs (the learning-rate schedule spans them)", low=1)
    batch_size: int = option(128, "real images per step", low=1)
    bank_batch_size: int = option(64, "CLAReps per step", low=1)
    learning_rate: float = option(0.05, "peak learning rate (SGD, one-cycle schedule)", low=0, low_open=True)
    weight_decay: float = option(5e-4, "SGD weight decay", low=0)
    lambda_align: float = option(1.0, "weight of L_align", low=0)
    lambda_cano: float = option(0.5, "weight of L_cano", low=0)
    lambda_dist: float = option(0.5, "weight of L_dist (1 - CKA)", low=0)
    temperature: float = option(0.1, "temperature of L_cano", low=0, low_open=True)
    baseline: bool = option(
        False, "cross-entropy only (same student, schedule and seed): every λ treated as 0, the bank never read"
    )
    bank_samples: str = option(
        "canonical",
        "distill the bank's canonical samples (CaDistill) or its ordinary CFG samples (the control)",
        choices=("canonical", "ordinary"),
    )
    canonical_bn: str = option(
        "frozen",
        "whether the canonical forward updates BatchNorm's running statistics (update: the earlier behaviour)",
        choices=("frozen", "update"),
    )
    seed: int = option(0, "seed of the initial weights and the data order")
    data: DataConfig = option(default_factory=DataConfig)

    def __post_init__(self):
        check_ranges(self)

    @property
    def lambdas(self) -> tuple[float, float, float]:
        return (0.0, 0.0, 0.0) if self.baseline else (self.lambda_align, self.lambda_cano, self.lambda_dist)


TERMS = ("ce", "align", "cano", "dist", "total")


class BankBatches:
    """The bank's canonical samples in [0, 1], classes, per-pair teacher features and class prototypes."""

    def __init__(self, config: DistillConfig, classes: list[str], resolution: int, device):
        bank = load_bank(config.bank)
        num_classes = len(classes)
        if bank.config.get("classes") not in (None, classes):
            raise ValueError(
                f"the bank {config.bank} was searched on classes {bank.config['classes'][:5]}... but the data has {classes[:5]}..."
            )
        layers = list(config.teacher_layers or bank.config["feature_layers"])
        missing = [layer for layer in layers if layer not in bank.features]
        if missing:
            raise ValueError(
                f"teacher layers {missing} are not in the bank {config.bank} (it has {list(bank.features)})"
            )
        if len(layers) != len(config.student_layers):
            raise ValueError(
                f"{len(config.student_layers)} student layers {list(config.student_layers)} but {len(layers)} teacher layers {layers}: they pair in order"
            )
        bank_classes = int(bank.classes.max()) + 1
        if bank_classes > num_classes:
            raise ValueError(
                f"the bank {config.bank} has class {bank_classes - 1} but the data has {num_classes} classes"
            )
        if bank.samples.shape[-1] != resolution:
            raise ValueError(
                f"the bank's canonical samples are {bank.samples.shape[-1]}×{bank.samples.shape[-1]} but the data is {resolution}×{resolution}"
            )
        if len(bank.classes) < config.bank_batch_size:
            raise ValueError(f"bank_batch_size {config.bank_batch_size} exceeds the bank's {len(bank.classes)} CLAReps")
        self.layers = layers
        # what search itself calls the bank: not its path, teacher path or workers
        self.identity = bank_identity(bank.config)
        samples, features = (
            (bank.samples, bank.features)
            if config.bank_samples == "canonical"
            else (bank.ordinary_samples, bank.ordinary_features)
        )
        self.images = samples.clamp(0, 1).to(device)
        self.classes = bank.classes.to(device)
        self.features = [features[layer].float().to(device) for layer in layers]
        last = self.features[-1]
        self.prototypes = torch.stack(
            [
                last[self.classes == k].mean(0) if (self.classes == k).any() else torch.zeros_like(last[0])
                for k in range(num_classes)
            ]
        )
        self.has_prototype = torch.stack([(self.classes == k).any() for k in range(num_classes)])

    def widths(self) -> list[int]:
        return [f.shape[1] for f in self.features]


@contextlib.contextmanager
def frozen_batchnorm_statistics(model: torch.nn.Module, frozen: bool = True):
    """Inside: BatchNorm layers still normalize with the batch's statistics (train mode) but leave
    their running mean, variance and batch count as they were (momentum 0, count restored)."""
    norms = (
        [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
        if frozen
        else []
    )
    saved = [(m.momentum, m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None) for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (momentum, count) in zip(norms, saved):
            m.momentum = momentum
            if count is not None:
                m.num_batches_tracked.copy_(count)


def _losses(
    model, images: Tensor, labels: Tensor, bank: BankBatches | None, bank_index: Tensor | None, config: DistillConfig
) -> dict[str, Tensor]:
    lambda_align, lambda_cano, lambda_dist = config.lambdas
    logits, _, projected = model(images)
    terms = {"ce": F.cross_entropy(logits, labels)}
    zero = terms["ce"].new_zeros(())
    terms.update(align=zero, cano=zero, dist=zero)
    if bank is not None:
        with frozen_batchnorm_statistics(model, config.canonical_bn == "frozen"):
            _, raw, projected_canonical = model(bank.images[bank_index])
        teachers = [f[bank_index] for f in bank.features]
        if lambda_align:
            terms["align"] = feature_align(projected_canonical, teachers, kind="cosine")
        if lambda_dist:
            terms["dist"] = (1 - cka_pairs(raw, teachers)).mean()
        if lambda_cano:
            similarity = F.normalize(projected[-1], dim=1) @ F.normalize(bank.prototypes, dim=1).T  # (B, K)
            similarity = similarity.masked_fill(~bank.has_prototype, -1.0)
            terms["cano"] = F.cross_entropy(similarity / config.temperature, labels)
    terms["total"] = (
        terms["ce"] + lambda_align * terms["align"] + lambda_cano * terms["cano"] + lambda_dist * terms["dist"]
    )
    return terms


def fitted(config: DistillConfig, train_images: int, world: int, uses_bank: bool, say) -> DistillConfig:
    """``config`` with the defaults that depend on the student, the bank and the data filled in, and
    each fill said in one line: the student's last L stages for --student-layers (L = the teacher
    layers distilled), and a batch larger than its data clipped to the data (a multiple of the ranks)."""
    bank = read_bank_config(Path(config.bank)) if uses_bank else {}
    if config.student_layers is None:
        count = len(config.teacher_layers or bank.get("feature_layers", ())) or 3  # a baseline: 3 stages
        config = dataclasses.replace(config, student_layers=last_stages(config.student, count))
        say(
            f"distill: student layers {' '.join(map(str, config.student_layers))} (the last {count} stages of {config.student})"
        )
    for name, size, what in (
        ("batch_size", train_images, "training images"),
        ("bank_batch_size", bank.get("count"), "CLAReps in the bank"),
    ):
        asked = getattr(config, name)
        if size is not None and asked > size and size // world * world >= world:
            clipped = size // world * world
            config = dataclasses.replace(config, **{name: clipped})
            say(f"distill: --{name.replace('_', '-')} {asked} is more than the {size} {what}; using {clipped}")
    return config


def train_student(
    config: DistillConfig, run_dir: str | Path, *, runtime: Runtime = Runtime(), progress: bool = True
) -> Path:
    """Train (or resume) in ``run_dir``; returns the path of student.pt."""
    rank, world = join_process_group()
    device = runtime.torch_device
    uses_bank = not config.baseline and any(config.lambdas)
    bank_resolution = read_bank_config(Path(config.bank)).get("resolution") if uses_bank else None
    resolution = resolve(config.data, bank_resolution, source=f"the bank {config.bank}")
    splits = load_splits(config.data, resolution)
    train, val = splits["train"], splits["val"]
    config = fitted(config, len(train), world, uses_bank, say=print if progress and rank == 0 else lambda text: None)
    if config.batch_size % world or config.bank_batch_size % world:
        raise ValueError(
            f"batch_size {config.batch_size} and bank_batch_size {config.bank_batch_size} must divide by the {world} ranks"
        )
    if len(train) < config.batch_size:
        raise ValueError(f"batch_size {config.batch_size} exceeds the {len(train)} training images")
    bank = BankBatches(config, train.classes, resolution, device) if uses_bank else None
    # the bank's path may change (bank_identity and its sizes are what it is); epochs may not: the one-cycle schedule spans them all
    run = RunDir(run_dir, command="distill", may_change=("bank",))
    steps_per_epoch = len(train) // config.batch_size
    parts = _build(config, len(train.classes), resolution, bank, steps_per_epoch, device)
    run.claim(_resolved(config, resolution, train.classes, bank), write=rank == 0)
    start = run.restore(
        {"model": parts.model, "optimizer": parts.optimizer, "schedule": parts.schedule}, counter="epoch"
    )
    history = (
        read_json(
            run / "metrics.json", "the per-epoch metrics", "delete it and rerun (training resumes from the checkpoint)"
        )[:start]
        if (run / "metrics.json").exists()
        else []
    )
    parts.model.train()
    for epoch in range(start, config.epochs):
        began = time.perf_counter()
        sums = _train_epoch(parts, config, epoch, train, bank, run, device, progress, runtime.workers)
        record = {"epoch": epoch + 1, **{name: sums[name] / steps_per_epoch for name in TERMS},
                  "train_accuracy": accuracy(parts.student, train.subset(torch.arange(min(1000, len(train)))), workers=runtime.workers),
                  "val_accuracy": accuracy(parts.student, val, workers=runtime.workers),
                  "seconds": time.perf_counter() - began}  # fmt: skip
        history.append(record)
        if rank == 0:
            _write_epoch(run, history, parts)
    if rank == 0:
        save_checked(
            run / "student.pt",
            "student",
            {
                "student": parts.student.state_dict(),
                "name": config.student,
                "layers": list(config.student_layers),
                "pool": config.student_pool,
                "num_classes": len(train.classes),
                "resolution": resolution,
                "classes": train.classes,
                "data": as_json(config.data),
            },
        )
    barrier(world)
    return run / "student.pt"


def _resolved(config: DistillConfig, resolution: int, classes: list[str], bank: BankBatches | None) -> dict:
    """What config.json records and a resume compares: the fitted config, the data it resolved to
    and, for a bank, its identity and sizes (a bank rebuilt in place with other features must not
    meet an old checkpoint)."""
    resolved = {**as_json(config), "resolution": resolution, "classes": classes}
    if bank is not None:
        resolved.update(bank_layers=bank.layers, bank_widths=bank.widths(), bank_count=len(bank.classes))
        # the bank's identity: its search settings and teacher fingerprint, as every shard carries it
        resolved["bank_identity"] = bank.identity
    return resolved


class _Parts(NamedTuple):
    student: Student
    model: DistillModel  # the student with its projectors
    wrapped: torch.nn.Module  # the model, under DDP with torchrun
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    steps_per_epoch: int


def _build(config: DistillConfig, num_classes: int, resolution: int, bank, steps_per_epoch: int, device) -> _Parts:
    """The student and its projectors from ``config.seed`` (the same initial weights for the baseline,
    the control and CaDistill), SGD and the one-cycle schedule over every epoch."""
    torch.manual_seed(config.seed)
    student = Student(config.student, num_classes, config.student_layers, config.student_pool).to(device)
    student_widths = student.feature_widths(resolution)
    if len(student_widths) != len(config.student_layers):
        raise ValueError(f"student layers {list(config.student_layers)} gave {len(student_widths)} features")
    teacher_widths = bank.widths() if bank is not None else [1] * len(student_widths)
    model = DistillModel(student, student_widths, teacher_widths).to(device)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=config.learning_rate, momentum=0.9, nesterov=True, weight_decay=config.weight_decay
    )
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.learning_rate, total_steps=config.epochs * steps_per_epoch, pct_start=0.15
    )
    wrapped = model
    if join_process_group()[1] > 1:
        # projectors without a loss term (the baseline, or a λ set to 0) get no gradient: tell DDP
        wrapped = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=not all(config.lambdas))
    return _Parts(student, model, wrapped, optimizer, schedule, steps_per_epoch)


def _train_epoch(
    parts: _Parts, config: DistillConfig, epoch: int, train, bank, run: RunDir, device, progress, workers: int
) -> dict:
    """One epoch of steps; the sum of each loss term over them. The real batches' order comes from
    (seed, epoch), the bank's from its own stream (so the baseline's order is the same); images are
    decoded in ``workers`` DataLoader workers."""
    rank, world = join_process_group()
    generator = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
    bank_generator = torch.Generator().manual_seed(config.seed * 1_000_033 + epoch + 7)
    order = torch.randperm(len(train), generator=generator)
    sums = dict.fromkeys(TERMS, 0.0)
    kind = "baseline" if config.baseline else "cadistill" if config.bank_samples == "canonical" else "ordinary control"
    bar = tqdm(
        range(parts.steps_per_epoch),
        desc=f"{kind} epoch {epoch + 1}/{config.epochs}",
        disable=not progress or rank != 0,
        mininterval=2,
    )
    steps = [
        order[step * config.batch_size : (step + 1) * config.batch_size][rank::world]
        for step in range(parts.steps_per_epoch)
    ]
    for step, (images, labels) in zip(bar, train.batches(steps, workers)):
        bank_index = None
        if bank is not None:
            bank_index = torch.randperm(len(bank.classes), generator=bank_generator)[: config.bank_batch_size]
            bank_index = bank_index[rank::world].to(device)
        global_step = epoch * parts.steps_per_epoch + step + 1
        try:
            # the loop reads the loss every step anyway: a synchronous NaN check costs nothing here,
            # while the asynchronous one (CUDA's default) would kill the CUDA context on a diverging
            # student before the clean stop below could save or say anything
            with finite_check("sync"):
                terms = _losses(parts.wrapped, images.to(device), labels.to(device), bank, bank_index, config)
        except ValueError as error:
            # The fused losses refuse NaN/Inf or overflowing features. Images and bank features are
            # finite (checked when written), and shapes are fixed from the first step on: after a
            # step on this run's own weights, such a refusal means the student diverged.
            if global_step > 1 or not all(bool(torch.isfinite(p).all()) for p in parts.model.parameters()):
                raise run.diverged(global_step, str(error)) from None
            raise
        values = {name: float(terms[name].detach()) for name in TERMS}
        run.check_loss(values["total"], global_step)
        parts.optimizer.zero_grad(set_to_none=True)
        terms["total"].backward()
        parts.optimizer.step()
        parts.schedule.step()
        for name in TERMS:
            sums[name] += values[name]
        bar.set_postfix(loss=f"{values['total']:.3f}", refresh=False)
    return sums


def _write_epoch(run: RunDir, history: list[dict], parts: _Parts) -> None:
    """metrics.json / metrics.csv so far and the checkpoint the next epoch resumes from."""
    run.write_json("metrics.json", history)
    columns = ("epoch",) + TERMS + ("train_accuracy", "val_accuracy", "seconds")
    lines = [",".join(columns)] + [
        ",".join(f"{r[key]:.6g}" if isinstance(r[key], float) else str(r[key]) for key in columns) for r in history
    ]
    run.write_text("metrics.csv", "\n".join(lines) + "\n")
    run.save_checkpoint(
        {
            "model": parts.model.state_dict(),
            "optimizer": parts.optimizer.state_dict(),
            "schedule": parts.schedule.state_dict(),
            "epoch": history[-1]["epoch"],
        }
    )


def load_student(path: str | Path, device: str = "cpu") -> Student:
    """A trained student from student.pt (eval mode; ``student.resolution`` is the image side it was trained at)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; train a student with `clarep-fast distill RUN_DIR`")
    state = load_checked(
        path,
        "student",
        remedy="retrain it with `clarep-fast distill` (its run folder resumes from the last checkpoint)",
    )
    student = Student(state["name"], state["num_classes"], state["layers"], state["pool"])
    student.load_state_dict(state["student"])
    student.resolution = int(state["resolution"])
    student.classes, student.data = (
        list(state["classes"]),
        DataConfig(**{k: v for k, v in state["data"].items() if not is_runtime_setting(k)}),
    )
    return student.to(device).eval()
