"""Fused project_out on every usable backend against the reference: values, gradients, properties, errors."""

import pytest
import torch

from clarep_fast import project_out, use_backend
from clarep_fast.ops.project_out import project_out_forward
from clarep_fast.reference import project_out_reference
from tests.utils import TOLERANCES, assert_close, usable_backends

CPU_BACKENDS = usable_backends("cpu")
GPU_BACKENDS = ["cuda", "triton", "torch"]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
VALUE_TOLERANCE = {torch.float64: 1e-12, torch.float32: 2e-6, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}

# (latent shape per sample, k): a CLARID-like latent, an odd one with k not a power of two, a
# degenerate one (N = 1... k = 1), and one where N > the Triton tile so rows are walked in chunks.
CASES = [((3, 4, 4), 5), ((1, 7, 11), 13), ((1,), 1), ((2, 33, 35), 3)]


def _orthonormal(batch, size, rank, dtype, device="cpu"):
    """Orthonormal columns, column-major per sample as a QR returns them (the kernels take any strides)."""
    return torch.linalg.qr(torch.randn(batch, size, rank, dtype=torch.float64)).Q.to(device=device, dtype=dtype)


def _check(backend, shape, rank, dtype, rescale, device="cpu", row_major=False):
    size = torch.Size(shape).numel()
    x = torch.randn(3, *shape, device=device).to(dtype).requires_grad_(True)
    vectors = _orthonormal(3, size, rank, dtype, device)
    vectors = (vectors.contiguous() if row_major else vectors).requires_grad_(True)
    with use_backend(backend):
        out = project_out(x, vectors, rescale=rescale)
    assert out.shape == x.shape and out.dtype == dtype
    grad = torch.randn(out.shape, dtype=torch.float64, device=device)
    grad_x, grad_v = torch.autograd.grad(out, (x, vectors), grad.to(dtype))
    x64, v64 = x.detach().double().requires_grad_(True), vectors.detach().double().requires_grad_(True)
    expected = project_out_reference(x64, v64, rescale)
    expected_x, expected_v = torch.autograd.grad(expected, (x64, v64), grad)
    assert_close(out, expected, VALUE_TOLERANCE[dtype], f"{backend} value")
    assert_close(grad_x, expected_x, TOLERANCES[dtype]["grad"], f"{backend} grad x")
    assert_close(grad_v, expected_v, TOLERANCES[dtype]["grad"], f"{backend} grad vectors")


@pytest.mark.parametrize("rescale", [False, True])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape,rank", CASES)
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_backend_matches_reference_cpu(backend, shape, rank, dtype, rescale):
    if shape == (1,) and rescale:
        pytest.skip("N = k = 1: x lies in span V, nothing to rescale (tested below)")
    _check(backend, shape, rank, dtype, rescale)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_row_major_vectors(backend, dtype):
    _check(backend, (2, 5, 5), 7, dtype, True, row_major=True)


@pytest.mark.gpu
@pytest.mark.parametrize("rescale", [False, True])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape,rank", CASES[:2] + [((4, 32, 32), 64)])
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_backend_matches_reference_gpu(backend, shape, rank, dtype, rescale):
    _check(backend, shape, rank, dtype, rescale, device="cuda")
    _check(backend, shape, rank, dtype, rescale, device="cuda", row_major=True)


