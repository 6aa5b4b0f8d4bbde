"""Tiny user data and teachers written to disk the way a user would have them (no downloads):

    python scripts/make_examples.py DIR      # the examples the README's own-model commands run on


an image folder of generated shapes, the CIFAR-10 python layout, a pixel UNet2DModel pipeline and
a latent DiT pipeline (DiTTransformer2DModel + AutoencoderKL + DDIMScheduler), the same in the
layout the Hub ships facebook/DiT-XL-2-256 in, and a fake local Hugging Face cache."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import torch
from PIL import Image

SHAPES = ("disc", "square", "stripes")


def shape_image(kind: str, side: int, rng: np.random.Generator) -> np.ndarray:
    """An RGB uint8 image of one shape class on a random dark background, jittered in place and color."""
    yy, xx = np.mgrid[:side, :side] / side
    cy, cx = rng.uniform(0.35, 0.65, 2)
    if kind == "disc":
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 < 0.08
    elif kind == "square":
        mask = (abs(yy - cy) < 0.25) & (abs(xx - cx) < 0.25)
    else:
        mask = ((xx * 6 + rng.uniform()) % 1) < 0.5
    background = rng.uniform(0, 0.3, 3)
    color = rng.uniform(0.6, 1.0, 3)
    image = np.where(mask[..., None], color, background) + rng.normal(0, 0.03, (side, side, 3))
    return (np.clip(image, 0, 1) * 255).astype(np.uint8)


def write_image_folder(root: Path, per_class: int = 12, side: int = 20, split: bool = True, seed: int = 0) -> Path:
    """root/train/<shape>/*.png and root/test/<shape>/*.png (or root/<shape>/*.png when not split)."""
    rng = np.random.default_rng(seed)
    for part, count in (("train", per_class), ("test", max(2, per_class // 3))) if split else (("", per_class),):
        for kind in SHAPES:
            folder = root / part / kind
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                Image.fromarray(shape_image(kind, side, rng)).save(folder / f"{i:04d}.png")
    return root


def write_cifar10_layout(root: Path, per_batch: int = 20, seed: int = 0) -> Path:
    """The CIFAR-10 python layout (data_batch_1..5, test_batch, batches.meta) holding shape images of 10 classes."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    names = [f"shape{i}".encode() for i in range(10)]
    with open(root / "batches.meta", "wb") as handle:
        pickle.dump({b"label_names": names}, handle)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = [i % 10 for i in range(per_batch)]
        rows = [shape_image(SHAPES[label % 3], 32, rng).transpose(2, 0, 1).reshape(-1) for label in labels]
        with open(root / name, "wb") as handle:
            pickle.dump({b"data": np.stack(rows), b"labels": labels}, handle)
    return root


def write_pixel_pipeline(
    root: Path, classes: int, side: int, beta_schedule: str = "linear", prediction_type: str = "epsilon"
) -> Path:
    """A diffusers pipeline folder: unet/ (a small class-conditional UNet2DModel) and scheduler/."""
    from diffusers import DDIMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=side,
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        num_class_embeds=classes + 1,
        norm_num_groups=8,
    )
    unet.save_pretrained(root / "unet", safe_serialization=True)
    DDIMScheduler(beta_schedule=beta_schedule, prediction_type=prediction_type).save_pretrained(root / "scheduler")
    (root / "model_index.json").write_text(
        json.dumps(
            {
                "_class_name": "DDIMPipeline",
                "unet": ["diffusers", "UNet2DModel"],
                "scheduler": ["diffusers", "DDIMScheduler"],
            }
        )
    )
    return root


def write_latent_pipeline(root: Path, classes: int, beta_schedule: str = "scaled_linear") -> Path:
    """A DiT pipeline folder: transformer/ (DiT on 4×4×4 latents), vae/ (AutoencoderKL: 16×16 RGB <-> 4×4×4), scheduler/."""
    from diffusers import AutoencoderKL, DDIMScheduler, DiTTransformer2DModel

    torch.manual_seed(0)
    DiTTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        out_channels=8,
        num_layers=2,
        sample_size=4,
        patch_size=2,
        num_embeds_ada_norm=classes,
        norm_num_groups=8,
    ).save_pretrained(root / "transformer")
    AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(8, 16, 16),
        layers_per_block=1,
        norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        scaling_factor=0.5,
    ).save_pretrained(root / "vae")
    DDIMScheduler(beta_schedule=beta_schedule, beta_start=0.00085, beta_end=0.012).save_pretrained(root / "scheduler")
    (root / "model_index.json").write_text(
        json.dumps(
            {
                "_class_name": "DiTPipeline",
                "transformer": ["diffusers", "DiTTransformer2DModel"],
                "vae": ["diffusers", "AutoencoderKL"],
                "scheduler": ["diffusers", "DDIMScheduler"],
            }
        )
    )
    return root


# facebook/DiT-XL-2-256 as the Hub ships it (written by diffusers 0.12): the transformer's config
# keys, with tiny sizes; the scheduler's config; model_index.json's entries.
HUB_DIT_TRANSFORMER = {
    "_class_name": "Transformer2DModel",
    "_diffusers_version": "0.12.0.dev0",
    "activation_fn": "gelu-approximate",
    "attention_bias": True,
    "attention_head_dim": 8,
    "cross_attention_dim": None,
    "dropout": 0.0,
    "in_channels": 4,
    "norm_elementwise_affine": False,
    "norm_num_groups": 8,
    "norm_type": "ada_norm_zero",
    "num_attention_heads": 2,
    "num_embeds_ada_norm": None,  # the class count, set per fixture
    "num_layers": 2,
    "num_vector_embeds": None,
    "only_cross_attention": False,
    "out_channels": 8,  # learned sigma: [ε, variance] for 4 latent channels
    "patch_size": 2,
    "sample_size": 4,
    "upcast_attention": False,
    "use_linear_projection": False,
}
HUB_DIT_SCHEDULER = {
    "_class_name": "DDIMScheduler",
    "_diffusers_version": "0.12.0.dev0",
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "beta_start": 0.0001,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "set_alpha_to_one": True,
    "steps_offset": 0,
    "trained_betas": None,
}


def write_hub_dit_pipeline(root: Path, class_names: tuple[str, ...]) -> Path:
    """A tiny replica of the facebook/DiT-XL-2-256 folder: model_index.json naming Transformer2DModel
    and KarrasDiffusionSchedulers with an id2label table, transformer/config.json in the 0.12 key set
    (ada_norm_zero, learned sigma), the DDIM scheduler config, and vae/ (AutoencoderKL)."""
    write_latent_pipeline(root, classes=len(class_names))
    transformer = dict(HUB_DIT_TRANSFORMER, num_embeds_ada_norm=len(class_names))
    (root / "transformer" / "config.json").write_text(json.dumps(transformer, indent=2))
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(HUB_DIT_SCHEDULER, indent=2))
    index = {
        "_class_name": "DiTPipeline",
        "_diffusers_version": "0.12.0.dev0",
        "id2label": {str(index): name for index, name in enumerate(class_names)},
        "scheduler": ["diffusers", "KarrasDiffusionSchedulers"],
        "transformer": ["diffusers", "Transformer2DModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (root / "model_index.json").write_text(json.dumps(index, indent=2))
    return root


def write_hub_cache(hf_home: Path, repo_id: str, folder: Path, commit: str = "0" * 40) -> Path:
    """``folder`` as huggingface_hub caches the repository ``repo_id`` under HF_HOME: the snapshot of
    one commit and refs/main naming it. Returns the snapshot folder."""
    import shutil

    repo = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    shutil.copytree(folder, snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def main(argv: list[str] | None = None) -> None:
    """python scripts/make_examples.py DIR: the four examples the README's own-model commands run on."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("out", type=Path)
    out = parser.parse_args(argv).out
    write_image_folder(out / "shapes", per_class=40, side=16)
    write_cifar10_layout(out / "cifar10", per_batch=60)
    write_pixel_pipeline(out / "unet-pipeline", classes=10, side=32)
    write_latent_pipeline(out / "dit-pipeline", classes=len(SHAPES))
    print(
        f"wrote {out}/shapes (folder data, 3 classes, 16×16), {out}/cifar10 (CIFAR-10 layout), "
        f"{out}/unet-pipeline (pixel UNet, 10 classes, 32×32) and {out}/dit-pipeline (latent DiT + VAE, 3 classes, 16×16)"
    )


if __name__ == "__main__":
    main()
