"""Fused CKA on every usable backend against the reference: forward, backward, dtypes, shapes, errors."""

import pytest
import torch

import clarep_fast
from clarep_fast import cka, cka_pairs, use_backend
from clarep_fast.ops.cka import cka_forward
from clarep_fast.reference import cka_reference
from tests.utils import TOLERANCES, assert_close, usable_backends

CPU_BACKENDS = usable_backends("cpu")
GPU_BACKENDS = ["cuda", "triton", "torch"]

# (n, d1, d2): a plain shape, an odd one, and degenerate ones (one feature; the smallest n).
SHAPES = [(16, 24, 12), (41, 401, 33), (9, 1, 1)]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def _inputs(n, d1, d2, dtype, device="cpu"):
    """Correlated random features (CKA well inside (0, 1)), nonzero mean so centering matters."""
    x = torch.randn(n, d1, device=device) + 0.5
    y = torch.randn(n, d2, device=device) + x[:, :1] * torch.randn(1, d2, device=device)
    return x.to(dtype).requires_grad_(True), y.to(dtype).requires_grad_(True)


def _check_against_reference(backend, n, d1, d2, dtype, unbiased, device="cpu"):
    x, y = _inputs(n, d1, d2, dtype, device)
    with use_backend(backend):
        value = cka(x, y, unbiased=unbiased)
    grad_out = torch.rand((), device=device) + 0.5
    dx, dy = torch.autograd.grad(value, (x, y), grad_out)
    x64, y64 = x.detach().double().requires_grad_(True), y.detach().double().requires_grad_(True)
    expected = cka_reference(x64, y64, unbiased=unbiased)
    dx64, dy64 = torch.autograd.grad(expected, (x64, y64), grad_out.double())
    tolerance = TOLERANCES[dtype]
    assert value.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert dx.dtype == dtype and dy.dtype == dtype
    assert_close(value, expected, tolerance["value"], f"{backend} cka value", relative_to_max=False)
    grad_tolerance = [tolerance["grad"], tolerance["grad"]]
    if dtype in (torch.float16, torch.bfloat16):
        # Judge low precision against PyTorch's own error in that dtype: eager gradients, rounded
        # to fp16/bf16 like ours, can sit in fp16's subnormal range where rounding alone is ~1%.
        eager = torch.autograd.grad(cka_reference(x, y, unbiased=unbiased), (x, y), grad_out)
        for side, (grad_eager, grad64) in enumerate(zip(eager, (dx64, dy64))):
            eager_error = ((grad_eager.double() - grad64).abs().max() / grad64.abs().max().clamp_min(1e-30)).item()
            grad_tolerance[side] = max(tolerance["grad"], 2 * eager_error)
    assert_close(dx, dx64, grad_tolerance[0], f"{backend} dx")
    assert_close(dy, dy64, grad_tolerance[1], f"{backend} dy")


@pytest.mark.parametrize("unbiased", [False, True])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n,d1,d2", SHAPES)
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_backend_matches_reference_cpu(backend, n, d1, d2, dtype, unbiased):
    _check_against_reference(backend, n, d1, d2, dtype, unbiased)


@pytest.mark.gpu
@pytest.mark.parametrize("unbiased", [False, True])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n,d1,d2", SHAPES + [(512, 4096, 1000), (523, 777, 301)])
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_backend_matches_reference_gpu(backend, n, d1, d2, dtype, unbiased):
    _check_against_reference(backend, n, d1, d2, dtype, unbiased, device="cuda")


@pytest.mark.parametrize("unbiased", [False, True])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_gradcheck_float64(backend, unbiased):
    x = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    y = torch.randn(7, 3, dtype=torch.float64, requires_grad=True)
    with use_backend(backend):
        assert torch.autograd.gradcheck(lambda a, b: cka(a, b, unbiased=unbiased), (x, y))
        xs = [x, torch.randn(7, 2, 2, dtype=torch.float64, requires_grad=True)]
        ys = [y, torch.randn(7, 4, dtype=torch.float64, requires_grad=True)]
        assert torch.autograd.gradcheck(lambda *t: cka_pairs(t[:2], t[2:], unbiased=unbiased), (*xs, *ys))


@pytest.mark.gpu
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gradcheck_float64_gpu(backend):
    x = torch.randn(7, 5, dtype=torch.float64, device="cuda", requires_grad=True)
    y = torch.randn(7, 3, dtype=torch.float64, device="cuda", requires_grad=True)
    with use_backend(backend):
        assert torch.autograd.gradcheck(lambda a, b: cka(a, b), (x, y))


