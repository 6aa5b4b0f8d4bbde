"""The CLARep bank on disk: a folder of safetensors shards plus the resolved search config.

    bank/config.json                 the resolved SearchConfig and the teacher's fingerprint
    bank/shards/shard_00000.safetensors ...
        index             (n,)  global item numbers (the plan's order)
        classes           (n,)  class of each CLARep
        latents           (n, C, r, r)  the CLAReps: x~ = (I - V Vᵀ) x_{t_e} (rescaled if configured); VAE
                                        latents for a latent teacher, images' noisy versions for a pixel one
        start_latents     (n, C, r, r)  x_{t_e} before projection
        samples           (n, 3, R, R)  canonical samples: DDIM with CFG from x~ at t_e to 0 (decoded by the
                                        VAE for a latent teacher), images in [0, 1] at the data resolution
        ordinary_samples  (n, 3, R, R)  the same from x_{t_e} (no projection), for comparison
        singular_values   (n, k)        top-k singular values of the feature Jacobian (0: random directions)
        iterations        (n,)          subspace iterations each image ran
        features.<layer>  (n, C_l·s²)   the teacher's canonical features: of the canonical sample re-noised
                                        to t_f, null label (config feature_from / feature_time / feature_label)
        ordinary_features.<layer>       the same of the ordinary sample (same noise draw)
A shard is written to a temporary name and renamed: a file under shards/ is always complete, so a
killed search resumes by skipping the shards that exist (after checking them). Every shard carries
its format, version, a digest of its tensors and the bank's identity (a digest of config.json
without the keys a resume may change) in the safetensors metadata, and config.json its
``bank_format``: a damaged, foreign or outdated file, or a shard of another bank, is refused by
name, never misread.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from clarep_fast.pipeline.files import (
    FORMAT_VERSION,
    DamagedFileError,
    atomic_write,
    check_shard,
    read_json,
    require_finite,
    shard_metadata,
)
from clarep_fast.pipeline.rundir import flatten_config, is_runtime_setting

SHARDS = "shards"
# keys of a search's config a resume may change: the teacher's path (moved, or named from another
# folder), because teacher_sha256 is its identity (run-time settings are never config: runtime.py)
MAY_CHANGE = ("teacher", "class_map")  # the class map's result is teacher_labels, part of the identity


def bank_identity(config: dict) -> str:
    """sha256 of what decides a bank's content: its resolved config without MAY_CHANGE (and the
    command name config.json adds). Every shard carries it, so one copied from a bank of other
    settings or another teacher is refused even when its CLARep indices and shapes fit."""
    kept = {
        key: value
        for key, value in flatten_config(config).items()
        if key not in MAY_CHANGE and key != "command" and not is_runtime_setting(key)
    }
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()


def shard_path(bank: Path, shard: int) -> Path:
    return bank / SHARDS / f"shard_{shard:05d}.safetensors"


def write_shard(bank: Path, shard: int, tensors: dict[str, Tensor], identity: str) -> None:
    """Atomically write one shard, with its format, version, digest and bank identity in the safetensors metadata."""
    payload = {name: tensor.detach().cpu().contiguous() for name, tensor in tensors.items()}
    cause = "the teacher gave NaN/Inf for the CLARep at that index of the shard: check its weights, and --dtype (float16 can overflow)"
    require_finite(shard_path(bank, shard), payload, cause)
    metadata = shard_metadata(payload, identity)
    atomic_write(shard_path(bank, shard), lambda temporary: save_file(payload, str(temporary), metadata=metadata))


def read_shard(bank: Path, shard: int, identity: str) -> dict[str, Tensor]:
    """One shard's tensors; a truncated, garbled, foreign or outdated shard, or one of a bank other
    than ``identity``, is refused by name."""
    path = shard_path(bank, shard)
    remedy = f"delete it and rerun `clarep-fast search {bank}` to recompute that shard"
    try:
        with safe_open(str(path), framework="pt") as opened:
            metadata = opened.metadata()
            tensors = {name: opened.get_tensor(name) for name in opened.keys()}
    except FileNotFoundError:
        raise
    except Exception as error:  # SafetensorError and the OS errors of a damaged file
        raise DamagedFileError(f"{path} cannot be read as a safetensors shard ({error}): {remedy}") from None
    check_shard(path, metadata, tensors, remedy, identity)
    return tensors


def read_bank_config(bank: Path) -> dict:
    """config.json of a bank, refused unless it is a readable bank config of this format version."""
    config_file = bank / "config.json"
    if not config_file.exists():
        raise FileNotFoundError(
            f"{bank} is not a CLARep bank (no config.json); create one with `clarep-fast search {bank}`"
        )
    remedy = "restore it, or make the bank anew with `clarep-fast search` into a new folder"
    config = read_json(config_file, "a CLARep bank's config", remedy)
    if isinstance(config, dict) and config.get("command", "search") != "search":  # e.g. --bank pointed at a distill run
        raise ValueError(
            f"{bank} holds a {config['command']} run, not a CLARep bank; give the folder a `clarep-fast search` made"
        )
    if not isinstance(config, dict) or config.get("bank_format") != FORMAT_VERSION:
        found = config.get("bank_format") if isinstance(config, dict) else None
        raise DamagedFileError(
            f"{config_file} is not a bank config of format version {FORMAT_VERSION} (found {found!r}; banks written before format versions have none): {remedy}"
        )
    missing = [key for key in ("shards", "feature_layers") if key not in config]
    if missing:
        raise DamagedFileError(f"{config_file} lacks {', '.join(missing)}: {remedy}")
    shards, layers = config["shards"], config["feature_layers"]
    if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
        raise DamagedFileError(f"{config_file}: shards must be a positive int, found {shards!r}: {remedy}")
    if not isinstance(layers, list) or not layers or not all(isinstance(layer, str) for layer in layers):
        raise DamagedFileError(
            f"{config_file}: feature_layers must be a non-empty list of layer names, found {layers!r}: {remedy}"
        )
    return config


def _span(index: Tensor) -> str:
    return f"{int(index[0])}..{int(index[-1])}" if len(index) else "none"


# + per-layer features
SHARD_ENTRIES = (
    "index",
    "classes",
    "latents",
    "start_latents",
    "samples",
    "ordinary_samples",
    "singular_values",
    "iterations",
)


class Bank(NamedTuple):
    config: dict  # the resolved search config (config.json)
    index: Tensor
    classes: Tensor
    latents: Tensor
    start_latents: Tensor
    samples: Tensor
    ordinary_samples: Tensor
    singular_values: Tensor
    iterations: Tensor
    features: dict[str, Tensor]  # layer -> (n, C_l·s²), in config["feature_layers"] order
    ordinary_features: dict[str, Tensor]


def load_bank(path: str | Path) -> Bank:
    """Read a complete bank; a missing config or shard is a clear error naming what to rerun."""
    bank = Path(path)
    config = read_bank_config(bank)
    shards = config["shards"]
    missing = [shard for shard in range(shards) if not shard_path(bank, shard).exists()]
    if missing:
        raise FileNotFoundError(
            f"bank {bank} is incomplete: {len(missing)} of {shards} shards missing (first: {missing[0]}); rerun `clarep-fast search {bank}` to finish it"
        )
    layers = config["feature_layers"]
    identity = bank_identity(config)
    parts = [read_shard(bank, shard, identity) for shard in range(shards)]
    needed = list(SHARD_ENTRIES) + [f"{kind}.{layer}" for kind in ("features", "ordinary_features") for layer in layers]
    size, count = config.get("shard_size"), config.get("count")
    for shard, part in enumerate(parts):  # each shard is intact (digest); together they must form one bank
        absent = [name for name in needed if name not in part]
        if absent:
            raise DamagedFileError(
                f"{shard_path(bank, shard)} lacks {', '.join(absent)} (the bank's config.json names layers {layers}): "
                f"it belongs to another bank; delete it and rerun `clarep-fast search {bank}`"
            )
        if isinstance(size, int) and isinstance(count, int):
            expected = torch.arange(shard * size, min((shard + 1) * size, count))
            if not torch.equal(part["index"], expected):
                raise DamagedFileError(
                    f"{shard_path(bank, shard)} holds CLAReps {_span(part['index'])} but shard {shard} of this bank holds "
                    f"{_span(expected)}: it was copied from another shard or bank; delete it and rerun `clarep-fast search {bank}`"
                )
        for name in needed:
            if part[name].shape[1:] != parts[0][name].shape[1:] or part[name].dtype != parts[0][name].dtype:
                raise DamagedFileError(
                    f"{shard_path(bank, shard)} holds {name} of shape {tuple(part[name].shape)} ({part[name].dtype}) but shard 0 has "
                    f"{tuple(parts[0][name].shape)} ({parts[0][name].dtype}): the shards come from different searches; "
                    f"delete the odd ones and rerun `clarep-fast search {bank}`"
                )
    merged = {name: torch.cat([part[name] for part in parts]) for name in needed}
    return Bank(
        config,
        merged["index"],
        merged["classes"],
        merged["latents"],
        merged["start_latents"],
        merged["samples"],
        merged["ordinary_samples"],
        merged["singular_values"],
        merged["iterations"],
        {layer: merged[f"features.{layer}"] for layer in layers},
        {layer: merged[f"ordinary_features.{layer}"] for layer in layers},
    )
