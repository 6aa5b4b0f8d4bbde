"""Faults a long command meets on a real machine: SIGKILL at any moment, SIGTERM, a second process on
the same folder, damaged files, a full disk, bad flags. Every case runs the CLI as a user would
(subprocesses for kills and locks) and checks what the user sees and what is left on disk."""

from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from clarep_fast.pipeline.files import DamagedFileError, load_checked, save_checked
from clarep_fast.pipeline.rundir import RunDir, RunFolderBusy
from tests.taps_models import tiny_unet

ROOT = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
CLI = [sys.executable, "-m", "clarep_fast.pipeline.cli"]
KILLS = 3  # random moments per command


def teacher_args(run: Path) -> list[str]:
    return ["train-teacher", str(run), "--steps", "24", "--batch-size", "8", "--checkpoint-every", "3", "--sample-every", "8",
            "--resolution", "8", "--channels", "8", "16", "--norm-groups", "4", "--device", "cpu"]  # fmt: skip


def search_args(teacher: Path, bank: Path) -> list[str]:
    return ["search", str(bank), "--teacher", str(teacher), "--t-e", "500", "-k", "3", "--layer", "down_blocks.1", "--steps", "4",
            "--count", "8", "--shard-size", "2", "--feature-layers", "down_blocks.1", "mid_block", "--oversample", "4", "--tol", "1e-2",
            "--max-iters", "6", "--jacobian-batch", "2", "--device", "cpu"]  # fmt: skip


def distill_args(bank: Path, run: Path) -> list[str]:
    return ["distill", str(run), "--bank", str(bank), "--student", "test_resnet", "--epochs", "3", "--batch-size", "512",
            "--bank-batch-size", "8", "--teacher-layers", "down_blocks.1", "mid_block", "--student-layers", "2", "3", "--device", "cpu"]  # fmt: skip


