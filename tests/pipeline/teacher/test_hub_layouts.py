"""Checkpoints as researchers hold them: the Hub's DiT-XL/2-256 layout (Transformer2DModel with
ada_norm_zero, KarrasDiffusionSchedulers, diffusers 0.12 configs, learned sigma), a Hub id resolved
offline in the local Hugging Face cache, and a UNet2DModel that learns sigma."""

from __future__ import annotations

import json

import pytest
import torch

from clarep_fast.pipeline.teacher.load import load_teacher, teacher_fingerprint
from clarep_fast.pipeline.teacher.model import Teacher
from tests.pipeline.fixtures import SHAPES, write_hub_cache, write_hub_dit_pipeline
from tests.taps_models import tiny_unet


def test_the_hub_dit_layout_loads_as_a_latent_dit(tmp_path):
    teacher = load_teacher(write_hub_dit_pipeline(tmp_path / "dit", SHAPES))
    assert type(teacher.denoiser).__name__ == "DiTTransformer2DModel"
    assert teacher.is_latent and teacher.num_classes == len(SHAPES) and teacher.resolution == 16
    assert teacher.schedule.num_train_timesteps == 1000 and teacher.schedule.prediction_type == "epsilon"
    x = torch.randn(2, 4, 4, 4)
    eps = teacher.epsilon(x, 500, torch.tensor([0, 2]), guidance=2.0)
    assert eps.shape == x.shape and bool(torch.isfinite(eps).all())  # the learned-variance half is dropped


def test_a_transformer2d_that_is_not_a_dit_is_refused_by_its_norm_type(tmp_path):
    folder = write_hub_dit_pipeline(tmp_path / "pixart", SHAPES)
    config = json.loads((folder / "transformer" / "config.json").read_text())
    (folder / "transformer" / "config.json").write_text(json.dumps(dict(config, norm_type="ada_norm_single")))
    with pytest.raises(
        ValueError, match=r"Transformer2DModel with norm_type 'ada_norm_single' is not .*'ada_norm_zero'"
    ):
        load_teacher(folder)


def test_a_hub_id_resolves_offline_in_the_local_cache(tmp_path, monkeypatch):
    folder = write_hub_dit_pipeline(tmp_path / "dit", SHAPES)
    snapshot = write_hub_cache(tmp_path / "hf", "someone/tiny-dit-256", folder)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    teacher = load_teacher("someone/tiny-dit-256")
    assert type(teacher.denoiser).__name__ == "DiTTransformer2DModel" and teacher.is_latent
    assert teacher_fingerprint("someone/tiny-dit-256") == teacher_fingerprint(snapshot) == teacher_fingerprint(folder)
    assert load_teacher("someone/tiny-dit-256@main").num_classes == len(SHAPES)
    with pytest.raises(
        FileNotFoundError,
        match=r"'someone/other' is not a folder here and not in the local Hugging Face cache .*hf.*hub.*hf download someone/other",
    ):
        load_teacher("someone/other")


def test_hf_hub_cache_wins_over_hf_home(tmp_path, monkeypatch):
    folder = write_hub_dit_pipeline(tmp_path / "dit", SHAPES)
    write_hub_cache(tmp_path / "elsewhere", "someone/tiny-dit-256", folder)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere" / "hub"))
    assert load_teacher("someone/tiny-dit-256").num_classes == len(SHAPES)


def test_a_unet_that_learns_sigma_predicts_its_first_half():
    base = tiny_unet(num_classes=4)
    config = dict(base.config, out_channels=6)
    learned = type(base).from_config(config).eval()
    teacher = Teacher(learned)
    x, labels = torch.randn(2, 3, 16, 16), torch.tensor([0, 3])
    eps = teacher.epsilon(x, 300, labels)
    with torch.no_grad():
        full = learned(x, torch.full((2,), 300), class_labels=labels).sample
    assert eps.shape == x.shape and torch.equal(eps, full[:, :3].float())
    with pytest.raises(ValueError, match="takes 3 channels but predicts 5"):
        Teacher(type(base).from_config(dict(base.config, out_channels=5)))


def test_the_class_table_decides_the_null_label(tmp_path):
    """id2label gives K: a UNet2DModel with K rows has no null label, one with K + 1 rows has null
    K; without a table, this project's convention (rows = K + 1). No null label: guidance 1 runs,
    guidance != 1 and the null-label features are refused by name."""
    from clarep_fast.pipeline.clarid.config import SearchConfig
    from clarep_fast.pipeline.clarid.setup import build_taps

    folder = tmp_path / "unet"
    tiny_unet(num_classes=3).save_pretrained(folder)  # 4 label rows
    config = json.loads((folder / "config.json").read_text())
    assert (load_teacher(folder).num_classes, load_teacher(folder).null_label) == (3, 3)
    (folder / "config.json").write_text(json.dumps(dict(config, id2label={"0": "a", "1": "b", "2": "c", "3": "d"})))
    teacher = load_teacher(folder)
    assert (teacher.num_classes, teacher.null_label, teacher.class_names) == (4, None, ["a", "b", "c", "d"])
    x = torch.randn(2, 3, 16, 16)
    assert teacher.epsilon(x, 100, torch.tensor([0, 3])).shape == x.shape
    with pytest.raises(ValueError, match=r"guidance 3.0: this teacher has no null label .*--guidance 1"):
        teacher.epsilon(x, 100, torch.tensor([0, 3]), guidance=3.0)
    with pytest.raises(ValueError, match=r"guidance 3.0: this teacher has no null label"):
        build_taps(SearchConfig(layer="mid_block", feature_layers=("mid_block",)), teacher)
    with pytest.raises(ValueError, match=r"feature_label null: .*--feature-label true"):
        build_taps(SearchConfig(layer="mid_block", feature_layers=("mid_block",), guidance=1.0), teacher)
    (folder / "config.json").write_text(json.dumps(dict(config, id2label={"0": "a", "1": "b"})))
    with pytest.raises(ValueError, match="id2label names 2 classes but the UNet2DModel embeds 4 labels"):
        load_teacher(folder)
    (folder / "config.json").write_text(json.dumps(dict(config, id2label={"0": "a", "2": "b"})))
    with pytest.raises(ValueError, match=r"id2label must number its classes 0..1"):
        load_teacher(folder)


def test_the_hub_dit_reads_its_class_names(tmp_path):
    teacher = load_teacher(write_hub_dit_pipeline(tmp_path / "dit", SHAPES))
    assert teacher.class_names == list(SHAPES) and teacher.null_label == len(SHAPES)
