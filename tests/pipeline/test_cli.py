"""The clarep-fast command line: backends listing and the self-check (the pipeline commands: tests/clarid, distill, evaluate)."""

import torch

from clarep_fast.pipeline.cli import main


def test_backends_lists_every_backend(capsys):
    assert main(["backends"]) == 0
    printed = capsys.readouterr().out
    for name in ("cuda", "triton", "cpu", "torch"):
        assert name in printed


def test_selfcheck_passes(capsys):
    assert main(["selfcheck", "--quick"]) == 0
    printed = capsys.readouterr().out
    assert "self-check passed" in printed
    assert (
        all(op in printed for op in ("cka", "feature_pool", "project_out", "feature_align")) and "fused is" in printed
    )


def test_threads_follow_a_cgroup_cpu_quota(monkeypatch):
    """A container with a 2-CPU quota on a 64-core host: 2 usable CPUs, not 64."""
    from pathlib import Path

    from clarep_fast.pipeline import runtime

    monkeypatch.setattr(runtime.os, "sched_getaffinity", lambda pid: set(range(64)))
    files = {"/sys/fs/cgroup/cpu.max": "200000 100000\n"}

    def read_text(self, *args, **kwargs):
        if str(self) in files:
            return files[str(self)]
        raise FileNotFoundError(str(self))

    monkeypatch.setattr(Path, "read_text", read_text)
    assert runtime.usable_cpus() == 2
    files["/sys/fs/cgroup/cpu.max"] = "max 100000\n"
    assert runtime.usable_cpus() == 64
    files.clear()
    # cgroup v1, 1.5 CPUs
    files.update({"/sys/fs/cgroup/cpu/cpu.cfs_quota_us": "150000", "/sys/fs/cgroup/cpu/cpu.cfs_period_us": "100000"})
    assert runtime.usable_cpus() == 2


class _Stop(Exception):
    pass


def test_evaluate_loads_the_student_on_the_device_it_is_given(monkeypatch, tmp_path):
    """evaluate runs where --device says, by default on the GPU when there is one (default_device):
    the device load_student receives is the device the attacks run on."""
    import clarep_fast.pipeline.evaluate.student_file as student_file
    import clarep_fast.pipeline.runtime as runtime

    received = []

    def record(path, device="cpu"):
        received.append(str(device))
        raise _Stop

    monkeypatch.setattr(student_file, "load_student", record)
    monkeypatch.setattr(runtime, "default_device", lambda: "cuda:3")  # what a GPU machine would say
    student = tmp_path / "student.pt"
    student.write_bytes(b"")
    for argv in (["evaluate", str(student)], ["evaluate", str(student), "--device", "cpu"]):
        try:
            main(argv)
        except _Stop:
            pass
    assert received == ["cuda:3", "cpu"]


def test_the_demo_hands_one_runtime_to_every_stage(monkeypatch, tmp_path):
    """demo --device/--workers: the search, each student's training and its evaluation receive the
    one Runtime the command bound (the device plumbing, tested by what each stage is given)."""
    import clarep_fast.pipeline.demo.run as demo

    received = []

    def search(config, bank_dir, *, runtime, progress):
        received.append(("search", runtime))
        return bank_dir

    def train(config, run_dir, *, runtime, progress):
        received.append(("train", runtime))
        return run_dir / "student.pt"

    def load(path, device):
        received.append(("evaluate", device))
        raise _Stop

    monkeypatch.setattr(demo, "run_search", search)
    monkeypatch.setattr(demo, "train_student", train)
    monkeypatch.setattr(demo, "load_student", load)
    assert main(["demo", str(tmp_path / "demo"), "--device", "cpu", "--workers", "3"]) == 1  # _Stop: one line
    runtime = received[0][1]
    assert (runtime.device, runtime.workers) == ("cpu", 3)
    assert received == [("search", runtime), ("train", runtime), ("evaluate", torch.device("cpu"))]
