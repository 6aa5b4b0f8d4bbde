"""Training the class-conditional teacher (DDPM ε-prediction with CFG label dropout and EMA).

One step (Ho et al. 2020; Ho & Salimans 2022):
  1. draw a batch (x_0, c) of training images in [-1, 1]; replace c by the null label with
     probability label_dropout (this is what makes classifier-free guidance possible);
  2. t ~ U{0..T-1}, ε ~ N(0, I), x_t = sqrt(ā_t) x_0 + sqrt(1 - ā_t) ε;
  3. loss = ‖ε_θ(x_t, t, c) - ε‖², AdamW step; EMA of the weights (the EMA model is the teacher).
The learning rate is constant, then (with cooldown_steps > 0) falls linearly to 0 over the last
cooldown_steps steps, the cooldown of a warmup-stable-decay schedule (Hägele et al. 2024): a run
trained at a constant rate can be extended by a cooldown and end at a lower loss.
Batches and noise come from a generator seeded by (seed, step), so a resumed run continues exactly.

Run folder: config.json (resolved config), loss.csv (cut back to the checkpoint's step on resume),
checkpoint.pt (atomic, every checkpoint_every steps; resume reads it), samples_<step>.png (CFG samples of the EMA model), and
at the end teacher/ (the EMA model, diffusers save_pretrained with safetensors).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from dataclasses import dataclass
from pathlib import Path

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from clarep_fast.pipeline.data.source import DataConfig, load_splits, resolve
from clarep_fast.pipeline.teacher.ddim import ddim_sample
from clarep_fast.pipeline.teacher.schedule import NoiseSchedule
from clarep_fast.pipeline.files import atomic_write, write_text
from clarep_fast.pipeline.rundir import RunDir, as_json
from clarep_fast.pipeline.runtime import Runtime
from clarep_fast.pipeline.options import check_ranges, option
from clarep_fast.pipeline.teacher.model import TeacherConfig, build_teacher, noise_prediction


@dataclass(frozen=True)
class TrainTeacherConfig:
    steps: int = option(10000, "training steps in all (a rerun may raise or lower it)", low=1)
    batch_size: int = option(128, "images per step", low=1)
    learning_rate: float = option(2e-4, "AdamW learning rate", low=0, low_open=True)
    cooldown_steps: int = option(
        0, "the last steps, over which the learning rate falls linearly to 0 (0: constant throughout)", low=0
    )
    label_dropout: float = option(
        0.1, "probability of the null label (what makes CFG possible)", low=0, high=1, high_open=True
    )
    ema_decay: float = option(
        0.999, "decay of the weights' moving average (the EMA model is the teacher)", low=0, high=1, high_open=True
    )
    checkpoint_every: int = option(500, "steps between checkpoints", low=1)
    sample_every: int = option(1000, "steps between sample grids", low=1)
    sample_guidance: float = option(3.0, "CFG scale of the sample grids", low=0)
    seed: int = option(0, "seed of the initial weights, batches and noise")
    data: DataConfig = option(DataConfig())
    # one --resolution: the teacher's is the data's
    teacher: TeacherConfig = option(TeacherConfig(), shared=("resolution",))

    def __post_init__(self):
        check_ranges(self)
        if self.cooldown_steps > self.steps:
            raise ValueError(f"--cooldown-steps {self.cooldown_steps} is more than --steps {self.steps}")


def learning_rate_at(learning_rate: float, steps: int, cooldown_steps: int, step: int) -> float:
    """The rate of the update at ``step`` (0-based): constant, then linear to 0 over the last
    ``cooldown_steps`` (the last update gets learning_rate / cooldown_steps)."""
    if cooldown_steps == 0:
        return learning_rate
    return learning_rate * min(1.0, (steps - step) / cooldown_steps)


def _check_schedule(run: RunDir, config: TrainTeacherConfig) -> None:
    """A run may be extended, cut short or given a cooldown (``may_change``) only where the steps it
    has trained keep their learning rates: else the resumed run is no run of the new config."""
    old = run.existing_config()
    state = run.load_checkpoint() if old is not None else None
    if state is None:
        return
    # the schedule's shape (the rate itself may not change: claim refuses that by name)
    old_rate = functools.partial(learning_rate_at, 1.0, old["steps"], old.get("cooldown_steps", 0))
    new_rate = functools.partial(learning_rate_at, 1.0, config.steps, config.cooldown_steps)
    trained = int(state["step"])
    changed = next((step for step in range(trained) if old_rate(step) != new_rate(step)), None)
    if changed is not None:
        raise ValueError(
            f"{run.path} has trained {trained} steps, and --steps {config.steps} --cooldown-steps "
            f"{config.cooldown_steps} changes the learning rate of step {changed + 1} (the cooldown would begin "
            f"before the checkpoint); use a new folder, or a cooldown that begins at step {trained} or later"
        )


def _sample_grid(model, config: TrainTeacherConfig, path: Path) -> None:
    from torchvision.utils import save_image

    classes = min(config.teacher.num_classes, 16)  # one row per class, the first 16 classes
    generator = torch.Generator().manual_seed(1234)
    device = next(model.parameters()).device
    labels = torch.arange(classes).repeat_interleave(8).to(device)
    noise = torch.randn(len(labels), 3, config.teacher.resolution, config.teacher.resolution, generator=generator).to(
        device
    )
    images = ddim_sample(model, noise, labels, guidance=config.sample_guidance, steps=25)
    atomic_write(path, lambda temporary: save_image((images.clamp(-1, 1) + 1) / 2, temporary, nrow=8))


def _keep_logged_steps(log: Path, last: int) -> None:
    """Rewrite loss.csv with its header and the steps up to ``last`` (the checkpoint's): a killed run
    logged steps past its checkpoint, and a line it was writing may be cut short."""
    kept = ["step,loss"]
    if last > 0 and log.exists():
        for line in log.read_text().splitlines()[1:]:
            fields = line.split(",")
            if len(fields) == 2 and fields[0].isdigit() and int(fields[0]) <= last and fields[1]:
                kept.append(line)
    write_text(log, "\n".join(kept) + "\n")


def _step_generator(config: TrainTeacherConfig, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(config.seed * 1_000_003 + step)


def _step_indices(config: TrainTeacherConfig, start: int, count: int):
    """The training images of every step from ``start`` on: the first draw of the step's generator
    (computed ahead of the step, so DataLoader workers can decode while the model trains)."""
    for step in range(start, config.steps):
        yield torch.randint(0, count, (config.batch_size,), generator=_step_generator(config, step))


class _Parts(NamedTuple):
    model: nn.Module  # the network being trained
    ema: nn.Module  # its weights' moving average: the teacher that is saved
    optimizer: torch.optim.Optimizer
    alphas_cumprod: Tensor  # (T,) ā_t of the noise schedule, on the device


def _build(config: TrainTeacherConfig, device) -> _Parts:
    """The network from the config's seed, its EMA copy, AdamW and the schedule."""
    torch.manual_seed(config.seed)  # the initial weights
    model = build_teacher(config.teacher).to(device)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=0.0)
    return _Parts(model, ema, optimizer, NoiseSchedule.default().alphas_cumprod.float().to(device))


