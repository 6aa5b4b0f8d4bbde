"""User datasets from a local path: an image-folder tree, or the CIFAR-10 python-pickle layout.

Image folder: root/<class name>/<image files>, one folder per class (sorted names -> labels 0..K-1).
CIFAR-10 python: root/data_batch_1..5, root/test_batch, root/batches.meta (the official tarball,
extracted). Both return LabeledImages-like (images (N, 3, R, R) float in [0, 1], labels (N,)).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


def load_image_folder(root: str | Path, resolution: int, num_classes: int | None = None) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """(images (N, 3, R, R) in [0, 1], labels (N,), class names) from root/<class>/<image>."""
    from PIL import Image, UnidentifiedImageError

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist or is not a directory")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise ValueError(f"{root} has no class sub-folders; expected root/<class name>/<images>")
    if num_classes is not None and len(classes) != num_classes:
        raise ValueError(f"{root} has {len(classes)} class folders but {num_classes} classes were expected")
    images, labels = [], []
    for label, name in enumerate(classes):
        files = sorted(p for p in (root / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f"class folder {root / name} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        for file in files:
            try:
                with Image.open(file) as image:
                    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
            except (UnidentifiedImageError, OSError) as error:
                raise ValueError(f"cannot read image {file}: {error}") from error
            tensor = torch.from_numpy(array).permute(2, 0, 1)[None]
            images.append(F.interpolate(tensor, size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False)[0])
            labels.append(label)
    return torch.stack(images).clamp(0, 1), torch.tensor(labels), classes


def load_cifar10(root: str | Path, split: str = "train") -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """CIFAR-10 from its python-pickle directory: (images (N, 3, 32, 32) in [0, 1], labels, class names)."""
    root = Path(root)
    names = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
    if split not in names:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    missing = [name for name in names[split] + ["batches.meta"] if not (root / name).exists()]
    if missing:
        raise FileNotFoundError(f"{root} is not a CIFAR-10 python directory: missing {', '.join(missing)}")
    with open(root / "batches.meta", "rb") as handle:
        classes = [name.decode() if isinstance(name, bytes) else name for name in pickle.load(handle, encoding="bytes")[b"label_names"]]
    arrays, labels = [], []
    for name in names[split]:
        with open(root / name, "rb") as handle:
            batch = pickle.load(handle, encoding="bytes")
        data, batch_labels = batch[b"data"], batch[b"labels"]
        if data.shape[1] != 3 * 32 * 32 or len(batch_labels) != data.shape[0]:
            raise ValueError(f"{root / name}: expected rows of 3072 pixels with one label each, got {data.shape} and {len(batch_labels)} labels")
        arrays.append(data)
        labels.extend(batch_labels)
    labels = torch.tensor(labels)
    if labels.min() < 0 or labels.max() >= len(classes):
        raise ValueError(f"{root}: labels outside 0..{len(classes) - 1}")
    images = torch.from_numpy(np.concatenate(arrays)).view(-1, 3, 32, 32).float() / 255.0
    return images, labels, classes