@pytest.mark.gpu
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_kernels_index_past_int32_at_large_n(backend):
    """n = 46,341: n² exceeds int32. K = L = I except K's last diagonal entry (2): an index that
    wraps would miss it (or fault). 2 × 8.6 GB of Grams in, as much coefficients out."""
    from clarep_fast.ops.cka import KERNELS

    if backend not in usable_backends("cuda"):
        pytest.skip(f"{backend} is not usable on cuda")
    n = 46_341
    grams = torch.zeros(1, 2, n, n, device="cuda")
    grams.diagonal(dim1=-2, dim2=-1).fill_(1.0)
    grams[0, 0, n - 1, n - 1] = 2.0
    stats_kernel, grads_kernel = KERNELS.on(backend)
    stats, rowsums = stats_kernel(grams, False, 1e-10)
    assert stats[0, 4].item() == n + 1 and stats[0, 5].item() == n
    assert rowsums[0, 0, -1].item() == 2.0 and rowsums[0, 1, -1].item() == 1.0
    coefficients = grads_kernel(grams, rowsums, stats, torch.ones(1, device="cuda"), False, 1e-10)
    assert torch.isfinite(coefficients[0, :, -1, -8:]).all()
    del grams, coefficients
    torch.cuda.empty_cache()


@pytest.mark.gpu
def test_more_pairs_than_one_launch_takes():
    """65,539 pairs: more than gridDim.y allows in one CUDA launch (the kernels, against the torch ones)."""
    from clarep_fast.ops.cka import KERNELS

    if "cuda" not in usable_backends("cuda"):
        pytest.skip("the cuda backend is not usable")
    features = torch.randn(65_539, 2, 6, 5, device="cuda")
    grams = (features @ features.transpose(-1, -2)).contiguous()  # (P, 2, 6, 6)
    grad = torch.rand(65_539, device="cuda")
    results = {}
    for backend in ("cuda", "torch"):
        stats_kernel, grads_kernel = KERNELS.on(backend)
        stats, rowsums = stats_kernel(grams, False, 1e-10)
        results[backend] = (stats, grads_kernel(grams, rowsums, stats, grad, False, 1e-10))
    assert_close(results["cuda"][0][-5:], results["torch"][0][-5:], 1e-5, "stats of the last pairs")
    assert_close(results["cuda"][1][-5:], results["torch"][1][-5:], 1e-5, "coefficients of the last pairs")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_pairs_equal_single_calls_and_share_gradients(backend):
    widths = [(13, 7), (30, 2), (5, 64), (1, 9)]
    xs = [torch.randn(12, d1, requires_grad=True) for d1, _ in widths]
    ys = [torch.randn(12, d2) + xs[i][:, :1].detach() for i, (_, d2) in enumerate(widths)]
    with use_backend(backend):
        together = cka_pairs(xs, ys)
        weights = torch.rand(len(widths))
        grads = torch.autograd.grad((together * weights).sum(), xs)
        for p, (x, y) in enumerate(zip(xs, ys)):
            alone = cka(x, y)
            assert_close(together[p], alone, 1e-6, f"pair {p} value", relative_to_max=False)
            (grad_alone,) = torch.autograd.grad(alone * weights[p], x)
            assert_close(grads[p], grad_alone, 1e-5, f"pair {p} grad")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_only_x_needs_gradient(backend):
    x = torch.randn(10, 6, requires_grad=True)
    y = torch.randn(10, 4)  # frozen teacher side
    with use_backend(backend):
        cka(x, y).backward()
    x_ref = x.detach().clone().requires_grad_(True)
    cka_reference(x_ref, y).backward()
    assert y.grad is None
    assert_close(x.grad, x_ref.grad, 1e-4, "dx")


@pytest.mark.parametrize("unbiased", [False, True])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_constant_input_gives_zero_and_zero_gradient(backend, unbiased):
    for constant in (torch.zeros(8, 5), torch.full((8, 5), 3.0), torch.randn(1, 5).expand(8, 5).contiguous()):
        x = constant.clone().requires_grad_(True)
        y = torch.randn(8, 3, requires_grad=True)
        with use_backend(backend):
            value = cka(x, y, unbiased=unbiased)
            value.backward()
        assert value.item() == 0.0
        assert torch.isfinite(x.grad).all() and torch.isfinite(y.grad).all()
        assert x.grad.abs().max() == 0 and y.grad.abs().max() == 0


@pytest.mark.parametrize("backend", [b for b in CPU_BACKENDS if b != "triton"])
def test_opcheck(backend):
    xs = [torch.randn(6, 5, requires_grad=True), torch.randn(6, 3, requires_grad=True)]
    ys = [torch.randn(6, 4, requires_grad=True), torch.randn(6, 2)]
    torch.library.opcheck(cka_forward, (xs, ys, False, backend))
    torch.library.opcheck(cka_forward, (xs, ys, True, backend))


