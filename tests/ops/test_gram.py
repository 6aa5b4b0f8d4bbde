"""The dense products around the n×n kernels: blocked Gram (syrk) and the backward product."""

import pytest
import torch

from clarep_fast.ops import gram
from tests.utils import assert_close


@pytest.mark.parametrize("split", [True, False], ids=["blocked", "one-product"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("n,d", [(41, 401), (1, 3), (7, 1), (131, 67)])
def test_gram_into_matches_full_product(monkeypatch, n, d, dtype, split):
    monkeypatch.setattr(gram, "_UPCAST_CHUNK_ELEMENTS", 64)  # force several upcast chunks
    monkeypatch.setattr(gram, "_SPLIT_MIN_ROWS", {"cpu": 1 if split else n + 1})
    x = torch.randn(n, d).to(dtype)
    accumulate = torch.float64 if dtype == torch.float64 else torch.float32
    out = torch.full((n, n), float("nan"), dtype=accumulate)  # poisoned: every entry must be written
    gram.gram_into(x, out)
    expected = x.double() @ x.double().T
    assert_close(out, expected, 1e-12 if dtype == torch.float64 else 1e-5, "gram")
    assert_close(out, out.T, 1e-12 if dtype == torch.float64 else 1e-6, "symmetry")


def test_small_n_is_one_product_and_large_n_is_blocked(monkeypatch):
    calls, product = [], torch.mm
    monkeypatch.setattr(torch, "mm", lambda *args, **kwargs: calls.append(1) or product(*args, **kwargs))  # the blocked path uses @
    for n in (gram._SPLIT_MIN_ROWS["cpu"] - 1, gram._SPLIT_MIN_ROWS["cpu"]):
        calls.clear()
        x, out = torch.randn(n, 5), torch.empty(n, n)
        gram.gram_into(x, out)
        assert_close(out, x.double() @ x.double().T, 1e-5, "gram")
        assert (len(calls) == 1) == (n < gram._SPLIT_MIN_ROWS["cpu"])


@pytest.mark.parametrize("magnitude", [1e-9, 1e-7, 1e-3])
def test_fp16_backward_product_is_as_good_as_rounding_the_exact_result(magnitude):
    coefficients = torch.randn(64, 64, dtype=torch.float64) * magnitude
    x = torch.randn(64, 300).half()
    exact = coefficients @ x.double()
    result = gram.gram_backward(coefficients.float(), x)
    assert result.dtype == torch.float16
    rounding_error = (exact.half().double() - exact).abs().max()
    assert (result.double() - exact).abs().max() <= 2 * rounding_error + 1e-3 * exact.abs().max()
