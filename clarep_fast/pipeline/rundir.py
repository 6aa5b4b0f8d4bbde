"""Run folders: the one owner of config write/compare, atomic writes and checkpoint save/resume.

Every long command (train-teacher, search, distill, demo) works in a folder it can be rerun on:

    run = RunDir(path, command="distill", may_change=("epochs",))
    resumed = run.claim(config)            # config.json: written, or compared with the one there
    state = run.load_checkpoint(device)    # None on a fresh run
    ...
    run.save_checkpoint({...})             # atomic: the old checkpoint or the new, never half of one

``claim`` refuses a folder whose config.json differs from the new config in any key outside
``may_change`` and names the keys. Every write goes to a temporary file in the same folder that
is then renamed over the target (os.replace is atomic on POSIX), so a kill at any moment leaves
each file either complete or as it was.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Callable, Iterable

import torch


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """``write(temporary)`` into the target's folder, then rename it onto ``path``. The temporary
    keeps the suffix, so writers that pick a format from it (PNG figures) work unchanged."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda temporary: temporary.write_text(text))


def write_json(path: Path, payload) -> None:
    write_text(path, json.dumps(payload, indent=1))


def save_torch(path: Path, obj) -> None:
    atomic_write(path, lambda temporary: torch.save(obj, temporary))


def save_figure(path: Path, figure) -> None:
    """A matplotlib figure as PNG (the figure is closed afterwards)."""
    import matplotlib.pyplot as plt

    atomic_write(path, lambda temporary: figure.savefig(temporary, dpi=120, bbox_inches="tight"))
    plt.close(figure)


def as_json(config) -> dict:
    """A (nested) config dataclass or dict as it reads back from config.json: tuples become lists."""
    if dataclasses.is_dataclass(config):
        config = dataclasses.asdict(config)
    return json.loads(json.dumps(config))


class RunDir:
    """One run folder of one command; see the module docstring."""

    CONFIG = "config.json"
    CHECKPOINT = "checkpoint.pt"

    def __init__(self, path: str | Path, *, command: str, may_change: Iterable[str] = ()):
        self.path = Path(path)
        self.command = command
        self.may_change = frozenset(may_change)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def existing_config(self) -> dict | None:
        file = self.path / self.CONFIG
        return json.loads(file.read_text()) if file.exists() else None

    def claim(self, config, *, write: bool = True) -> bool:
        """Compare ``config`` with the folder's config.json (if any) and write it (unless ``write`` is
        False: torchrun ranks other than 0). Returns True when the folder held a run of this config."""
        new = as_json(config)
        old = self.existing_config()
        if old is not None:
            changed = sorted(key for key in set(old) | set(new) if key not in self.may_change and old.get(key) != new.get(key))
            if changed:
                raise ValueError(
                    f"{self.path} holds a {self.command} run made with a different config (differs in: {', '.join(changed)}); "
                    f"use a new folder, or rerun with the settings in {self.path / self.CONFIG}"
                )
        if write:
            write_json(self.path / self.CONFIG, new)
        return old is not None

    def write_json(self, name: str, payload) -> None:
        write_json(self.path / name, payload)

    def write_text(self, name: str, text: str) -> None:
        write_text(self.path / name, text)

    def save_figure(self, name: str, figure) -> None:
        save_figure(self.path / name, figure)

    def save_checkpoint(self, state: dict) -> None:
        save_torch(self.path / self.CHECKPOINT, state)

    def load_checkpoint(self, map_location) -> dict | None:
        """The last checkpoint (tensors only: weights_only=True), or None on a fresh run."""
        file = self.path / self.CHECKPOINT
        return torch.load(file, map_location=map_location, weights_only=True) if file.exists() else None
