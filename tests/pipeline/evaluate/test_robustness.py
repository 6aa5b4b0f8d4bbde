"""Robustness evaluation: attacks behave at their known extremes; the evaluation and the demo report."""

import dataclasses
import json
import pytest
import torch
import torchattacks
from torch import nn

from clarep_fast.pipeline.data import DataConfig
from clarep_fast.pipeline.data.sources.default import default_splits
from clarep_fast.pipeline.evaluate.corruptions import CORRUPTIONS, SEVERITIES, corrupt
from clarep_fast.pipeline.evaluate.robustness import (
    EvaluateConfig,
    adversarial_accuracy,
    evaluate_student,
    markdown_table,
)


def _tiny_model_and_data():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 10)).eval()
    images = default_splits()["test"].images[:64]
    with torch.no_grad():
        labels = model(images).argmax(1)  # the model is right on every image: clean accuracy 100%
    return model, images, labels


@pytest.mark.parametrize("epsilon,expected", [(0.0, 1.0), (1.0, 0.0)])
def test_pgd_at_zero_and_huge_epsilon(epsilon, expected):
    model, images, labels = _tiny_model_and_data()
    attack = torchattacks.PGD(model, eps=epsilon, alpha=max(epsilon / 4, 1e-8), steps=20, random_start=False)
    assert adversarial_accuracy(model, attack, images, labels, batch=32) == expected


def test_evaluate_student_reports_every_measure():
    model, _, _ = _tiny_model_and_data()
    config = EvaluateConfig(pgd_steps=2, apgd_steps=2, cw_steps=2, attack_samples=16, corruption_samples=8)
    results = evaluate_student(model, DataConfig(), config, resolution=16)
    backgrounds = ["only_foreground", "mixed_random", "swapped", "mixed_same", "only_background", "bg_gap"]
    headline = ["clean", *backgrounds, "pgd2", "apgd_ce", "apgd_l2", "corruption_mean"]
    assert results["distortion/cw_l2_median"] >= 0
    assert [name for name in results if "/" not in name] == headline
    assert results["bg_gap"] == results["mixed_same"] - results["mixed_random"]
    per_corruption = [name for name in results if name.startswith("corruption/") and name.count("/") == 1]
    assert len(per_corruption) == len(CORRUPTIONS)
    for name in CORRUPTIONS:
        levels = [results[f"corruption/{name}/{s}"] for s in SEVERITIES]
        assert results[f"corruption/{name}"] == pytest.approx(sum(levels) / len(levels))
    means = [results[f"corruption_severity/{s}"] for s in SEVERITIES]
    assert abs(sum(means) / len(means) - results["corruption_mean"]) < 1e-9
    assert all(0.0 <= value <= 1.0 for name, value in results.items() if name != "bg_gap")
    assert results["pgd2"] <= results["clean"] + 0.1
    table = markdown_table({"tiny": results})
    assert table.splitlines()[0].startswith("| student | clean |") and "| tiny |" in table


def test_the_validation_split_and_the_attacks_asked_for():
    """split=validation scores the validation digits and their own background variants (what settings
    are chosen on); attacks lists what runs: PGD alone leaves no APGD, CW or corruption column."""
    model, _, _ = _tiny_model_and_data()
    splits = default_splits()
    assert len(splits["val_only_foreground"]) == len(splits["val"]) != len(splits["test"])
    assert torch.equal(splits["val_swapped"].labels, splits["val"].labels)
    assert not torch.equal(splits["val_swapped"].images, splits["val"].images)
    config = EvaluateConfig(pgd_steps=2, attacks=("pgd",), attack_samples=16, corruption_samples=0)
    validation = evaluate_student(model, DataConfig(), dataclasses.replace(config, split="validation"), resolution=16)
    test = evaluate_student(model, DataConfig(), config, resolution=16)
    backgrounds = ["only_foreground", "mixed_random", "swapped", "mixed_same", "only_background", "bg_gap"]
    assert list(validation) == ["clean", *backgrounds, "pgd2"] == list(test)
    with torch.no_grad():
        expected = (model(splits["val"].images).argmax(1) == splits["val"].labels).float().mean().item()
    assert validation["clean"] == pytest.approx(expected)
    with pytest.raises(ValueError, match="attacks must be one of"):
        EvaluateConfig(attacks=("pgd", "fgsm"))


