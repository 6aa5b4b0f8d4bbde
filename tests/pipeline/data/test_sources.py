"""--data SPEC: default, folder:PATH (split or flat), cifar10:PATH; the validation split; streaming."""

import pytest
import torch

from clarep_fast.pipeline.data import DataConfig, FolderImages, TensorImages, load_splits, resolve
from clarep_fast.pipeline.data.source import dataset_classes, native_resolution
from tests.pipeline.fixtures import SHAPES, write_cifar10_layout, write_image_folder


def _disjoint(*parts):
    seen = [set(p) for p in parts]
    return all(not (a & b) for i, a in enumerate(seen) for b in seen[i + 1 :])


def test_folder_with_train_and_test(tmp_path):
    root = write_image_folder(tmp_path / "shapes", per_class=10, side=20)
    config = DataConfig(dataset=f"folder:{root}")
    assert native_resolution(config) == 20 and resolve(config) == 20 and resolve(config, teacher_resolution=16) == 16
    splits = load_splits(config, 16)
    train, val, test = splits["train"], splits["val"], splits["test"]
    assert isinstance(train, FolderImages) and train.classes == list(sorted(SHAPES)) == dataset_classes(config)
    assert len(train) == 27 and len(val) == 3 and len(test) == 9  # 10% of each class's 10 held out for validation
    assert torch.equal(val.labels.bincount(), torch.ones(3, dtype=torch.long))
    assert _disjoint(map(str, train.files), map(str, val.files), map(str, test.files))
    images, labels = next(train.sequential(5))
    assert images.shape == (5, 3, 16, 16) and images.min() >= 0 and images.max() <= 1 and labels.dtype == torch.int64


def test_flat_folder_is_split_stratified_and_seeded(tmp_path):
    root = write_image_folder(tmp_path / "flat", per_class=10, side=16, split=False)
    config = DataConfig(dataset=f"folder:{root}", test_fraction=0.3, seed=4)
    first, again = load_splits(config, 16), load_splits(config, 16)
    for name in ("train", "val", "test"):
        assert first[name].files == again[name].files
    assert torch.equal(first["test"].labels.bincount(), torch.full((3,), 3))
    assert _disjoint(*(map(str, first[n].files) for n in ("train", "val", "test")))
    other = load_splits(DataConfig(dataset=f"folder:{root}", test_fraction=0.3, seed=5), 16)
    assert other["test"].files != first["test"].files


def test_streaming_with_workers_gives_the_same_batches(tmp_path):
    root = write_image_folder(tmp_path / "shapes", per_class=6, side=12)
    train = load_splits(DataConfig(dataset=f"folder:{root}"), 12)["train"]
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0)).split(4)
    inline = list(train.batches(order))
    parallel = list(train.subset(torch.arange(len(train))).batches(order, workers=2))
    for (a, la), (b, lb) in zip(inline, parallel, strict=True):
        assert torch.equal(a, b) and torch.equal(la, lb)
    assert torch.equal(train.take(order[0], workers=2), inline[0][0])


def test_cifar10_spec(tmp_path):
    root = write_cifar10_layout(tmp_path / "cifar", per_batch=20)
    config = DataConfig(dataset=f"cifar10:{root}")
    assert resolve(config) == 32 and dataset_classes(config)[3] == "shape3"
    splits = load_splits(config, 16)
    assert isinstance(splits["train"], TensorImages) and splits["train"].images.shape == (90, 3, 16, 16)
    assert len(splits["val"]) == 10 and len(splits["test"]) == 20


def test_default_spec_has_validation_and_variants():
    splits = load_splits(DataConfig(), resolve(DataConfig()))
    assert {"train", "val", "test", "test_swapped"} <= set(splits) and len(splits["val"]) == 400


@pytest.mark.parametrize(
    "spec, message",
    [
        ("imagenet:/data", "data must be one of: default .*; folder:PATH .*; cifar10:PATH"),
        ("folder:", "data must be one of"),
        ("default:/data", "data must be one of"),
    ],
)
def test_bad_specs_are_refused(spec, message):
    with pytest.raises(ValueError, match=message):
        DataConfig(dataset=spec)


def test_bad_folders_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_splits(DataConfig(dataset=f"folder:{tmp_path / 'missing'}"), 16)
    (tmp_path / "half" / "train" / "a").mkdir(parents=True)
    with pytest.raises(ValueError, match="only one of train/ and test/"):
        load_splits(DataConfig(dataset=f"folder:{tmp_path / 'half'}"), 16)
    root = write_image_folder(tmp_path / "shapes", per_class=4)
    (root / "test" / "extra").mkdir()
    (root / "test" / "disc" / "0000.png").rename(root / "test" / "extra" / "0000.png")
    with pytest.raises(ValueError, match="has class folders .* but the training data has"):
        load_splits(DataConfig(dataset=f"folder:{root}"), 16)
    with pytest.raises(ValueError, match="rho sets the default dataset's backgrounds"):
        DataConfig(dataset=f"folder:{root}", rho=0.5)
    with pytest.raises(ValueError, match="--resolution 32 but the teacher makes 16×16"):
        resolve(DataConfig(resolution=32), teacher_resolution=16)
