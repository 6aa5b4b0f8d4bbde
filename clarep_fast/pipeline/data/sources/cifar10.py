"""``--data cifar10:PATH``: the CIFAR-10 python-pickle directory, root/data_batch_1..5,
root/test_batch, root/batches.meta (the official tarball, extracted), held in memory.

Images are float RGB in [0, 1], (N, 3, 32, 32), resized (antialiased) when a run asks for another side.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from clarep_fast.pipeline.data.images import ImageSet, TensorImages

USAGE = "cifar10:PATH = the CIFAR-10 python-pickle directory (data_batch_1..5, test_batch, batches.meta)"
TAKES_PATH = True
RESOLUTION = 32


def classes(config) -> list[str]:
    return cifar10_classes(config.path)


def native_resolution(config) -> int:
    return RESOLUTION


def splits(config, resolution: int) -> dict[str, ImageSet]:
    parts = {}
    for split in ("train", "test"):
        images, labels, names = load_cifar10(config.path, split)
        if resolution != RESOLUTION:
            images = F.interpolate(
                images, size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False
            ).clamp(0, 1)
        parts[split] = TensorImages(images, labels, names)
    return parts


def load_cifar10(root: str | Path, split: str = "train") -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """CIFAR-10 from its python-pickle directory: (images (N, 3, 32, 32) in [0, 1], labels, class names)."""
    root = Path(root)
    names = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
    if split not in names:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    missing = [name for name in names[split] + ["batches.meta"] if not (root / name).exists()]
    if missing:
        raise FileNotFoundError(f"{root} is not a CIFAR-10 python directory: missing {', '.join(missing)}")
    names_of_classes = cifar10_classes(root)
    arrays, labels = [], []
    for name in names[split]:
        batch = _read_cifar_pickle(root / name)
        data, batch_labels = batch[b"data"], batch[b"labels"]
        if data.shape[1] != 3 * 32 * 32 or len(batch_labels) != data.shape[0]:
            raise ValueError(
                f"{root / name}: expected rows of 3072 pixels with one label each, got {data.shape} and {len(batch_labels)} labels"
            )
        arrays.append(data)
        labels.extend(batch_labels)
    labels = torch.tensor(labels)
    if labels.min() < 0 or labels.max() >= len(names_of_classes):
        raise ValueError(f"{root}: labels outside 0..{len(names_of_classes) - 1}")
    images = torch.from_numpy(np.concatenate(arrays)).view(-1, 3, 32, 32).float() / 255.0
    return images, labels, names_of_classes


def cifar10_classes(root: str | Path) -> list[str]:
    """The class names in a CIFAR-10 python directory's batches.meta."""
    meta = Path(root) / "batches.meta"
    if not meta.exists():
        raise FileNotFoundError(f"{root} is not a CIFAR-10 python directory: missing batches.meta")
    names = _read_cifar_pickle(meta).get(b"label_names")
    if not isinstance(names, list) or not names:
        raise ValueError(f"{meta} holds no label_names list")
    return [name.decode() if isinstance(name, bytes) else str(name) for name in names]


class _CifarUnpickler(pickle.Unpickler):
    """Admits only what the CIFAR-10 python format holds (dicts, lists, bytes, ints and numpy arrays):
    a pickle naming any other callable (os.system, ...) is refused before anything runs."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"), ("numpy", "ndarray"), ("numpy", "dtype"),
               ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"), ("numpy.core.numeric", "_frombuffer"),
               ("numpy._core.numeric", "_frombuffer"), ("_codecs", "encode")}  # fmt: skip

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refused to load {module}.{name}")
        return super().find_class(module, name)


def _read_cifar_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as handle:
            content = _CifarUnpickler(handle, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as error:
        raise ValueError(
            f"{path} is not a CIFAR-10 python file ({error}); such files hold only dicts, lists, bytes and numpy arrays"
        ) from None
    if not isinstance(content, dict):
        raise ValueError(f"{path} is not a CIFAR-10 python file (it holds a {type(content).__name__}, not a dict)")
    return content