def _train_step(parts: _Parts, config: TrainTeacherConfig, step: int, x0: Tensor, c: Tensor, count: int) -> Tensor:
    """Steps 1-3 of the module docstring on one batch (x0 (B, 3, R, R) in [0, 1], c (B,)), drawn
    from the step's generator after the batch's own draw; returns the loss (before the update)."""
    device = parts.alphas_cumprod.device
    generator = _step_generator(config, step)
    torch.randint(0, count, (config.batch_size,), generator=generator)  # the batch's draw (_step_indices)
    x0, c = (x0 * 2 - 1).to(device), c.to(device)  # images in [-1, 1]
    drop = (torch.rand(config.batch_size, generator=generator) < config.label_dropout).to(device)
    c = torch.where(drop, torch.full_like(c, config.teacher.num_classes), c)  # step 1: the null label K
    t = torch.randint(0, len(parts.alphas_cumprod), (config.batch_size,), generator=generator).to(device)
    noise = torch.randn(x0.shape, generator=generator).to(device)
    alpha = parts.alphas_cumprod[t][:, None, None, None]
    x_t = alpha.sqrt() * x0 + (1 - alpha).sqrt() * noise  # step 2
    loss = F.mse_loss(noise_prediction(parts.model, x_t, t, c), noise)  # step 3
    return loss