def test_runs_under_torch_compile_fullgraph():
    def loss_fn(x, y):
        return 1 - cka(torch.relu(x), y)

    compiled = torch.compile(loss_fn, fullgraph=True)
    x = torch.randn(16, 32, requires_grad=True)
    y = torch.randn(16, 8)
    loss = compiled(x, y)
    loss.backward()
    x_ref = x.detach().clone().requires_grad_(True)
    expected = 1 - cka_reference(torch.relu(x_ref), y)
    expected.backward()
    assert_close(loss, expected, 1e-5, "compiled loss", relative_to_max=False)
    assert_close(x.grad, x_ref.grad, 1e-4, "compiled dx")


def test_module_wrapper():
    module = clarep_fast.CKA(unbiased=True)
    x, y = torch.randn(12, 5), torch.randn(12, 6)
    assert_close(module(x, y), cka(x, y, unbiased=True), 0, "CKA module", relative_to_max=False)
    assert module([x, y], [y, x]).shape == (2,)


# ----------------------------------------------------------------------------- bad input

GOOD = torch.randn(8, 4)


@pytest.mark.parametrize(
    "x,y,kwargs,error,match",
    [
        (torch.randn(8), GOOD, {}, ValueError, r"x must have shape \(n, \.\.\.\) with at least 2 dimensions"),
        (GOOD, torch.randn(8), {}, ValueError, r"y must have shape"),
        (GOOD, torch.randn(7, 4), {}, ValueError, r"y has 7 samples but the first input has 8"),
        (torch.randn(1, 4), torch.randn(1, 4), {}, ValueError, r"biased CKA needs n >= 2"),
        (torch.randn(3, 4), torch.randn(3, 4), {"unbiased": True}, ValueError, r"unbiased CKA needs n >= 4"),
        (torch.randn(8, 0), GOOD, {}, ValueError, r"x is empty"),
        (torch.randn(0, 4), torch.randn(0, 4), {}, ValueError, r"x is empty"),
        (torch.randint(0, 3, (8, 4)), GOOD, {}, TypeError, r"x must be float16, bfloat16, float32 or float64"),
        (GOOD, GOOD.numpy(), {}, TypeError, r"y must be a torch.Tensor"),
        (GOOD, torch.randn(8, 4, device="meta"), {}, ValueError, r"y is on meta but the first input is on cpu"),
    ],
)
def test_bad_input_raises_clear_error(x, y, kwargs, error, match):
    with pytest.raises(error, match=match):
        cka(x, y, **kwargs)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_input_raises(backend, bad):
    x = torch.randn(8, 4)
    x[3, 1] = bad
    with use_backend(backend), pytest.raises(ValueError, match=r"x of pair 0 holds NaN or Inf"):
        cka(x, torch.randn(8, 3))
    with use_backend(backend), pytest.raises(ValueError, match=r"y of pair 1 holds NaN or Inf"):
        cka_pairs([torch.randn(8, 2), torch.randn(8, 2)], [torch.randn(8, 2), x])


def test_pairs_bad_lists():
    with pytest.raises(ValueError, match="equal length"):
        cka_pairs([GOOD], [GOOD, GOOD])
    with pytest.raises(ValueError, match="non-empty"):
        cka_pairs([], [])
    with pytest.raises(TypeError, match="sequences of tensors"):
        cka_pairs(GOOD, GOOD)
    with pytest.raises(ValueError, match=r"ys\[1\] has 5 samples"):
        cka_pairs([GOOD, GOOD], [GOOD, torch.randn(5, 4)])


@pytest.mark.skipif("triton" not in CPU_BACKENDS, reason="Triton interpreter unavailable")
@pytest.mark.parametrize("unbiased", [False, True])
def test_triton_stats_across_several_row_blocks(unbiased):
    """The GPU tiling (16-row programs, last program finalizes), which the interpreter runs too: n=41 spans three programs."""
    from clarep_fast.kernels import cka as triton_cka
    from clarep_fast.reference.cka import cka_stats_reference
    from clarep_fast.reference.cka import DEGENERATE_RTOL

    x, y = torch.randn(2, 41, 17) + 1, torch.randn(2, 41, 9)
    grams = torch.stack([x @ x.transpose(1, 2), y @ y.transpose(1, 2)], 1).contiguous()
    stats, _ = triton_cka.cka_stats(grams, unbiased, DEGENERATE_RTOL)
    expected, _ = cka_stats_reference(grams, unbiased, DEGENERATE_RTOL)
    assert_close(stats, expected, 1e-5, "triton stats (3 programs per pair)")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_tf32_does_not_degrade_fp32_cka_on_cuda(backend):
    if backend not in usable_backends("cuda"):
        pytest.skip(f"{backend} is not usable on cuda")
    x = torch.randn(256, 4096, device="cuda") + 3.0
    y = x[:, :1000] + 0.5 * torch.randn(256, 1000, device="cuda")
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        with use_backend(backend):
            value = cka(x, y)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    assert_close(
        value, cka_reference(x.double(), y.double()), TOLERANCES[torch.float32]["value"], "CKA under allow_tf32"
    )
