"""The NaN/Inf rule (clarep_fast/finite.py): every op of the table refuses a non-finite input in both
check modes; "async" is the device-side assert that CUDA runs without a host sync (on CPU the same
assert raises at once, so its path is tested here); the mode comes from the context, then the
environment. The no-sync claim itself is checked on a GPU (test_no_host_sync_on_cuda)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import clarep_fast
from clarep_fast.backends import unusable_reason
from clarep_fast.finite import ENV_VAR, finite_check, finite_check_mode
from clarep_fast.ops import OPS
from clarep_fast.ops.spec import grad_leaves
from tests.utils import usable_backends

CPU_BACKENDS = usable_backends("cpu")


def _poisoned_example(spec, device, value):
    """The op table's example call with ``value`` written into its first input tensor."""
    args, kwargs = spec.example(torch.device(device), torch.float32, torch.Generator().manual_seed(0))
    first = grad_leaves(args)[0]
    with torch.no_grad():
        first.view(-1)[first.numel() // 2] = value
    return args, kwargs


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("spec", OPS, ids=lambda spec: spec.name)
def test_every_op_refuses_a_non_finite_input_in_both_modes(spec, backend, value):
    args, kwargs = _poisoned_example(spec, "cpu", value)
    with clarep_fast.use_backend(backend):
        with finite_check("sync"), pytest.raises(ValueError, match=rf"^{spec.name}: .*NaN or Inf"):
            spec.fused(*args, **kwargs)
        with (
            finite_check("async"),
            pytest.raises(RuntimeError, match=rf"^{spec.name}: an input holds NaN or Inf.*{ENV_VAR}=sync"),
        ):
            spec.fused(*args, **kwargs)


@pytest.mark.parametrize("spec", OPS, ids=lambda spec: spec.name)
def test_finite_inputs_pass_both_modes_with_the_same_result(spec):
    args, kwargs = spec.example(torch.device("cpu"), torch.float64, torch.Generator().manual_seed(1))
    with finite_check("sync"):
        expected = spec.fused(*args, **kwargs)
    with finite_check("async"):
        actual = spec.fused(*args, **kwargs)
        torch.autograd.grad(actual.sum(), grad_leaves(args))
    assert torch.equal(actual, expected)


def test_feature_pool_names_a_cast_that_overflows():
    maps = [torch.full((2, 3, 4, 4), 1e5)]  # finite in fp32, above fp16's largest value once pooled
    with pytest.raises(
        ValueError, match=r"feature_pool: down_blocks\.1 pools to values too large for float16 \(sample 0\)"
    ):
        clarep_fast.feature_pool(maps, 2, out_dtype=torch.float16, names=["down_blocks.1"])


def test_mode_comes_from_the_context_then_the_environment(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)  # device objects only: no CUDA is touched
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert (finite_check_mode(cpu), finite_check_mode(cuda)) == ("sync", "async")
    monkeypatch.setenv(ENV_VAR, "sync")
    assert finite_check_mode(cuda) == "sync"
    with finite_check("async"):
        assert finite_check_mode(cpu) == "async"
        with finite_check("auto"):
            assert finite_check_mode(cuda) == "async"
    assert finite_check_mode(cpu) == "sync"
    monkeypatch.setenv(ENV_VAR, "fast")
    with pytest.raises(ValueError, match=rf"{ENV_VAR} must be one of \('auto', 'sync', 'async'\), got 'fast'"):
        finite_check_mode(cpu)
    with pytest.raises(ValueError, match="finite_check mode must be one of"):
        with finite_check("off"):
            pass


def _cuda_or_skip(backend: str) -> None:
    if unusable_reason(backend, "cuda"):
        pytest.skip(unusable_reason(backend, "cuda"))


# every kind of call of each op: the example's options, then the other branches
VARIANTS = {"cka": [{}, {"unbiased": True}], "feature_align": [{}, {"kind": "mse"}, {"kind": "mse", "reduction": "mean"}, {"reduction": "mean"}],
            "project_out": [{}, {"rescale": False}], "feature_pool": [{}, {"normalize": False}]}  # fmt: skip
SYNC_CASES = [
    pytest.param(spec, variant, id=f"{spec.name}-{'-'.join(f'{k}={v}' for k, v in variant.items()) or 'example'}")
    for spec in OPS
    for variant in VARIANTS[spec.name]
]


def test_every_op_has_its_variants():
    assert set(VARIANTS) == {spec.name for spec in OPS}


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("backend", ["cuda", "triton", "torch"])
@pytest.mark.parametrize(("spec", "variant"), SYNC_CASES)
def test_no_host_sync_on_cuda(spec, variant, backend, dtype):
    """Forward and backward of every op, kind and dtype on CUDA under torch's sync debug mode
    "error": any host sync (a tensor read, a blocking copy) raises. Made and warmed up outside."""
    _cuda_or_skip(backend)
    args, kwargs = spec.example(torch.device("cuda"), dtype, torch.Generator().manual_seed(0))
    kwargs = {**kwargs, **variant}
    inputs = grad_leaves(args)
    with clarep_fast.use_backend(backend):
        torch.autograd.grad(spec.fused(*args, **kwargs).sum(), inputs)  # compiles/caches what a first call needs
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            out = spec.fused(*args, **kwargs)
            torch.autograd.grad(out.sum(), inputs)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


@pytest.mark.gpu
@pytest.mark.parametrize("spec", OPS, ids=lambda spec: spec.name)
def test_sync_mode_names_the_argument_on_cuda(spec):
    _cuda_or_skip("cuda")
    args, kwargs = _poisoned_example(spec, "cuda", float("nan"))
    with finite_check("sync"), pytest.raises(ValueError, match=rf"^{spec.name}: .*NaN or Inf"):
        spec.fused(*args, **kwargs)


@pytest.mark.gpu
def test_async_mode_stops_a_cuda_process_with_a_device_side_assert():
    """In its own process: a device-side assert leaves the CUDA context unusable."""
    _cuda_or_skip("cuda")
    script = (
        "import torch, clarep_fast\n"
        "x = torch.randn(8, 4, device='cuda'); x[3, 1] = float('nan')\n"
        "clarep_fast.cka(x, torch.randn(8, 3, device='cuda'))\n"
        "torch.cuda.synchronize()\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "device-side assert" in result.stderr


@pytest.mark.skipif(bool(unusable_reason("cpu", "cpu")), reason="needs the compiled extension")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_the_compiled_finite_test_agrees_with_torch(dtype):
    """finite._all_finite takes clarep_fast._C.all_finite on CPU once the extension is loaded: it must
    say what torch.isfinite(...).all() says, on strided views too, and fp64 entries near the top of
    the range (whose fp64 sum overflows) are finite."""
    from clarep_fast import _C
    from clarep_fast.finite import _all_finite

    generator = torch.Generator().manual_seed(0)
    for trial in range(40):
        values = torch.randn(7, 9, generator=generator).to(dtype)
        if trial % 4:
            index = int(torch.randint(0, values.numel(), (1,), generator=generator))
            values.view(-1)[index] = (float("nan"), float("inf"), -float("inf"))[trial % 3]
        view = values[:, 1::2] if trial % 2 else values
        assert _C.all_finite(view) == bool(torch.isfinite(view).all()), (trial, view)
        assert _all_finite(view) == bool(torch.isfinite(view).all())
    huge = torch.full((4,), torch.finfo(torch.float64).max / 2, dtype=torch.float64)
    assert _C.all_finite(huge) and not torch.isfinite(huge.sum())
    with pytest.raises(RuntimeError, match="CPU tensor"):
        _C.all_finite(torch.zeros(2, device="meta"))
