"""Labeled image sets, held in memory or streamed from files.

Every set yields images as float RGB in [0, 1], shape (3, R, R), with an int label. Consumers ask
for batches by index (``batches``) or for a few images (``take``): an in-memory set slices its
tensor; a file-backed set decodes in DataLoader workers, so a dataset larger than memory streams.
The caller chooses the indices (from a seeded generator), so the order of the data does not depend
on how many workers decode it. ``workers`` is an argument of the call that iterates (where the
DataLoader is made), never of a set: a run-time setting (clarep_fast/pipeline/runtime.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset


class ImageSet(Dataset):
    """labels (N,) int64 and class names are always in memory; images come from ``__getitem__``."""

    labels: Tensor
    classes: list[str]
    resolution: int

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: Tensor) -> "ImageSet":
        raise NotImplementedError

    def batches(self, index_batches: Iterable[Tensor], workers: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        """(images (b, 3, R, R), labels (b,)) for each index batch, in order; a file-backed set decodes
        in ``workers`` DataLoader workers (0: in this process)."""
        raise NotImplementedError

    def take(self, indices: Tensor, workers: int = 0) -> Tensor:
        """The images at ``indices`` (n, 3, R, R)."""
        parts = [images for images, _ in self.batches(indices.split(256), workers)]
        return torch.cat(parts) if parts else torch.empty(0, 3, self.resolution, self.resolution)

    def sequential(self, batch: int, workers: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        """The whole set in order, ``batch`` images at a time."""
        return self.batches(torch.arange(len(self)).split(batch), workers)


class TensorImages(ImageSet):
    """A set held in memory (the default dataset, CIFAR-10); ``extras`` are per-image tensors
    that travel with each subset (the default dataset's digit masks and background indices)."""

    def __init__(self, images: Tensor, labels: Tensor, classes: list[str], **extras: Tensor):
        if (
            images.dim() != 4
            or images.shape[1] != 3
            or images.shape[2] != images.shape[3]
            or len(images) != len(labels)
        ):
            raise ValueError(
                f"images must be (N, 3, R, R) with one label each, got {tuple(images.shape)} and {len(labels)} labels"
            )
        self.images, self.labels, self.classes, self.extras = images, labels, list(classes), extras
        self.resolution = images.shape[-1]

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.images[index], int(self.labels[index])

    def __getattr__(self, name: str) -> Tensor:
        extras = self.__dict__.get("extras", {})
        if name in extras:
            return extras[name]
        raise AttributeError(name)

    def subset(self, indices: Tensor) -> "TensorImages":
        return TensorImages(
            self.images[indices], self.labels[indices], self.classes, **{k: v[indices] for k, v in self.extras.items()}
        )

    def batches(self, index_batches, workers: int = 0):
        for index in index_batches:  # in memory: nothing to decode, so no workers
            yield self.images[index], self.labels[index]


def _rgb_array(image, path: Path) -> np.ndarray:
    """(H, W, 3) float32 in [0, 1]. 16-bit grayscale (PNG "I;16", or "I" holding 16-bit values) is
    scaled by 65535: PIL's convert("RGB") clips it at 255, which turns almost every pixel white."""
    if image.mode.startswith("I;16") or image.mode == "I":
        gray = np.asarray(image, dtype=np.float64)
        if gray.min() < 0 or gray.max() > 65535:
            raise ValueError(
                f"cannot read image {path}: 32-bit integer pixels outside 0..65535 have no known range; save it as an 8- or 16-bit image"
            )
        return np.repeat((gray / 65535.0).astype(np.float32)[..., None], 3, axis=2)
    if image.mode == "F":
        raise ValueError(
            f"cannot read image {path}: floating-point pixels have no known range; save it as an 8- or 16-bit image"
        )
    return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0


def decode_image(path: Path, resolution: int) -> Tensor:
    """One image file as (3, R, R) float in [0, 1] (RGB, antialiased bilinear resize)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            array = _rgb_array(image, path)
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as error:
        # not an image, truncated, or too large to decode safely
        raise ValueError(f"cannot read image {path}: {error}") from None
    tensor = torch.from_numpy(array).permute(2, 0, 1)[None]
    if tensor.shape[-2:] != (resolution, resolution):
        tensor = F.interpolate(
            tensor, size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False
        )
    return tensor[0].clamp(0, 1)


class FolderImages(ImageSet):
    """A set of image files decoded on demand (in the DataLoader workers of ``batches``)."""

    def __init__(self, files: list[Path], labels: Tensor, classes: list[str], resolution: int):
        self.files, self.labels, self.classes, self.resolution = list(files), labels, list(classes), resolution

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return decode_image(self.files[index], self.resolution), int(self.labels[index])

    def subset(self, indices: Tensor) -> "FolderImages":
        return FolderImages(
            [self.files[i] for i in indices.tolist()], self.labels[indices], self.classes, self.resolution
        )

    def batches(self, index_batches, workers: int = 0):
        batch_lists = [index.tolist() for index in index_batches]
        loader = DataLoader(self, batch_sampler=batch_lists, num_workers=workers)
        for images, labels in loader:
            yield images, labels
