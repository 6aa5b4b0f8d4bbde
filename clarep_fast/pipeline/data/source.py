"""Which dataset a command runs on (``--data SPEC``) and its train / validation / test splits.

    default         the built-in digits on class-correlated backgrounds (data/default.py; --rho)
    folder:PATH     PATH/train/<class>/<images> and PATH/test/<class>/<images>; or PATH/<class>/<images>,
                    split into train and test by a stratified, seeded --test-fraction
    cifar10:PATH    the CIFAR-10 python-pickle directory (data_batch_1..5, test_batch, batches.meta)

Validation is cut from train for every dataset (stratified, seeded, --val-fraction): checkpoints
and hyper-parameters are judged on it, never on test. The default and CIFAR-10 sit in memory;
folder data is listed, not decoded, and streams through DataLoader workers (--workers).
The image side comes from --resolution, else from the teacher, else from the data itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch.nn.functional as F

from clarep_fast.pipeline.data.default import CLASSES, default_splits
from clarep_fast.pipeline.data.images import FolderImages, ImageSet, TensorImages, stratified_split
from clarep_fast.pipeline.data.user import cifar10_classes, list_image_folder, load_cifar10
from clarep_fast.pipeline.options import check_ranges, option

KINDS = ("default", "folder", "cifar10")
DEFAULT_RESOLUTION = 16  # the built-in dataset's side
CIFAR_RESOLUTION = 32


@dataclass(frozen=True)
class DataConfig:
    dataset: str = option("default", "dataset: default | folder:PATH | cifar10:PATH", flag="--data")
    resolution: int | None = option(
        None, "image side in pixels (default: the teacher's, else the data's own)", low=8, high=4096
    )
    rho: float = option(0.8, "class correlation of the default dataset's backgrounds", low=0, high=1)
    test_fraction: float = option(
        0.2,
        "share of every class held out for test (default data; a folder without train/ and test/)",
        low=0,
        high=1,
        low_open=True,
        high_open=True,
    )
    val_fraction: float = option(
        0.1, "share of every class of train held out for validation", low=0, high=1, low_open=True, high_open=True
    )
    seed: int = option(0, "seed of the splits")

    def __post_init__(self):
        check_ranges(self)
        if parse_spec(self.dataset)[0] != "default" and self.rho != DataConfig.rho:
            raise ValueError(f"rho sets the default dataset's backgrounds; it means nothing for --data {self.dataset}")

    @property
    def kind(self) -> str:
        return parse_spec(self.dataset)[0]

    @property
    def path(self) -> Path | None:
        return parse_spec(self.dataset)[1]


def parse_spec(spec: str) -> tuple[str, Path | None]:
    """('default', None), ('folder', PATH) or ('cifar10', PATH); anything else is refused by name."""
    if spec == "default":
        return "default", None
    kind, _, path = spec.partition(":")
    if kind not in KINDS[1:] or not path:
        raise ValueError(f"data must be 'default', 'folder:PATH' or 'cifar10:PATH', got {spec!r}")
    return kind, Path(path).expanduser()


def native_resolution(config: DataConfig) -> int:
    """The data's own image side: 16 (default), 32 (CIFAR-10), a folder's first image if square."""
    if config.kind == "default":
        return DEFAULT_RESOLUTION
    if config.kind == "cifar10":
        return CIFAR_RESOLUTION
    from PIL import Image

    train_root = config.path / "train" if (config.path / "train").is_dir() else config.path
    files, _, _ = list_image_folder(train_root)
    with Image.open(files[0]) as image:
        width, height = image.size
    if width != height:
        raise ValueError(
            f"{files[0]} is {width}×{height}: folder images are not square, so give --resolution (they are resized to R×R)"
        )
    return width


def resolve(config: DataConfig, teacher_resolution: int | None = None, source: str = "the teacher") -> int:
    """The image side a run uses: --resolution, else the teacher's (or the bank's), else the data's
    own; a --resolution that does not match the teacher is refused naming both."""
    if config.resolution is not None:
        if teacher_resolution is not None and config.resolution != teacher_resolution:
            raise ValueError(
                f"--resolution {config.resolution} but {source} makes {teacher_resolution}×{teacher_resolution} images"
            )
        return config.resolution
    return teacher_resolution if teacher_resolution is not None else native_resolution(config)


def load_splits(config: DataConfig, resolution: int, workers: int = 0) -> dict[str, ImageSet]:
    """{"train", "val", "test"} (and, for the default dataset, its background variants
    "test_<variant>" and "val_<variant>"), images at ``resolution``; folder images are decoded in
    ``workers`` DataLoader workers (the run's Runtime)."""
    if config.kind == "default":
        return default_splits(resolution, config.rho, config.test_fraction, config.val_fraction, config.seed)
    if config.kind == "cifar10":
        parts = {}
        for split in ("train", "test"):
            images, labels, classes = load_cifar10(config.path, split)
            if resolution != CIFAR_RESOLUTION:
                images = F.interpolate(
                    images, size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False
                ).clamp(0, 1)
            parts[split] = TensorImages(images, labels, classes)
        train, test = parts["train"], parts["test"]
    else:
        root = config.path
        if not root.is_dir():
            raise FileNotFoundError(f"--data {config.dataset}: {root} does not exist or is not a directory")
        if (root / "train").is_dir() != (root / "test").is_dir():
            raise ValueError(
                f"--data {config.dataset}: {root} has only one of train/ and test/; give both, or class folders directly"
            )
        if (root / "train").is_dir():
            files, labels, classes = list_image_folder(root / "train")
            train = FolderImages(files, labels, classes, resolution, workers)
            files, labels, _ = list_image_folder(root / "test", classes)
            test = FolderImages(files, labels, classes, resolution, workers)
        else:
            files, labels, classes = list_image_folder(root)
            everything = FolderImages(files, labels, classes, resolution, workers)
            kept, held = stratified_split(labels, config.test_fraction, config.seed)
            train, test = everything.subset(kept), everything.subset(held)
    kept, held = stratified_split(train.labels, config.val_fraction, config.seed + 2)
    return {"train": train.subset(kept), "val": train.subset(held), "test": test}


def dataset_classes(config: DataConfig) -> list[str]:
    """The class names, without decoding images (CIFAR-10 reads its small meta file only)."""
    if config.kind == "default":
        return list(CLASSES)
    if config.kind == "cifar10":
        return cifar10_classes(config.path)
    root = config.path / "train" if (config.path / "train").is_dir() else config.path
    if not config.path.is_dir():
        raise FileNotFoundError(f"--data {config.dataset}: {config.path} does not exist or is not a directory")
    return list_image_folder(root)[2]
