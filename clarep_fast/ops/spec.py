"""The op table's row (OpSpec) and the one check that every backend of every op must pass.

A row names the public op, its textbook reference (same call signature), its kernels, and an
``example``: odd-shaped inputs for one call; and ``launch_cases``: calls that together reach every
block-size and flag choice the op's Triton launchers can make on a GPU for a dtype, up to the op's
documented limits (the GPU compile gate, scripts/gpu_gate, compiles what they launch; the
interpreter tests run them). ``check_against_reference`` runs the op on a backend
and the reference in float64 on the same inputs, and compares the values and the gradients of
every input that requires grad (through fixed random weights on the output). The self-check
(``clarep-fast selfcheck``), the backend sweep of the tests (tests/ops/test_op_table.py) and the
table benchmark (benchmarks/test_op_table.py) all iterate ``clarep_fast.ops.OPS`` through this.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, NamedTuple

import torch
from torch import Tensor

from clarep_fast.backends import Kernels, use_backend

# The one tolerance table of the project (the op table's check here, every test in tests/): per
# input dtype, the error allowed in an op's value and in its input gradients against a float64
# reference, relative to the largest reference entry. Values accumulate in fp32 or fp64; gradients
# come back in the input dtype, so a few ulps of it (fp16 eps = 9.8e-4, bf16 eps = 7.8e-3).
TOLERANCES = {
    torch.float64: {"value": 1e-10, "grad": 1e-9},
    torch.float32: {"value": 1e-5, "grad": 1e-4},
    torch.float16: {"value": 2e-4, "grad": 4e-3},
    torch.bfloat16: {"value": 2e-4, "grad": 3e-2},
}


@dataclass(frozen=True)
class OpSpec:
    name: str
    fused: Callable  # the public op
    reference: Callable  # the textbook formula, called like `fused`
    kernels: Kernels
    example: Callable[[torch.device, torch.dtype, torch.Generator], tuple[tuple, dict]]  # -> (args, kwargs) of one call
    launch_cases: Callable[[torch.device, torch.dtype], Iterator[tuple[tuple, dict]]]  # -> (args, kwargs) per call


class CheckResult(NamedTuple):
    value_error: float
    grad_error: float
    ok: bool


def random_tensor(
    generator: torch.Generator, device, dtype: torch.dtype, *shape: int, requires_grad: bool = False
) -> Tensor:
    """Standard normal entries drawn on the CPU from ``generator`` (the same on every device)."""
    values = torch.randn(*shape, generator=generator, dtype=torch.float64).to(device=device, dtype=dtype)
    return values.requires_grad_(requires_grad)


def _map_tensors(value, fn):
    if isinstance(value, Tensor):
        return fn(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_map_tensors(item, fn) for item in value)
    return value


def as_float64(args):
    """A float64 copy of a (nested list/tuple of) call argument(s), leaves requiring grad as before."""
    return _map_tensors(
        args, lambda t: t.detach().double().requires_grad_(t.requires_grad) if t.is_floating_point() else t
    )


def grad_leaves(value) -> list[Tensor]:
    """The tensors that require grad in a (nested list/tuple of) call argument(s), in order."""
    if isinstance(value, Tensor):
        return [value] if value.requires_grad else []
    if isinstance(value, (list, tuple)):
        return [leaf for item in value for leaf in grad_leaves(item)]
    return []


def _relative(actual: Tensor, expected: Tensor, floor: float) -> float:
    scale = max(float(expected.detach().abs().max()), floor)
    return float((actual.detach().double() - expected.detach()).abs().max()) / scale


def check_against_reference(
    spec: OpSpec, backend: str, device="cpu", dtype: torch.dtype = torch.float32, seed: int = 0
) -> CheckResult:
    """Largest relative error of ``spec.fused`` on ``backend`` against ``spec.reference`` in float64:
    the value, and the gradient of every input that requires grad."""
    generator = torch.Generator().manual_seed(seed)
    args, kwargs = spec.example(torch.device(device), dtype, generator)
    with use_backend(backend):
        out = spec.fused(*args, **kwargs)
    weights = torch.randn(out.shape, generator=generator, dtype=torch.float64).to(out.device)
    inputs = grad_leaves(args)
    grads = torch.autograd.grad((out.double() * weights).sum(), inputs) if inputs else ()

    args64 = as_float64(args)
    expected = spec.reference(*args64, **kwargs)
    inputs64 = grad_leaves(args64)
    expected_grads = torch.autograd.grad((expected.double() * weights).sum(), inputs64) if inputs64 else ()

    value_error = _relative(out, expected, 1.0)
    grad_error = max((_relative(g, e, 1e-30) for g, e in zip(grads, expected_grads)), default=0.0)
    tolerance = TOLERANCES[dtype]
    return CheckResult(value_error, grad_error, value_error <= tolerance["value"] and grad_error <= tolerance["grad"])
