"""Default dataset (digits on class-correlated backgrounds, test variants) and user-data loaders."""

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clarep_fast.pipeline.data import load_cifar10, load_image_folder
from clarep_fast.pipeline.data.backgrounds import PALETTE, background_indices
from clarep_fast.pipeline.data.sources.default import default_splits
from clarep_fast.pipeline.data.split import stratified_split
from clarep_fast.pipeline.data.mnist import load_mnist5k


@pytest.fixture(scope="module")
def splits():
    return default_splits(resolution=16, rho=0.8)


def test_mnist5k_is_the_genuine_balanced_subset():
    images, labels = load_mnist5k()
    assert images.shape == (5000, 28, 28) and images.dtype == torch.uint8
    assert torch.equal(labels.bincount(), torch.full((10,), 500))
    assert images.float().mean() > 20  # real strokes, not blank


def test_split_is_stratified_disjoint_and_deterministic():
    _, labels = load_mnist5k()
    train, test = stratified_split(labels, 0.2, seed=3)
    again_train, again_test = stratified_split(labels, 0.2, seed=3)
    assert torch.equal(train, again_train) and torch.equal(test, again_test)
    assert len(set(train.tolist()) & set(test.tolist())) == 0 and len(train) + len(test) == 5000
    assert torch.equal(labels[test].bincount(), torch.full((10,), 100))


def test_splits_and_variants(splits):
    assert splits["train"].images.shape == (3600, 3, 16, 16) and splits["test"].images.shape == (1000, 3, 16, 16)
    assert splits["val"].images.shape == (400, 3, 16, 16) and torch.equal(
        splits["val"].labels.bincount(), torch.full((10,), 40)
    )
    for name, split in splits.items():
        assert split.images.min() >= 0 and split.images.max() <= 1, name
    train = splits["train"]
    agreement = (train.backgrounds == train.labels).float().mean().item()
    assert 0.78 < agreement < 0.86  # rho + (1 - rho)/10 = 0.82
    swapped = splits["test_swapped"]
    assert (swapped.backgrounds != swapped.labels).all()
    plain = splits["test_only_foreground"]
    assert (plain.backgrounds == -1).all()
    outside = plain.masks.expand_as(plain.images) == 0
    assert plain.images[outside].abs().max() == 0  # black where there is no digit
    assert torch.equal(plain.masks, swapped.masks)  # same digits in every variant
    test, same, alone = splits["test"], splits["test_mixed_same"], splits["test_only_background"]
    assert torch.equal(same.masks, test.masks) and torch.equal(same.labels, test.labels)
    for label in range(10):  # mixed_same: the backgrounds of the same class's images, shuffled among them
        members = test.labels == label
        assert sorted(same.backgrounds[members].tolist()) == sorted(test.backgrounds[members].tolist())
    assert not torch.equal(same.backgrounds, test.backgrounds)
    assert torch.equal(alone.backgrounds, test.backgrounds) and (alone.masks == 0).all()  # own background, no digit
    nearest = (alone.images.mean((2, 3))[:, None] - PALETTE[None]).norm(dim=2).argmin(1)
    assert torch.equal(nearest, alone.backgrounds)  # each image is its own background's color, textured


def test_the_variants_added_later_left_the_others_as_they_were(splits):
    """mixed_same and only_background draw from a generator of their own: the earlier variants and the
    validation ones are what they were before them (background draws recorded with the code before them)."""
    assert torch.equal(splits["test_in_distribution"].images, splits["test"].images)
    assert splits["test_swapped"].backgrounds[:5].tolist() == [2, 4, 2, 6, 7]
    assert splits["val_mixed_random"].backgrounds[:5].tolist() == [2, 0, 9, 0, 9]


@pytest.mark.parametrize("rho,expected", [(1.0, 1.0), (0.0, 0.1)])
def test_rho_sets_the_class_correlation(rho, expected):
    labels = torch.randint(0, 10, (20000,))
    agreement = (background_indices(labels, rho, torch.Generator().manual_seed(0)) == labels).float().mean().item()
    assert abs(agreement - expected) < 0.01


def test_bad_configs():
    with pytest.raises(ValueError, match="rho must be in"):
        default_splits(rho=1.5)
    with pytest.raises(ValueError, match="resolution must be an int in"):
        default_splits(resolution=3)
    with pytest.raises(ValueError, match="held-out fraction must be in"):
        default_splits(test_fraction=1.0)


