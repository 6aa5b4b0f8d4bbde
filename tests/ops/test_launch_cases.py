"""The CPU tests execute what a GPU compiles: every op's launch cases (clarep_fast/ops/<op>.py), the
calls the GPU compile gate (scripts/gpu_gate) records and compiles, run here on the triton backend
under the interpreter and checked against the float64 reference, value and gradients. The block
and flag choices they execute are the ones the gate compiles (one list, compared below)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from clarep_fast import use_backend
from clarep_fast.backends import unusable_reason
from clarep_fast.ops import OPS
from clarep_fast.ops.spec import TOLERANCES, as_float64, grad_leaves
from tests.utils import assert_close

ROOT = Path(__file__).resolve().parents[2]
DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]

pytestmark = pytest.mark.skipif(bool(unusable_reason("triton", "cpu")), reason=unusable_reason("triton", "cpu") or "")


class _Choices:
    """Records, per kernel, the constexpr keyword arguments of every interpreted launch (the
    interpreter drops num_warps before its hooks: warps are compared nowhere, only compiled)."""

    def __init__(self):
        from clarep_fast.kernels import cka, feature_align, feature_pool, project_out  # noqa: F401
        from triton.runtime.interpreter import InterpretedFunction

        self.seen: set[tuple[str, frozenset]] = set()
        self.kernels = []
        for module in (cka, feature_align, feature_pool, project_out):
            for name, value in vars(module).items():
                if isinstance(value, InterpretedFunction) and name.endswith("_kernel"):
                    value.add_pre_run_hook(self._hook(f"{module.__name__.rsplit('.', 1)[1]}.{name}"))
                    self.kernels.append(value)

    def _hook(self, kernel):
        def hook(*args, **kwargs):
            self.seen.add((kernel, frozenset((key, value) for key, value in kwargs.items() if key.isupper())))

        return hook

    def close(self):
        for kernel in self.kernels:
            kernel.pre_run_hooks.clear()


@pytest.fixture(scope="module")
def choices():
    recorder = _Choices()
    yield recorder
    recorder.close()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("spec", OPS, ids=lambda spec: spec.name)
def test_launch_cases_match_the_reference_under_the_interpreter(spec, dtype, choices):
    tolerance = TOLERANCES[dtype]
    for number, (args, kwargs) in enumerate(spec.launch_cases(torch.device("cpu"), dtype)):
        with use_backend("triton"):
            out = spec.fused(*args, **kwargs)
        args64 = as_float64(args)
        expected = spec.reference(*args64, **kwargs)
        what = f"{spec.name} case {number} ({dtype})"
        # a value returned in fp16/bf16 (feature_pool's packed output) carries that dtype's rounding
        value_tolerance = max(tolerance["value"], torch.finfo(out.dtype).eps)
        assert_close(out, expected, value_tolerance, f"{what} value")
        leaves, leaves64 = grad_leaves(args), grad_leaves(args64)
        if leaves:
            weights = torch.linspace(-1, 1, out.numel(), dtype=torch.float64).reshape(out.shape)
            grads = torch.autograd.grad((out.double() * weights).sum(), leaves)
            expected_grads = torch.autograd.grad((expected * weights).sum(), leaves64)
            for index, (grad, reference) in enumerate(zip(grads, expected_grads)):
                assert_close(grad, reference, tolerance["grad"], f"{what} gradient {index}")


def _gate_choices() -> set[tuple[str, frozenset]]:
    """The gate's launches (python -m scripts.gpu_gate --list, a process without the interpreter)."""
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    listing = subprocess.run(
        [sys.executable, "-m", "scripts.gpu_gate", "--list"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert listing.returncode == 0, listing.stderr[-3000:]
    found = set()
    for line in listing.stdout.splitlines():
        kernel, *tokens = line.split()
        pairs = [token.split("=", 1) for token in tokens if re.fullmatch(r"[A-Z_]+=\w+", token)]
        found.add((kernel, frozenset((key, _value(value)) for key, value in pairs)))
    return found


def _value(text: str):
    return {"True": True, "False": False}.get(text, int(text) if text.isdigit() else text)


def test_the_interpreter_ran_every_choice_the_gate_compiles(choices):
    """Run after the cases above (same module): the block and flag choices match both ways."""
    if not choices.seen:
        pytest.skip("run with the launch-case tests above (they record the interpreted launches)")
    gate = _gate_choices()
    assert gate - choices.seen == set(), (
        f"compiled for a GPU but never run by the tests: {sorted(gate - choices.seen)[:5]}"
    )
    assert choices.seen - gate == set(), f"run by the tests but never compiled: {sorted(choices.seen - gate)[:5]}"
