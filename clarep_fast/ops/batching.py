"""A vmap rule for the ops' backward custom ops: one call per batch entry, results stacked.

torch.func.jacrev (and jacfwd over a vjp, hessian-free Jacobian rows, per-sample gradients) is
vmap over the backward: the cotangent gains a batch dimension and every backward custom op meets
vmap. The kernels take one cotangent each, so the rule slices the batched arguments along their
batch dimension, calls the op on each slice and stacks every output along dimension 0. The cost is
one backward per Jacobian row, which is what a Jacobian costs anyway. The forward custom ops keep
no rule: their autograd.Functions refuse vmap by name (one call already takes every layer pair).
"""

from __future__ import annotations

import torch
from torch.utils import _pytree as pytree


def _slice(arg, dim, index: int):
    """Entry ``index`` of an argument batched along ``dim`` (None: not batched; lists per tensor)."""
    if isinstance(arg, (list, tuple)):
        return [_slice(a, d, index) for a, d in zip(arg, dim if dim is not None else [None] * len(arg))]
    return arg if dim is None else arg.select(dim, index)


def register_loop_vmap(op) -> None:
    """Give the custom op ``op`` a vmap rule that loops over the batch and stacks the outputs."""

    def rule(info, in_dims, *args):
        results = [op(*(_slice(arg, dim, i) for arg, dim in zip(args, in_dims))) for i in range(info.batch_size)]
        flat, spec = zip(*(pytree.tree_flatten(result) for result in results))
        stacked = [torch.stack(column) for column in zip(*flat)]
        return pytree.tree_unflatten(stacked, spec[0]), pytree.tree_unflatten([0] * len(stacked), spec[0])

    torch.library.register_vmap(op, rule)
