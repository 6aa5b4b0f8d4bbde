"""torch.func over the fused ops: grad and jacrev agree with the reference on every CPU backend
(eager calls on the cpu backend take the whole-call C++ operators, which functorch refuses: under a
transform the ops take their Python path), and vmap is refused with a message that says what to do."""

from __future__ import annotations

import pytest
import torch

import clarep_fast
from clarep_fast.ops import OPS
from tests.utils import assert_close, usable_backends

CPU_BACKENDS = usable_backends("cpu")
SPECS = {spec.name: spec for spec in OPS}


def _calls():
    """(name, fused call of one tensor, reference call of it, the tensor); each call returns a
    vector, so that jacrev's vmap over the backward has a batch of several cotangents."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(9, 6, generator=generator, dtype=torch.float64)
    y = torch.randn(9, 4, generator=generator, dtype=torch.float64)
    vectors = torch.linalg.qr(torch.randn(9, 6, 2, generator=generator, dtype=torch.float64)).Q
    maps = torch.randn(9, 3, 4, 4, generator=generator, dtype=torch.float64)
    teacher = torch.randn(9, 6, generator=generator, dtype=torch.float64)
    cka_ref, align_ref = SPECS["cka"].reference, SPECS["feature_align"].reference
    return [
        ("cka", lambda a: clarep_fast.cka_pairs([a, a[:, :3]], [y, y]), lambda a: torch.stack([cka_ref(a, y), cka_ref(a[:, :3], y)]), x),
        ("feature_align", lambda a: clarep_fast.feature_align([a], [teacher], reduction="none"), lambda a: align_ref([a], [teacher], reduction="none"), x),
        ("project_out", lambda a: clarep_fast.project_out(a, vectors, rescale=True)[:3], lambda a: SPECS["project_out"].reference(a, vectors, rescale=True)[:3], x),
        ("feature_pool", lambda a: clarep_fast.feature_pool([a], 2, normalize=True)[:2], lambda a: SPECS["feature_pool"].reference([a], 2, normalize=True)[:2], maps),
    ]  # fmt: skip


def test_every_op_is_covered():
    assert {name for name, *_ in _calls()} == set(SPECS)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("index", range(len(SPECS)), ids=[name for name, *_ in _calls()])
def test_func_grad_and_jacrev_match_the_reference(index, backend):
    name, fused, reference, tensor = _calls()[index]
    weights = torch.randn(reference(tensor).shape, generator=torch.Generator().manual_seed(1), dtype=tensor.dtype)
    expected_grad = torch.func.grad(lambda a: (reference(a) * weights).sum())(tensor)
    expected_jacobian = torch.func.jacrev(reference)(tensor)
    with clarep_fast.use_backend(backend):
        assert_close(torch.func.grad(lambda a: (fused(a) * weights).sum())(tensor), expected_grad, 1e-9, f"{name} grad")
        assert_close(torch.func.jacrev(fused)(tensor), expected_jacobian, 1e-9, f"{name} jacrev")


@pytest.mark.parametrize("index", range(len(SPECS)), ids=[name for name, *_ in _calls()])
def test_vmap_is_refused_by_name(index):
    name, fused, _, tensor = _calls()[index]
    hint = "cka_pairs" if name == "cka" else "already takes a batch"
    with pytest.raises(RuntimeError, match=rf"clarep_fast.{name} has no vmap rule: .*{hint}"):
        torch.func.vmap(fused)(tensor.unsqueeze(0).expand(2, *tensor.shape))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("index", range(len(SPECS)), ids=[name for name, *_ in _calls()])
def test_double_backward_raises_instead_of_a_partial_second_derivative(index, backend):
    """Every path is once differentiable: a gradient taken with create_graph=True has no graph of its
    own, so differentiating it again raises (a graph through part of the backward would give a
    second derivative with terms missing, silently)."""
    name, fused, _, tensor = _calls()[index]
    leaf = tensor.clone().requires_grad_(True)
    with clarep_fast.use_backend(backend):
        (grad,) = torch.autograd.grad(fused(leaf).sum(), leaf, create_graph=True)
    refused = "does not require grad|not have been used in the graph|marked with @once_differentiable"
    with pytest.raises(RuntimeError, match=refused):
        torch.autograd.grad(grad.sum(), leaf)