@pytest.mark.parametrize("rescale", [False, True])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_gradcheck_float64(backend, rescale):
    x = torch.randn(2, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    # any V: the formulas hold beyond orthonormal
    vectors = torch.randn(2, 12, 3, dtype=torch.float64).requires_grad_(True)
    with use_backend(backend):
        assert torch.autograd.gradcheck(
            lambda a, b: project_out(a, b, rescale=rescale), (x, vectors), fast_mode=backend == "triton"
        )


@pytest.mark.parametrize("backend", [b for b in CPU_BACKENDS if b != "triton"])
def test_opcheck(backend):
    x = torch.randn(3, 10, requires_grad=True)
    vectors = _orthonormal(3, 10, 4, torch.float32).requires_grad_(True)
    torch.library.opcheck(project_out_forward, (x, vectors, False, backend))
    torch.library.opcheck(project_out_forward, (x, vectors, True, backend))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_removes_exactly_the_span(backend):
    x = torch.randn(4, 3, 6, 6, dtype=torch.float64)
    vectors = _orthonormal(4, 108, 7, torch.float64)
    with use_backend(backend):
        out = project_out(x, vectors)
        again = project_out(out, vectors)
        rescaled = project_out(x, vectors, rescale=True)
    flat = out.reshape(4, -1)
    assert_close(
        torch.einsum("bnk,bn->bk", vectors, flat),
        torch.zeros(4, 7, dtype=torch.float64),
        1e-12,
        "Vᵀ out",
        relative_to_max=False,
    )
    # what is left is x's component orthogonal to the span: x = out + V Vᵀ x
    assert_close(
        flat + torch.einsum("bnk,bk->bn", vectors, torch.einsum("bnk,bn->bk", vectors, x.reshape(4, -1))),
        x.reshape(4, -1),
        1e-12,
        "split",
    )
    assert_close(again, out, 1e-12, "idempotent")
    assert_close(rescaled.reshape(4, -1).norm(dim=1), x.reshape(4, -1).norm(dim=1), 1e-12, "rescaled norm")
    assert_close(
        rescaled / rescaled.reshape(4, -1).norm(dim=1)[:, None, None, None],
        out / flat.norm(dim=1)[:, None, None, None],
        1e-12,
        "same direction",
    )


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_latent_inside_the_span_gives_zero_and_no_nan(backend):
    vectors = _orthonormal(2, 12, 3, torch.float32).requires_grad_(True)
    x = (vectors.detach() @ torch.randn(2, 3, 1)).squeeze(-1).requires_grad_(True)  # x ∈ span V
    with use_backend(backend):
        out = project_out(x, vectors, rescale=True)
    assert out.abs().max() < 1e-5
    grads = torch.autograd.grad(out.sum(), (x, vectors))
    assert all(torch.isfinite(g).all() for g in grads)


def test_runs_under_torch_compile_fullgraph():
    vectors = _orthonormal(3, 20, 4, torch.float32)

    def loss(x):
        return project_out(torch.tanh(x), vectors, rescale=True).square().sum()

    x = torch.randn(3, 4, 5, requires_grad=True)
    value = torch.compile(loss, fullgraph=True)(x)
    (grad,) = torch.autograd.grad(value, x)
    x_ref = x.detach().clone().requires_grad_(True)
    expected = project_out_reference(torch.tanh(x_ref), vectors, True).square().sum()
    (expected_grad,) = torch.autograd.grad(expected, x_ref)
    assert_close(value, expected, 1e-5, "compiled value", relative_to_max=False)
    assert_close(grad, expected_grad, 1e-4, "compiled grad")


X = torch.randn(2, 3, 4)
V = torch.linalg.qr(torch.randn(2, 12, 3)).Q


def _with(tensor, value):
    """A copy of ``tensor`` holding ``value`` at one entry (not left to chance)."""
    poisoned = tensor.clone(memory_format=torch.contiguous_format)
    poisoned.view(-1)[5] = value
    return poisoned


@pytest.mark.parametrize(
    "x,vectors,error,match",
    [
        (X.numpy(), V, TypeError, "x must be a torch.Tensor"),
        (X, V[:, :11], ValueError, r"vectors must have shape \(2, 12, k\)"),
        (X, V[:1], ValueError, r"vectors must have shape \(2, 12, k\)"),
        (X, V[:, :, :0], ValueError, "k = 0"),
        (X, V.double(), TypeError, "must share a dtype"),
        (X.int(), V, TypeError, "x must be float16"),
        (torch.randn(3), V, ValueError, "x must be a non-empty batch"),
        (_with(X, float("nan")), V, ValueError, "x of sample .* NaN or Inf"),
        (X, _with(V, float("inf")), ValueError, "vectors of sample .* NaN or Inf"),
    ],
)
def test_bad_input_raises_clear_error(x, vectors, error, match):
    with pytest.raises(error, match=match):
        project_out(x, vectors)


def test_the_cuda_launch_limit_is_refused_before_launching():
    """The CUDA backward keeps k fp32 entries (fp64 for fp64 inputs) in 48 KiB of shared memory."""
    from clarep_fast.ops.project_out import check_cuda_launch

    check_cuda_launch(12_288, torch.float16)
    check_cuda_launch(6_144, torch.float64)
    with pytest.raises(ValueError, match=r"k = 12289 directions; the cuda backend holds at most 12,288 .* float32"):
        check_cuda_launch(12_289, torch.float32)
    with pytest.raises(ValueError, match=r"at most 6,144 .* float64"):
        check_cuda_launch(6_145, torch.float64)


@pytest.mark.skipif("triton" not in CPU_BACKENDS, reason="Triton interpreter unavailable")
def test_the_triton_rank_limit_is_refused_before_launching():
    """The triton kernels hold a tile of V in registers up to k = 4,096 (docs/gpu.md: the next tile
    spills); k = 4,097 is refused with the alternatives named, 4,096 runs."""
    from clarep_fast.ops.project_out import TRITON_MAX_RANK

    x = torch.randn(1, 3)
    with (
        use_backend("triton"),
        pytest.raises(ValueError, match=r"k = 4,097 directions; the triton backend takes at most 4,096"),
    ):
        project_out(x, torch.randn(1, 3, TRITON_MAX_RANK + 1))
    vectors = torch.randn(1, 3, TRITON_MAX_RANK) / 64
    with use_backend("triton"):
        out = project_out(x, vectors)
    assert_close(out, project_out_reference(x.double(), vectors.double(), False), 1e-5, "k = 4,096 on triton")
