"""The backend sweep over the op table: every op, every usable backend, fp32 and fp64, value and
gradients against the float64 reference (clarep_fast.ops.spec.check_against_reference)."""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path

import pytest
import torch

import clarep_fast
from clarep_fast.backends import BACKENDS, unusable_reason
from clarep_fast.ops import OPS
from clarep_fast.ops.spec import check_against_reference

ROOT = Path(__file__).resolve().parents[2]


# every backend on every device it can run on; the CUDA-tensor rows are GPU tests (-m gpu)
PLACES = [
    pytest.param(backend, device, id=f"{backend}-{device}", marks=[pytest.mark.gpu] if device == "cuda" else [])
    for device in ("cpu", "cuda")
    for backend in BACKENDS
    if (backend, device) not in (("cuda", "cpu"), ("cpu", "cuda"))
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize(("backend", "device"), PLACES)
@pytest.mark.parametrize("spec", OPS, ids=lambda spec: spec.name)
def test_every_backend_matches_the_reference(spec, backend, device, dtype):
    if unusable_reason(backend, device):
        pytest.skip(unusable_reason(backend, device))
    result = check_against_reference(spec, backend, device, dtype)
    assert result.ok, (
        f"{spec.name} on {backend} ({dtype}): value error {result.value_error:.3g}, gradient error {result.grad_error:.3g}"
    )


def test_the_check_catches_a_wrong_value_and_a_wrong_gradient():
    spec = next(spec for spec in OPS if spec.name == "cka")
    off_value = dataclasses.replace(spec, fused=lambda x, y, **kw: spec.fused(x, y, **kw) + 1e-4)
    assert not check_against_reference(off_value, "torch").ok
    off_gradient = dataclasses.replace(
        spec, fused=lambda x, y, **kw: spec.fused(x, y, **kw) + 1e-3 * (x[0, 0] - x[0, 0].detach())
    )
    result = check_against_reference(off_gradient, "torch")
    assert result.value_error < 1e-5 and not result.ok


def test_every_op_is_a_full_slice():
    """Each row: a public export, a reference module, a Triton file and a csrc/<op>/ folder with
    its schema, CPU and CUDA sources, a test file and a benchmark row."""
    for spec in OPS:
        assert getattr(clarep_fast, spec.name) is spec.fused
        assert importlib.import_module(f"clarep_fast.reference.{spec.name}")
        for path in (
            f"kernels/{spec.name}.py",
            f"csrc/{spec.name}/{spec.name}.h",
            f"csrc/{spec.name}/{spec.name}.cpp",
            f"csrc/{spec.name}/{spec.name}_cpu.cpp",
            f"csrc/{spec.name}/{spec.name}_cuda.cu",
            f"tests/ops/test_{spec.name}.py",
        ):
            assert (ROOT / path).exists(), f"{spec.name}: {path} is missing"


def test_compiled_operators_are_registered_by_the_extension():
    if unusable_reason("cpu", "cpu"):
        pytest.skip(unusable_reason("cpu", "cpu"))
    for spec in OPS:
        for kernel in spec.kernels.on("cpu"):
            assert kernel.namespace == "clarep_fast_C"