def _update(parts: _Parts, loss: Tensor, ema_decay: float) -> None:
    """The AdamW step on ``loss`` (at the rate already set) and the EMA of the weights."""
    parts.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    parts.optimizer.step()
    with torch.no_grad():
        for average, current in zip(parts.ema.parameters(), parts.model.parameters()):
            average.lerp_(current, 1 - ema_decay)


def _write_step(run: RunDir, parts: _Parts, config: TrainTeacherConfig, done: int) -> None:
    """After step ``done``: the sample grid, then the checkpoint, when they are due (grid first: a
    kill between them redraws it)."""
    if done % config.sample_every == 0 or done == config.steps:
        _sample_grid(parts.ema, config, run / f"samples_{done:06d}.png")
    if done % config.checkpoint_every == 0 or done == config.steps:
        run.save_checkpoint(
            {
                "model": parts.model.state_dict(),
                "ema": parts.ema.state_dict(),
                "optimizer": parts.optimizer.state_dict(),
                "step": done,
            }
        )


def train_teacher(
    config: TrainTeacherConfig, run_dir: str | Path, *, runtime: Runtime = Runtime(), progress: bool = True
) -> Path:
    """Train (or resume) in ``run_dir``; returns the folder of the saved EMA teacher."""
    # a run may be extended or cut short (and, as every run, move to another device or worker count)
    run = RunDir(run_dir, command="train-teacher", may_change=("steps", "cooldown_steps"))
    resolution = resolve(config.data)
    train = load_splits(config.data, resolution)["train"]
    classes = len(train.classes)
    if config.teacher.num_classes not in (None, classes):
        raise ValueError(f"--num-classes {config.teacher.num_classes} but the data has {classes} classes")
    config = dataclasses.replace(
        config, teacher=dataclasses.replace(config.teacher, resolution=resolution, num_classes=classes)
    )
    parts = _build(config, runtime.torch_device)
    # after everything that can refuse the config: a refused start leaves no folder
    run.lock()
    _check_schedule(run, config)
    run.claim({**as_json(config), "classes": train.classes})
    start = run.restore({"model": parts.model, "ema": parts.ema, "optimizer": parts.optimizer}, counter="step")
    _keep_logged_steps(run / "loss.csv", start)  # steps after the checkpoint are trained (and logged) again
    bar = tqdm(
        range(start, config.steps),
        initial=start,
        total=config.steps,
        desc="teacher",
        disable=not progress,
        mininterval=5,
    )
    parts.model.train()
    batches = train.batches(_step_indices(config, start, len(train)), runtime.workers)
    # line-buffered: `tail -f` shows progress, a kill keeps every finished line
    with open(run / "loss.csv", "a", buffering=1) as loss_log:
        for step, (x0, c) in zip(bar, batches):
            loss = _train_step(parts, config, step, x0, c, len(train))
            value = loss.item()
            run.check_loss(value, step + 1)
            for group in parts.optimizer.param_groups:
                group["lr"] = learning_rate_at(config.learning_rate, config.steps, config.cooldown_steps, step)
            _update(parts, loss, config.ema_decay)
            loss_log.write(f"{step + 1},{value:.6f}\n")
            bar.set_postfix(loss=f"{value:.4f}", refresh=False)
            _write_step(run, parts, config, step + 1)
    teacher_dir = run / "teacher"
    parts.ema.save_pretrained(teacher_dir, safe_serialization=True)
    return teacher_dir


def export_checkpoint(run_dir: str | Path, out_dir: str | Path) -> tuple[Path, int]:
    """The EMA teacher of a train-teacher run's last checkpoint, saved as train-teacher saves its
    final one (``out_dir``, safetensors); returns (out_dir, the checkpoint's step). Reads the run
    folder only, so a run still training can be judged at its checkpoints."""
    run = RunDir(run_dir, command="train-teacher")
    config = run.existing_config()
    if config is None or config.get("command") != "train-teacher":
        raise ValueError(f"{run_dir} is not a train-teacher run folder (no train-teacher config.json)")
    state = run.load_checkpoint()
    if state is None:
        raise ValueError(f"{run_dir} has no checkpoint yet ({RunDir.CHECKPOINT})")
    teacher = dict(config["teacher"], channels=tuple(config["teacher"]["channels"]))
    model = build_teacher(TeacherConfig(**teacher))
    model.load_state_dict(state["ema"])
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir, safe_serialization=True)
    return out_dir, int(state["step"])
