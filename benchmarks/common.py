"""Measurement helpers shared by the benchmark suite: peak memory, GPU timing, environment, schema.

Peak memory on CPU: the process's resident-set high-water mark (VmHWM) is reset through
/proc/self/clear_refs before the call and read after it, minus the resident set before it. That
only sees allocations glibc returns to the OS, so the process that measures it runs with
MALLOC_MMAP_THRESHOLD_=65536: every tensor above 64 KiB is its own mapping, allocated when touched
and unmapped when freed. That setting also makes every such allocation page-fault afresh, which no
user's process pays (glibc's dynamic threshold keeps freed tensors up to 32 MiB in a warm heap), so
on CPU benchmarks/run.py measures in two processes: CLAREP_FAST_BENCH_PASS=peak with the setting
(peak memory, one call per row) and CLAREP_FAST_BENCH_PASS=time without it (the timed rounds).
On CUDA: torch.cuda.max_memory_allocated after reset_peak_memory_stats, minus what was allocated.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
RESULT_FIELDS = (
    "op", "provider", "mode", "shape", "dtype", "device", "device_name",
    "p50_ms", "p20_ms", "p80_ms", "rounds", "peak_mb", "extra_mb", "min_mb_moved", "gflop",
    "torch", "triton", "git_sha",
)  # fmt: skip


def _proc_status_bytes(key: str) -> int:
    with open("/proc/self/status") as status:
        return int(re.search(rf"^{key}:\s+(\d+) kB", status.read(), re.M).group(1)) * 1024


BENCH_PASS = os.environ.get("CLAREP_FAST_BENCH_PASS", "both")  # "peak", "time" or "both" (plain pytest)


def cpu_peak_supported() -> bool:
    return (
        platform.system() == "Linux" and os.environ.get("MALLOC_MMAP_THRESHOLD_") is not None and BENCH_PASS != "time"
    )


def peak_memory_bytes(fn, device: str) -> int | None:
    """Bytes allocated at the peak of ``fn()`` above what was live before it (None if unmeasurable)."""
    if device == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    if not cpu_peak_supported():
        return None
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # reset VmHWM to the current resident set
    before = _proc_status_bytes("VmRSS")
    fn()
    return _proc_status_bytes("VmHWM") - before


def timed(fn, device: str) -> tuple[object, float]:
    """(fn(), wall-clock seconds), synchronized on CUDA before and after: for calls too long to repeat."""
    if device == "cuda":
        torch.cuda.synchronize()
    began = time.perf_counter()
    result = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return result, time.perf_counter() - began


def _quantile(data: list[float], q: float) -> float:
    ordered = sorted(data)
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def quantiles_ms(data_ms: list[float]) -> dict[str, float]:
    """{p50_ms, p20_ms, p80_ms} of wall-clock rounds (linear interpolation between ranks)."""
    return {"p50_ms": _quantile(data_ms, 0.5), "p20_ms": _quantile(data_ms, 0.2), "p80_ms": _quantile(data_ms, 0.8)}


def gpu_quantiles_ms(fn) -> tuple[float, float, float]:
    """(p50, p20, p80) in ms from triton.testing.do_bench (CUDA events, cache flushed between runs)."""
    from triton.testing import do_bench

    p50, p20, p80 = do_bench(fn, warmup=50, rep=300, quantiles=[0.5, 0.2, 0.8])
    return p50, p20, p80


def measure(
    benchmark, step, device: str, *, rounds: int, warmup_rounds: int = 0, kept_bytes: int = 0, device_step=None, **row
) -> None:
    """One benchmark row: the peak memory of one ``step()``, the row's fields, on CUDA the
    do_bench quantiles of ``device_step`` (default ``step``; pass the unsynchronized call where
    ``step`` synchronizes), then pytest-benchmark's wall-clock rounds of ``step``.

    extra_mb is the peak minus ``kept_bytes``, what the call must leave behind (its output or the
    gradients it returns): the memory a fused op exists to save."""
    peak = peak_memory_bytes(step, device)
    benchmark.extra_info.update(
        row,
        peak_mb=None if peak is None else peak / 2**20,
        extra_mb=None if peak is None else (peak - kept_bytes) / 2**20,
    )
    if device == "cuda":
        p50, p20, p80 = gpu_quantiles_ms(device_step or step)
        benchmark.extra_info.update(p50_ms=p50, p20_ms=p20, p80_ms=p80)
    benchmark.pedantic(step, rounds=rounds, iterations=1, warmup_rounds=warmup_rounds)


def git_sha() -> str:
    """Short sha of HEAD (+dirty); CLAREP_FAST_GIT_SHA overrides it (copies of the tree without .git)."""
    if os.environ.get("CLAREP_FAST_GIT_SHA"):
        return os.environ["CLAREP_FAST_GIT_SHA"]
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return (sha + ("+dirty" if dirty else "")) or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    model = "cpu"
    try:
        with open("/proc/cpuinfo") as info:
            found = re.search(r"^model name\s*:\s*(.+)$", info.read(), re.M)
            model = found.group(1).strip() if found else model
    except OSError:
        pass
    return f"{model} ({torch.get_num_threads()} threads)"


def versions() -> dict[str, str]:
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "absent"
    return {"torch": torch.__version__, "triton": triton_version}
