"""Fused feature_align on every usable backend against the reference: values, gradients, extremes, errors."""

import pytest
import torch

from clarep_fast import feature_align, use_backend
from clarep_fast.ops.feature_align import feature_align_forward
from clarep_fast.reference import feature_align_reference
from tests.utils import TOLERANCES, assert_close, usable_backends

CPU_BACKENDS = usable_backends("cpu")
GPU_BACKENDS = ["cuda", "triton", "torch"]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
KINDS = ["cosine", "mse"]

# Per case: batch and the per-sample shapes of the layer pairs: two pairs with odd widths (one
# given as a map), a single-feature pair (degenerate), and one wider than a Triton block.
CASES = [(5, [(13,), (3, 2, 2)]), (3, [(1,)]), (2, [(5000,), (7,)])]


def _pairs(batch, shapes, dtype, device="cpu", teacher_grad=True):
    students = [torch.randn(batch, *shape, device=device).to(dtype).requires_grad_(True) for shape in shapes]
    # teachers correlated with the students so that cosines are far from 0 and from 1
    teachers = [
        (s.detach().float() + torch.randn_like(s, dtype=torch.float32)).to(dtype).requires_grad_(teacher_grad)
        for s in students
    ]
    return students, teachers


def _check(backend, batch, shapes, dtype, kind, reduction="none", device="cpu"):
    students, teachers = _pairs(batch, shapes, dtype, device)
    with use_backend(backend):
        loss = feature_align(students, teachers, kind=kind, reduction=reduction)
    weights = torch.randn(loss.shape, dtype=torch.float64, device=device)
    grads = torch.autograd.grad(loss, students + teachers, weights.to(loss.dtype))
    s64 = [s.detach().double().requires_grad_(True) for s in students]
    t64 = [t.detach().double().requires_grad_(True) for t in teachers]
    expected = feature_align_reference(s64, t64, kind, reduction)
    expected_grads = torch.autograd.grad(expected, s64 + t64, weights)
    # fp32 accumulation of exact inputs
    value_tolerance = TOLERANCES[dtype]["value"] if dtype in (torch.float32, torch.float64) else 1e-5
    assert_close(loss, expected, value_tolerance, f"{backend} {kind} loss")
    for index, (got, want) in enumerate(zip(grads, expected_grads)):
        assert got.dtype == dtype and got.shape == want.shape
        if want.abs().max() < 1e-10:
            # one feature per sample: cos is ±1 and its gradient is a difference of two equal terms of
            # size |g| / |s|; judge the rounding left over against those terms
            terms = weights.abs().max() / min(x.detach().double().abs().min() for x in students + teachers)
            assert got.double().abs().max() <= TOLERANCES[dtype]["grad"] * terms, f"{backend} {kind} grad {index}"
            continue
        assert_close(got, want, TOLERANCES[dtype]["grad"], f"{backend} {kind} grad {index}")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("batch,shapes", CASES)
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_backend_matches_reference_cpu(backend, batch, shapes, dtype, kind):
    _check(backend, batch, shapes, dtype, kind)


@pytest.mark.gpu
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("batch,shapes", CASES + [(256, [(4096,), (1024,), (256,)])])
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_backend_matches_reference_gpu(backend, batch, shapes, dtype, kind):
    _check(backend, batch, shapes, dtype, kind, device="cuda")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_gradcheck_float64(backend, kind):
    students, teachers = _pairs(3, [(4,), (2, 3)], torch.float64)
    with use_backend(backend):
        assert torch.autograd.gradcheck(
            lambda s1, s2, t1, t2: feature_align([s1, s2], [t1, t2], kind=kind, reduction="none"),
            (*students, *teachers),
            fast_mode=backend == "triton",
        )


