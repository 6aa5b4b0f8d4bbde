"""Fused feature pooling on every usable backend against the reference: values, gradients, errors."""

import pytest
import torch

from clarep_fast import feature_pool, split_packed, use_backend
from clarep_fast.ops.feature_pool import feature_pool_forward
from clarep_fast.reference import feature_pool_reference
from tests.utils import TOLERANCES, assert_close, usable_backends

CPU_BACKENDS = usable_backends("cpu")
GPU_BACKENDS = ["cuda", "triton", "torch"]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]

# Each case: pool size and the (C, H, W) of the tapped maps (batch 2; small: Triton runs interpreted). Windows that divide evenly,
# an odd shape whose adaptive windows overlap (7×9 -> 3×3), and degenerate ones (1×1 maps, size 1).
CASES = [
    (2, [(4, 8, 8), (6, 4, 4)]),
    (3, [(3, 7, 9), (2, 13, 11), (2, 3, 3)]),
    (1, [(1, 1, 1), (4, 2, 5)]),
]


def _maps(layer_shapes, dtype, device="cpu", channels_last=False):
    maps = []
    for channels, height, width in layer_shapes:
        m = torch.randn(2, channels, height, width, device=device) + 0.3
        m = m.to(dtype)
        if channels_last:
            m = m.contiguous(memory_format=torch.channels_last)
        maps.append(m.requires_grad_(True))
    return maps


def _check(backend, size, layer_shapes, dtype, normalize, device="cpu", channels_last=False):
    maps = _maps(layer_shapes, dtype, device, channels_last)
    with use_backend(backend):
        packed = feature_pool(maps, size, normalize=normalize)
    assert packed.dtype == dtype
    assert packed.shape == (2, sum(c for c, _, _ in layer_shapes) * size * size)
    grad = torch.randn_like(packed, dtype=torch.float64)
    grads = torch.autograd.grad(packed, maps, grad.to(dtype))
    maps64 = [m.detach().double().requires_grad_(True) for m in maps]
    expected = feature_pool_reference(maps64, size, normalize=normalize)
    expected_grads = torch.autograd.grad(expected, maps64, grad)
    tolerance = TOLERANCES[dtype]
    # The packed output is rounded to the map dtype: judge it at that dtype's resolution.
    value_tolerance = {torch.float64: 1e-12, torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}[dtype]
    assert_close(packed, expected, value_tolerance, f"{backend} packed")
    for layer, (got, want) in enumerate(zip(grads, expected_grads)):
        assert got.dtype == dtype and got.shape == want.shape
        assert_close(got, want, tolerance["grad"], f"{backend} grad of layer {layer}")


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("size,layer_shapes", CASES)
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_backend_matches_reference_cpu(backend, size, layer_shapes, dtype, normalize):
    _check(backend, size, layer_shapes, dtype, normalize)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_strided_inputs_need_no_copy(backend):
    _check(backend, 2, [(6, 8, 6), (4, 5, 5)], torch.float32, True, channels_last=True)


@pytest.mark.gpu
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("size,layer_shapes", CASES + [(4, [(64, 32, 32), (128, 16, 16), (256, 8, 8)])])
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_backend_matches_reference_gpu(backend, size, layer_shapes, dtype, normalize):
    _check(backend, size, layer_shapes, dtype, normalize, device="cuda")


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_gradcheck_float64(backend, normalize):
    maps = [
        torch.randn(2, 3, 5, 4, dtype=torch.float64, requires_grad=True),
        torch.randn(2, 2, 3, 3, dtype=torch.float64, requires_grad=True),
    ]
    fast = backend == "triton"  # the interpreter costs ~0.2 s a call: check random projections only
    with use_backend(backend):
        assert torch.autograd.gradcheck(lambda *m: feature_pool(m, 2, normalize=normalize), maps, fast_mode=fast)


@pytest.mark.parametrize("backend", [b for b in CPU_BACKENDS if b != "triton"])
def test_opcheck(backend):
    maps = [torch.randn(2, 3, 5, 4, requires_grad=True), torch.randn(2, 2, 3, 3, requires_grad=True)]
    torch.library.opcheck(feature_pool_forward, (maps, 2, False, torch.float32, "a\nb", backend))
    torch.library.opcheck(feature_pool_forward, (maps, 2, True, torch.bfloat16, "a\nb", backend))


