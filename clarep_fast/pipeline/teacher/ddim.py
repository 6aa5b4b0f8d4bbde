"""DDIM sampling with classifier-free guidance, and DDIM inversion (Song et al. 2021, eta = 0).

With ā_t the teacher's schedule (teacher/schedule.py) and ā_t := 1 for t < 0 (clean):
  1. x̂_0 = (x_t - sqrt(1 - ā_t) ε_w(x_t, t, c)) / sqrt(ā_t)        predicted clean image
     (sampling clips it to the image range [-1, 1], as diffusers' DDIM does for pixel models: near
     t = T, 1/sqrt(ā_t) ≈ 150 amplifies any error in ε)
  2. x_s = sqrt(ā_s) x̂_0 + sqrt(1 - ā_s) ε_w(x_t, t, c)             deterministic move to time s
Sampling moves down the time grid (s < t), inversion moves up it (s > t, same update, the noise
evaluated at the current, lower time, never clipped). Time -1 stands for the clean image.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from clarep_fast.pipeline.teacher.model import as_teacher


def time_grid(start: int, end: int, steps: int, num_train_timesteps: int = 1000) -> list[int]:
    """steps + 1 integer times from start to end inclusive (either direction); -1 means clean."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    for name, value in (("start", start), ("end", end)):
        if not -1 <= value < num_train_timesteps:
            raise ValueError(f"{name} must be in [-1, {num_train_timesteps - 1}] (-1 = clean image), got {value}")
    grid = torch.linspace(start, end, steps + 1).round().long().tolist()
    return list(dict.fromkeys(grid))  # drop repeats if steps exceed the distance


def ddim_move(
    model: nn.Module,
    x: Tensor,
    labels: Tensor,
    grid: list[int],
    guidance: float = 1.0,
    clip: bool = False,
    progress=None,
) -> Tensor:
    """Follow the DDIM update along ``grid`` (descending: sampling, ascending: inversion), in float32.

    ``model``: a Teacher (its schedule and prediction type) or a bare ε-prediction denoiser (the
    default schedule). ``clip`` clamps x̂_0 to [-1, 1]: for pixel teachers only.
    """
    teacher = as_teacher(model)
    schedule = teacher.schedule
    x = x.float()
    with torch.no_grad():
        for t, s in zip(grid[:-1], grid[1:]):
            t_eval = max(t, 0)  # inversion starts at the clean image: evaluate the noise at time 0
            alpha_t, alpha_s = schedule.alpha_bar(t_eval), schedule.alpha_bar(s)
            eps = teacher.epsilon(x, t_eval, labels, guidance)
            clean = (x - (1 - alpha_t) ** 0.5 * eps) / alpha_t**0.5  # step 1
            if clip:
                clean = clean.clamp(-1, 1)
            x = alpha_s**0.5 * clean + (1 - alpha_s) ** 0.5 * eps  # step 2
            if progress is not None:
                progress.update(1)
    return x


def ddim_sample(
    model: nn.Module,
    noise: Tensor,
    labels: Tensor,
    *,
    guidance: float = 3.0,
    steps: int = 50,
    start: int | None = None,
    end: int = -1,
    clip: bool = True,
) -> Tensor:
    """From x_start (pure noise at the default start T-1) down to time ``end`` (-1: clean, in [-1, 1] for a pixel teacher)."""
    teacher = as_teacher(model)
    last = teacher.schedule.num_train_timesteps - 1
    start = last if start is None else start
    if end >= start:
        raise ValueError(f"sampling goes down in time: end ({end}) must be below start ({start})")
    return ddim_move(
        teacher, noise, labels, time_grid(start, end, steps, last + 1), guidance, clip and not teacher.is_latent
    )


def ddim_invert(
    model: nn.Module, images: Tensor, labels: Tensor, *, end: int, guidance: float = 1.0, steps: int = 50
) -> Tensor:
    """Deterministic DDIM inversion of clean inputs (time -1; latents for a latent teacher) up to time ``end``."""
    teacher = as_teacher(model)
    if end < 0:
        raise ValueError(f"inversion goes up in time: end must be >= 0, got {end}")
    return ddim_move(teacher, images, labels, time_grid(-1, end, steps, teacher.schedule.num_train_timesteps), guidance)
