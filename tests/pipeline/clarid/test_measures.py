"""The measures and the CLARID steps the evidence rests on, against cases whose answer is known:
k-means/NMI on constructed clusters, background spread on constructed images, exact top-k in
float64, the projection's orthogonality, the random-direction control, and the feature label."""

import dataclasses

import pytest
import torch

from clarep_fast.ops.project_out import project_out
from clarep_fast.pipeline.clarid.clustering import background_spread, feature_nmi, kmeans, normalized_mutual_information
from clarep_fast.pipeline.clarid.jacobian import principal_angle, topk_right_singular
from clarep_fast.pipeline.clarid.search import SearchConfig, cached_features, random_directions
from clarep_fast.pipeline.teacher.model import Teacher
from clarep_fast.taps import FeatureTap
from tests.taps_models import tiny_unet


def test_nmi_is_one_on_separated_clusters_and_near_zero_on_noise():
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(4).repeat_interleave(50)
    centres = torch.randn(4, 8, generator=generator) * 10
    separated = centres[labels] + 0.1 * torch.randn(200, 8, generator=generator)
    assert feature_nmi(separated, labels) == pytest.approx(1.0)
    assert normalized_mutual_information(labels, kmeans(separated, 4)) == pytest.approx(1.0)
    noise = torch.randn(200, 8, generator=generator)
    assert feature_nmi(noise, labels) < 0.1
    permuted = (labels + 1) % 4  # NMI ignores how the clusters are numbered
    assert normalized_mutual_information(labels, permuted) == pytest.approx(1.0)


def test_background_spread_on_constructed_images():
    labels = torch.tensor([0, 0, 1, 1])
    same = torch.zeros(4, 3, 8, 8)
    same[:2] += 0.3
    assert background_spread(same, labels) == pytest.approx(0.0)  # one border color per class
    varied = torch.zeros(4, 3, 8, 8)
    varied[0] += 0.2
    varied[1] += 0.6  # class 0's borders differ by 0.4: std of (0.2, 0.6) = 0.2828
    varied[:, :, 3:5, 3:5] = 1.0  # the centre is not the border: it must not count
    assert background_spread(varied, labels) == pytest.approx((0.2828427 + 0.0) / 2, rel=1e-5)
    assert background_spread(varied[:1], labels[:1]) is None


def test_exact_mode_matches_the_float64_svd_within_a_microradian():
    torch.manual_seed(0)
    weight = torch.randn(12, 20, dtype=torch.float64)

    def fn(z):
        return torch.tanh(z.flatten(1) @ weight.T)

    x = torch.randn(3, 4, 5, dtype=torch.float64)
    found = topk_right_singular(fn, x, 4, mode="exact")
    for b in range(3):
        jacobian = torch.autograd.functional.jacobian(lambda z: fn(z[None])[0], x[b]).reshape(12, 20)
        _, values, vh = torch.linalg.svd(jacobian)
        assert float(principal_angle(vh[:4].T[None], found.vectors[b : b + 1])) < 1e-6
        torch.testing.assert_close(found.values[b], values[:4], rtol=1e-10, atol=1e-12)


def test_the_projection_removes_the_directions_before_rescale():
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(5, 48, generator=generator, dtype=torch.float64)
    vectors = torch.linalg.qr(torch.randn(5, 48, 6, generator=generator, dtype=torch.float64)).Q
    projected = project_out(x, vectors, rescale=False)
    assert torch.einsum("bnk,bn->bk", vectors, projected).abs().max() < 1e-12  # Vᵀ x~ = 0
    rescaled = project_out(x, vectors, rescale=True)
    torch.testing.assert_close(rescaled.norm(dim=1), x.norm(dim=1))


def test_random_directions_are_orthonormal_and_seeded():
    first = random_directions(3, (3, 4, 4), 5, torch.Generator().manual_seed(0))
    assert first.shape == (3, 48, 5)
    torch.testing.assert_close(first.transpose(1, 2) @ first, torch.eye(5).expand(3, 5, 5), atol=1e-5, rtol=0)
    assert torch.equal(first, random_directions(3, (3, 4, 4), 5, torch.Generator().manual_seed(0)))


def test_null_label_features_read_the_image_not_the_label():
    """The same sample tapped as class 0 and as class 1: with the null label the features are
    identical (the label input is not there to read); with the true label they differ."""
    teacher = Teacher(tiny_unet())
    tap = FeatureTap(teacher.denoiser, ["down_blocks.1", "mid_block"], pool=2)
    clean = torch.randn(1, 3, 16, 16).expand(2, 3, 16, 16)
    noise = torch.randn(1, 3, 16, 16).expand(2, 3, 16, 16)
    labels = torch.tensor([0, 1])
    config = SearchConfig(feature_layers=("down_blocks.1", "mid_block"), feature_time=100)
    null = cached_features(teacher, tap, config, clean, clean, noise, labels)
    true = cached_features(teacher, tap, dataclasses.replace(config, feature_label="true"), clean, clean, noise, labels)
    for layer in config.feature_layers:
        torch.testing.assert_close(null[layer][0], null[layer][1])
        assert (true[layer][0] - true[layer][1]).abs().max() > 1e-4, layer
    # the features are of the sample re-noised to t_f: another t_f, other features
    later = cached_features(teacher, tap, dataclasses.replace(config, feature_time=500), clean, clean, noise, labels)
    assert (later["mid_block"] - null["mid_block"]).abs().max() > 1e-4
