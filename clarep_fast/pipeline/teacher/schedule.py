"""The teacher's noise schedule: ā_t and what its network predicts.

A diffusion model is trained on x_t = sqrt(ā_t) x_0 + sqrt(1 - ā_t) ε for t in 0..T-1. The schedule
comes from the teacher folder's scheduler config when there is one (diffusers' scheduler classes
compute ā_t from beta_schedule, beta_start, beta_end, trained_betas); without one it is the DDPM
linear schedule our own teachers are trained with. The network's output is turned into ε:
    epsilon        ε = out
    v_prediction   v = sqrt(ā) ε - sqrt(1 - ā) x_0   =>  ε = sqrt(ā) v + sqrt(1 - ā) x_t
    sample         x_0 = out                         =>  ε = (x_t - sqrt(ā) x_0) / sqrt(1 - ā)
Each is affine in the output at fixed (x_t, t), so classifier-free guidance may mix raw outputs.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
DEFAULT_TIMESTEPS = 1000


class NoiseSchedule:
    def __init__(self, alphas_cumprod: Tensor, prediction_type: str = "epsilon"):
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
        alphas_cumprod = alphas_cumprod.double().cpu()
        if (
            alphas_cumprod.dim() != 1
            or len(alphas_cumprod) < 3
            or not bool(((alphas_cumprod > 0) & (alphas_cumprod < 1)).all())
        ):
            raise ValueError(
                "the schedule's ā_t must be a vector of at least 3 values strictly inside (0, 1) "
                "(zero-terminal-SNR schedules, where ā_T = 0, are not supported)"
            )
        self.alphas_cumprod, self.prediction_type = alphas_cumprod, prediction_type

    @property
    def num_train_timesteps(self) -> int:
        return len(self.alphas_cumprod)

    def alpha_bar(self, t: int) -> float:
        """ā_t, with ā := 1 for t < 0 (the clean image)."""
        return 1.0 if t < 0 else float(self.alphas_cumprod[t])

    def to_epsilon(self, output: Tensor, x: Tensor, t: int) -> Tensor:
        """The ε a network output stands for at (x_t, t); see the module docstring."""
        if self.prediction_type == "epsilon":
            return output
        alpha = self.alpha_bar(t)
        if self.prediction_type == "v_prediction":
            return alpha**0.5 * output + (1 - alpha) ** 0.5 * x
        return (x - alpha**0.5 * output) / (1 - alpha) ** 0.5

    def describe(self) -> dict:
        return {"num_train_timesteps": self.num_train_timesteps, "prediction_type": self.prediction_type,
                "alpha_bar_first": self.alpha_bar(0), "alpha_bar_last": self.alpha_bar(self.num_train_timesteps - 1)}  # fmt: skip

    @classmethod
    def default(cls) -> "NoiseSchedule":
        """DDPM's linear schedule (β from 1e-4 to 0.02 over 1000 steps), ε-prediction."""
        betas = torch.linspace(1e-4, 0.02, DEFAULT_TIMESTEPS, dtype=torch.float64)
        return cls(torch.cumprod(1 - betas, dim=0))

    @classmethod
    def from_scheduler_config(cls, config: dict, path: Path) -> "NoiseSchedule":
        """The content of a diffusers scheduler_config.json at ``path`` (any scheduler with a beta
        schedule: DDPM, DDIM, PNDM, Euler, ...)."""
        from diffusers import DDIMScheduler
        from diffusers.utils import logging

        kind = str(config.get("_class_name", ""))
        if kind.startswith("EDM") or ("sigma_max" in config and not {"beta_schedule", "trained_betas"} & set(config)):
            raise ValueError(
                f"{path}: {kind or 'this scheduler'} is sigma-parameterized (EDM), not a beta schedule; "
                "teachers trained on a beta schedule (DDPM, DDIM, PNDM, Euler, ...) are supported"
            )
        if config.get("rescale_betas_zero_snr"):
            raise ValueError(f"{path}: zero-terminal-SNR schedules (rescale_betas_zero_snr) are not supported")
        known = {
            key: value
            for key, value in config.items()
            if key in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas")
        }
        verbosity = logging.get_verbosity()
        logging.set_verbosity_error()  # diffusers lists every config key it does not use
        try:
            scheduler = DDIMScheduler.from_config(known)
        except (ValueError, NotImplementedError, TypeError) as error:
            raise ValueError(f"{path}: diffusers cannot build this schedule ({error})") from None
        finally:
            logging.set_verbosity(verbosity)
        return cls(scheduler.alphas_cumprod, config.get("prediction_type", "epsilon"))
