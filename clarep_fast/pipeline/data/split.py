"""The stratified, seeded split every source shares: test out of a flat folder, validation out of train."""

from __future__ import annotations

import torch
from torch import Tensor


def stratified_split(labels: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """(kept, held out) sorted indices: round(fraction · n_c) of every class c held out, chosen by a
    generator seeded with ``seed`` (the same seed gives the same split). A class with at least two
    members keeps one and holds out one at least, so every split sees every class."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"the held-out fraction must be in (0, 1), got {fraction}")
    generator = torch.Generator().manual_seed(seed)
    kept, held = [], []
    for label in labels.unique().tolist():
        members = (labels == label).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        cut = int(round(len(members) * fraction))
        if len(members) >= 2:
            cut = min(max(cut, 1), len(members) - 1)
        held.append(members[:cut])
        kept.append(members[cut:])
    return torch.cat(kept).sort().values, torch.cat(held).sort().values
