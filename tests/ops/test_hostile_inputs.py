"""Any tensor a user can make, on every CPU backend (hypothesis): shapes down to the minimum n and
d = 1, very wide features with few samples, layouts (transposed, stride-0 expanded, channels-last,
sliced views with a storage offset), low-precision dtypes near their range, duplicate samples,
offsets, gradients on either side; held against the float64 reference on the same stored values.
Dtypes the ops do not take are refused, not cast."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import clarep_fast
from clarep_fast import use_backend
from clarep_fast.reference import cka_reference, feature_align_reference, feature_pool_reference, project_out_reference
from tests.utils import TOLERANCES, assert_close, usable_backends

BACKENDS = usable_backends("cpu")
EXAMPLES = {"torch": 30, "cpu": 30, "triton": 8}  # the Triton interpreter is slow
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


def sweep(backend: str):
    return settings(max_examples=EXAMPLES.get(backend, 10), deadline=None, suppress_health_check=[HealthCheck.too_slow])


def laid_out(values: torch.Tensor, layout: str, dtype: torch.dtype) -> torch.Tensor:
    """The same (n, d) values in another memory layout (every layout reads back the same numbers)."""
    values = values.to(dtype)
    if layout == "transposed":
        return values.T.contiguous().T
    if layout == "offset":
        padded = torch.zeros(values.shape[0] + 1, values.shape[1] + 3, dtype=dtype)
        padded[1:, 3:] = values
        return padded[1:, 3:]
    if layout == "expanded":  # stride 0 along the features: one column repeated
        return values[:, :1].expand(values.shape)
    return values


@st.composite
def matrices(draw, dtype):
    n = draw(st.sampled_from([4, 5, 9, 17]))
    d = draw(st.sampled_from([1, 2, 7, 33, 300, 2049]))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    limit = 60000.0 if dtype == torch.float16 else 1e6  # fp16 stays inside its range
    scale = draw(st.sampled_from([1e-3, 1.0, 100.0, limit / 8]))
    offset = draw(st.sampled_from([0.0, 3.0, 50.0])) * scale / 8
    values = torch.randn(n, d, generator=generator, dtype=torch.float64) * scale / 8 + offset
    if draw(st.booleans()):
        values[1] = values[0]  # duplicate samples
    return laid_out(values, draw(st.sampled_from(["contiguous", "transposed", "offset", "expanded"])), dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cka_on_any_tensor(backend, dtype):
    @sweep(backend)
    @given(st.data())
    def run(data):
        x, y = data.draw(matrices(dtype)), data.draw(matrices(dtype))
        y = y[: x.shape[0]] if y.shape[0] >= x.shape[0] else None
        if y is None:
            return
        need = data.draw(st.sampled_from(["x", "y", "both"]))
        leaves = []
        if need in ("x", "both"):
            x = x.detach().requires_grad_(True)
            leaves.append(x)
        if need in ("y", "both"):
            y = y.detach().requires_grad_(True)
            leaves.append(y)
        with use_backend(backend):
            value = clarep_fast.cka(x, y)
        grads = torch.autograd.grad(value, leaves)
        x64, y64 = (t.detach().double().requires_grad_(t.requires_grad) for t in (x, y))
        expected = cka_reference(x64, y64)
        expected_grads = (
            torch.autograd.grad(expected, [t for t in (x64, y64) if t.requires_grad])
            if expected.requires_grad
            else [torch.zeros_like(g, dtype=torch.float64) for g in grads]
        )
        tolerance = TOLERANCES[dtype]
        assert abs(value.item() - expected.item()) <= 10 * tolerance["value"], (value.item(), expected.item())
        for got, want, leaf in zip(grads, expected_grads, [t for t in (x64, y64) if t.requires_grad]):
            # CKA is scale-invariant: its gradient's natural size is 1/‖x - mean‖ (the floor for gradients that vanish exactly)
            spread = (leaf.detach() - leaf.detach().mean(0)).norm().item()
            scale = max(want.abs().max().item(), 1.0 / spread if spread > 0 else 0.0)
            assert torch.isfinite(got).all()
            assert (got.double() - want).abs().max().item() <= 10 * tolerance["grad"] * scale + 1e-30

    run()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_project_out_on_any_tensor(backend, dtype):
    @sweep(backend)
    @given(
        st.integers(1, 5),
        st.sampled_from([(1, 4, 4), (3, 5, 7), (4, 16, 16)]),
        st.integers(1, 6),
        st.booleans(),
        st.integers(0, 2**31 - 1),
    )
    def run(batch, sample_shape, rank, channels_last, seed):
        generator = torch.Generator().manual_seed(seed)
        size = sample_shape[0] * sample_shape[1] * sample_shape[2]
        rank = min(rank, size - 1)
        x = torch.randn(batch, *sample_shape, generator=generator, dtype=torch.float64).to(dtype)
        if channels_last:
            x = x.to(memory_format=torch.channels_last)
        # column-major Q
        vectors = torch.linalg.qr(torch.randn(batch, size, rank, generator=generator, dtype=torch.float64)).Q.to(dtype)
        x.requires_grad_(True)
        with use_backend(backend):
            out = clarep_fast.project_out(x, vectors, rescale=True)
        (grad,) = torch.autograd.grad(out.double().sum(), x)
        x64 = x.detach().double().requires_grad_(True)
        expected = project_out_reference(x64, vectors.double(), True)
        (expected_grad,) = torch.autograd.grad(expected.sum(), x64)
        assert_close(out, expected, 10 * TOLERANCES[dtype]["grad"], "projection")
        assert_close(grad, expected_grad, 10 * TOLERANCES[dtype]["grad"], "gradient")

    run()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_feature_align_and_pool_on_any_tensor(backend, dtype):
    @sweep(backend)
    @given(
        st.integers(1, 6),
        st.sampled_from([1, 3, 40, 1025]),
        st.sampled_from(["cosine", "mse"]),
        st.sampled_from([(5, 7, 9), (3, 4, 4), (1, 1, 1)]),
        st.integers(1, 3),
        st.integers(0, 2**31 - 1),
    )
    def run(batch, width, kind, map_shape, size, seed):
        generator = torch.Generator().manual_seed(seed)
        student = laid_out(
            torch.randn(batch, width, generator=generator, dtype=torch.float64),
            "offset" if width > 1 else "contiguous",
            dtype,
        ).requires_grad_(True)
        teacher = torch.randn(batch, width, generator=generator, dtype=torch.float64).to(dtype).requires_grad_(True)
        with use_backend(backend):
            loss = clarep_fast.feature_align([student], [teacher], kind=kind)
        grads = torch.autograd.grad(loss, (student, teacher))
        s64, t64 = (t.detach().double().requires_grad_(True) for t in (student, teacher))
        expected = feature_align_reference([s64], [t64], kind)
        expected_grads = torch.autograd.grad(expected, (s64, t64))
        assert abs(loss.item() - expected.item()) <= 10 * TOLERANCES[dtype]["value"] * max(1.0, abs(expected.item()))
        for got, want, leaf in zip(grads, expected_grads, (s64, t64)):
            # a cosine's gradient can vanish exactly (width 1); its natural size is 1/‖s‖ per row
            natural = (1.0 / leaf.detach().norm(dim=1).clamp_min(1e-30)).max().item() if kind == "cosine" else 0.0
            scale = max(want.abs().max().item(), natural)
            assert (got.double() - want).abs().max().item() <= 10 * TOLERANCES[dtype]["grad"] * scale + 1e-30, (
                "alignment gradient"
            )
        size = min(size, map_shape[1], map_shape[2])
        feature_map = (
            torch.randn(batch, *map_shape, generator=generator, dtype=torch.float64)
            .to(dtype)
            .to(memory_format=torch.channels_last)
            .requires_grad_(True)
        )
        with use_backend(backend):
            packed = clarep_fast.feature_pool([feature_map], size, normalize=True)
        (grad,) = torch.autograd.grad(packed.double().sum(), feature_map)
        m64 = feature_map.detach().double().requires_grad_(True)
        expected = feature_pool_reference([m64], size, True)
        (expected_grad,) = torch.autograd.grad(expected.sum(), m64)
        assert_close(packed, expected, 10 * TOLERANCES[dtype]["grad"], "pooled")
        assert_close(grad, expected_grad, 10 * TOLERANCES[dtype]["grad"], "pool gradient")

    run()


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.uint8, torch.bool])
def test_integer_and_bool_tensors_are_refused_by_name(dtype):
    x = torch.ones(4, 3, dtype=dtype)
    float_x = torch.randn(4, 3)
    with pytest.raises(TypeError, match=r"x must be float16, bfloat16, float32 or float64"):
        clarep_fast.cka(x, float_x)
    with pytest.raises(TypeError, match=r"vectors must be float16"):
        clarep_fast.project_out(float_x, torch.ones(4, 3, 1, dtype=dtype))
    with pytest.raises(TypeError, match=r"teachers\[0\] must be float16"):
        clarep_fast.feature_align([float_x], [x])
    with pytest.raises(TypeError, match=r"maps\[0\] must be float16"):
        clarep_fast.feature_pool([torch.ones(2, 3, 4, 4, dtype=dtype)], 2)


def test_finite_values_too_large_for_squares_are_named_as_such():
    with pytest.raises(
        ValueError, match=r"x of sample 0 holds values up to 1e\+20, too large for sums of squares in float32"
    ):
        clarep_fast.project_out(torch.full((2, 8), 1e20), torch.linalg.qr(torch.randn(2, 8, 2)).Q)
    with pytest.raises(ValueError, match=r"students\[0\] holds values up to 1e\+20"):
        clarep_fast.feature_align([torch.full((2, 4), 1e20)], [torch.ones(2, 4)])
    with pytest.raises(ValueError, match=r"students\[0\] holds NaN or Inf"):
        clarep_fast.feature_align([torch.full((2, 4), float("nan"))], [torch.ones(2, 4)])


def test_sparse_tensors_and_non_bool_flags_are_refused_by_name():
    x = torch.randn(8, 4)
    with pytest.raises(
        TypeError, match=r"x must be a dense \(strided\) tensor, got layout torch.sparse_coo; pass x.to_dense\(\)"
    ):
        clarep_fast.cka(x.to_sparse(), x)
    with pytest.raises(TypeError, match=r"maps\[0\] must be a dense"):
        clarep_fast.feature_pool([torch.randn(2, 3, 4, 4).to_sparse()], 2)
    with pytest.raises(TypeError, match="unbiased must be True or False, got 'no'"):
        clarep_fast.cka(x, x, unbiased="no")
    with pytest.raises(TypeError, match="rescale must be True or False, got 'yes'"):
        clarep_fast.project_out(torch.randn(2, 3), torch.randn(2, 3, 1), rescale="yes")
    with pytest.raises(TypeError, match="normalize must be True or False, got 1"):
        clarep_fast.feature_pool([torch.randn(2, 3, 4, 4)], 2, normalize=1)
