"""topk_right_singular against the exact SVD of the full Jacobian, on networks small enough to form it."""

import pytest
import torch
from torch import nn

from clarep_fast.pipeline.clarid.jacobian import (
    TOLERANCES,
    auto_mode,
    exact_side,
    principal_angle,
    topk_right_singular,
)
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


@pytest.mark.parametrize("mode", ["jvp", "vjp", "krylov", "exact"])
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


@pytest.mark.parametrize("mode", ["jvp", "vjp", "krylov"])
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


def test_auto_mode_picks_the_fewer_predicted_products():
    """Costs in VJPs: exact min(D, JV_COST · N), block Krylov r · (JV_COST · s + s - 1) for s expected steps."""
    net = SmallNet()  # D = 30, N = 72
    x, scale = torch.randn(2, 2, 6, 6), torch.ones(2)
    formed = topk_right_singular(net, x, 2, conditions=(scale,), oversample=3)  # 30 <= 5 · 17
    assert (formed.iterations == 0).all() and formed.products == 2 * (1 + 30)
    iterated = topk_right_singular(net, x, 1, conditions=(scale,), oversample=0, tol=1e-2)  # 30 > 1 · 17
    assert (iterated.iterations >= 2).all()
    assert auto_mode(768, 1024, 116) == "exact"  # the wide regime at the default teacher's latent size
    assert auto_mode(4096, 4608, 116) == "krylov"  # DiT-XL/2-256's: 4,608 > 116 · 17
    assert auto_mode(4096, 4608, 116, expected_steps=20) == "exact"  # a slow network: exact is cheaper
    assert exact_side(256, 384) == "rows" and exact_side(256, 640) == "columns"


class Spectral(nn.Module):
    """f(x) = 10 tanh(0.1 A x) with A = U diag(σ) V^T, σ_i = decay^i: a slowly decaying spectrum
    (σ_k / σ_{k+1} = 1 / decay, close to 1, as on a trained network) on N = 256 inputs, D = 384 outputs."""

    def __init__(self, decay: float = 0.985, width: int = 384):
        super().__init__()
        generator = torch.Generator().manual_seed(3)
        u = torch.linalg.qr(torch.randn(width, 256, dtype=torch.float64, generator=generator)).Q
        v = torch.linalg.qr(torch.randn(256, 256, dtype=torch.float64, generator=generator)).Q
        self.register_buffer("a", u * decay ** torch.arange(256, dtype=torch.float64) @ v.T)

    def forward(self, x):
        return 10 * torch.tanh(0.1 * x.flatten(1) @ self.a.T)


