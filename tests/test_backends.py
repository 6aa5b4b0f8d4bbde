"""Backend registry: auto choice, environment variable, context manager, clear errors."""

import collections
import pytest
import torch

import clarep_fast
from clarep_fast import backends
from clarep_fast.backends import ENV_VAR, available_backends, requested_backend, resolve_backend, use_backend


def test_available_backends_reports_every_backend_with_reasons():
    report = available_backends()
    assert set(report) == set(clarep_fast.BACKENDS)
    assert report["torch"].available and set(report["torch"].devices) == {"cpu", "cuda"}
    for name, status in report.items():
        assert isinstance(status.reason, str)
        if not status.available:
            assert status.reason, f"{name} is unavailable without a reason"
    if not torch.cuda.is_available():
        assert not report["cuda"].available and "cuda" in report["cuda"].reason


def test_auto_prefers_compiled_cpu_kernels():
    expected = "cpu" if available_backends()["cpu"].available else "torch"
    assert resolve_backend(torch.device("cpu")) == expected


def test_environment_variable_and_context_manager(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "torch")
    assert requested_backend() == "torch"
    with use_backend("auto"):
        assert requested_backend() == "auto"
        with use_backend("cpu"):
            assert requested_backend() == "cpu"
        assert requested_backend() == "auto"
    assert requested_backend() == "torch"


def test_bad_names_raise(monkeypatch):
    with pytest.raises(ValueError, match="backend must be one of"):
        with use_backend("fastest"):
            pass
    monkeypatch.setenv(ENV_VAR, "nope")
    with pytest.raises(ValueError, match=f"{ENV_VAR} must be one of"):
        requested_backend()


def test_explicit_unusable_backend_raises_and_auto_falls_back(monkeypatch):
    with (
        use_backend("cuda"),
        pytest.raises(RuntimeError, match="backend 'cuda' was requested but cannot run on cpu tensors"),
    ):
        clarep_fast.cka(torch.randn(4, 3), torch.randn(4, 2))
    monkeypatch.setattr(backends, "extension", lambda: None)
    monkeypatch.setattr(backends, "extension_error", lambda: "pretend the build failed")
    with use_backend("cpu"), pytest.raises(RuntimeError, match="pretend the build failed"):
        clarep_fast.cka(torch.randn(4, 3), torch.randn(4, 2))
    assert resolve_backend(torch.device("cpu")) == "torch"


class _OnSecondGpu(torch.Tensor):
    """A CPU tensor that says it lives on cuda:1 (what a Triton launcher reads to pick the device)."""

    @property
    def device(self):
        return torch.device("cuda", 1)


def test_triton_launchers_run_on_the_tensors_gpu_not_the_current_one(monkeypatch):
    entered = []

    class Recorder:
        def __init__(self, device):
            self.device = device

        def __enter__(self):
            entered.append(self.device)

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "device", Recorder)
    seen = []
    Stages = collections.namedtuple("Stages", ["launch"])
    kernels = backends.Kernels(
        torch=(),
        triton=lambda: Stages(lambda x, flag: seen.append((x.device, flag, list(entered)))),
        compiled=lambda: (),
    )
    launcher = kernels.on("triton").launch
    launcher(torch.zeros(2).as_subclass(_OnSecondGpu), True)
    assert seen == [(torch.device("cuda", 1), True, [torch.device("cuda", 1)])]
    launcher(torch.zeros(2), False)  # CPU tensors (the interpreter): no device switch
    assert len(entered) == 1 and seen[-1][1] is False


def test_each_torchrun_rank_makes_its_gpu_current(monkeypatch):
    import torch.distributed as dist

    from clarep_fast.pipeline import distributed

    calls = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: calls.append(("set_device", index)))
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend: calls.append(("init", backend)))
    monkeypatch.setattr(dist, "get_rank", lambda: 1)
    assert distributed.join_process_group() == (1, 2)
    assert calls == [("set_device", 1), ("init", "nccl")]
