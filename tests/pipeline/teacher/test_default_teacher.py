"""The embedded default teacher ships with the package and loads without any download."""

import torch

from clarep_fast.pipeline.teacher.ddim import ddim_sample
from clarep_fast.pipeline.teacher.load import DEFAULT_TEACHER, load_teacher


def test_default_teacher_loads_and_samples():
    weights = DEFAULT_TEACHER / "diffusion_pytorch_model.safetensors"
    assert weights.exists() and weights.stat().st_size < 16 * 2**20
    teacher = load_teacher("default")
    assert teacher.num_classes == 10 and teacher.resolution == 16 and not teacher.is_latent
    assert teacher.schedule.num_train_timesteps == 1000 and teacher.schedule.prediction_type == "epsilon"
    images = ddim_sample(teacher, torch.randn(2, 3, 16, 16), torch.tensor([3, 7]), guidance=3.0, steps=4)
    assert images.shape == (2, 3, 16, 16) and torch.isfinite(images).all() and images.abs().max() <= 1 + 1e-6
