"""Where and how a command runs, never what it computes: the device, the DataLoader workers, and
the CPU threads torch may use (no more than the CPUs this process may actually run on).

Bound once per command (the CLI's --device and --workers, an API caller's ``runtime=``) and handed
down; never a config field, so never compared on resume and never part of an identity: a run
resumes on another machine or with more workers and computes the same thing.

    train_student(config, run_dir, runtime=Runtime(device="cuda:1", workers=8))
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from clarep_fast.pipeline.distributed import default_device


@dataclass(frozen=True)
class Runtime:
    device: str | None = None  # None: this rank's GPU when there is one, else the CPU
    workers: int = 0  # DataLoader workers decoding folder images (0: in the main process)

    def __post_init__(self):
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 0:
            raise ValueError(f"workers must be an int >= 0, got {self.workers!r}")
        if self.device is not None:
            torch.device(self.device)  # a string torch cannot read raises here, naming it

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device or default_device())


def usable_cpus() -> int:
    """CPUs this process may actually use: its affinity mask, capped by a cgroup CPU quota (a
    container limited to 2 CPUs of a 64-core host sees 64 in its affinity mask, and 64 OpenMP
    threads time-sliced onto 2 CPUs run many times slower than 2)."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    for path, parse in (("/sys/fs/cgroup/cpu.max", lambda t: t.split()), ("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", None)):
        try:
            if parse is not None:
                quota, period = parse(Path(path).read_text())
            else:
                quota, period = (
                    Path(path).read_text().strip(),
                    Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text().strip(),
                )
        except (OSError, ValueError):
            continue
        if quota not in ("max", "-1") and int(period) > 0:
            count = min(count, max(1, -(-int(quota) // int(period))))
        break
    return count


def limit_threads() -> None:
    """Unless the user set OMP_NUM_THREADS, run torch on no more threads than usable CPUs."""
    if "OMP_NUM_THREADS" not in os.environ and torch.get_num_threads() > usable_cpus():
        torch.set_num_threads(usable_cpus())
