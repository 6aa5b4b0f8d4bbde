"""``--data folder:PATH``: an image-folder tree, PATH/train/<class>/<images> and PATH/test/<class>/<images>,
or PATH/<class>/<images> split into train and test by a stratified, seeded --test-fraction.

Images are listed, not decoded: they stream through DataLoader workers when a consumer iterates.
"""

from __future__ import annotations

from pathlib import Path

from clarep_fast.pipeline.data.images import FolderImages, ImageSet, decode_image
from clarep_fast.pipeline.data.listing import list_image_folder
from clarep_fast.pipeline.data.split import stratified_split

USAGE = "folder:PATH = PATH/train/<class>/<images> and PATH/test/<class>/<images>, or PATH/<class>/<images>"
TAKES_PATH = True


def _root(config) -> Path:
    if not config.path.is_dir():
        raise FileNotFoundError(f"--data {config.dataset}: {config.path} does not exist or is not a directory")
    return config.path


def _train_root(config) -> Path:
    root = _root(config)
    return root / "train" if (root / "train").is_dir() else root


def classes(config) -> list[str]:
    return list_image_folder(_train_root(config))[2]


def native_resolution(config) -> int:
    """The side of the first training image, which must be square (else --resolution is needed)."""
    from PIL import Image

    files, _, _ = list_image_folder(_train_root(config))
    with Image.open(files[0]) as image:
        width, height = image.size
    if width != height:
        raise ValueError(
            f"{files[0]} is {width}×{height}: folder images are not square, so give --resolution (they are resized to R×R)"
        )
    return width


def splits(config, resolution: int) -> dict[str, ImageSet]:
    root = _root(config)
    if (root / "train").is_dir() != (root / "test").is_dir():
        raise ValueError(
            f"--data {config.dataset}: {root} has only one of train/ and test/; give both, or class folders directly"
        )
    if (root / "train").is_dir():
        files, labels, names = list_image_folder(root / "train")
        train = FolderImages(files, labels, names, resolution)
        files, labels, _ = list_image_folder(root / "test", names)
        return {"train": train, "test": FolderImages(files, labels, names, resolution)}
    files, labels, names = list_image_folder(root)
    everything = FolderImages(files, labels, names, resolution)
    kept, held = stratified_split(labels, config.test_fraction, config.seed)
    return {"train": everything.subset(kept), "test": everything.subset(held)}


def load_image_folder(root: str | Path, resolution: int, num_classes: int | None = None):
    """Decode a whole root/<class>/<image> tree into memory: (images (N, 3, R, R) in [0, 1], labels, class names)."""
    import torch

    files, labels, names = list_image_folder(root)
    if num_classes is not None and len(names) != num_classes:
        raise ValueError(f"{root} has {len(names)} class folders but {num_classes} classes were expected")
    return torch.stack([decode_image(file, resolution) for file in files]), labels, names