def test_out_dtype_and_split_views():
    maps = [torch.randn(2, 3, 6, 6), torch.randn(2, 5, 4, 4)]
    packed = feature_pool(maps, 2, out_dtype=torch.bfloat16)
    assert packed.dtype == torch.bfloat16
    first, second = split_packed(packed, [3, 5], 2)
    assert first.shape == (2, 3, 2, 2) and second.shape == (2, 5, 2, 2)
    assert_close(second.float(), torch.nn.functional.adaptive_avg_pool2d(maps[1], 2), 8e-3, "second view")
    with pytest.raises(ValueError, match="need 36"):
        split_packed(packed, [4, 5], 2)


def test_runs_under_torch_compile_fullgraph():
    weights = torch.randn(2, 28)

    def pooled_loss(a, b):
        return (feature_pool([torch.relu(a), b], 2, normalize=True) * weights).sum()

    a = torch.randn(2, 3, 6, 6, requires_grad=True)
    b = torch.randn(2, 4, 4, 4)
    loss = torch.compile(pooled_loss, fullgraph=True)(a, b)
    (grad,) = torch.autograd.grad(loss, a)
    a_ref = a.detach().clone().requires_grad_(True)
    expected = (feature_pool_reference([torch.relu(a_ref), b], 2, normalize=True) * weights).sum()
    (expected_grad,) = torch.autograd.grad(expected, a_ref)
    assert_close(loss, expected, 1e-5, "compiled loss", relative_to_max=False)
    assert_close(grad, expected_grad, 1e-4, "compiled grad")


GOOD = torch.randn(2, 3, 4, 4)


@pytest.mark.parametrize(
    "maps,size,kwargs,error,match",
    [
        (GOOD, 2, {}, TypeError, "sequence of"),
        ([], 2, {}, ValueError, "maps is empty"),
        ([torch.randn(2, 3, 4)], 2, {}, ValueError, r"maps\[0\] must have shape \(B, C, H, W\)"),
        ([GOOD, torch.randn(3, 3, 4, 4)], 2, {}, ValueError, r"maps\[1\] has batch 3 but maps\[0\] has 2"),
        ([GOOD], 5, {}, ValueError, r"pool size 5 is larger than maps\[0\]'s 4×4 map"),
        ([GOOD], 0, {}, ValueError, "size must be a positive int"),
        ([GOOD, GOOD.double()], 2, {}, TypeError, "must share a dtype"),
        ([GOOD.int()], 2, {}, TypeError, "must be float16, bfloat16, float32 or float64"),
        ([GOOD], 2, {"out_dtype": torch.int8}, TypeError, "out_dtype must be"),
        ([GOOD], 2, {"names": ["mid_block", "extra"]}, ValueError, "names has 2 entries for 1 maps"),
        ([GOOD, GOOD], 2, {"names": ["mid\nblock", "extra"]}, ValueError, "names must be strings without newlines"),
        ([GOOD], 2, {"names": [3]}, ValueError, "names must be strings without newlines"),
        ([torch.randn(2, 0, 4, 4)], 2, {}, ValueError, "is empty"),
    ],
)
def test_bad_input_raises_clear_error(maps, size, kwargs, error, match):
    with pytest.raises(error, match=match):
        feature_pool(maps, size, **kwargs)


def test_error_messages_use_layer_names():
    with pytest.raises(ValueError, match="larger than mid_block's 2×2 map"):
        feature_pool([torch.randn(2, 3, 8, 8), torch.randn(2, 3, 2, 2)], 4, names=["down_blocks.0", "mid_block"])


def test_the_cuda_launch_limit_is_refused_before_launching():
    """The CUDA forward keeps size² fp32 sums (fp64 for fp64 maps) in 48 KiB of shared memory."""
    from clarep_fast.ops.feature_pool import check_cuda_launch

    check_cuda_launch(110, torch.float32)
    check_cuda_launch(110, torch.bfloat16)
    check_cuda_launch(78, torch.float64)
    with pytest.raises(
        ValueError, match=r"size 111 needs 49,284 bytes .* use size <= 110 for float32 maps, or the triton backend"
    ):
        check_cuda_launch(111, torch.float32)
    with pytest.raises(ValueError, match=r"size 79 .* use size <= 78 for float64"):
        check_cuda_launch(79, torch.float64)
