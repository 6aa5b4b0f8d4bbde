"""Backend registry: which implementation of a fused op runs, chosen per call.

Backends:
  cuda   -- CUDA kernels from csrc/<op>/<op>_cuda.cu, in the compiled extension (CUDA tensors)
  triton -- Triton kernels from kernels/ (CUDA tensors; CPU tensors only with TRITON_INTERPRET=1)
  cpu    -- C++/OpenMP kernels from csrc/<op>/<op>_cpu.cpp, in the compiled extension (CPU tensors)
  torch  -- the pure-PyTorch reference (any device)

The request comes from, in order: the innermost ``use_backend(...)`` context, the environment
variable ``CLAREP_FAST_BACKEND``, else "auto". "auto" takes the first usable backend in
``AUTO_ORDER`` for the tensors' device; an explicit request for an unusable backend raises.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib.util
import os
from typing import Callable, Iterator, NamedTuple

import torch

from clarep_fast._extension import extension, extension_error

BACKENDS = ("cuda", "triton", "cpu", "torch")
ENV_VAR = "CLAREP_FAST_BACKEND"
AUTO_ORDER = {"cuda": ("cuda", "triton", "torch"), "cpu": ("cpu", "torch")}

_requested: contextvars.ContextVar[str | None] = contextvars.ContextVar("clarep_fast_backend", default=None)


class BackendStatus(NamedTuple):
    available: bool  # usable for at least one device type on this machine
    devices: tuple[str, ...]  # device types it can run on here
    reason: str  # why it is unusable (or where it is not), '' when usable everywhere it applies


def _check_name(name: str) -> str:
    if name not in BACKENDS + ("auto",):
        raise ValueError(f"backend must be one of {BACKENDS + ('auto',)}, got {name!r}")
    return name


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Run the fused ops inside this block on backend ``name`` (or "auto")."""
    token = _requested.set(_check_name(name))
    try:
        yield
    finally:
        _requested.reset(token)


def requested_backend() -> str:
    """The backend asked for right now: context manager, then CLAREP_FAST_BACKEND, then "auto"."""
    name = _requested.get()
    if name is None:
        name = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
        if name not in BACKENDS + ("auto",):
            raise ValueError(f"{ENV_VAR} must be one of {BACKENDS + ('auto',)}, got {name!r}")
    return name


@functools.cache
def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def _triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def unusable_reason(name: str, device_type: str) -> str:
    """'' if backend ``name`` can run ops on tensors of ``device_type`` here, else why not."""
    if device_type not in ("cpu", "cuda"):
        return f"clarep_fast runs on cpu and cuda tensors, got device type {device_type!r}"
    if name == "torch":
        return ""
    if name == "triton":
        if not _triton_installed():
            return "triton is not installed"
        if device_type == "cpu" and not _triton_interpreting():
            return "Triton has no CPU backend; set TRITON_INTERPRET=1 (before import) to run its interpreter"
        if device_type == "cuda" and not torch.cuda.is_available():
            return "no CUDA device is visible"
        return ""
    if name == "cpu":
        if device_type != "cpu":
            return "the cpu backend runs on CPU tensors only"
        return "" if extension() is not None else extension_error()
    if name == "cuda":
        if device_type != "cuda":
            return "the cuda backend runs on CUDA tensors only"
        if extension() is None:
            return extension_error()
        if not extension().built_with_cuda():
            return "clarep_fast._C was built without CUDA (no toolkit or a CPU-only torch at build time, or CLAREP_FAST_CUDA=0)"
        if not torch.cuda.is_available():
            return "no CUDA device is visible"
        return ""
    raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")


def available_backends() -> dict[str, BackendStatus]:
    """For each backend: is it usable here, on which device types, and if not, why not."""
    report = {}
    for name in BACKENDS:
        reasons = {device: unusable_reason(name, device) for device in ("cpu", "cuda")}
        devices = tuple(device for device, reason in reasons.items() if not reason)
        why = "; ".join(f"{device}: {reason}" for device, reason in reasons.items() if reason)
        report[name] = BackendStatus(bool(devices), devices, why)
    return report


