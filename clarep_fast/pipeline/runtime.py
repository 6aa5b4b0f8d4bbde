"""Where and how a command runs, never what it computes: the device and the DataLoader workers.

Bound once per command (the CLI's --device and --workers, an API caller's ``runtime=``) and handed
down; never a config field, so never compared on resume and never part of an identity: a run
resumes on another machine or with more workers and computes the same thing.

    train_student(config, run_dir, runtime=Runtime(device="cuda:1", workers=8))
"""

from __future__ import annotations

from dataclasses import dataclass

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
