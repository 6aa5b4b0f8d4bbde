"""CaDistill training on tiny models: losses, baseline equivalence, resume, torchrun, errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from clarep_fast.pipeline.clarid import load_bank
from clarep_fast.pipeline.data import DataConfig
from clarep_fast.pipeline.distill.student import DistillModel, Student
from clarep_fast.pipeline.distill.train import BankBatches, _losses, load_student, train_student
from clarep_fast.pipeline.rundir import RunDir
from tests.pipeline.distill.conftest import small_distill

ROOT = Path(__file__).resolve().parents[3]


def test_cadistill_decreases_the_total_loss(tiny_bank, tmp_path):
    bank_dir, _ = tiny_bank
    train_student(small_distill(bank_dir, epochs=3), tmp_path / "run", progress=False)
    history = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2, 3]
    assert history[-1]["total"] < history[0]["total"]
    assert all(history[0][term] > 0 for term in ("align", "cano", "dist"))
    assert (tmp_path / "run" / "metrics.csv").read_text().startswith("epoch,ce,align,cano,dist,total")
    student = load_student(tmp_path / "run" / "student.pt")
    assert student(torch.rand(2, 3, 16, 16)).shape == (2, 10)


def test_baseline_equals_cadistill_with_every_lambda_zero(tiny_bank, tmp_path):
    bank_dir, _ = tiny_bank
    train_student(small_distill(bank_dir, baseline=True), tmp_path / "baseline", progress=False)
    train_student(
        small_distill(bank_dir, lambda_align=0.0, lambda_cano=0.0, lambda_dist=0.0), tmp_path / "zero", progress=False
    )
    train_student(small_distill(bank_dir), tmp_path / "cadistill", progress=False)
    weights = {
        name: torch.load(tmp_path / name / "student.pt", weights_only=True)["payload"]["student"]
        for name in ("baseline", "zero", "cadistill")
    }
    assert all(torch.equal(weights["baseline"][key], weights["zero"][key]) for key in weights["baseline"])
    assert any(not torch.equal(weights["baseline"][key], weights["cadistill"][key]) for key in weights["baseline"])


def test_loss_terms_at_their_extremes(tiny_bank):
    """Teacher features equal to the student's own: alignment 0, CKA 1 (dist 0)."""
    bank_dir, _ = tiny_bank
    config = small_distill(bank_dir, lambda_cano=0.0)  # the prototypes keep the bank's teacher width
    bank = BankBatches(config, [str(c) for c in range(10)], 16, "cpu")
    torch.manual_seed(0)
    student = Student("test_resnet", 10, config.student_layers).eval()
    widths = student.feature_widths(16)
    model = DistillModel(student, widths, widths)
    for projector in model.projectors:  # identity projectors
        torch.nn.init.eye_(projector.weight), torch.nn.init.zeros_(projector.bias)
    index = torch.arange(8)
    with torch.no_grad():
        _, raw = student.features(bank.images[index])
    bank.features = [torch.zeros(len(bank.classes), f.shape[1]) for f in raw]
    for feature, value in zip(bank.features, raw):
        feature[index] = value
    terms = _losses(model, bank.images[index], bank.classes[index], bank, index, config)
    assert abs(float(terms["align"])) < 1e-5 and abs(float(terms["dist"])) < 1e-5


def test_resume_after_a_kill_gives_the_uninterrupted_result(tiny_bank, tmp_path, monkeypatch):
    bank_dir, _ = tiny_bank
    config = small_distill(bank_dir, epochs=2)
    train_student(config, tmp_path / "whole", progress=False)
    saves = {"count": 0}
    real_save = RunDir.save_checkpoint

    def save_then_die(run, state):
        real_save(run, state)
        saves["count"] += 1
        if saves["count"] == 1:
            raise KeyboardInterrupt("killed after the first checkpoint")

    monkeypatch.setattr(RunDir, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_student(config, tmp_path / "killed", progress=False)
    monkeypatch.setattr(RunDir, "save_checkpoint", real_save)
    assert not (tmp_path / "killed" / "student.pt").exists()
    train_student(config, tmp_path / "killed", progress=False)
    whole = torch.load(tmp_path / "whole" / "student.pt", weights_only=True)["payload"]["student"]
    resumed = torch.load(tmp_path / "killed" / "student.pt", weights_only=True)["payload"]["student"]
    assert all(torch.equal(whole[key], resumed[key]) for key in whole)
    assert len(json.loads((tmp_path / "killed" / "metrics.json").read_text())) == 2


@pytest.mark.parametrize("baseline", [False, True])
def test_two_torchrun_processes_train_one_student(tiny_bank, tmp_path, baseline):
    bank_dir, _ = tiny_bank
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "clarep_fast.pipeline.cli", "distill", str(tmp_path / "ddp"),
               "--bank", str(bank_dir), "--student", "test_resnet", "--epochs", "1", "--batch-size", "256", "--bank-batch-size", "8"]  # fmt: skip
    command += ["--baseline"] if baseline else []
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    history = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert len(history) == 1 and history[0]["val_accuracy"] > 0.1


