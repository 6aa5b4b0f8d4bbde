"""Evaluation-only student: every BatchNorm folded into the convolution before it.

In eval mode BatchNorm is a fixed per-channel affine map, so a conv followed by it is one conv:
    y = γ (W * x + b − μ) / √(σ² + ε) + β  =  W' * x + b',
    W' = W · s,  b' = (b − μ) · s + β,  s = γ / √(σ² + ε)   (s per output channel).
An attack runs the model forward and backward once per step (PGD-20: 20 times per batch); folding
removes one elementwise pass over every activation and its gradient from each of them. The folded
copy is exact up to float rounding (tests/evaluate/test_fold.py) and never trains: it has no
BatchNorm statistics left to update, and its parameters do not require gradients.

The pairs are found on the model's torch.fx graph (the order of calls, not of attribute names); a
model fx cannot trace is returned unfolded, as a frozen eval copy, with a warning.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import fx, nn


def _fold_pair(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> nn.Conv2d:
    folded = copy.deepcopy(conv)
    scale = (
        norm.weight / torch.sqrt(norm.running_var + norm.eps)
        if norm.affine
        else torch.rsqrt(norm.running_var + norm.eps)
    )
    bias = conv.bias if conv.bias is not None else torch.zeros_like(norm.running_mean)
    shift = norm.bias if norm.affine else torch.zeros_like(norm.running_mean)
    folded.weight = nn.Parameter(conv.weight * scale.reshape(-1, 1, 1, 1))
    folded.bias = nn.Parameter((bias - norm.running_mean) * scale + shift)
    return folded


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A frozen eval-mode copy of ``model`` with each Conv2d → BatchNorm2d pair fused into one Conv2d.

    A pair is folded only where the conv's output feeds nothing but the BatchNorm and the norm uses
    running statistics; everything else is kept as it is.
    """
    model = copy.deepcopy(model).eval()
    try:
        graph = fx.symbolic_trace(model)
    except Exception as error:  # fx raises many kinds on dynamic control flow
        warnings.warn(
            f"fold_batchnorm: {type(model).__name__} cannot be traced by torch.fx ({type(error).__name__}); evaluating it unfolded",
            stacklevel=2,
        )
        return model.requires_grad_(False)
    modules = dict(graph.named_modules())
    for node in list(graph.graph.nodes):
        if node.op != "call_module" or not isinstance(modules[node.target], nn.BatchNorm2d):
            continue
        source = node.args[0]
        if not (
            isinstance(source, fx.Node)
            and source.op == "call_module"
            and isinstance(modules[source.target], nn.Conv2d)
            and len(source.users) == 1
        ):
            continue
        norm = modules[node.target]
        if not norm.track_running_stats or norm.running_mean is None:
            continue
        with torch.no_grad():
            folded = _fold_pair(modules[source.target], norm)
        parent, _, name = source.target.rpartition(".")
        setattr(graph.get_submodule(parent) if parent else graph, name, folded)
        modules[source.target] = folded
        node.replace_all_uses_with(source)
        graph.graph.erase_node(node)
    graph.graph.lint()
    graph.recompile()
    graph.delete_all_unused_submodules()
    return graph.eval().requires_grad_(False)
