"""topk_right_singular against the exact SVD of the full Jacobian, on networks small enough to form it."""

import pytest
import torch
from torch import nn

from clarep_fast.pipeline.clarid.jacobian import principal_angle, topk_right_singular
from clarep_fast.taps import FeatureTap
from tests.taps_models import tiny_dit, tiny_unet


class SmallNet(nn.Module):
    """A per-sample conv net R^{2×6×6} -> R^30 (no batch statistics), conditioned on a per-sample scale."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv2d(2, 6, 3, padding=1)
        self.head = nn.Linear(6 * 36, 30)

    def forward(self, x, scale):
        return self.head(torch.tanh(self.conv(x) * scale[:, None, None, None]).flatten(1))


def _exact_svd(fn, x, conditions):
    """Reference: the full Jacobian by torch.autograd.functional.jacobian, one image at a time."""
    vectors, values = [], []
    for b in range(x.shape[0]):
        single = [c[b : b + 1] for c in conditions]
        jacobian = torch.autograd.functional.jacobian(lambda z: fn(z[None], *single)[0], x[b]).reshape(-1, x[b].numel())
        _, s, vh = torch.linalg.svd(jacobian.double())
        vectors.append(vh.T)
        values.append(s)
    return torch.stack(vectors), torch.stack(values)


@pytest.mark.parametrize("mode", ["jvp", "vjp", "exact"])
def test_subspace_matches_exact_svd_small_net(mode):
    net = SmallNet()
    x = torch.randn(5, 2, 6, 6, dtype=torch.float64)
    scale = torch.linspace(0.5, 1.5, 5, dtype=torch.float64)
    net = net.double()
    k = 4
    found = topk_right_singular(
        net, x, k, conditions=(scale,), mode=mode, tol=1e-6, max_iters=200, generator=torch.Generator().manual_seed(0)
    )
    vectors, values = _exact_svd(net, x, (scale,))
    assert found.vectors.shape == (5, 72, k) and found.values.shape == (5, k)
    angles = principal_angle(vectors[:, :, :k], found.vectors)
    assert angles.max() < 1e-2, f"largest principal angle {angles.max():.3g} rad"
    assert ((found.values - values[:, :k]).abs() / values[:, :k]).max() < 1e-2
    gram = found.vectors.transpose(1, 2) @ found.vectors
    assert torch.allclose(gram, torch.eye(k, dtype=gram.dtype).expand_as(gram), atol=1e-8)


@pytest.mark.parametrize("mode", ["jvp", "vjp"])
@pytest.mark.parametrize("model", ["unet", "dit"])
def test_subspace_matches_exact_through_an_early_exit_tap(model, mode):
    """Through FeatureTap (attention on SDPA's math kernel, early exit), fp32, at the default tolerance."""
    if model == "unet":
        tap, x = FeatureTap(tiny_unet(), ["down_blocks.1"], pool=2, fused=False), torch.randn(3, 3, 16, 16)
    else:
        tap, x = FeatureTap(tiny_dit(), ["transformer_blocks.1"], pool=2, fused=False), torch.randn(3, 4, 8, 8)
    times, labels = torch.tensor([100, 500, 900]), torch.tensor([0, 3, 7])

    def features(z, t, c):
        return tap(z, t, c).packed

    exact = topk_right_singular(features, x, 6, conditions=(times, labels), mode="exact")
    found = topk_right_singular(
        features, x, 6, conditions=(times, labels), mode=mode, tol=1e-4, generator=torch.Generator().manual_seed(0)
    )
    assert principal_angle(exact.vectors, found.vectors).max() < 1e-2
    assert ((found.values - exact.values).abs() / exact.values).max() < 1e-2
    assert found.calls >= 3 and found.products > 0 and (found.iterations >= 2).all()


def test_converged_images_leave_the_batch():
    """An image whose Jacobian vanishes stops within three iterations; the others keep iterating."""
    net = SmallNet().double()
    x = torch.randn(3, 2, 6, 6, dtype=torch.float64)
    scale = torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64)  # scale 0: J = 0, nothing to refine
    found = topk_right_singular(
        net, x, 3, conditions=(scale,), mode="jvp", tol=1e-6, max_iters=200, generator=torch.Generator().manual_seed(0)
    )
    assert found.iterations[2] <= 3 and (found.iterations[:2] > 3).all()
    assert torch.isfinite(found.vectors).all() and (found.values[2] == 0).all()


def test_auto_mode_forms_the_jacobian_only_when_it_is_narrow():
    net = SmallNet()  # D = 30
    x, scale = torch.randn(2, 2, 6, 6), torch.ones(2)
    narrow = topk_right_singular(net, x, 2, conditions=(scale,), oversample=3)  # D = 30 <= 6 · 5
    wide = topk_right_singular(net, x, 2, conditions=(scale,), oversample=2, tol=1e-2)  # D = 30 > 6 · 4
    assert (narrow.iterations == 0).all() and narrow.products == 2 * 30
    assert (wide.iterations >= 2).all()


@pytest.mark.parametrize(
    "k,kwargs,match",
    [
        (72, {}, r"k must be an int in \[1, 72\)"),
        (0, {}, r"k must be an int in \[1, 72\)"),
        (31, {}, "exceeds the feature size D = 30"),
        (3, {"mode": "power"}, "mode must be one of"),
        (3, {"conditions": (torch.ones(2),)}, "conditions\\[0\\] must be a tensor with leading batch dimension 5"),
        (3, {"tol": 0.0}, "tol > 0"),
    ],
)
def test_bad_arguments_raise_clear_errors(k, kwargs, match):
    net = SmallNet()
    kwargs.setdefault("conditions", (torch.ones(5),))
    with pytest.raises(ValueError, match=match):
        topk_right_singular(net, torch.randn(5, 2, 6, 6), k, **kwargs)


def test_principal_angle_is_sign_and_rotation_invariant():
    basis = torch.linalg.qr(torch.randn(40, 5, dtype=torch.float64)).Q
    rotation = torch.linalg.qr(torch.randn(5, 5, dtype=torch.float64)).Q
    assert principal_angle(basis, -basis @ rotation) < 1e-7
    other = torch.linalg.qr(torch.randn(40, 5, dtype=torch.float64)).Q
    assert principal_angle(basis, other) > 0.5