def test_demo_writes_the_report(tmp_path):
    from clarep_fast.pipeline.clarid import SearchConfig
    from clarep_fast.pipeline.clarid.bank import read_bank_config
    from clarep_fast.pipeline.demo import DemoConfig, run_demo
    from clarep_fast.pipeline.demo.report import with_corruption_errors
    from clarep_fast.pipeline.distill.train import DistillConfig
    from tests.taps_models import tiny_unet

    teacher = tmp_path / "teacher"
    tiny_unet().save_pretrained(teacher, safe_serialization=True)
    search = SearchConfig(
        teacher=str(teacher),
        t_e=500,
        k=3,
        layer="down_blocks.1",
        steps=4,
        count=20,
        shard_size=20,
        oversample=4,
        tol=1e-2,
        max_iters=3,
        jacobian_batch=20,
    )
    distill = DistillConfig(student="test_resnet", epochs=1, batch_size=256, bank_batch_size=8)
    evaluate = EvaluateConfig(pgd_steps=2, apgd_steps=2, cw_steps=2, attack_samples=16, corruption_samples=4)
    config = DemoConfig(
        seeds=2, bank_per_seed=True, full_evaluation_seeds=1, search=search, distill=distill, evaluate=evaluate
    )
    report = run_demo(tmp_path / "demo", config, progress=False)
    text = report.read_text()
    for row in (
        "| baseline (CE only) |",
        "| control: CaDistill on ordinary samples |",
        "| CaDistill (CLAReps) |",
        "| CaDistill (CLAReps) minus |",
    ):
        assert row in text, row
    assert "mean ± 95% interval over seeds" in text and "CW-L2 median L2 distortion" in text and "raw pixels" in text
    assert "significant" in text and "null label" in text
    assert "bg_gap" in text and "only_background" in text and "BG-Gap" in text
    evaluated = with_corruption_errors(json.loads((tmp_path / "demo" / "evaluation.json").read_text()))
    assert evaluated["baseline-s0"]["corruption_mce"] == pytest.approx(1) and "corruption_mce" in text
    assert sorted(p.name for p in (tmp_path / "demo").iterdir() if p.name.endswith(("-s0", "-s1"))) == [
        "bank-s0",
        "bank-s1",
        "baseline-s0",
        "baseline-s1",
        "cadistill-s0",
        "cadistill-s1",
        "ordinary-s0",
        "ordinary-s1",
    ]
    for name in ("canonical.png", "nmi.png", "losses.png", "differences.png", "evaluation.json", "bank-s0", "bank-s1"):
        assert (tmp_path / "demo" / name).exists(), name
    banks = [read_bank_config(tmp_path / "demo" / f"bank-s{seed}")["seed"] for seed in (0, 1)]
    assert banks == [0, 1] and "mean ± 95% interval over 2 banks" in text
    evaluations = json.loads((tmp_path / "demo" / "evaluation.json").read_text())
    assert {"apgd_ce", "corruption_mean"} <= set(evaluations["cadistill-s0"])  # seed 0: the full evaluation
    assert not {"apgd_ce", "corruption_mean", "distortion/cw_l2_median"} & set(evaluations["cadistill-s1"])
    assert {"clean", "only_foreground", "pgd2"} <= set(evaluations["cadistill-s1"])
    assert "Over fewer seeds: apgd_ce (1)" in text and "smallest detectable" in text
    assert "![paired differences](differences.png)" in text
    again = run_demo(tmp_path / "demo", config, progress=False)  # everything resumes from disk
    assert again.read_text().split("## Wall-clock")[0] == text.split("## Wall-clock")[0]


