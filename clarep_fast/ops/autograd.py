"""One autograd wiring per op, used twice: the custom op's registered autograd and a Python
``torch.autograd.Function`` around the same custom op.

Why two: ``torch.compile`` traces the custom op with its registered autograd (no graph break);
``torch.func`` transforms (grad, vjp, jacrev) refuse a custom op's own autograd and C++ autograd
nodes but accept an ``autograd.Function`` with ``setup_context``. Both run the op's one
``setup_context(ctx, inputs, output)`` and ``backward(ctx, needs, *grads)``, written against the
custom op's own inputs: ``needs`` has the inputs' structure (a bool per tensor, a list of bools per
tensor list, False for other arguments) and ``backward`` returns one gradient (or None) per input in
that structure. The Function takes tensor lists as flat positional tensors (an autograd.Function
cannot differentiate through a list) and rebuilds them here.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable


class _Layout(NamedTuple):
    """Where the op's inputs sit among the Function's flat tensors: per input, "tensor", the length
    of a tensor list, or ("value", the argument itself)."""

    entries: tuple

    @staticmethod
    def of(args: tuple) -> tuple["_Layout", list[Tensor]]:
        entries, tensors = [], []
        for arg in args:
            if isinstance(arg, Tensor):
                entries.append("tensor")
                tensors.append(arg)
            elif isinstance(arg, (list, tuple)) and all(isinstance(item, Tensor) for item in arg) and arg:
                entries.append(len(arg))
                tensors.extend(arg)
            else:
                entries.append(("value", arg))
        return _Layout(tuple(entries)), tensors

    def inputs(self, flat) -> tuple:
        """The op's arguments (or any per-tensor sequence, e.g. needs_input_grad, in their places)."""
        rebuilt, position = [], 0
        for entry in self.entries:
            if entry == "tensor":
                rebuilt.append(flat[position])
                position += 1
            elif isinstance(entry, int):
                rebuilt.append(list(flat[position : position + entry]))
                position += entry
            else:
                rebuilt.append(entry[1])
        return tuple(rebuilt)

    def needs(self, flags) -> tuple:
        return tuple(False if isinstance(e, tuple) else need for e, need in zip(self.entries, self.inputs(flags)))

    def flat(self, grads) -> tuple:
        """Per-input gradients -> one per flat tensor (None for what needs none)."""
        out = []
        for entry, grad in zip(self.entries, grads):
            if entry == "tensor":
                out.append(grad)
            elif isinstance(entry, int):
                out.extend(grad if grad else [None] * entry)
        return tuple(out)


def per_tensor(needs, count: int) -> list[bool]:
    """A tensor list's needs as a list of bools (the custom op's autograd may give one bool for all)."""
    return list(needs) if isinstance(needs, (list, tuple)) else [bool(needs)] * count


def wire(op, setup_context: Callable, backward: Callable, vmap_refusal: str) -> Callable:
    """Register the autograd of custom op ``op`` and return ``call(*args)``: ``op`` through an
    autograd.Function with the same setup_context and backward (the eager path torch.func accepts).
    ``vmap_refusal``: the message for vmap over the op's forward (every op already takes a batch)."""

    def registered_backward(ctx, *grads):
        return backward(ctx, tuple(ctx.needs_input_grad), *grads)

    op.register_autograd(registered_backward, setup_context=setup_context)

    class Function(torch.autograd.Function):
        @staticmethod
        def forward(layout: _Layout, *tensors: Tensor):
            return op(*layout.inputs(tensors))

        @staticmethod
        def setup_context(ctx, inputs, output):
            layout, *tensors = inputs
            ctx.layout = layout
            setup_context(ctx, layout.inputs(tensors), output)

        @staticmethod
        @once_differentiable  # no double backward: under no_grad, and an error if one is asked for
        def backward(ctx, *grads):
            needs = ctx.layout.needs(ctx.needs_input_grad[1:])
            return (None, *ctx.layout.flat(backward(ctx, needs, *grads)))

        @staticmethod
        def vmap(info, in_dims, *args):
            raise RuntimeError(vmap_refusal)

    Function.__name__ = Function.__qualname__ = f"{op._name}_function"

    def call(*args):
        layout, tensors = _Layout.of(args)
        return Function.apply(layout, *tensors)

    return call