def test_block_krylov_matches_exact_on_a_slowly_decaying_spectrum_with_a_third_of_the_products():
    """Where subspace iteration needs ~20 iterations (σ_k/σ_{k+1} near 1), block Krylov's Ritz
    values and directions agree with the exact SVD (the wide regime, D > N) within the stopping
    tolerance, at under a third of subspace iteration's products, and so do the CLAReps; exact
    formed from its columns (N J v, when D > JV_COST · N) is the exact SVD too."""
    from clarep_fast.ops.project_out import project_out

    net, k = Spectral(), 24
    x = torch.randn(4, 1, 16, 16, dtype=torch.float64)
    exact = topk_right_singular(net, x, k, mode="exact")
    assert exact.products == 4 * (1 + 384)  # D = 384 < 2 N: the rows, by VJPs
    vectors, values = _exact_svd(net, x, ())
    assert principal_angle(vectors[:, :, :k], exact.vectors).max() < 1e-8
    wider = Spectral(width=640)
    by_columns = topk_right_singular(wider, x, k, mode="exact")
    assert by_columns.products == 4 * (1 + 256)  # D = 640 > 2 N: the columns, by JVPs
    assert principal_angle(_exact_svd(wider, x, ())[0][:, :, :k], by_columns.vectors).max() < 1e-8
    runs = {
        mode: topk_right_singular(net, x, k, mode=mode, oversample=8, tol=3e-3, max_iters=100,
                                  generator=torch.Generator().manual_seed(0))
        for mode in ("jvp", "krylov")
    }  # fmt: skip
    krylov, subspace = runs["krylov"], runs["jvp"]
    assert principal_angle(exact.vectors, krylov.vectors).max() < 3e-3
    assert ((krylov.values - exact.values).abs() / exact.values).max() < 1e-6
    assert krylov.products * 3 <= subspace.products and subspace.iterations.min() >= 3 * krylov.iterations.max() - 3
    default = topk_right_singular(net, x, k, mode="krylov", oversample=8, max_iters=100,
                                  generator=torch.Generator().manual_seed(0))  # fmt: skip
    pinned = topk_right_singular(net, x, k, mode="krylov", oversample=8, max_iters=100, tol=TOLERANCES["krylov"],
                                 generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert torch.equal(default.iterations, pinned.iterations) and TOLERANCES["krylov"] > TOLERANCES["jvp"]
    start = x.flatten(1)
    clareps = [project_out(start, found.vectors) for found in (exact, krylov)]
    assert ((clareps[1] - clareps[0]).norm(dim=1) / clareps[0].norm(dim=1)).max() < 3e-3


class Drifting(nn.Module):
    """f(x) = tanh(A x) on N = 256 inputs, D = 384 outputs, A with a slowly decaying spectrum and
    inputs large enough to saturate: J = diag(1 - tanh²(A x)) A, so each image's top-k subspace is
    its own (a sibling's shares part of it but misses some directions entirely: largest principal
    angles 1.4–1.57 rad)."""

    def __init__(self):
        super().__init__()
        self.a = Spectral(decay=0.985).a

    def forward(self, x):
        return torch.tanh(x.flatten(1) @ self.a.T)


def _drifting_problem(k=16):
    net = Drifting()
    x = 8 * torch.randn(4, 1, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    return net, x, k, topk_right_singular(net, x, k, mode="exact")


def test_the_drifting_network_moves_the_subspace_between_images():
    """The test network of the starts: a sibling's exact top-k is a start, not the answer."""
    _, _, _, exact = _drifting_problem()
    sibling = exact.vectors.roll(1, 0)
    assert 0.1 < principal_angle(exact.vectors, sibling).min() < 1.5


@pytest.mark.parametrize("mode", ["krylov", "jvp"])
def test_the_residual_rule_matches_exact_and_its_residual_bounds_the_error(mode):
    """stop="residual" against the float64 SVD: directions, values and CLAReps; a tighter tolerance
    gives an answer at least as close."""
    from clarep_fast.ops.project_out import project_out

    net, x, k, exact = _drifting_problem()
    angles = []
    for tol in (1e-3, 1e-6):
        found = topk_right_singular(net, x, k, mode=mode, stop="residual", tol=tol, max_iters=200,
                                    generator=torch.Generator().manual_seed(0))  # fmt: skip
        angles.append(principal_angle(exact.vectors, found.vectors).max())
        assert ((found.values - exact.values).abs() / exact.values).max() < 10 * tol
    assert angles[1] <= angles[0] and angles[1] < 1e-3
    clareps = [project_out(x.flatten(1), v) for v in (exact.vectors, found.vectors)]
    assert ((clareps[1] - clareps[0]).norm(dim=1) / clareps[0].norm(dim=1)).max() < 1e-4


@pytest.mark.parametrize("mode", ["krylov", "jvp"])
def test_a_start_at_the_answer_stops_after_one_step_under_the_residual_rule(mode):
    net, x, k, exact = _drifting_problem()
    found = topk_right_singular(net, x, k, mode=mode, stop="residual", tol=1e-6, start=exact.vectors,
                                generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert (found.iterations == 1).all()
    assert principal_angle(exact.vectors, found.vectors).max() < 1e-6
    probes = k + 10  # one step: r J v and r J^T u per image, after the primal forward
    assert found.products == 4 * (1 + 2 * probes)
    under_change = topk_right_singular(net, x, k, mode=mode, tol=1e-6, start=exact.vectors,
                                       generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert (under_change.iterations >= 2).all()  # two successive estimates: never fewer than 2 steps


@pytest.mark.parametrize("stop", ["change", "residual"])
def test_a_siblings_subspace_as_start_still_finds_each_images_own(stop):
    """The start is only a start: from another image's exact top-k the answer is the image's own."""
    net, x, k, exact = _drifting_problem()
    found = topk_right_singular(net, x, k, mode="krylov", stop=stop, tol=1e-6, max_iters=200,
                                start=exact.vectors.roll(1, 0), generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert principal_angle(exact.vectors, found.vectors).max() < 1e-3
    assert ((found.values - exact.values).abs() / exact.values).max() < 1e-5


def _same_top_k(runs):
    reference = next(iter(runs.values()))
    for found in runs.values():
        assert principal_angle(reference.vectors, found.vectors).max() < 1e-6
        assert torch.allclose(found.values, reference.values, rtol=1e-9)
        assert found.products == reference.products and torch.equal(found.iterations, reference.iterations)
    return reference


def test_both_sources_of_jv_and_any_probes_per_call_give_the_same_krylov_top_k():
    """J v by forward mode or by the VJP of the pullback, and products in calls of any size: the
    same top-k to rounding (float64) at the same product count, through an early-exit DiT tap
    (attention, LayerNorm), images converging at different steps (re-linearizations)."""
    torch.manual_seed(0)
    tap = FeatureTap(tiny_dit().double(), ["transformer_blocks.1"], pool=2, fused=False)
    x = torch.randn(3, 4, 8, 8, dtype=torch.float64)
    times, labels = torch.tensor([100, 500, 900]), torch.tensor([0, 3, 7])

    def features(z, t, c):
        return tap(z, t, c).packed

    runs = {
        (jv, calls): topk_right_singular(features, x, 6, conditions=(times, labels), mode="krylov", jv=jv, tol=1e-2,
                                         probes_per_call=calls, generator=torch.Generator().manual_seed(0))
        for jv in ("forward", "backward") for calls in (None, 3)
    }  # fmt: skip
    found = _same_top_k(runs)
    assert found.iterations.unique().numel() > 1  # some images left the batch before others
    exact = topk_right_singular(features, x, 6, conditions=(times, labels), mode="exact")
    assert principal_angle(exact.vectors, found.vectors).max() < 1e-2


def test_exact_by_columns_from_either_source_of_jv_is_the_svd():
    """D > JV_COST · N: exact forms J from its N columns, by forward-mode J v or by the VJP of the
    pullback, in calls of any size: the same as the full Jacobian's SVD."""
    net, x = Spectral(width=640), torch.randn(2, 1, 16, 16, dtype=torch.float64)
    runs = {
        (jv, calls): topk_right_singular(net, x, 8, mode="exact", jv=jv, probes_per_call=calls)
        for jv in ("forward", "backward") for calls in (None, 5)
    }  # fmt: skip
    found = _same_top_k(runs)
    assert found.products == 2 * (1 + 256)  # the columns
    vectors, _ = _exact_svd(net, x, ())
    assert principal_angle(vectors[:, :, :8], found.vectors).max() < 1e-8


@pytest.mark.parametrize(
    "k,kwargs,match",
    [
        (72, {}, r"k must be an int in \[1, 72\)"),
        (0, {}, r"k must be an int in \[1, 72\)"),
        (31, {}, "exceeds the feature size D = 30"),
        (3, {"mode": "power"}, "mode must be one of"),
        (3, {"conditions": (torch.ones(2),)}, "conditions\\[0\\] must be a tensor with leading batch dimension 5"),
        (3, {"tol": 0.0}, "tol > 0"),
        (3, {"stop": "never"}, "stop must be one of"),
        (3, {"start": torch.randn(5, 71, 3)}, r"start must be directions \(B, N, m\) = \(5, 72, m >= 1\)"),
        (3, {"start": torch.randn(72, 3)}, "start must be directions"),
        (3, {"jv": "reverse"}, "jv must be one of"),
        (3, {"mode": "jvp", "jv": "backward"}, "mode 'jvp' computes J v by 'forward'"),
        (3, {"probes_per_call": 0}, "probes_per_call must be an int >= 1"),
        (3, {"probes_per_call": 2.5}, "probes_per_call must be an int >= 1"),
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
