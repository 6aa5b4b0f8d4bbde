"""Files of the pipeline: written atomically, and binary ones carry their format, version and digest.

Every write goes to a temporary file in the same folder that is then renamed over the target
(os.replace is atomic on POSIX), so a kill at any moment leaves each file complete or as it was.

    save_checked(path, "student", payload)       # torch.save of {format, version, sha256, payload}
    payload = load_checked(path, "student", remedy="retrain it")   # refuses a foreign, outdated, truncated or garbled file

Shards of a CLARep bank (safetensors) carry the same three fields in their metadata
(``shard_metadata`` / ``check_shard``). The digest is a sha256 over every tensor's dtype, shape and
bytes and every other value in the payload, in a fixed order: a file whose bytes were changed
after it was written no longer matches it, whether or not the change breaks the container.
Nothing is unpickled beyond what ``torch.load(weights_only=True)`` admits.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Callable

import torch


FORMAT_VERSION = 2


class DamagedFileError(ValueError):
    """A file the pipeline wrote (or was pointed at) that it cannot trust; the message names the file and what to do."""


def read_json(path: Path, what: str, remedy: str):
    """A JSON file the pipeline wrote; a clear error naming it when it is not readable JSON."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DamagedFileError(f"{path} ({what}) is not readable JSON ({error}): {remedy}") from None


def read_given_json(path: str | Path, what: str):
    """A JSON file the user hands in (named by its flag in ``what``): refused by name when missing or not JSON."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{what} {path} is not JSON ({error})") from None


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """``write(temporary)`` into the target's folder, then rename it onto ``path``. The temporary
    keeps the suffix, so writers that pick a format from it (PNG figures) work unchanged. If the
    write fails (a full disk, a kill) the target is untouched and the temporary is removed; a full
    disk is reported with the file's name and how much was written before it filled."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        write(temporary)
        os.chmod(temporary, 0o666 & ~_UMASK)  # what open() would have given it: some writers make their files 0600
        os.replace(temporary, path)
    except OSError as error:
        if error.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        written = temporary.stat().st_size if temporary.exists() else 0
        free = shutil.disk_usage(path.parent).free
        raise OSError(
            error.errno,
            f"no space left to write {path}: {written:,} bytes were written before the disk filled and "
            f"{free:,} bytes are free; nothing was replaced. Free some space and rerun the command",
        ) from None
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


def content_digest(value) -> str:
    digest = hashlib.sha256()
    _feed(digest, value)
    return digest.hexdigest()


def _feed(digest, value) -> None:
    if isinstance(value, torch.Tensor):
        flat = value.detach().cpu().contiguous().reshape(-1)
        digest.update(f"T{value.dtype}{tuple(value.shape)}".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    elif isinstance(value, dict):
        digest.update(f"D{len(value)}".encode())
        for key in sorted(value, key=repr):
            digest.update(repr(key).encode())
            _feed(digest, value[key])
    elif isinstance(value, (list, tuple)):
        digest.update(f"L{len(value)}".encode())
        for item in value:
            _feed(digest, item)
    else:
        digest.update(f"V{value!r}".encode())


TRAINING_DIVERGED = "the run diverged: lower its learning rate"


def require_finite(path: Path, value, cause: str = TRAINING_DIVERGED, key: str = "") -> None:
    """Refuse to write ``value`` (a tensor, or dicts/lists of them) to ``path`` if any float tensor
    holds NaN or Inf: a NaN checkpoint would resume a diverged run, a NaN shard would poison every
    student distilled from it. The error names the entry, the first bad index and the likely ``cause``."""
    if isinstance(value, torch.Tensor):
        if value.is_floating_point() or value.is_complex():
            bad = ~torch.isfinite(value.detach())
            if bool(bad.any()):
                index = tuple(int(i) for i in bad.nonzero()[0])
                raise ValueError(
                    f"refusing to write {path}: {key or 'the tensor'} holds NaN or Inf (first at index {index}); nothing was written ({cause})"
                )
    elif isinstance(value, dict):
        for name, item in value.items():
            require_finite(path, item, cause, f"{key}.{name}" if key else str(name))
    elif isinstance(value, (list, tuple)):
        for position, item in enumerate(value):
            require_finite(path, item, cause, f"{key}[{position}]")


def save_checked(path: Path, kind: str, payload) -> None:
    """Atomically write ``payload`` as a clarep_fast ``kind`` file with its version and digest (never NaN/Inf)."""
    require_finite(path, payload)
    save_torch(
        path,
        {
            "format": f"clarep_fast.{kind}",
            "version": FORMAT_VERSION,
            "sha256": content_digest(payload),
            "payload": payload,
        },
    )


def load_checked(path: Path, kind: str, *, remedy: str):
    """The payload of a file written by ``save_checked`` (tensors on the CPU); a clear error otherwise.
    ``remedy`` says what to do about a bad file (e.g. "delete it and rerun the command to redo that step")."""
    path = Path(path)
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as error:  # truncated zip, garbled pickle, a foreign object: torch raises many kinds
        raise DamagedFileError(
            f"{path} cannot be read as a clarep_fast {kind} file ({type(error).__name__}); it is damaged or not ours: {remedy}"
        ) from None
    if not isinstance(stored, dict) or stored.get("format") != f"clarep_fast.{kind}":
        found = stored.get("format") if isinstance(stored, dict) else type(stored).__name__
        raise DamagedFileError(
            f"{path} is not a clarep_fast {kind} file (found {found!r}; files written before format versions have none): {remedy}"
        )
    if stored.get("version") != FORMAT_VERSION:
        raise DamagedFileError(
            f"{path} was written in {kind} format version {stored.get('version')!r}; this clarep_fast reads version {FORMAT_VERSION}: {remedy}"
        )
    if content_digest(stored["payload"]) != stored.get("sha256"):
        raise DamagedFileError(f"{path} is damaged: its content does not match the digest written with it: {remedy}")
    return stored["payload"]


def shard_metadata(tensors: dict[str, torch.Tensor], bank_identity: str) -> dict[str, str]:
    """safetensors metadata (str -> str) for a bank shard: format, version, digest of the tensors and
    the identity of the bank it belongs to (a digest of that bank's config)."""
    return {
        "format": "clarep_fast.bank-shard",
        "version": str(FORMAT_VERSION),
        "sha256": content_digest(tensors),
        "bank": bank_identity,
    }


def check_shard(
    path: Path, metadata: dict[str, str] | None, tensors: dict[str, torch.Tensor], remedy: str, bank_identity: str
) -> None:
    metadata = metadata or {}
    if metadata.get("format") != "clarep_fast.bank-shard":
        raise DamagedFileError(
            f"{path} is not a clarep_fast bank shard (no format in its metadata; banks written before format versions have none): {remedy}"
        )
    if metadata.get("version") != str(FORMAT_VERSION):
        raise DamagedFileError(
            f"{path} was written in bank-shard format version {metadata.get('version')!r}; this clarep_fast reads version {FORMAT_VERSION}: {remedy}"
        )
    if content_digest(tensors) != metadata.get("sha256"):
        raise DamagedFileError(f"{path} is damaged: its tensors do not match the digest written with them: {remedy}")
    if "bank" not in metadata:
        raise DamagedFileError(
            f"{path} was written by an older clarep_fast (no bank identity in its metadata), so it cannot be checked against this bank: {remedy}"
        )
    if metadata["bank"] != bank_identity:  # intact, but made by a search of another config (or another teacher)
        raise DamagedFileError(
            f"{path} belongs to another bank: it was written by a search with another config or teacher than this bank's "
            f"config.json (copied from another bank, or config.json was edited): {remedy}"
        )