def test_mismatches_and_missing_files_are_clear_errors(tiny_bank, tmp_path):
    bank_dir, _ = tiny_bank
    with pytest.raises(FileNotFoundError, match="is not a CLARep bank"):
        train_student(small_distill(tmp_path / "nowhere"), tmp_path / "a", progress=False)
    with pytest.raises(ValueError, match="3 student layers .* but 1 teacher layers"):
        train_student(small_distill(bank_dir, teacher_layers=("mid_block",)), tmp_path / "b", progress=False)
    with pytest.raises(ValueError, match=r"teacher layers \['up_blocks.0'\] are not in the bank"):
        train_student(
            small_distill(bank_dir, teacher_layers=("up_blocks.0", "mid_block", "down_blocks.1")),
            tmp_path / "c",
            progress=False,
        )
    with pytest.raises(ValueError, match="--resolution 20 but the bank .* makes 16×16 images"):
        train_student(small_distill(bank_dir, data=DataConfig(resolution=20)), tmp_path / "d", progress=False)
    with pytest.raises(ValueError, match="unknown timm model"):
        train_student(small_distill(bank_dir, student="no_such_net"), tmp_path / "e", progress=False)
    with pytest.raises(FileNotFoundError, match="train a student"):
        load_student(tmp_path / "missing.pt")
    train_student(small_distill(bank_dir), tmp_path / "f", progress=False)
    with pytest.raises(ValueError, match="different config"):
        train_student(small_distill(bank_dir, lambda_align=2.0), tmp_path / "f", progress=False)
    # another feature width under the same bank path
    with pytest.raises(ValueError, match="different config \\(differs in: bank_layers"):
        train_student(
            small_distill(
                bank_dir, teacher_layers=("mid_block", "down_blocks.2", "down_blocks.1"), student_layers=(2, 3, 4)
            ),
            tmp_path / "f",
            progress=False,
        )


def test_bank_with_more_classes_than_the_data_is_refused(tiny_bank):
    bank_dir, _ = tiny_bank
    with pytest.raises(ValueError, match="was searched on classes .* but the data has"):
        BankBatches(small_distill(bank_dir), [str(c) for c in range(5)], 16, "cpu")


def test_student_layers_are_checked_against_the_model():
    with pytest.raises(
        ValueError, match=r"student_layers \[2, 9\]: timm model 'test_resnet' has feature stages 0..4 .*got \[9\]"
    ):
        Student("test_resnet", 10, [2, 9])
    with pytest.raises(ValueError, match="student_layers"):
        Student("test_resnet", 10, [])
    assert Student("test_resnet", 10, [-1, 2]).layers == [-1, 2]


def test_l_cano_against_a_hand_computation(tiny_bank):
    bank_dir, _ = tiny_bank
    config = small_distill(bank_dir, lambda_align=0.0, lambda_dist=0.0, temperature=0.5)
    bank = BankBatches(config, [str(c) for c in range(10)], 16, "cpu")
    torch.manual_seed(0)
    student = Student("test_resnet", 10, config.student_layers).eval()
    model = DistillModel(student, student.feature_widths(16), bank.widths()).eval()
    images, labels = bank.images[:6], bank.classes[:6]
    terms = _losses(model, images, labels, bank, torch.arange(4), config)
    with torch.no_grad():
        _, _, projected = model(images)
        embedding = projected[-1]
    expected = 0.0
    for row, label in zip(embedding, labels):
        scores = []
        for k in range(10):
            if bank.has_prototype[k]:
                prototype = bank.prototypes[k]
                scores.append(float(row @ prototype / (row.norm() * prototype.norm())) / 0.5)
            else:
                scores.append(-1.0 / 0.5)  # a class without CLAReps: similarity -1
        logsumexp = torch.tensor(scores, dtype=torch.float64).logsumexp(0)
        expected += float(logsumexp - scores[int(label)]) / len(labels)
    assert float(terms["cano"]) == pytest.approx(expected, rel=1e-5)