def resolve_backend(device: torch.device) -> str:
    """The backend that runs an op on ``device`` now; raises if an explicit request is unusable.

    Under torch.compile the answer is taken once, at trace time, and baked into the graph.
    """
    name = requested_backend()
    if name != "auto":
        reason = unusable_reason(name, device.type)
        if reason:
            raise RuntimeError(f"backend {name!r} was requested but cannot run on {device.type} tensors: {reason}")
        return name
    if device.type not in AUTO_ORDER:
        raise ValueError(f"clarep_fast runs on cpu and cuda tensors, got device type {device.type!r}")
    for candidate in AUTO_ORDER[device.type]:
        if not unusable_reason(candidate, device.type):
            return candidate
    return "torch"


# torch.compile treats the choice as a trace-time constant (what torch.compiler.assume_constant_result
# does: it only sets this flag; calling it here would import torch._dynamo, and with it triton, at import).
resolve_backend._dynamo_marked_constant = True


class Kernels:
    """One op's kernels on every backend, declared once in ``clarep_fast/ops/<op>.py``:

      torch     the pure-PyTorch kernels of ``clarep_fast/reference/<op>.py``
      triton    a function returning the Triton launchers of ``kernels/<op>.py`` (called on first
                use: Triton is imported only when the triton backend runs)
      compiled  a function returning the operators the compiled extension registered,
                ``torch.ops.clarep_fast_C.<name>`` (cpu and cuda: the dispatcher picks by device)
    Each backend gives one instance of the op's named tuple of stages (for instance
    ``CkaKernels(stats, grads)``), every stage following the contract the op file writes down.
    """

    def __init__(self, *, torch: tuple, triton: Callable[[], tuple], compiled: Callable[[], tuple]):
        self._torch, self._triton, self._compiled = torch, triton, compiled
        self._loaded: dict[str, tuple] = {}

    def on(self, backend: str) -> tuple:
        """The kernel tuple of ``backend`` (resolved once per backend, then cached)."""
        kernels = self._loaded.get(backend)
        if kernels is None:
            if backend == "torch":
                kernels = self._torch
            elif backend == "triton":
                launchers = self._triton()
                kernels = launchers._make(_on_the_tensors_device(launcher) for launcher in launchers)
            elif backend in ("cpu", "cuda"):
                kernels = self._compiled()
            else:
                raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
            self._loaded[backend] = kernels
        return kernels


def takes_whole_call(backend: str) -> bool:
    """Whether an op call on ``backend`` runs as one compiled operator with its autograd in C++
    (torch.ops.clarep_fast_C.<op>_call, csrc/common/call.h): the cpu and cuda backends, in eager
    mode. Elsewhere an op takes one of two Python paths: under torch.compile its custom ops with
    their registered autograd (what dynamo traces, with fake kernels); otherwise an
    autograd.Function around the same custom ops, which torch.func transforms accept (functorch
    refuses C++ autograd nodes and the custom ops' own autograd)."""
    if backend not in ("cpu", "cuda"):
        return False
    return not (torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active())


def _on_the_tensors_device(launcher: Callable) -> Callable:
    """A Triton launcher that launches on its first tensor argument's GPU. Triton launches on the
    *current* CUDA device, which need not be the tensors' (cuda:1 tensors with cuda:0 current: the
    kernel would run on GPU 0 with GPU 1's pointers). The compiled ops guard their device themselves."""

    @functools.wraps(launcher)
    def launch(*args, **kwargs):
        first = next((arg for arg in args if isinstance(arg, torch.Tensor)), None)
        if first is None or first.device.type != "cuda" or first.device.index in (None, torch.cuda.current_device()):
            return launcher(*args, **kwargs)
        with torch.cuda.device(first.device):
            return launcher(*args, **kwargs)

    return launch


def compiled_ops():
    """``torch.ops.clarep_fast_C``, with the extension loaded (its import registers the operators)."""
    if extension() is None:
        raise RuntimeError(extension_error())
    return torch.ops.clarep_fast_C
