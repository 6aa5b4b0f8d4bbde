"""nn.Module wrappers of the fused ops, for use inside models and training loops."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from clarep_fast.ops.cka import cka, cka_pairs


class CKA(nn.Module):
    """Linear CKA of one or several layer pairs; ``forward(x, y)`` or ``forward([x1, ..], [y1, ..])``.

    Returns a 0-dim tensor for a single pair and a (P,) tensor for sequences. ``1 - CKA`` is the
    CaDistill L_dist term.
    """

    def __init__(self, unbiased: bool = False):
        super().__init__()
        self.unbiased = unbiased

    def forward(self, x: Tensor | Sequence[Tensor], y: Tensor | Sequence[Tensor]) -> Tensor:
        if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor):
            return cka(x, y, unbiased=self.unbiased)
        return cka_pairs(x, y, unbiased=self.unbiased)

    def extra_repr(self) -> str:
        return f"unbiased={self.unbiased}"
