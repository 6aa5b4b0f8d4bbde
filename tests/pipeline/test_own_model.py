"""Own teacher and data end to end through the CLI: a latent DiT pipeline (DiT + AutoencoderKL +
DDIMScheduler) on an image folder, and a pixel UNet pipeline on CIFAR-10-layout data; and the
schedule and prediction type the pipeline folder's scheduler sets. Also the second embedded
teacher (the trained DiT, --teacher default-dit) on the default data with the auto layers."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from clarep_fast.pipeline.clarid import load_bank
from clarep_fast.pipeline.teacher.ddim import ddim_sample
from clarep_fast.pipeline.teacher.load import load_teacher
from clarep_fast.pipeline.teacher.schedule import NoiseSchedule
from tests.pipeline.fixtures import (
    SHAPES,
    write_cifar10_layout,
    write_hub_cache,
    write_hub_dit_pipeline,
    write_image_folder,
    write_latent_pipeline,
    write_pixel_pipeline,
)

ROOT = Path(__file__).resolve().parents[2]
FAST_SEARCH = [
    "-k",
    "3",
    "--steps",
    "4",
    "--count",
    "6",
    "--shard-size",
    "3",
    "--oversample",
    "3",
    "--tol",
    "1e-2",
    "--max-iters",
    "3",
    "--jacobian-batch",
    "3",
]
FAST_DISTILL = ["--student", "test_resnet", "--epochs", "1", "--batch-size", "8", "--bank-batch-size", "4"]
FAST_EVALUATE = [
    "--pgd-steps",
    "1",
    "--apgd-steps",
    "1",
    "--cw-steps",
    "1",
    "--attack-samples",
    "4",
    "--corruption-samples",
    "2",
]


def _cli(*args, **environment) -> str:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), **environment)
    result = subprocess.run(
        [sys.executable, "-m", "clarep_fast.pipeline.cli", *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def test_latent_dit_pipeline_on_an_image_folder(tmp_path):
    teacher = write_latent_pipeline(tmp_path / "dit", classes=len(SHAPES))
    data = f"folder:{write_image_folder(tmp_path / 'shapes', per_class=10, side=24)}"
    bank = tmp_path / "bank"
    _cli(
        "search",
        bank,
        "--teacher",
        teacher,
        "--data",
        data,
        "--route",
        "inversion",
        "--layer",
        "transformer_blocks.0",
        "--feature-layers",
        "transformer_blocks.0",
        "transformer_blocks.1",
        "--pool",
        "1",
        "--feature-pool",
        "1",
        *FAST_SEARCH,
    )
    loaded = load_bank(bank)
    assert loaded.latents.shape == (6, 4, 4, 4)  # CLAReps live in the VAE latent
    # resolution from the VAE: 4 · 2² (the folder's 24×24 images are resized)
    assert loaded.samples.shape == (6, 3, 16, 16)
    assert loaded.samples.min() >= 0 and loaded.samples.max() <= 1 and loaded.ordinary_samples.max() <= 1
    config = json.loads((bank / "config.json").read_text())
    assert config["latent_teacher"] and config["classes"] == sorted(SHAPES) and config["resolution"] == 16
    assert config["schedule"]["alpha_bar_last"] == pytest.approx(
        float(load_teacher(teacher).schedule.alphas_cumprod[-1])
    )
    run = tmp_path / "student"
    _cli("distill", run, "--bank", bank, "--data", data, "--student-layers", "3", "4", *FAST_DISTILL)
    metrics = json.loads((run / "metrics.json").read_text())
    assert "val_accuracy" in metrics[0] and "test_accuracy" not in metrics[0]
    out = _cli("evaluate", run / "student.pt", *FAST_EVALUATE)
    results = json.loads((run / "evaluation.json").read_text())
    # background variants: default data only
    assert {"clean", "pgd1", "corruption_mean"} <= set(results) and "swapped" not in results
    assert "test split of --data folder:" in (run / "evaluation.md").read_text() and "| student |" in out
    # the field's sets as published, here tiny replicas with the student's own class names: a class
    # subset (ImageNet-R's layout: logits restricted to its classes, by name) and ReaL (flat, real.json)
    renditions = write_image_folder(tmp_path / "renditions", per_class=2, side=24, split=False, seed=5)
    shutil.rmtree(renditions / SHAPES[0])
    validation = tmp_path / "val"
    validation.mkdir()
    for number, image in enumerate(sorted(renditions.rglob("*.png")), start=1):
        shutil.copy(image, validation / f"ILSVRC2012_val_{number:08d}.png")
    (validation / "real.json").write_text(json.dumps([[1], [], [1, 2], [2]]))
    out = _cli("evaluate", run, *FAST_EVALUATE, "--sets", f"imagenet-r:{renditions}", f"real:{validation}")
    results = json.loads((run / "evaluation.json").read_text())
    assert 0 <= results["imagenet_r"] <= 1 and results["real_accuracy"] in (0, 1 / 3, 2 / 3, 1)
    assert "imagenet_r" in out and "real_accuracy" in out  # the headline table shows both


def test_the_embedded_dit_teacher_end_to_end_on_its_auto_layers(tmp_path):
    """search → distill → evaluate with --teacher default-dit, offline, on a few default images: the
    DiT's auto layers (its middle block for the search, blocks at 1/4, 1/2, 3/4 for the features)
    are chosen, recorded by name, and the student learns from them."""
    bank = tmp_path / "bank"
    _cli("search", bank, "--teacher", "default-dit", *FAST_SEARCH)
    config = json.loads((bank / "config.json").read_text())
    assert config["layer"] == "transformer_blocks.3"
    assert config["feature_layers"] == ["transformer_blocks.1", "transformer_blocks.3", "transformer_blocks.4"]
    loaded = load_bank(bank)
    assert loaded.latents.shape == (6, 3, 16, 16)
    assert list(loaded.features) == config["feature_layers"]
    assert all(torch.isfinite(feature).all() and feature.abs().sum() > 0 for feature in loaded.features.values())
    run = tmp_path / "student"
    _cli("distill", run, "--bank", bank, *FAST_DISTILL)
    _cli("evaluate", run, *FAST_EVALUATE)
    assert 0 <= json.loads((run / "evaluation.json").read_text())["clean"] <= 1


def test_pixel_unet_pipeline_on_cifar10_layout(tmp_path):
    teacher = write_pixel_pipeline(tmp_path / "unet", classes=10, side=32, prediction_type="v_prediction")
    data = f"cifar10:{write_cifar10_layout(tmp_path / 'cifar', per_batch=10)}"
    bank = tmp_path / "bank"
    _cli(
        "search",
        bank,
        "--teacher",
        teacher,
        "--data",
        data,
        "--layer",
        "down_blocks.1",
        "--feature-layers",
        "down_blocks.1",
        "mid_block",
        *FAST_SEARCH,
    )
    loaded = load_bank(bank)
    assert (
        loaded.samples.shape == loaded.latents.shape == (6, 3, 32, 32)
        and 0 <= loaded.samples.min()
        and loaded.samples.max() <= 1
    )
    assert json.loads((bank / "config.json").read_text())["schedule"]["prediction_type"] == "v_prediction"
    run = tmp_path / "student"
    _cli("distill", run, "--bank", bank, "--data", data, "--student-layers", "3", "4", *FAST_DISTILL)
    _cli("evaluate", run, *FAST_EVALUATE)  # the run folder stands for its student.pt
    assert json.loads((run / "evaluation.json").read_text())["clean"] >= 0


def test_a_teacher_that_does_not_fit_the_data_is_refused_naming_both(tmp_path):
    teacher = write_latent_pipeline(tmp_path / "dit", classes=5)
    data = f"folder:{write_image_folder(tmp_path / 'shapes', per_class=4)}"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for extra, message in (
        (["--data", data], "knows 5 classes but the data has 3"),
        (["--data", data, "--resolution", "32"], "--resolution 32 but the teacher makes 16×16"),
    ):
        result = subprocess.run([sys.executable, "-m", "clarep_fast.pipeline.cli", "search", str(tmp_path / "bank"), "--teacher", str(teacher), *extra],
                                env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert not (tmp_path / "bank").exists()  # refused before any file


@pytest.mark.parametrize("prediction_type", ["v_prediction", "sample"])
def test_prediction_types_give_back_the_noise(prediction_type):
    schedule = NoiseSchedule.default()
    schedule.prediction_type = prediction_type
    x0, eps = torch.randn(3, 3, 4, 4, dtype=torch.float64), torch.randn(3, 3, 4, 4, dtype=torch.float64)
    for t in (0, 400, 999):
        a = schedule.alpha_bar(t)
        x_t = a**0.5 * x0 + (1 - a) ** 0.5 * eps
        output = a**0.5 * eps - (1 - a) ** 0.5 * x0 if prediction_type == "v_prediction" else x0
        torch.testing.assert_close(schedule.to_epsilon(output, x_t, t), eps)


def test_the_scheduler_is_read_and_changes_the_result(tmp_path):
    from diffusers import DDIMScheduler

    linear = load_teacher(write_pixel_pipeline(tmp_path / "a", classes=4, side=16, beta_schedule="linear"))
    cosine = load_teacher(write_pixel_pipeline(tmp_path / "b", classes=4, side=16, beta_schedule="squaredcos_cap_v2"))
    expected = DDIMScheduler(beta_schedule="squaredcos_cap_v2").alphas_cumprod.double()
    torch.testing.assert_close(cosine.schedule.alphas_cumprod, expected)
    assert not torch.allclose(linear.schedule.alphas_cumprod, cosine.schedule.alphas_cumprod)
    noise, labels = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 3])
    first, second = ddim_sample(linear, noise, labels, steps=3), ddim_sample(cosine, noise, labels, steps=3)
    assert (first - second).abs().max() > 1e-3  # same weights, another schedule: another sample


def test_latent_teacher_encodes_and_decodes_through_its_vae(tmp_path):
    teacher = load_teacher(write_latent_pipeline(tmp_path / "dit", classes=3))
    assert (
        teacher.is_latent
        and teacher.latent_shape == (4, 4, 4)
        and teacher.resolution == 16
        and teacher.num_classes == 3
    )
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    latents = teacher.encode(images)
    vae = teacher.vae
    torch.testing.assert_close(latents, vae.encode(images).latent_dist.mean * vae.config.scaling_factor)
    decoded = teacher.decode(latents)
    assert decoded.shape == (2, 3, 16, 16) and decoded.abs().max() <= 1


def test_damaged_or_unsupported_scheduler_configs_are_refused_by_name(tmp_path):
    root = write_pixel_pipeline(tmp_path / "unet", classes=4, side=16)
    config_file = root / "scheduler" / "scheduler_config.json"
    original = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**original, "rescale_betas_zero_snr": True}))
    with pytest.raises(ValueError, match="scheduler_config.json: zero-terminal-SNR schedules"):
        load_teacher(root)
    config_file.write_text('{"beta_schedule": "linear", ')
    with pytest.raises(
        ValueError, match=r"scheduler_config.json \(a diffusers scheduler config\) is not readable JSON"
    ):
        load_teacher(root)
    config_file.write_text(json.dumps({**original, "prediction_type": "flow"}))
    with pytest.raises(ValueError, match="prediction_type must be one of"):
        load_teacher(root)
    edm = {"_class_name": "EDMEulerScheduler", "sigma_min": 0.002, "sigma_max": 80.0, "sigma_data": 0.5}
    config_file.write_text(json.dumps(edm))  # not silently read as the default beta schedule
    with pytest.raises(ValueError, match="EDMEulerScheduler is sigma-parameterized"):
        load_teacher(root)


def test_a_cached_hub_dit_by_its_id_on_an_image_folder(tmp_path):
    """The DiT-XL/2-256 layout by its Hub id, offline, from a cache under HF_HOME, with the default
    layer flags: search, distill, evaluate."""
    write_hub_cache(tmp_path / "hf", "someone/tiny-dit-256", write_hub_dit_pipeline(tmp_path / "dit", SHAPES))
    offline = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    data = f"folder:{write_image_folder(tmp_path / 'shapes', per_class=10, side=16)}"
    bank, run = tmp_path / "bank", tmp_path / "student"
    _cli(
        "search",
        bank,
        "--teacher",
        "someone/tiny-dit-256",
        "--data",
        data,
        "--pool",
        "1",
        "--feature-pool",
        "1",
        *FAST_SEARCH,
        **offline,
    )
    loaded = load_bank(bank)  # the default layer flags: auto, for a DiT of 2 blocks
    assert loaded.latents.shape == (6, 4, 4, 4) and list(loaded.features) == [
        "transformer_blocks.0",
        "transformer_blocks.1",
    ]
    assert json.loads((bank / "config.json").read_text())["layer"] == "transformer_blocks.1"
    _cli("distill", run, "--bank", bank, "--data", data, *FAST_DISTILL, **offline)
    _cli("evaluate", run / "student.pt", *FAST_EVALUATE, **offline)
    assert "clean" in json.loads((run / "evaluation.json").read_text())


def _run_cli(*args, **environment) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), **environment)
    return subprocess.run([sys.executable, "-m", "clarep_fast.pipeline.cli", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip


def test_a_hub_dit_with_more_classes_than_the_data_through_a_class_map(tmp_path):
    """ImageNet's case in small: the teacher's id2label holds words and more classes than the data,
    the data's folders are WordNet-style ids. Without --class-map the search is refused naming both
    sides; with a LOC_synset_mapping.txt-style file each class is conditioned on its own teacher label,
    recorded in the bank, and distill and evaluate run on the bank."""
    words = ("tench, Tinca tinca", "stripes, pattern", "goldfish", "disc, round shape", "square")
    teacher = write_hub_dit_pipeline(tmp_path / "dit", words)
    shapes = write_image_folder(tmp_path / "shapes", per_class=10, side=16)
    for shape, wnid in zip(SHAPES, ("n00000001", "n00000002", "n00000003")):  # disc, square, stripes
        for split in ("train", "test"):
            (shapes / split / shape).rename(shapes / split / wnid)
    data = f"folder:{shapes}"
    bank = tmp_path / "bank"
    search = ["search", bank, "--teacher", teacher, "--data", data, "--pool", "1", "--feature-pool", "1", *FAST_SEARCH]
    refused = _run_cli(*search)
    assert refused.returncode == 2 and "'n00000001'" in refused.stderr and "--class-map" in refused.stderr
    mapping = tmp_path / "LOC_synset_mapping.txt"
    mapping.write_text("n00000001 disc, round shape\nn00000002 square\nn00000003 stripes, pattern\n")
    _cli(*search, "--class-map", mapping)
    config = json.loads((bank / "config.json").read_text())
    assert config["teacher_labels"] == [3, 4, 1] and config["classes"] == ["n00000001", "n00000002", "n00000003"]
    run = tmp_path / "student"
    _cli("distill", run, "--bank", bank, "--data", data, *FAST_DISTILL)
    _cli("evaluate", run, *FAST_EVALUATE)
    assert "clean" in json.loads((run / "evaluation.json").read_text())


def test_a_unet_without_a_null_row_that_learns_sigma_end_to_end(tmp_path):
    """A UNet2DModel trained without a CFG row (num_class_embeds = K, id2label of K names) that learns
    sigma (out_channels = 2 × 3): the default guidance and null-label features are refused naming the
    flags to pass; with them, search -> distill -> evaluate run with the default layer flags."""
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=16, in_channels=3, out_channels=6, layers_per_block=1,
                       block_out_channels=(16, 32, 32), down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"), num_class_embeds=len(SHAPES),
                       norm_num_groups=8, attention_head_dim=8)  # fmt: skip
    teacher = tmp_path / "unet"
    unet.save_pretrained(teacher, safe_serialization=True)
    config = json.loads((teacher / "config.json").read_text())
    (teacher / "config.json").write_text(json.dumps(dict(config, id2label=dict(enumerate(SHAPES)))))
    data = f"folder:{write_image_folder(tmp_path / 'shapes', per_class=10, side=16)}"
    bank = tmp_path / "bank"
    search = ["search", bank, "--teacher", teacher, "--data", data, *FAST_SEARCH]
    refused = _run_cli(*search)
    assert refused.returncode == 2 and "--guidance 1" in refused.stderr, refused.stderr
    refused = _run_cli(*search, "--guidance", "1")
    assert refused.returncode == 2 and "--feature-label true" in refused.stderr, refused.stderr
    assert not bank.exists()
    _cli(*search, "--guidance", "1", "--feature-label", "true")
    loaded = load_bank(bank)
    assert loaded.samples.shape == (6, 3, 16, 16) and list(loaded.features) == [
        "down_blocks.1",
        "down_blocks.2",
        "mid_block",
    ]
    run = tmp_path / "student"
    _cli("distill", run, "--bank", bank, "--data", data, *FAST_DISTILL)
    _cli("evaluate", run, *FAST_EVALUATE)
    assert "clean" in json.loads((run / "evaluation.json").read_text())


@pytest.mark.gpu
def test_search_distill_and_evaluate_run_on_the_gpu(tmp_path):
    """The commands with --device cuda, in this process: the evaluation's attacks allocate GPU memory
    (they run where the student is) and every measure comes back finite."""
    import math

    from clarep_fast.pipeline.cli import main
    from tests.taps_models import tiny_unet

    teacher = tmp_path / "unet"
    tiny_unet(num_classes=len(SHAPES)).save_pretrained(teacher, safe_serialization=True)
    data = f"folder:{write_image_folder(tmp_path / 'shapes', per_class=10, side=16)}"
    bank, run = tmp_path / "bank", tmp_path / "student"
    assert main(["search", str(bank), "--teacher", str(teacher), "--data", data, *FAST_SEARCH, "--device", "cuda"]) == 0
    assert main(["distill", str(run), "--bank", str(bank), "--data", data, *FAST_DISTILL, "--device", "cuda"]) == 0
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    assert main(["evaluate", str(run), *FAST_EVALUATE, "--device", "cuda"]) == 0
    assert torch.cuda.max_memory_allocated() > 0
    results = json.loads((run / "evaluation.json").read_text())
    assert {"clean", "pgd1", "apgd_ce"} <= set(results) and all(math.isfinite(v) for v in results.values())