def run_cli(args: list[str], expect: int = 0) -> subprocess.CompletedProcess:
    result = subprocess.run(CLI + args, env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == expect, f"exit {result.returncode}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


def start_and_stop(
    args: list[str], started: Path, delay: float, how: int = signal.SIGKILL
) -> subprocess.CompletedProcess:
    """Start the command, wait until it has begun work (``started`` exists), then send ``how`` after ``delay`` seconds."""
    process = subprocess.Popen(CLI + args, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not started.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(delay)
    if process.poll() is None:
        process.send_signal(how)
    out, error = process.communicate(timeout=120)
    return subprocess.CompletedProcess(process.args, process.returncode, out, error)


def killed_then_resumed(args: list[str], started: Path, work_seconds: float, seed: int) -> None:
    """KILLS SIGKILLs at seeded random moments of the work (each restart resumes), then a clean finish."""
    rng = random.Random(seed)
    for _ in range(KILLS):
        start_and_stop(args, started, rng.uniform(0.0, work_seconds))
    run_cli(args)


def timed_work(args: list[str], started: Path) -> float:
    """Run uninterrupted; seconds from the start of the work to the end."""
    process = subprocess.Popen(CLI + args, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while not started.exists() and process.poll() is None:
        time.sleep(0.02)
    began = time.monotonic()
    _, error = process.communicate(timeout=600)
    assert process.returncode == 0, error[-3000:]
    return time.monotonic() - began


def same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("teacher")
    tiny_unet().save_pretrained(path, safe_serialization=True)
    return path


@pytest.fixture(scope="module")
def bank_dir(teacher_dir, tmp_path_factory):
    bank = tmp_path_factory.mktemp("bank") / "bank"
    run_cli(search_args(teacher_dir, bank))
    return bank


# ----------------------------------------------------------------------------- kill anywhere, lose nothing


def test_train_teacher_survives_kills(tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    work = timed_work(teacher_args(whole), whole / "config.json")
    killed_then_resumed(teacher_args(killed), killed / "config.json", work, seed=1)
    same_tensors(
        load_file(str(whole / "teacher" / "diffusion_pytorch_model.safetensors")),
        load_file(str(killed / "teacher" / "diffusion_pytorch_model.safetensors")),
    )
    assert (whole / "loss.csv").read_text() == (killed / "loss.csv").read_text()
    assert (
        sorted(p.name for p in whole.glob("samples_*.png"))
        == sorted(p.name for p in killed.glob("samples_*.png"))
        == ["samples_000008.png", "samples_000016.png", "samples_000024.png"]
    )
    assert not list(killed.rglob(".*.tmp*")), "a temporary file was left behind"


def test_search_survives_kills(teacher_dir, bank_dir, tmp_path):
    killed = tmp_path / "bank"
    work = timed_work(search_args(teacher_dir, tmp_path / "timing"), tmp_path / "timing" / "config.json")
    killed_then_resumed(search_args(teacher_dir, killed), killed / "config.json", work, seed=2)
    for shard in sorted((bank_dir / "shards").glob("*.safetensors")):
        same_tensors(load_file(str(shard)), load_file(str(killed / "shards" / shard.name)))
    assert sorted(p.name for p in (killed / "shards").iterdir()) == sorted(
        p.name for p in (bank_dir / "shards").iterdir()
    )


def test_distill_survives_kills(bank_dir, tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    work = timed_work(distill_args(bank_dir, whole), whole / "config.json")
    killed_then_resumed(distill_args(bank_dir, killed), killed / "config.json", work, seed=3)
    same_tensors(
        load_checked(whole / "student.pt", "student", remedy="")["student"],
        load_checked(killed / "student.pt", "student", remedy="")["student"],
    )
    strip = lambda text: [line.rsplit(",", 1)[0] for line in text.splitlines()]  # noqa: E731  (the last column is seconds)
    assert strip((whole / "metrics.csv").read_text()) == strip((killed / "metrics.csv").read_text())


def test_sigterm_stops_cleanly_and_the_rerun_finishes(tmp_path):
    run = tmp_path / "run"
    process = start_and_stop(teacher_args(run), run / "config.json", 0.5, signal.SIGTERM)
    if process.returncode == 0:
        pytest.skip("the run finished before SIGTERM arrived")
    assert process.returncode == 143, process.stderr[-2000:]
    assert "terminated; what was finished is saved" in process.stderr and "Traceback" not in process.stderr
    run_cli(teacher_args(run))
    assert (run / "teacher" / "diffusion_pytorch_model.safetensors").exists()


# ----------------------------------------------------------------------------- one writer per folder


def test_a_second_process_on_the_folder_is_refused_and_a_dead_holder_frees_it(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom clarep_fast.pipeline.rundir import RunDir\n"
                               f"RunDir({str(tmp_path)!r}, command='distill').claim({{'a': 1}})\nprint('held', flush=True)\ntime.sleep(60)"],
                              env=ENV, stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(RunFolderBusy, match=rf"in use by another clarep-fast process \(pid {holder.pid}\)"):
        RunDir(tmp_path, command="search").claim({"a": 1})
    result = run_cli(teacher_args(tmp_path), expect=2)
    assert f"pid {holder.pid}" in result.stderr and "Traceback" not in result.stderr
    holder.kill()
    holder.wait()
    RunDir(tmp_path, command="distill").claim({"a": 1})  # the lock died with its holder


# ----------------------------------------------------------------------------- damaged and foreign files


def damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "truncate":
        path.write_bytes(bytes(data[: len(data) // 2]))
    else:  # overwrite 4 KB in the middle (or all of a small file) with noise
        start = max(0, len(data) // 2 - 2048)
        data[start : start + 4096] = random.Random(0).randbytes(len(data[start : start + 4096]))
        path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["truncate", "garble"])
def test_a_damaged_shard_is_named_and_refused(bank_dir, tmp_path, how):
    import shutil

    bank = tmp_path / "bank"
    shutil.copytree(bank_dir, bank)
    (bank / ".lock").unlink(missing_ok=True)
    damage(bank / "shards" / "shard_00001.safetensors", how)
    result = run_cli(
        ["distill", str(tmp_path / "run"), "--bank", str(bank), "--student", "test_resnet", "--epochs", "1"], expect=2
    )
    assert (
        "shard_00001.safetensors" in result.stderr
        and "delete it and rerun" in result.stderr
        and "Traceback" not in result.stderr
    )


@pytest.mark.parametrize("how", ["truncate", "garble"])
def test_a_damaged_checkpoint_or_student_is_named_and_refused(tmp_path, how):
    state = {"model": {"weight": torch.randn(64, 64), "bias": torch.zeros(64)}, "epoch": 2}
    for name, kind in (("checkpoint.pt", "distill-checkpoint"), ("student.pt", "student")):
        save_checked(tmp_path / name, kind, state)
        assert load_checked(tmp_path / name, kind, remedy="r")["epoch"] == 2
        damage(tmp_path / name, how)
        with pytest.raises(DamagedFileError, match=name):
            load_checked(tmp_path / name, kind, remedy="r")
    result = run_cli(["evaluate", str(tmp_path / "student.pt")], expect=2)
    assert "student.pt" in result.stderr and "Traceback" not in result.stderr


def test_foreign_and_outdated_files_are_refused(tmp_path):
    torch.save({"student": {}, "name": "resnet18"}, tmp_path / "old.pt")  # a student.pt of the format before versions
    with pytest.raises(DamagedFileError, match="is not a clarep_fast student file"):
        load_checked(tmp_path / "old.pt", "student", remedy="r")
    save_checked(tmp_path / "other.pt", "teacher-checkpoint", {"step": 1})
    with pytest.raises(DamagedFileError, match="not a clarep_fast distill-checkpoint file"):
        load_checked(tmp_path / "other.pt", "distill-checkpoint", remedy="r")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text("{ not json")
    result = run_cli(teacher_args(tmp_path / "run"), expect=2)
    assert "config.json" in result.stderr and "not readable JSON" in result.stderr


def test_a_full_disk_names_the_file_and_replaces_nothing(tmp_path, monkeypatch):
    run = RunDir(tmp_path, command="distill")
    run.save_checkpoint({"epoch": 1})
    real_save = torch.save

    def save_until_full(obj, path, *args, **kwargs):
        Path(path).write_bytes(b"x" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", save_until_full)
    with pytest.raises(OSError, match=r"no space left to write .*checkpoint.pt: 1,000 bytes were written"):
        run.save_checkpoint({"epoch": 2})
    monkeypatch.setattr(torch, "save", real_save)
    assert run.load_checkpoint()["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir() if p.name != ".lock"] == ["checkpoint.pt"]


# ----------------------------------------------------------------------------- flags checked before work


@pytest.mark.parametrize(
    "args,flag",
    [
        (["train-teacher", "{run}", "--steps", "-5"], "--steps"),
        (["train-teacher", "{run}", "--checkpoint-every", "0"], "--checkpoint-every"),
        (
            ["train-teacher", "{run}", "--device", "cuda"]
            if not torch.cuda.is_available()
            else ["train-teacher", "{run}", "--device", "nope"],
            "--device",
        ),
        (["train-teacher", "{run}", "--device", "mps"], "--device"),
        (["train-teacher", "{run}", "--learning-rate", "nan"], "--learning-rate"),
        (["train-teacher", "{run}", "--channels", "8", "16", "--norm-groups", "3"], "--norm-groups"),
        (["search", "{run}", "--guidance", "inf"], "--guidance"),
        (["search", "{run}", "--pool", "0"], "--pool"),
        (["search", "{run}", "--fraction", "1.5"], "--fraction"),
        (["search", "{run}", "--mode", "power"], "--mode"),
        (["distill", "{run}", "--batch-size", "0"], "--batch-size"),
        (["distill", "{run}", "--temperature", "0"], "--temperature"),
        (["evaluate", "{run}/student.pt", "--attack-samples", "-3"], "--attack-samples"),
        (["demo", "{run}", "--seeds", "0"], "--seeds"),
    ],
)
def test_bad_flags_are_one_line_exit_2_and_leave_no_folder(tmp_path, args, flag):
    run = tmp_path / "run"
    result = run_cli([a.replace("{run}", str(run)) for a in args], expect=2)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and flag in lines[0], result.stderr
    assert not run.exists()


@pytest.mark.parametrize(
    "changes,what",
    [
        (["-k", "768"], "k must be in"),
        (["--t-e", "999"], "t_e must be inside"),
        (["--layer", "up_blocks.9"], "unknown layer"),
        (["--pool", "100"], "pool size 100 is larger"),
    ],
)
def test_values_the_teacher_cannot_take_leave_no_folder(teacher_dir, tmp_path, changes, what):
    bank = tmp_path / "bank"
    result = run_cli(search_args(teacher_dir, bank) + changes, expect=2)
    assert what in result.stderr and "Traceback" not in result.stderr
    assert not bank.exists()


DEMO = """
import sys
from clarep_fast.pipeline.clarid.search import SearchConfig
from clarep_fast.pipeline.demo import DemoConfig, run_demo
from clarep_fast.pipeline.distill.train import DistillConfig
from clarep_fast.pipeline.evaluate.robustness import EvaluateConfig

search = SearchConfig(teacher=sys.argv[2], t_e=500, k=3, layer="down_blocks.1", steps=4, count=8, shard_size=2,
                      feature_layers=("down_blocks.1", "mid_block"), oversample=4, tol=1e-2, max_iters=6, jacobian_batch=2)
distill = DistillConfig(student="test_resnet", epochs=1, batch_size=512, bank_batch_size=8, student_layers=(2, 3))
evaluate = EvaluateConfig(pgd_steps=2, apgd_steps=2, cw_steps=2, attack_samples=8)
run_demo(sys.argv[1], DemoConfig(seeds=1, search=search, distill=distill, evaluate=evaluate), progress=False)
"""


def test_demo_survives_kills(teacher_dir, tmp_path):
    """The demo's stages are the commands above; this checks the demo's own files across kills."""
    args = lambda run: [sys.executable, "-c", DEMO, str(run), str(teacher_dir)]  # noqa: E731
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    began = time.monotonic()
    subprocess.run(args(whole), env=ENV, check=True, capture_output=True, timeout=600)
    work = time.monotonic() - began
    rng = random.Random(4)
    for _ in range(2):
        process = subprocess.Popen(args(killed), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.3, 1.0) * work)
        process.kill()
        process.wait()
    subprocess.run(args(killed), env=ENV, check=True, capture_output=True, timeout=600)
    assert (whole / "evaluation.json").read_text() == (killed / "evaluation.json").read_text()
    for name in ("baseline-s0", "cadistill-s0"):
        same_tensors(
            load_checked(whole / name / "student.pt", "student", remedy="")["student"],
            load_checked(killed / name / "student.pt", "student", remedy="")["student"],
        )
    assert (killed / "report.md").exists() and not list(killed.rglob(".*.tmp*"))


@pytest.mark.parametrize("damaged", ["config.json", "diffusion_pytorch_model.safetensors"])
def test_a_damaged_teacher_folder_is_named(teacher_dir, tmp_path, damaged):
    import shutil

    teacher = tmp_path / "teacher"
    shutil.copytree(teacher_dir, teacher)
    damage(teacher / damaged, "truncate")
    bank = tmp_path / "bank"
    result = run_cli(search_args(teacher, bank), expect=2)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(teacher) in lines[0] and "Traceback" not in result.stderr, result.stderr
    assert not bank.exists()


def test_temporaries_of_a_killed_writer_are_removed_on_the_next_claim(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / "shards" / f".shard_00003.{dead.pid}.tmp.safetensors"
    live = tmp_path / f".checkpoint.{os.getpid()}.tmp.pt"  # this process is alive: not stale
    stale.parent.mkdir()
    stale.write_bytes(b"half")
    live.write_bytes(b"being written")
    RunDir(tmp_path, command="search").claim({"a": 1})
    assert not stale.exists() and live.exists()


def test_a_diverging_teacher_stops_with_one_line_and_writes_no_nan(tmp_path):
    run = tmp_path / "run"
    args = teacher_args(run)
    args[args.index("--steps") + 1] = "6"
    result = run_cli(args + ["--learning-rate", "1e30"], expect=2)
    lines = result.stderr.strip().splitlines()
    assert (
        "training diverged at step" in lines[-1]
        and "lower --learning-rate" in lines[-1]
        and "Traceback" not in result.stderr
    ), result.stderr
    assert not (run / "teacher").exists()
    # what was saved before the divergence is finite
    checkpoint = RunDir(run, command="train-teacher").load_checkpoint()
    assert checkpoint is None or all(bool(torch.isfinite(v).all()) for v in checkpoint["model"].values())


def test_nothing_non_finite_is_written(tmp_path):
    from clarep_fast.pipeline.clarid.bank import shard_path, write_shard

    with pytest.raises(
        ValueError,
        match=r"refusing to write .*student.pt: student.fc.weight holds NaN or Inf \(first at index \(1, 2\)\); nothing was written",
    ):
        weights = torch.zeros(3, 4)
        weights[1, 2] = float("inf")
        save_checked(tmp_path / "student.pt", "student", {"student": {"fc.weight": weights}, "epoch": 1})
    samples = torch.rand(4, 3, 8, 8)
    samples[2, 0, 1, 1] = float("nan")
    with pytest.raises(
        ValueError, match=r"shard_00000.safetensors: samples holds NaN or Inf \(first at index \(2, 0, 1, 1\)\)"
    ):
        write_shard(tmp_path, 0, {"samples": samples, "classes": torch.arange(4)}, identity="0" * 64)
    assert not (tmp_path / "student.pt").exists() and not shard_path(tmp_path, 0).exists()


def test_a_teacher_with_nan_weights_is_refused(teacher_dir, tmp_path):
    from clarep_fast.pipeline.teacher.load import load_teacher

    model = tiny_unet()
    with torch.no_grad():
        model.conv_in.weight[0, 0, 0, 0] = float("nan")
    model.save_pretrained(tmp_path / "teacher", safe_serialization=True)
    with pytest.raises(
        ValueError, match=r"teacher: its weight conv_in.weight holds NaN or Inf; the model diverged in training"
    ):
        load_teacher(tmp_path / "teacher")


def test_a_folder_of_another_command_is_named_as_such(tmp_path):
    RunDir(tmp_path, command="search").claim({"k": 3})
    with pytest.raises(ValueError, match=r"holds a search run, not a distill run; give distill a folder of its own"):
        RunDir(tmp_path, command="distill").claim({"epochs": 2})


def test_a_bank_config_or_shard_that_does_not_belong_is_named(bank_dir, tmp_path):
    import json
    import shutil

    from safetensors.torch import save_file

    from clarep_fast.pipeline.clarid.bank import load_bank, shard_path
    from clarep_fast.pipeline.files import shard_metadata

    bank = tmp_path / "bank"
    shutil.copytree(bank_dir, bank)
    config = json.loads((bank / "config.json").read_text())
    # a bank of another seed: its shards have this bank's indices and shapes, not its identity
    other = tmp_path / "other"
    shutil.copytree(bank_dir, other)
    (other / "config.json").write_text(json.dumps({**config, "seed": config["seed"] + 1}))
    with pytest.raises(
        DamagedFileError,
        match=r"shard_00000.safetensors belongs to another bank: it was written by a search with another config or teacher",
    ):
        load_bank(other)
    (other / "config.json").write_text(
        json.dumps({**config, "teacher": "/moved/teacher", "data": {**config["data"], "workers": 3}})
    )
    load_bank(other)  # the keys a resume may change are not part of the identity
    tensors = load_file(str(shard_path(other, 0)))
    # as shards were written before identities
    older = {key: value for key, value in shard_metadata(tensors, "unused").items() if key != "bank"}
    save_file(tensors, str(shard_path(other, 0)), metadata=older)
    with pytest.raises(
        DamagedFileError,
        match=r"shard_00000.safetensors was written by an older clarep_fast \(no bank identity in its metadata\)",
    ):
        load_bank(other)
    shutil.copy(shard_path(bank, 0), shard_path(bank, 1))  # intact by its digest, but the wrong CLAReps
    with pytest.raises(
        DamagedFileError, match=r"shard_00001.safetensors holds CLAReps 0..1 but shard 1 of this bank holds 2..3"
    ):
        load_bank(bank)
    for key, value, message in (
        ("shards", "4", "shards must be a positive int"),
        ("feature_layers", "mid_block", "feature_layers must be a non-empty list"),
    ):
        (bank / "config.json").write_text(json.dumps({**config, key: value}))
        with pytest.raises(DamagedFileError, match=message):
            load_bank(bank)


def test_a_file_for_a_run_folder_and_a_run_for_a_bank_are_named(tmp_path):
    from clarep_fast.pipeline.clarid.bank import load_bank

    (tmp_path / "afile").write_text("")
    with pytest.raises(NotADirectoryError, match=r"afile is a file, not a run folder; give search a folder"):
        RunDir(tmp_path / "afile", command="search").claim({"k": 3})
    RunDir(tmp_path / "student", command="distill").claim({"epochs": 2})
    with pytest.raises(
        ValueError, match=r"student holds a distill run, not a CLARep bank; give the folder a `clarep-fast search` made"
    ):
        load_bank(tmp_path / "student")


def test_an_unforeseen_error_is_one_line_and_debug_shows_the_traceback(monkeypatch, capsys):
    from clarep_fast.pipeline import cli

    def broken(args):
        raise RuntimeError("something nobody foresaw")

    monkeypatch.setitem(cli.COMMANDS, "backends", cli.COMMANDS["backends"]._replace(run=broken))
    assert cli.main(["backends"]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [
        "clarep-fast backends: unexpected error: RuntimeError: something nobody foresaw (rerun with --debug for the traceback)"
    ]
    with pytest.raises(RuntimeError, match="nobody foresaw"):
        cli.main(["backends", "--debug"])


def test_run_time_settings_are_never_compared_on_resume(tmp_path):
    """device and workers belong to the machine a run is on: a run resumes on another GPU or with
    more DataLoader workers; any other change is still refused by name."""
    RunDir(tmp_path, command="train-teacher").claim({"steps": 10, "device": "cuda:0", "data": {"workers": 0}})
    assert RunDir(tmp_path, command="train-teacher").claim({"steps": 10, "device": "cpu", "data": {"workers": 8}})
    with pytest.raises(ValueError, match=r"differs in: steps"):
        RunDir(tmp_path, command="train-teacher").claim({"steps": 11, "device": "cpu", "data": {"workers": 8}})
