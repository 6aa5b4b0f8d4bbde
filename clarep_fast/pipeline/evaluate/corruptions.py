"""Common corruptions (Hendrycks & Dietterich 2019, ImageNet-C) at severities 1–5, from the
`imagecorruptions` package (the authors' definitions, packaged by Michaelis et al. 2019).

Used: 15 of its 19 corruptions. Left out: glass_blur and gaussian_blur (they call scikit-image's
removed ``multichannel`` argument), fog (numpy's removed ``np.float_``), and spatter (its water
branch divides by zero when no droplet forms, which on small images is common, and casts the NaN
to arbitrary pixels). The package needs images of at least 32×32: a smaller image
is enlarged to 32×32 (bicubic), corrupted, and reduced back (antialiased), which keeps each
corruption's character at its severity but is not the published 32×32 CIFAR-10-C set.
The corruptions draw from numpy's global generator: it is seeded per (corruption, severity) and
restored afterwards, so a result does not depend on what ran before. impulse_noise draws from
scikit-image's own unseeded generator: for the duration of the call it is handed a seeded one.
"""

from __future__ import annotations

import zlib

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

CORRUPTIONS = (
    "gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "defocus_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "brightness", "contrast", "saturate", "elastic_transform", "pixelate", "jpeg_compression",
)  # fmt: skip
LEFT_OUT = ("glass_blur", "gaussian_blur", "fog", "spatter")
SEVERITIES = (1, 2, 3, 4, 5)
MIN_SIDE = 32  # the package refuses smaller images


def corrupt(images: Tensor, name: str, severity: int, seed: int = 0) -> Tensor:
    """images (n, 3, R, R) in [0, 1] -> the same corrupted, float in [0, 1]."""
    if name not in CORRUPTIONS:
        raise ValueError(
            f"corruption must be one of {CORRUPTIONS} ({', '.join(LEFT_OUT)} are left out: they fail with current numpy/scikit-image), got {name!r}"
        )
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {SEVERITIES}, got {severity!r}")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # imagecorruptions imports pkg_resources, which warns about itself
        from imagecorruptions import corrupt as corrupt_one

    side = images.shape[-1]
    work = (
        images
        if side >= MIN_SIDE
        else F.interpolate(images, size=(MIN_SIDE, MIN_SIDE), mode="bicubic", align_corners=False)
    )
    pixels = (work.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()  # (n, H, W, 3)
    import skimage.util

    draw = zlib.crc32(f"{name}/{severity}/{seed}".encode())
    state, random_noise = np.random.get_state(), skimage.util.random_noise
    np.random.seed(draw)
    generator = np.random.default_rng(draw)
    skimage.util.random_noise = lambda image, **options: random_noise(image, rng=generator, **options)
    try:
        out = np.stack([np.asarray(corrupt_one(image, corruption_name=name, severity=severity)) for image in pixels])
    finally:
        np.random.set_state(state)
        skimage.util.random_noise = random_noise
    out = torch.from_numpy(np.clip(out, 0, 255).astype(np.uint8)).permute(0, 3, 1, 2).float() / 255
    if out.shape[-1] != side:
        out = F.interpolate(out, size=(side, side), mode="bilinear", antialias=True, align_corners=False)
    return out.clamp(0, 1).to(images.device)
