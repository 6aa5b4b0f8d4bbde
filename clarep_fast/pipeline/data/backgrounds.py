"""Digits composited on colored, textured backgrounds whose class correlation is set by rho.

image = mask · foreground + (1 - mask) · background, with mask the digit's intensity in [0, 1].
Each class c has a home background color PALETTE[c]. In training data, a sample's background is
its class's home color with probability rho, else a color drawn uniformly from the palette; the
texture is low-frequency noise. rho = 0: background independent of the class; rho = 1: fully
predictive. Test variants of the same digits:
  in_distribution  drawn like the training data (same rho)
  only_foreground  a plain black background (no background cue at all)
  mixed_random     a uniformly random palette color (rho = 0)
  swapped          the home color of another class (the background points to a wrong class)
  mixed_same       the background of another test image of the same class (the Backgrounds
                   Challenge's mixed_same: class-correlated, as in training, but not the image's own)
  only_background  the image's own background with the digit removed (the challenge's only_bg):
                   what a student reads from the background alone; chance is 1 in 10
BG-Gap = accuracy(mixed_same) - accuracy(mixed_random) (Xiao et al. 2020, "Noise or Signal"): how
much accuracy a student draws from a background that agrees with the class.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

PALETTE = torch.tensor(
    [
        [0.80, 0.10, 0.10], [0.10, 0.55, 0.10], [0.15, 0.25, 0.85], [0.85, 0.65, 0.05], [0.60, 0.10, 0.65],
        [0.05, 0.60, 0.65], [0.90, 0.40, 0.05], [0.40, 0.25, 0.10], [0.45, 0.45, 0.45], [0.55, 0.75, 0.20],
    ]
)  # fmt: skip  # (10, 3) RGB, one home color per class
FOREGROUND = torch.tensor([1.0, 1.0, 1.0])  # white digits
PLAIN_BLACK = torch.tensor([0.0, 0.0, 0.0])  # no palette color is black
VARIANTS = ("in_distribution", "only_foreground", "mixed_random", "swapped", "mixed_same", "only_background")


def background_indices(labels: torch.Tensor, rho: float, generator: torch.Generator) -> torch.Tensor:
    """Palette index per sample: the class's own with probability rho, else uniform over the palette."""
    if not 0.0 <= rho <= 1.0:
        raise ValueError(f"rho must be in [0, 1], got {rho}")
    own = torch.rand(labels.shape, generator=generator) < rho
    random = torch.randint(0, len(PALETTE), labels.shape, generator=generator)
    return torch.where(own, labels, random)


def swapped_indices(labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The home color of a different class, uniformly among the other nine."""
    shift = torch.randint(1, len(PALETTE), labels.shape, generator=generator)
    return (labels + shift) % len(PALETTE)


def same_class_indices(labels: torch.Tensor, backgrounds: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each sample gets the background index of a sample of its own class, shuffled within the class."""
    shuffled = backgrounds.clone()
    for label in labels.unique().tolist():
        members = (labels == label).nonzero().flatten()
        shuffled[members] = backgrounds[members[torch.randperm(len(members), generator=generator)]]
    return shuffled


def composite(
    masks: torch.Tensor, colors: torch.Tensor, generator: torch.Generator, texture: float = 0.15
) -> torch.Tensor:
    """masks (N, 1, R, R) in [0, 1], colors (N, 3) -> images (N, 3, R, R) in [0, 1]."""
    count, _, size, _ = masks.shape
    noise = torch.randn(count, 1, max(2, size // 4), max(2, size // 4), generator=generator)
    noise = F.interpolate(noise, size=(size, size), mode="bilinear", align_corners=False)  # low-frequency texture
    background = (colors[:, :, None, None] * (1 + texture * noise)).clamp(0, 1)
    return (masks * FOREGROUND[None, :, None, None] + (1 - masks) * background).clamp(0, 1)
