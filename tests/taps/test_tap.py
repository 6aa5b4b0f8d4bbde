"""FeatureTap on tiny random UNet, DiT and timm models: packed output equals forward hooks + eager
pooling + concatenation; early exit equals the full forward and skips later blocks; gradients,
torch.func JVP/VJP and torch.compile; clear errors."""

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from clarep_fast import FeatureTap
from clarep_fast.reference import feature_pool_reference
from clarep_fast.taps.stages import as_map
from tests.taps_models import tiny_dit, tiny_timm, tiny_unet
from tests.utils import assert_close

UNET_LAYERS = [
    ["mid_block"],
    ["down_blocks.0", "down_blocks.1", "mid_block"],
    ["up_blocks.1", "down_blocks.2", "down_blocks.1.attentions.0"],
    ["conv_in", "conv_out"],
]
DIT_LAYERS = [["transformer_blocks.0"], ["transformer_blocks.2", "pos_embed", "transformer_blocks.1"]]


def _hooked_reference(model, layers, pool, normalize, call):
    """torchdistill-style: hooks keep every tapped map, then eager pool + normalize + concat."""
    captured, handles = {}, []
    for name in layers:
        module = model.get_submodule(name)
        handles.append(
            module.register_forward_hook(lambda m, i, out, name=name: captured.__setitem__(name, as_map(out, name)))
        )
    try:
        call()
    finally:
        for handle in handles:
            handle.remove()
    return feature_pool_reference([captured[name] for name in layers], pool, normalize)


def _unet_inputs(batch=3):
    return torch.randn(batch, 3, 16, 16), torch.randint(0, 1000, (batch,)), torch.randint(0, 10, (batch,))


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("layers", UNET_LAYERS, ids=str)
def test_unet_tap_equals_hooks_and_eager_pooling(layers, normalize):
    model = tiny_unet()
    x, t, c = _unet_inputs()
    with torch.no_grad():
        out = FeatureTap(model, layers, pool=2, normalize=normalize)(x, t, c)
        expected = _hooked_reference(model, layers, 2, normalize, lambda: model(x, t, c))
    assert_close(out.packed, expected, 1e-6, "packed")
    assert list(out.features) == layers
    for name, view in out.features.items():
        assert view.shape[2:] == (2, 2) and view.data_ptr() >= out.packed.data_ptr()


def test_early_exit_skips_later_blocks_and_matches_full_forward():
    model = tiny_unet()
    x, t, c = _unet_inputs()
    calls = []
    handles = [
        block.register_forward_hook(lambda *a: calls.append(1)) for block in list(model.up_blocks) + [model.mid_block]
    ]
    with torch.no_grad():
        early = FeatureTap(model, ["down_blocks.1"], stop_early=True)(x, t, c).packed
        assert not calls, "blocks after the deepest tapped layer ran"
        full = FeatureTap(model, ["down_blocks.1"], stop_early=False)(x, t, c).packed
        assert calls, "stop_early=False must run the whole model"
    for handle in handles:
        handle.remove()
    assert torch.equal(early, full)


@pytest.mark.parametrize("layers", DIT_LAYERS, ids=str)
def test_dit_tap_equals_hooks_and_eager_pooling(layers):
    model = tiny_dit()
    x, t, c = torch.randn(2, 4, 8, 8), torch.randint(0, 1000, (2,)), torch.randint(0, 10, (2,))
    with torch.no_grad():
        out = FeatureTap(model, layers, pool=2)(x, t, c)
        expected = _hooked_reference(model, layers, 2, False, lambda: model(x, timestep=t, class_labels=c))
    assert_close(out.packed, expected, 1e-6, "packed")


def test_timm_tap_values_and_gradients_match_hooks():
    model = tiny_timm()
    indices = [1, 3]
    names = [model.feature_info[i]["module"] for i in indices]
    x = torch.randn(2, 3, 32, 32)
    out = FeatureTap(model, indices, pool=2, normalize=True)(x).packed
    weights = torch.randn_like(out)
    grads = torch.autograd.grad((out * weights).sum(), list(model.parameters()), allow_unused=True)
    expected = _hooked_reference(model, names, 2, True, lambda: model(x))
    expected_grads = torch.autograd.grad((expected * weights).sum(), list(model.parameters()), allow_unused=True)
    assert_close(out, expected, 1e-5, "packed")
    for index, (got, want) in enumerate(zip(grads, expected_grads)):
        if want is None:  # parameters after the deepest tap: early exit never touches them
            assert got is None
            continue
        assert_close(got, want, 1e-4, f"grad of parameter {index}")


def test_unet_gradients_match_hooks():
    model = tiny_unet().double()
    x, t, c = _unet_inputs(2)
    x = x.double().requires_grad_(True)
    layers = ["down_blocks.1", "mid_block"]
    out = FeatureTap(model, layers, pool=2, normalize=True)(x, t, c).packed
    weights = torch.randn_like(out)
    (grad,) = torch.autograd.grad((out * weights).sum(), x)
    x_ref = x.detach().clone().requires_grad_(True)
    expected = _hooked_reference(model, layers, 2, True, lambda: model(x_ref, t, c))
    (expected_grad,) = torch.autograd.grad((expected * weights).sum(), x_ref)
    assert_close(grad, expected_grad, 1e-9, "d features / d x")