@pytest.mark.parametrize("side", [16, 32])
def test_corruptions_keep_the_image_box_get_worse_with_severity_and_are_seeded(side):
    images = torch.rand(6, 3, side, side)
    for name in CORRUPTIONS:
        mild, harsh = corrupt(images, name, 1, seed=0), corrupt(images, name, 5, seed=0)
        assert mild.shape == images.shape and mild.min() >= 0 and mild.max() <= 1, name
        assert torch.equal(mild, corrupt(images, name, 1, seed=0)), name  # seeded: the same draw twice
        # not monotone in the L2 change on noise images
        if name not in ("brightness", "saturate", "pixelate", "jpeg_compression"):
            assert (harsh - images).norm() >= (mild - images).norm() * 0.9, name
    for name in ("fog", "spatter"):
        with pytest.raises(ValueError, match="are left out"):
            corrupt(images, name, 1)
    with pytest.raises(ValueError, match="severity must be one of"):
        corrupt(images, "contrast", 6)


def test_l2_budget_scales_robustbench_to_the_input_size():
    from clarep_fast.pipeline.evaluate.robustness import l2_budget

    assert l2_budget(EvaluateConfig(), 3 * 32 * 32) == pytest.approx(0.5)
    assert l2_budget(EvaluateConfig(), 3 * 16 * 16) == pytest.approx(0.25)
    assert l2_budget(EvaluateConfig(epsilon_l2=1.0), 3 * 16 * 16) == 1.0


def test_median_distortion_counts_turned_images_and_zero_for_wrong_ones():
    from clarep_fast.pipeline.evaluate.robustness import median_distortion

    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[1.0, 0, 0, 0], [-1.0, 0, 0, 0]]))  # class 0 iff x[0] > 0
    images = torch.tensor([[1.0, 0, 0, 0], [2.0, 0, 0, 0], [3.0, 0, 0, 0], [-1.0, 0, 0, 0]]).view(4, 1, 2, 2)
    labels = torch.tensor([0, 0, 0, 0])  # the last one is already wrong: distortion 0

    def attack(x, y):  # turns the first two (moving x[0] to -0.5), leaves the third
        shifted = x.clone()
        turn = x.flatten(1)[:, 0] < 2.5
        shifted.view(len(x), -1)[turn, 0] = -0.5
        return shifted

    # turned: distances 1.5 and 2.5; already wrong: 0 -> median of [1.5, 2.5, 0] is 1.5 (torch's lower median)
    assert median_distortion(model, attack, images, labels, batch=2) == pytest.approx(1.5)


def test_corrupted_sets_are_computed_once_for_the_same_images(monkeypatch):
    import clarep_fast.pipeline.evaluate.robustness as robustness
    from clarep_fast.pipeline.data.images import TensorImages

    calls = []
    monkeypatch.setattr(
        robustness, "corrupt", lambda images, name, severity, seed: calls.append(name) or images.clamp(0, 1)
    )
    monkeypatch.setattr(robustness._CorruptedSets, "key", None)
    model, images, labels = _tiny_model_and_data()
    test = TensorImages(images, labels, [str(c) for c in range(10)])
    first = robustness.corruption_accuracy(model, test, EvaluateConfig())
    assert len(calls) == len(CORRUPTIONS) * len(SEVERITIES)
    again = robustness.corruption_accuracy(model, test, EvaluateConfig())
    assert len(calls) == len(CORRUPTIONS) * len(SEVERITIES) and again == first  # reused, not recomputed
    robustness.corruption_accuracy(model, TensorImages(images.flip(0), labels.flip(0), test.classes), EvaluateConfig())
    assert len(calls) == 2 * len(CORRUPTIONS) * len(SEVERITIES)  # other images: computed afresh
    assert first["corruption_mean"] == 1.0  # the identity "corruption" leaves the model right everywhere