@pytest.mark.parametrize("backend", [b for b in CPU_BACKENDS if b != "triton"])
def test_opcheck(backend):
    students, teachers = _pairs(4, [(6,), (9,)], torch.float32)
    torch.library.opcheck(
        feature_align_forward,
        ([s.detach().requires_grad_() for s in students], [t.detach() for t in teachers], backend),
    )
    torch.library.opcheck(feature_align_forward, (students, teachers, backend))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_known_extremes(backend):
    s = torch.randn(6, 10, dtype=torch.float64, requires_grad=True)
    with use_backend(backend):
        same_cos = feature_align([s], [s.detach() * 3.0], kind="cosine", reduction="none")  # parallel: cos 1
        opposite = feature_align([s], [-s.detach()], kind="cosine", reduction="none")  # cos -1: loss 2
        same_mse = feature_align([s], [s.detach()], kind="mse")
        (grad,) = torch.autograd.grad(same_mse + same_cos.sum(), s)
    assert_close(
        same_cos, torch.zeros(6, dtype=torch.float64), 1e-12, "cos of parallel features", relative_to_max=False
    )
    assert_close(
        opposite, torch.full((6,), 2.0, dtype=torch.float64), 1e-12, "cos of opposite features", relative_to_max=False
    )
    assert same_mse.item() == 0.0
    assert_close(grad, torch.zeros_like(grad), 1e-10, "gradient at the optimum", relative_to_max=False)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_zero_features_give_finite_loss_and_gradient(backend):
    s = torch.zeros(3, 8, requires_grad=True)
    t = torch.randn(3, 8)
    with use_backend(backend):
        loss = feature_align([s], [t])
    (grad,) = torch.autograd.grad(loss, s)
    assert loss.item() == pytest.approx(1.0) and torch.isfinite(grad).all()


def test_frozen_teacher_gets_no_gradient_work():
    students, teachers = _pairs(4, [(6,)], torch.float32, teacher_grad=False)
    loss = feature_align(students, teachers)
    (grad,) = torch.autograd.grad(loss, students)
    assert grad.shape == students[0].shape and teachers[0].grad is None


def test_runs_under_torch_compile_fullgraph():
    projector = torch.nn.Linear(12, 7)
    teacher = torch.randn(5, 7)

    def loss_fn(x):
        return feature_align([projector(x)], [teacher]) + feature_align([x[:, :7]], [teacher], kind="mse")

    x = torch.randn(5, 12, requires_grad=True)
    value = torch.compile(loss_fn, fullgraph=True)(x)
    (grad,) = torch.autograd.grad(value, x)
    x_ref = x.detach().clone().requires_grad_(True)
    expected = feature_align_reference([projector(x_ref)], [teacher]) + feature_align_reference(
        [x_ref[:, :7]], [teacher], "mse"
    )
    (expected_grad,) = torch.autograd.grad(expected, x_ref)
    assert_close(value, expected, 1e-5, "compiled value", relative_to_max=False)
    assert_close(grad, expected_grad, 1e-4, "compiled grad")


S, T = torch.randn(4, 6), torch.randn(4, 6)


def _with(tensor, value):
    """A copy of ``tensor`` holding ``value`` at one entry (not left to chance)."""
    poisoned = tensor.clone(memory_format=torch.contiguous_format)
    poisoned.view(-1)[5] = value
    return poisoned


@pytest.mark.parametrize(
    "students,teachers,kwargs,error,match",
    [
        (S, [T], {}, TypeError, "students must be a sequence"),
        ([S], [T, T], {}, ValueError, "one teacher per student"),
        ([], [], {}, ValueError, "at least one pair"),
        ([S], [torch.randn(4, 5)], {}, ValueError, "project the student to the teacher's width"),
        ([S], [torch.randn(3, 6)], {}, ValueError, "pair 0 has batch 4 .* and 3"),
        ([S], [T.double()], {}, TypeError, "student is torch.float32 but teacher is torch.float64"),
        ([S.int()], [T], {}, TypeError, r"students\[0\] must be float16"),
        ([torch.randn(4)], [T], {}, ValueError, r"students\[0\] must be a non-empty \(B, ...\)"),
        ([S], [T], {"kind": "l1"}, ValueError, "kind must be one of"),
        ([S], [T], {"reduction": "sum"}, ValueError, "reduction must be one of"),
        ([S, S], [T, _with(T, float("nan"))], {}, ValueError, r"teachers\[1\] holds NaN or Inf"),
        ([_with(S, float("inf"))], [T], {}, ValueError, r"students\[0\] holds NaN or Inf"),
    ],
)
def test_bad_input_raises_clear_error(students, teachers, kwargs, error, match):
    with pytest.raises(error, match=match):
        feature_align(students, teachers, **kwargs)
