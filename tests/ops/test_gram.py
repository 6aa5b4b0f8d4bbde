"""The dense products around the n×n kernels: the shifted, blocked Gram (syrk) and the backward product."""

import pytest
import torch

import clarep_fast
from clarep_fast.ops import gram
from tests.utils import assert_close


def shifted(x: torch.Tensor) -> torch.Tensor:
    x = x.double()
    return x - x[0]


@pytest.mark.parametrize("split", [True, False], ids=["blocked", "one-product"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("n,d", [(41, 401), (1, 3), (7, 1), (131, 67)])
def test_shifted_gram_matches_full_product(monkeypatch, n, d, dtype, split):
    monkeypatch.setattr(gram, "_CHUNK_ELEMENTS", {"cpu": 64})  # force several chunks
    monkeypatch.setattr(gram, "_SPLIT_MIN_ROWS", {"cpu": 1 if split else n + 1})
    x = (torch.randn(n, d) + 3).to(dtype)
    accumulate = torch.float64 if dtype == torch.float64 else torch.float32
    out = torch.full((n, n), float("nan"), dtype=accumulate)  # poisoned: every entry must be written
    gram.shifted_gram_into(x, out)
    expected = shifted(x) @ shifted(x).T
    assert_close(out, expected, 1e-12 if dtype == torch.float64 else 1e-5, "gram")
    assert_close(out, out.T, 1e-12 if dtype == torch.float64 else 1e-6, "symmetry")


def test_small_n_is_one_product_and_large_n_is_blocked(monkeypatch):
    calls, product = [], torch.mm
    # the blocked path uses @
    monkeypatch.setattr(torch, "mm", lambda *args, **kwargs: calls.append(1) or product(*args, **kwargs))
    for n in (gram._SPLIT_MIN_ROWS["cpu"] - 1, gram._SPLIT_MIN_ROWS["cpu"]):
        calls.clear()
        x, out = torch.randn(n, 5), torch.empty(n, n)
        gram.shifted_gram_into(x, out)
        assert_close(out, shifted(x) @ shifted(x).T, 1e-5, "gram")
        assert (len(calls) == 1) == (n < gram._SPLIT_MIN_ROWS["cpu"])


def test_a_large_mean_costs_no_accuracy():
    """|mean|/std = 1e4 in fp32: the shifted Gram keeps fp32 accuracy relative to the spread."""
    spread = torch.randn(64, 300, dtype=torch.float64)
    x = (1e4 + spread).float()
    out = torch.empty(64, 64)
    gram.shifted_gram_into(x, out)
    exact = shifted(x) @ shifted(x).T  # of the fp32 input as stored
    assert_close(out, exact, 1e-5, "gram")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_backward_product_is_as_good_as_rounding_the_exact_result(dtype):
    coefficients = torch.randn(64, 64, dtype=torch.float64) * 1e-7
    x = (torch.randn(64, 300) + 100).to(dtype)
    exact = coefficients @ shifted(x)
    result = gram.shifted_gram_backward(coefficients.float(), x)
    assert result.dtype == dtype
    rounding_error = (exact.to(dtype).double() - exact).abs().max()
    assert (result.double() - exact).abs().max() <= 2 * rounding_error + 1e-5 * exact.abs().max()


@pytest.mark.parametrize(
    "offset,layout,expect_shifted",
    [
        (0.0, "dense", False),
        (0.5, "dense", False),  # share 0.8 (post-ReLU features are near 0.7)
        (2.0, "dense", True),  # share 0.2: the cancellation would multiply the Gram's rounding by ~2.5
        (10.0, "dense", True),
        (1e4, "dense", True),
        (0.0, "expanded", True),  # a stride-0 operand: the dense shifted chunks instead
    ],
)
def test_cpu_takes_the_plain_gram_only_when_the_spread_is_at_least_half(offset, layout, expect_shifted):
    x = torch.randn(40, 300) + offset
    x = x if layout == "dense" else x[:, :1].expand(40, 300)
    out = torch.empty(40, 40)
    assert gram.shifted_gram_into(x, out) is expect_shifted
    assert_close(out, shifted(x) @ shifted(x).T, 1e-5, "gram")
    coefficients = torch.randn(40, 40, dtype=torch.float64)
    # centered, as the kernels' G
    coefficients = coefficients - coefficients.mean(0) - coefficients.mean(1, keepdim=True) + coefficients.mean()
    result = gram.shifted_gram_backward(coefficients.float(), x, expect_shifted)
    assert_close(result, coefficients @ shifted(x), 1e-5, "backward")


def test_fp16_backward_product_scales_tiny_coefficients_without_a_host_read(monkeypatch):
    """The CUDA fp16 path (run here on CPU): G of size 1e-6 is subnormal in fp16 (a few bits left)
    unless scaled first, and the scale comes back as a device tensor (a Python float would cost a
    host sync on CUDA)."""
    monkeypatch.setattr(gram, "LOW_PRECISION_GEMM_DEVICES", ("cpu",))
    coefficients = torch.randn(16, 16, dtype=torch.float64) * 1e-6
    x = (torch.randn(16, 40) * 1e3).half()
    exact = coefficients @ shifted(x)
    with monkeypatch.context() as patch:
        patch.setattr(torch.Tensor, "item", lambda self: pytest.fail("host read in the backward product"))
        result = gram.shifted_gram_backward(coefficients.float(), x)
    assert result.dtype == torch.float16
    assert_close(result, exact, 2e-3, "fp16 backward")


def test_fp16_backward_product_keeps_the_forwards_range(monkeypatch):
    """The CUDA fp16 path (run here on CPU): |x - x[0]| up to 1.2e5 (twice fp16's largest value)
    and large features must not overflow in the operands or in the product."""
    monkeypatch.setattr(gram, "LOW_PRECISION_GEMM_DEVICES", ("cpu",))
    x = torch.full((32, 24), 6e4).half()
    x[1::2] = -6e4  # x - x[0] reaches -1.2e5 in every other row
    x[:, :4] = (torch.randn(32, 4) * 1e3).half()
    coefficients = torch.randn(32, 32, dtype=torch.float64) * 1e-2
    coefficients -= coefficients.mean(1, keepdim=True)  # centered, as the CKA coefficients are
    exact = coefficients @ shifted(x)
    result = gram.shifted_gram_backward(coefficients.float(), x)
    assert torch.isfinite(result).all(), "the fp16 backward overflowed"
    assert_close(result, exact, 2e-3, "fp16 backward, large range")


@pytest.mark.parametrize("user_setting", ["high", "medium"])
def test_gram_products_run_in_full_fp32_whatever_the_user_set(monkeypatch, user_setting):
    """TF32 (set_float32_matmul_precision("high"), or allow_tf32) would round the Gram's operands to
    10 bits: every product inside the op runs at "highest", and the user's setting comes back."""
    seen = []
    product = torch.mm

    def spy(*args, **kwargs):
        seen.append(torch.get_float32_matmul_precision())
        return product(*args, **kwargs)

    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(user_setting)
    try:
        monkeypatch.setattr(torch, "mm", spy)
        monkeypatch.setattr(torch.Tensor, "__matmul__", lambda a, b: spy(a, b))
        x = torch.randn(12, 9, requires_grad=True)
        y = torch.randn(12, 5)
        with clarep_fast.use_backend("torch"):
            torch.autograd.grad(clarep_fast.cka(x, y), x)
        assert seen and set(seen) == {"highest"}, seen
        assert torch.get_float32_matmul_precision() == user_setting
    finally:
        torch.set_float32_matmul_precision(previous)
