"""The embedded teachers (the UNet 'default' and the DiT 'default-dit') ship with the package and
load without any download."""

import pytest
import torch

from clarep_fast.pipeline.teacher.ddim import ddim_sample
from clarep_fast.pipeline.teacher.load import EMBEDDED_TEACHERS, load_teacher


@pytest.mark.parametrize("name, denoiser", [("default", "UNet2DModel"), ("default-dit", "DiTTransformer2DModel")])
def test_embedded_teacher_loads_and_samples(name, denoiser):
    weights = EMBEDDED_TEACHERS[name] / "diffusion_pytorch_model.safetensors"
    assert weights.exists() and weights.stat().st_size <= 10 * 2**20
    teacher = load_teacher(name)
    assert type(teacher.denoiser).__name__ == denoiser
    assert teacher.num_classes == 10 and teacher.resolution == 16 and not teacher.is_latent
    assert teacher.null_label == 10  # trained with label dropout: guidance works
    assert teacher.schedule.num_train_timesteps == 1000 and teacher.schedule.prediction_type == "epsilon"
    images = ddim_sample(teacher, torch.randn(2, 3, 16, 16), torch.tensor([3, 7]), guidance=3.0, steps=4)
    assert images.shape == (2, 3, 16, 16) and torch.isfinite(images).all() and images.abs().max() <= 1 + 1e-6


def test_a_missing_embedded_teacher_is_named(monkeypatch, tmp_path):
    monkeypatch.setitem(EMBEDDED_TEACHERS, "default-dit", tmp_path / "teacher-dit")
    with pytest.raises(FileNotFoundError, match="the embedded teacher 'default-dit' is missing .* reinstall"):
        load_teacher("default-dit")