def test_torch_func_jvp_and_vjp_through_early_exit():
    """CLARID's use: JVPs and VJPs of the features with respect to the latent."""
    model = tiny_unet().double()
    x, t, c = _unet_inputs(2)
    x, v = x.double(), torch.randn(2, 3, 16, 16, dtype=torch.float64)
    tap = FeatureTap(model, ["down_blocks.1"], pool=2, fused=False)  # forward-mode AD: the reference pooling

    def features(latent):
        return tap(latent, t, c).packed

    with sdpa_kernel(SDPBackend.MATH):  # forward-mode AD through SDPA needs the math kernel on CPU
        value, tangent = torch.func.jvp(features, (x,), (v,))
        _, pullback = torch.func.vjp(features, x)
    epsilon = 1e-6
    finite_difference = (features(x + epsilon * v) - features(x - epsilon * v)) / (2 * epsilon)
    assert_close(value, features(x), 1e-12, "jvp primal")
    assert_close(tangent, finite_difference, 1e-6, "jvp tangent")
    u = torch.randn_like(value)
    (cotangent,) = pullback(u)
    assert abs((cotangent * v).sum() - (u * tangent).sum()) < 1e-8 * (u * tangent).abs().sum()  # <J^T u, v> = <u, J v>


def test_several_conditions_in_one_forward():
    model = tiny_unet()
    x, _, c = _unet_inputs()
    tap = FeatureTap(model, ["mid_block"], pool=1)
    timesteps = torch.tensor([100, 500, 900])
    with torch.no_grad():
        together = tap.at_conditions(x, timesteps, c)
        one_by_one = torch.stack([tap(x, t.expand(3), c).packed for t in timesteps])
    assert together.shape == (3, 3, 32)
    assert_close(together, one_by_one, 1e-5, "K conditions batched")


@pytest.mark.parametrize("family", ["timm", "unet", "dit"])
def test_compiled_tap_matches_eager_without_graph_breaks(family):
    if family == "timm":
        tap, inputs = FeatureTap(tiny_timm(), [2, 3], pool=2), (torch.randn(2, 3, 32, 32),)
    elif family == "dit":
        tap = FeatureTap(tiny_dit(), ["transformer_blocks.1"], pool=2)
        inputs = (torch.randn(2, 4, 8, 8), torch.tensor([3, 7]), torch.tensor([1, 2]))
    else:
        tap, inputs = FeatureTap(tiny_unet(), ["down_blocks.1", "mid_block"], pool=2), _unet_inputs(2)
    with torch.no_grad():
        expected = tap(*inputs).packed
        compiled = torch.compile(tap, fullgraph=True)(*inputs).packed  # fullgraph: a break would raise
    assert_close(compiled, expected, 1e-5, "compiled packed")


def test_bad_layer_names_list_valid_ones():
    with pytest.raises(ValueError, match=r"unknown layer 'down_blocks\.9'.*valid layers: conv_in, down_blocks\.0"):
        FeatureTap(tiny_unet(), ["down_blocks.9"])
    with pytest.raises(ValueError, match="layers is empty"):
        FeatureTap(tiny_unet(), [])
    with pytest.raises(ValueError, match="duplicates"):
        FeatureTap(tiny_unet(), ["mid_block", "mid_block"])
    with pytest.raises(ValueError, match="mixes integer indices and names"):
        FeatureTap(tiny_unet(), [1, "mid_block"])
    with pytest.raises(ValueError, match="stop_early needs a staged forward"):
        FeatureTap(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3)), ["0"])


def test_mismatched_batch_and_oversized_pool():
    model = tiny_unet()
    x, t, c = _unet_inputs()
    with pytest.raises(ValueError, match="mismatched batch"):
        FeatureTap(model, ["mid_block"])(x, t, c[:2])
    with pytest.raises(ValueError, match="pool size 8 is larger than mid_block's 4×4 map"):
        FeatureTap(model, ["down_blocks.0", "mid_block"], pool=8)(x, t, c)


def test_close_removes_the_hooks_and_the_context_manager_closes():
    model = tiny_unet()
    nested = "down_blocks.1.attentions.0"
    before = len(dict(model.named_modules())[nested]._forward_hooks)
    with FeatureTap(model, [nested], pool=2) as tap:
        assert len(dict(model.named_modules())[nested]._forward_hooks) == before + 1
        tap(*_unet_inputs(2))
    assert len(dict(model.named_modules())[nested]._forward_hooks) == before
    with pytest.raises(RuntimeError, match="FeatureTap is closed"):
        tap(*_unet_inputs(2))
    tap.close()  # twice: harmless


def test_timm_layers_by_module_name():
    model = tiny_timm()
    names = [entry["module"] for entry in model.feature_info]
    by_index = FeatureTap(model, [2, 3], pool=2)
    by_name = FeatureTap(model, [names[2], names[3]], pool=2)
    assert by_name.layers == [2, 3]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(by_name(x).packed, by_index(x).packed)
    with pytest.raises(
        ValueError, match=rf"unknown layer 'nope' of the timm model .*0 \({names[0]}\), 1 \({names[1]}\)"
    ):
        FeatureTap(model, ["nope"])