def _write_png(path, value):
    Image.fromarray(np.full((10, 12, 3), value, dtype=np.uint8)).save(path)


def test_image_folder(tmp_path):
    for name, value in (("cat", 10), ("dog", 200)):
        (tmp_path / name).mkdir()
        _write_png(tmp_path / name / "a.png", value)
        _write_png(tmp_path / name / "b.png", value)
    images, labels, classes = load_image_folder(tmp_path, resolution=8)
    assert images.shape == (4, 3, 8, 8) and classes == ["cat", "dog"] and labels.tolist() == [0, 0, 1, 1]
    assert abs(images[2].mean().item() - 200 / 255) < 1e-3
    with pytest.raises(ValueError, match="has 2 class folders but 3 classes were expected"):
        load_image_folder(tmp_path, 8, num_classes=3)
    (tmp_path / "dog" / "broken.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="cannot read image"):
        load_image_folder(tmp_path, 8)


def test_image_folder_bad_layouts(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_image_folder(tmp_path / "missing", 8)
    with pytest.raises(ValueError, match="no class sub-folders"):
        load_image_folder(tmp_path, 8)
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        load_image_folder(tmp_path, 8)


def test_cifar10_pickle_layout(tmp_path):
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    with open(tmp_path / "batches.meta", "wb") as handle:
        pickle.dump({b"label_names": names}, handle)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(tmp_path / name, "wb") as handle:
            pickle.dump({b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), b"labels": [0, 3, 9, 1]}, handle)
    images, labels, classes = load_cifar10(tmp_path, "train")
    assert images.shape == (20, 3, 32, 32) and labels.shape == (20,) and classes[9] == "truck"
    assert load_cifar10(tmp_path, "test")[0].shape == (4, 3, 32, 32)
    (tmp_path / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="missing data_batch_3"):
        load_cifar10(tmp_path, "train")


class _RunsCode:
    """A pickle that would call a function on load (here one that leaves a file behind)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar10_reader_runs_no_code_from_the_data(tmp_path, protocol):
    names = [f"class{i}".encode() for i in range(10)]
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(tmp_path / name, "wb") as handle:
            pickle.dump(
                {b"data": rng.integers(0, 256, (2, 3072), dtype=np.uint8), b"labels": [0, 1]}, handle, protocol=protocol
            )
    marker = tmp_path / "code-ran"
    with open(tmp_path / "batches.meta", "wb") as handle:
        pickle.dump({b"label_names": names, b"extra": _RunsCode(marker)}, handle, protocol=protocol)
    with pytest.raises(ValueError, match="batches.meta is not a CIFAR-10 python file .*refused to load"):
        load_cifar10(tmp_path, "train")
    assert not marker.exists()
    with open(tmp_path / "batches.meta", "wb") as handle:  # the genuine layout still loads, under either protocol
        pickle.dump({b"label_names": names}, handle, protocol=protocol)
    assert load_cifar10(tmp_path, "train")[0].shape == (10, 3, 32, 32)


def test_decode_keeps_16_bit_grayscale_and_refuses_what_it_cannot_read(tmp_path):
    from clarep_fast.pipeline.data.images import decode_image

    ramp = (np.arange(16 * 16).reshape(16, 16) * 257).astype(np.uint16)  # 0 .. 65535·(255/256)
    Image.fromarray(ramp).save(tmp_path / "gray16.png")
    decoded = decode_image(tmp_path / "gray16.png", 16)
    expected = torch.from_numpy(ramp / 65535.0).float()
    assert decoded.shape == (3, 16, 16)
    # PIL's convert("RGB") would clip it to white
    torch.testing.assert_close(decoded, expected.expand(3, 16, 16), atol=1e-6, rtol=0)
    Image.fromarray(np.random.rand(8, 8).astype(np.float32)).save(tmp_path / "float.tiff")
    with pytest.raises(ValueError, match=r"float.tiff: floating-point pixels have no known range"):
        decode_image(tmp_path / "float.tiff", 8)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "cut.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "cut.png").read_bytes()[:40])
    with pytest.raises(ValueError, match=r"cannot read image .*cut.png"):
        decode_image(tmp_path / "cut.png", 8)