def test_the_canonical_forward_leaves_batchnorm_running_statistics_alone(tiny_bank):
    from clarep_fast.pipeline.distill.train import frozen_batchnorm_statistics

    torch.manual_seed(0)
    student = Student("test_resnet", 10, (2, 3, 4)).train()
    norms = [m for m in student.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    before = [(m.running_mean.clone(), m.running_var.clone(), int(m.num_batches_tracked)) for m in norms]
    images = torch.rand(8, 3, 16, 16)
    with frozen_batchnorm_statistics(student):
        frozen_logits = student(images)
    for m, (mean, var, count) in zip(norms, before):
        assert (
            torch.equal(m.running_mean, mean)
            and torch.equal(m.running_var, var)
            and int(m.num_batches_tracked) == count
        )
        assert m.momentum == 0.1  # restored
    updating = student(images)  # train mode outside: batch statistics for the output, running statistics written
    torch.testing.assert_close(frozen_logits, updating)  # the same normalization inside (batch statistics)
    assert not torch.equal(norms[0].running_mean, before[0][0])


def test_the_ordinary_control_reads_the_ordinary_samples(tiny_bank):
    bank_dir, _ = tiny_bank
    canonical = BankBatches(small_distill(bank_dir), [str(c) for c in range(10)], 16, "cpu")
    ordinary = BankBatches(small_distill(bank_dir, bank_samples="ordinary"), [str(c) for c in range(10)], 16, "cpu")
    bank = load_bank(bank_dir)
    torch.testing.assert_close(ordinary.images, bank.ordinary_samples.clamp(0, 1))
    torch.testing.assert_close(canonical.images, bank.samples.clamp(0, 1))
    assert not torch.equal(ordinary.features[0], canonical.features[0])


@pytest.mark.parametrize("check", ["default", "async"])
@pytest.mark.parametrize("baseline", [False, True], ids=["cadistill", "baseline"])
def test_a_diverging_student_stops_with_a_clear_error_and_no_nan_checkpoint(
    tiny_bank, tmp_path, baseline, check, monkeypatch
):
    """With the NaN check asked to be asynchronous (the CUDA default: a device-side assert that kills
    the CUDA context), the training loop still checks synchronously: it reads the loss every step."""
    if check == "async":
        monkeypatch.setenv("CLAREP_FAST_FINITE_CHECK", "async")
    bank_dir, _ = tiny_bank
    config = small_distill(bank_dir, learning_rate=1e12, epochs=2, batch_size=64, baseline=baseline)
    with pytest.raises(
        ValueError,
        match=r"training diverged at step \d+ \(.*\)\. Nothing after the last checkpoint .* lower --learning-rate",
    ):
        train_student(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "student.pt").exists()
    checkpoint = RunDir(tmp_path / "run", command="distill").load_checkpoint()
    assert checkpoint is None or all(
        bool(torch.isfinite(v).all()) for v in checkpoint["model"].values() if v.is_floating_point()
    )


def test_defaults_fit_the_student_the_bank_and_the_data(tiny_bank):
    """--student-layers defaults to the student's last L stages (L = teacher layers distilled); a
    batch larger than its data is clipped to it, each fill said in one line."""
    from clarep_fast.pipeline.distill.train import fitted

    bank_dir, _ = tiny_bank  # 24 CLAReps, 3 feature layers
    said = []
    config = fitted(small_distill(bank_dir, student_layers=None, bank_batch_size=64), 90, 1, True, said.append)
    assert config.student_layers == (2, 3, 4) and config.batch_size == 90 and config.bank_batch_size == 24
    assert any("student layers 2 3 4" in line for line in said)
    assert any("--batch-size 256 is more than the 90 training images; using 90" in line for line in said)
    assert any("--bank-batch-size 64 is more than the 24 CLAReps in the bank; using 24" in line for line in said)
    two = fitted(
        small_distill(bank_dir, student_layers=None, teacher_layers=("down_blocks.2", "mid_block")),
        300,
        2,
        True,
        said.append,
    )
    assert two.student_layers == (3, 4) and two.batch_size == 256  # 256 < 300: kept
    assert fitted(small_distill(bank_dir), 91, 2, True, said.append).batch_size == 90  # a multiple of the ranks
    with pytest.raises(ValueError, match="has 5 feature stages to pair them with"):
        fitted(
            small_distill(bank_dir, student_layers=None, teacher_layers=("mid_block",) * 6), 90, 1, True, said.append
        )


def test_the_bank_identity_ignores_what_a_search_resume_may_change(tiny_bank, tmp_path):
    """distill records the bank by the identity its shards carry: a search resumed with other
    --workers or with the teacher at another path rewrites config.json, and a distill run on that
    bank must still resume."""
    import shutil

    bank_dir, _ = tiny_bank
    copy = tmp_path / "bank"
    shutil.copytree(bank_dir, copy)
    before = BankBatches(small_distill(copy), [str(c) for c in range(10)], 16, "cpu").identity
    config = json.loads((copy / "config.json").read_text())
    config["data"]["workers"], config["teacher"] = 3, str(tmp_path / "the-teacher-moved-here")
    (copy / "config.json").write_text(json.dumps(config))
    assert BankBatches(small_distill(copy), [str(c) for c in range(10)], 16, "cpu").identity == before
