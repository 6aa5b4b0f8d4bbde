"""The CLARep bank on disk: a folder of safetensors shards plus the resolved search config.

    bank/config.json                 the resolved SearchConfig and the teacher's fingerprint
    bank/shards/shard_00000.safetensors ...
        index             (n,)  global item numbers (the plan's order)
        classes           (n,)  class of each CLARep
        latents           (n, C, R, R)  the CLAReps: x~ = (I - V Vᵀ) x_{t_e} (rescaled if configured)
        start_latents     (n, C, R, R)  x_{t_e} before projection
        samples           (n, C, R, R)  canonical samples: DDIM with CFG from x~ at t_e to 0, in [-1, 1]
        ordinary_samples  (n, C, R, R)  the same from x_{t_e} (no projection), for comparison
        singular_values   (n, k)        top-k singular values of the feature Jacobian
        iterations        (n,)          subspace iterations each image ran
        features.<layer>  (n, C_l·s²)   the teacher's canonical features of the CLARep, f_l(x~, t_e, c)
        ordinary_features.<layer>       the same of x_{t_e}
A shard is written to a temporary name and renamed: a file under shards/ is always complete, so a
killed search resumes by skipping the shards that exist.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from clarep_fast.pipeline.rundir import atomic_write

SHARDS = "shards"


def shard_path(bank: Path, shard: int) -> Path:
    return bank / SHARDS / f"shard_{shard:05d}.safetensors"


def write_shard(bank: Path, shard: int, tensors: dict[str, Tensor]) -> None:
    """Atomically write one shard (temporary file in the same folder, then rename)."""
    payload = {name: tensor.detach().cpu().contiguous() for name, tensor in tensors.items()}
    atomic_write(shard_path(bank, shard), lambda temporary: save_file(payload, str(temporary)))


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
    config_file = bank / "config.json"
    if not config_file.exists():
        raise FileNotFoundError(f"{bank} is not a CLARep bank (no config.json); create one with `clarep-fast search {bank}`")
    config = json.loads(config_file.read_text())
    shards = config["shards"]
    missing = [shard for shard in range(shards) if not shard_path(bank, shard).exists()]
    if missing:
        raise FileNotFoundError(f"bank {bank} is incomplete: {len(missing)} of {shards} shards missing (first: {missing[0]}); rerun `clarep-fast search {bank}` to finish it")
    parts = [load_file(str(shard_path(bank, shard))) for shard in range(shards)]
    merged = {name: torch.cat([part[name] for part in parts]) for name in parts[0]}
    layers = config["feature_layers"]
    return Bank(
        config, merged["index"], merged["classes"], merged["latents"], merged["start_latents"], merged["samples"],
        merged["ordinary_samples"], merged["singular_values"], merged["iterations"],
        {layer: merged[f"features.{layer}"] for layer in layers}, {layer: merged[f"ordinary_features.{layer}"] for layer in layers},
    )  # fmt: skip
