"""Run folders: the one owner of the folder lock, config write/compare and checkpoint save/resume.

Every long command (train-teacher, search, distill, demo) works in a folder it can be rerun on:

    run = RunDir(path, command="train-teacher", may_change=("steps",))
    resumed = run.claim(config)            # config.json: written, or compared with the one there
    start = run.restore({"model": model, "optimizer": optimizer}, counter="step")   # 0 on a fresh run
    ...
    run.save_checkpoint({...})             # atomic: the old checkpoint or the new, never half of one

``claim`` first takes the folder's lock (an OS file lock on ``.lock``, held until the process ends,
so a killed run leaves no stale lock): a second process on the same folder is refused at once with
the holder's pid (torchrun ranks other than 0 do not lock: rank 0 holds it for the job). It removes
the temporaries a SIGKILLed writer left behind, then
refuses a folder whose config.json differs from the new config in any key outside ``may_change``
and the run-time settings (RUNTIME_SETTINGS: device, workers; runtime.py keeps them out of
configs, this keeps folders written before that resumable), and names the keys. Every file goes through clarep_fast/pipeline/files.py: written
atomically; checkpoints carry their format, version and a digest, and a damaged one is refused.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import math
import os
import re
from pathlib import Path
from typing import Iterable

from clarep_fast.pipeline.files import DamagedFileError, load_checked, read_json, save_checked, write_json, write_text


# Settings of the machine a run happens to be on, not of the run: never compared on resume (a run
# resumes on another machine, with more DataLoader workers) and never part of an identity.
RUNTIME_SETTINGS = ("device", "workers")


def is_runtime_setting(key: str) -> bool:
    """Whether a flattened config key ("data.workers", "device") names a run-time setting."""
    return key.rsplit(".", 1)[-1] in RUNTIME_SETTINGS


class RunFolderBusy(RuntimeError):
    """Another process holds the run folder's lock."""


_HELD_LOCKS: dict[str, object] = {}  # folder -> open lock file of this process


_TEMPORARY = re.compile(r"^\..+\.(\d+)\.tmp")  # files.atomic_write's temporaries: .<stem>.<pid>.tmp<suffix>


def remove_stale_temporaries(folder: Path) -> None:
    """Delete the temporaries a killed writer left in ``folder`` (SIGKILL skips its clean-up): those
    whose writer's pid is gone. Called by the lock holder, the only writer of the folder."""
    for file in folder.rglob(".*.tmp*"):
        match = _TEMPORARY.match(file.name)
        if match is None or not file.is_file():
            continue
        try:
            os.kill(int(match.group(1)), 0)
        except ProcessLookupError:
            file.unlink(missing_ok=True)
        except PermissionError:  # alive, someone else's
            pass


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
        if not file.exists():
            return None
        config = read_json(file, f"the {self.command} run's config", "restore it, or use a new folder")
        if not isinstance(config, dict):
            raise DamagedFileError(
                f"{file} is not a {self.command} config (a JSON object): restore it, or use a new folder"
            )
        return config

    def claim(self, config, *, write: bool = True) -> bool:
        """Lock the folder, compare ``config`` with its config.json (if any) and write it (unless ``write``
        is False: torchrun ranks other than 0, which neither lock nor write). Returns True when the
        folder held a run of this config."""
        if write:
            self.lock()
            remove_stale_temporaries(self.path)
        new = {"command": self.command, **as_json(config)}
        old = self.existing_config()
        if old is not None:
            # folders written before the key was recorded have none
            if old.get("command", self.command) != self.command:
                raise ValueError(
                    f"{self.path} holds a {old['command']} run, not a {self.command} run; give {self.command} a folder of its own"
                )
            old_flat, new_flat = flatten_config({"command": self.command, **old}), flatten_config(new)
            changed = sorted(
                key
                for key in set(old_flat) | set(new_flat)
                if key not in self.may_change and not is_runtime_setting(key) and old_flat.get(key) != new_flat.get(key)
            )
            if changed:
                shown = ", ".join(changed[:8]) + (f" and {len(changed) - 8} more" if len(changed) > 8 else "")
                raise ValueError(
                    f"{self.path} holds a {self.command} run made with a different config (differs in: {shown}); "
                    f"use a new folder, or rerun with the settings in {self.path / self.CONFIG}"
                )
        if write:
            write_json(self.path / self.CONFIG, new)
        return old is not None

    def lock(self) -> None:
        """Hold ``.lock`` in the folder for the rest of this process; refuse if another process holds it."""
        key = str(self.path.resolve())
        if key in _HELD_LOCKS:
            return
        if self.path.exists() and not self.path.is_dir():
            raise NotADirectoryError(
                f"{self.path} is a file, not a run folder; give {self.command} a folder (a new one, or one of an earlier {self.command} run)"
            )
        self.path.mkdir(parents=True, exist_ok=True)
        handle = open(self.path / ".lock", "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise RunFolderBusy(
                f"{self.path} is in use by another clarep-fast process (pid {holder}); wait for it to finish, or stop it and rerun"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        _HELD_LOCKS[key] = handle  # kept open: the OS releases the lock when this process ends, however it ends

    def write_json(self, name: str, payload) -> None:
        write_json(self.path / name, payload)

    def write_text(self, name: str, text: str) -> None:
        write_text(self.path / name, text)

    def save_checkpoint(self, state: dict) -> None:
        save_checked(self.path / self.CHECKPOINT, f"{self.command}-checkpoint", state)

    def restore(self, parts: dict, counter: str) -> int:
        """Load each part's ``state_dict`` (model, optimizer, schedule, ...) from the last checkpoint,
        saved under the same names; return the checkpoint's ``counter`` (step or epoch), 0 on a fresh run."""
        state = self.load_checkpoint()
        if state is None:
            return 0
        for name, part in parts.items():
            part.load_state_dict(state[name])
        return int(state[counter])

    def check_loss(self, value: float, step: int) -> None:
        """Stop a diverged run before its NaN reaches the weights or a checkpoint: the last checkpoint stays the run's state."""
        if not math.isfinite(value):
            raise self.diverged(step, f"the loss is {value}")

    def diverged(self, step: int, what: str) -> ValueError:
        return ValueError(
            f"training diverged at step {step} ({what}). Nothing after the last checkpoint in {self.path} "
            "is kept; rerun in a new folder with a lower --learning-rate"
        )

    def load_checkpoint(self) -> dict | None:
        """The last checkpoint (tensors on the CPU), or None on a fresh run; a damaged one is refused."""
        file = self.path / self.CHECKPOINT
        if not file.exists():
            return None
        return load_checked(
            file, f"{self.command}-checkpoint", remedy="delete it to restart this run from its beginning"
        )


def flatten_config(config: dict, prefix: str = "") -> dict:
    """Nested config sections as dotted keys ("data.seed"), so a change is named exactly and
    ``may_change`` can name a nested key."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            flat.update(flatten_config(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
