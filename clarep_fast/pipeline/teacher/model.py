"""The class-conditional teacher: a diffusers UNet2DModel (or DiTTransformer2DModel) with a null label.

Convention: a UNet2DModel with ``num_class_embeds = K + 1`` knows K classes and label K is the
null label of classifier-free guidance (CFG). A DiTTransformer2DModel with ``num_embeds_ada_norm = K``
knows K classes too: diffusers gives its label embedding K + 1 rows when it was built with class
dropout, and its own label dropout uses index K, so K is its null label as well:

    eps_w(x, t, c) = eps(x, t, null) + w · (eps(x, t, c) - eps(x, t, null))      (w = 1: conditional)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from clarep_fast.pipeline.options import check_ranges, option


@dataclass(frozen=True)
class TeacherConfig:
    resolution: int = option(16, "image side in pixels", low=1)
    num_classes: int = option(10, "classes (the null label of CFG is one more)", low=2)
    channels: tuple[int, ...] = option((32, 64, 64), "UNet block widths, one per resolution level", low=1)
    layers_per_block: int = option(1, "ResNet layers per UNet block", low=1)
    attention_level: int = option(1, "which resolution level gets self-attention", low=0)
    norm_groups: int = option(8, "GroupNorm groups", low=1)

    def __post_init__(self):
        check_ranges(self)


def build_teacher(config: TeacherConfig = TeacherConfig()) -> nn.Module:
    from diffusers import UNet2DModel

    levels = len(config.channels)
    if not 0 <= config.attention_level < levels:
        raise ValueError(f"attention_level must be in [0, {levels}), got {config.attention_level}")
    down = tuple("AttnDownBlock2D" if i == config.attention_level else "DownBlock2D" for i in range(levels))
    up = tuple("AttnUpBlock2D" if i == levels - 1 - config.attention_level else "UpBlock2D" for i in range(levels))
    return UNet2DModel(
        sample_size=config.resolution, in_channels=3, out_channels=3, layers_per_block=config.layers_per_block,
        block_out_channels=tuple(config.channels), down_block_types=down, up_block_types=up,
        num_class_embeds=config.num_classes + 1, norm_num_groups=config.norm_groups,
    )  # fmt: skip


def num_classes_of(model: nn.Module) -> int:
    """K for a model that embeds K classes plus the null label (label K); see the module docstring."""
    name = type(model).__name__
    if name == "UNet2DModel":
        embeds = model.config.get("num_class_embeds")
        if not embeds or embeds < 2:
            raise ValueError(f"UNet2DModel is not class-conditional with a null label (num_class_embeds: {embeds})")
        return int(embeds) - 1
    labels = next((module for module in model.modules() if type(module).__name__ == "LabelEmbedding"), None)
    if labels is None:
        raise ValueError(f"{name} is not class-conditional (no label embedding)")
    if labels.embedding_table.num_embeddings != labels.num_classes + 1:
        raise ValueError(f"{name} embeds {labels.num_classes} classes but no null label (it was built without class dropout), so CFG cannot run")
    return int(labels.num_classes)


def load_teacher(path: str | Path, *, num_classes: int | None = None, resolution: int | None = None, channels: int = 3) -> nn.Module:
    """A local diffusers UNet2DModel or DiTTransformer2DModel directory (save_pretrained layout).

    Checks it against the data: class count, resolution and image channels must match.
    """
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.exists():
        raise FileNotFoundError(f"{path} is not a diffusers model directory (no config.json)")
    try:
        kind = json.loads(config_file.read_text()).get("_class_name")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as error:
        raise ValueError(f"{config_file} is not a readable diffusers config ({error}); restore the teacher folder") from None
    if kind == "UNet2DModel":
        from diffusers import UNet2DModel as model_class
    elif kind == "DiTTransformer2DModel":
        from diffusers import DiTTransformer2DModel as model_class
    else:
        raise ValueError(f"{path}: teacher must be a UNet2DModel or DiTTransformer2DModel, found {kind!r}")
    try:
        model = model_class.from_pretrained(path, low_cpu_mem_usage=False).eval()  # plain loading: no advice to install accelerate
    except (OSError, ValueError, RuntimeError, TypeError, KeyError) as error:  # a truncated or garbled weight file, a config that does not build
        raise ValueError(f"teacher {path} cannot be loaded ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}); "
                         "the folder's config.json or weights are damaged or not a diffusers model") from None
    known = num_classes_of(model)
    if num_classes is not None and known != num_classes:
        raise ValueError(f"teacher {path} knows {known} classes but the data has {num_classes}")
    size = model.config.get("sample_size")
    if resolution is not None and size is not None and size != resolution:
        raise ValueError(f"teacher {path} works at {size}×{size} but the data is {resolution}×{resolution}")
    in_channels = model.config.get("in_channels")
    if in_channels != channels:
        raise ValueError(f"teacher {path} takes {in_channels} image channels but the data has {channels}")
    return model


DEFAULT_TEACHER = Path(__file__).resolve().parent.parent / "assets" / "teacher"


def load_default_teacher() -> nn.Module:
    """The embedded default teacher: trained by this project on the default background dataset
    (16×16 RGB, 10 classes) with `clarep-fast train-teacher`; see docs/teacher.md for the run."""
    if not (DEFAULT_TEACHER / "config.json").exists():
        raise FileNotFoundError(f"the embedded teacher is missing from {DEFAULT_TEACHER}; reinstall clarep_fast")
    return load_teacher(DEFAULT_TEACHER, num_classes=10, resolution=16)


def noise_prediction(model: nn.Module, x: Tensor, t: Tensor, labels: Tensor) -> Tensor:
    """eps(x, t, c) for a UNet or a DiT (a DiT that learns sigma returns 2C channels: keep eps)."""
    if type(model).__name__ == "DiTTransformer2DModel":
        output = model(x, timestep=t, class_labels=labels).sample
        return output[:, : x.shape[1]]
    return model(x, t, class_labels=labels).sample


def guided_noise(model: nn.Module, x: Tensor, t: Tensor, labels: Tensor, guidance: float) -> Tensor:
    """CFG noise prediction; guidance 1 is exactly the conditional prediction (one forward)."""
    if guidance == 1.0:
        return noise_prediction(model, x, t, labels)
    null = torch.full_like(labels, num_classes_of(model))
    both = noise_prediction(model, torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, null]))  # (2B, C, H, W)
    conditional, unconditional = both.chunk(2)
    return unconditional + guidance * (conditional - unconditional)
