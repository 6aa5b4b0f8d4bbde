"""The clarep-fast command line: backends listing and the self-check (the pipeline commands: tests/clarid, distill, evaluate)."""

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

    from clarep_fast.pipeline import cli

    monkeypatch.setattr(cli.os, "sched_getaffinity", lambda pid: set(range(64)))
    files = {"/sys/fs/cgroup/cpu.max": "200000 100000\n"}

    def read_text(self, *args, **kwargs):
        if str(self) in files:
            return files[str(self)]
        raise FileNotFoundError(str(self))

    monkeypatch.setattr(Path, "read_text", read_text)
    assert cli.usable_cpus() == 2
    files["/sys/fs/cgroup/cpu.max"] = "max 100000\n"
    assert cli.usable_cpus() == 64
    files.clear()
    files.update(
        {"/sys/fs/cgroup/cpu/cpu.cfs_quota_us": "150000", "/sys/fs/cgroup/cpu/cpu.cfs_period_us": "100000"}
    )  # cgroup v1, 1.5 CPUs
    assert cli.usable_cpus() == 2


class _Stop(Exception):
    pass


def test_evaluate_loads_the_student_on_the_device_it_is_given(monkeypatch, tmp_path):
    """evaluate runs where --device says, by default on the GPU when there is one (default_device):
    the device load_student receives is the device the attacks run on."""
    import clarep_fast.pipeline.distill.train as train
    import clarep_fast.pipeline.distributed as distributed

    received = []

    def record(path, device="cpu"):
        received.append(device)
        raise _Stop

    monkeypatch.setattr(train, "load_student", record)
    monkeypatch.setattr(distributed, "default_device", lambda: "cuda:3")  # what a GPU machine would say
    student = tmp_path / "student.pt"
    student.write_bytes(b"")
    for argv in (["evaluate", str(student)], ["evaluate", str(student), "--device", "cpu"]):
        try:
            main(argv)
        except _Stop:
            pass
    assert received == ["cuda:3", "cpu"]
