"""The class-conditional teacher: a diffusers UNet2DModel (or DiTTransformer2DModel) and its null label.

A checkpoint's id2label table, when it has one, gives K (load.py); a UNet2DModel then has the null
label K of classifier-free guidance (CFG) when it embeds K + 1 labels and none when it embeds K.
Without a table, the convention of our own teachers: ``num_class_embeds = K + 1`` is K classes and
the null label K. A DiTTransformer2DModel with ``num_embeds_ada_norm = K``
knows K classes too: diffusers gives its label embedding K + 1 rows when it was built with class
dropout, and its own label dropout uses index K, so K is its null label as well:

    eps_w(x, t, c) = eps(x, t, null) + w · (eps(x, t, c) - eps(x, t, null))      (w = 1: conditional)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from clarep_fast.pipeline.options import check_ranges, option
from clarep_fast.pipeline.teacher.schedule import NoiseSchedule


ARCHITECTURES = ("unet", "dit")


@dataclass(frozen=True)
class TeacherConfig:
    resolution: int | None = option(None, "image side in pixels (default: the data's)", low=1)
    num_classes: int | None = option(None, "classes (default: the data's; the null label of CFG is one more)", low=2)
    arch: str = option(
        "unet", "unet: a UNet2DModel; dit: a DiTTransformer2DModel (the paper's family)", choices=ARCHITECTURES
    )
    channels: tuple[int, ...] = option((32, 64, 64), "UNet block widths, one per resolution level", low=1)
    layers_per_block: int = option(1, "ResNet layers per UNet block", low=1)
    attention_level: int = option(1, "which resolution level gets self-attention", low=0)
    norm_groups: int = option(8, "GroupNorm groups", low=1)
    patch_size: int = option(2, "DiT: patch side (tokens = (resolution / patch)^2)", low=1)
    dit_layers: int = option(6, "DiT: transformer blocks", low=1)
    dit_heads: int = option(4, "DiT: attention heads", low=1)
    dit_head_dim: int = option(32, "DiT: channels per head (width = heads x head dim)", low=1)

    def __post_init__(self):
        check_ranges(self)
        if self.arch == "dit" and self.resolution is not None and self.resolution % self.patch_size:
            raise ValueError(f"--patch-size {self.patch_size} must divide the resolution {self.resolution}")
        if not self.attention_level < len(self.channels):
            raise ValueError(
                f"--attention-level {self.attention_level} must name one of the {len(self.channels)} levels of --channels, in [0, {len(self.channels)})"
            )
        if any(width % self.norm_groups for width in self.channels):
            raise ValueError(
                f"--norm-groups {self.norm_groups} must divide every --channels width, got {' '.join(map(str, self.channels))}"
            )


def build_teacher(config: TeacherConfig = TeacherConfig()) -> nn.Module:
    from diffusers import UNet2DModel

    if config.resolution is None or config.num_classes is None:
        raise ValueError(
            f"build_teacher needs the resolution and the class count (the data's), got {config.resolution} and {config.num_classes}"
        )
    if config.arch == "dit":
        return _build_dit(config)
    levels = len(config.channels)
    down = tuple("AttnDownBlock2D" if i == config.attention_level else "DownBlock2D" for i in range(levels))
    up = tuple("AttnUpBlock2D" if i == levels - 1 - config.attention_level else "UpBlock2D" for i in range(levels))
    return UNet2DModel(
        sample_size=config.resolution,
        in_channels=3,
        out_channels=3,
        layers_per_block=config.layers_per_block,
        block_out_channels=tuple(config.channels),
        down_block_types=down,
        up_block_types=up,
        num_class_embeds=config.num_classes + 1,
        norm_num_groups=config.norm_groups,
    )


def _build_dit(config: TeacherConfig) -> nn.Module:
    """A pixel-space DiT (Peebles & Xie 2023): patchify, adaLN-Zero blocks conditioned on (t, c), and
    a linear unpatchify to ε. diffusers embeds K + 1 labels (the null row K) because it is built with
    class dropout, but its own dropout draws from the global generator; the training loop drops
    labels itself from its seeded generator (so a resumed run continues exactly), so the model's
    dropout is switched off."""
    from diffusers import DiTTransformer2DModel

    model = DiTTransformer2DModel(
        num_attention_heads=config.dit_heads,
        attention_head_dim=config.dit_head_dim,
        in_channels=3,
        out_channels=3,
        num_layers=config.dit_layers,
        sample_size=config.resolution,
        patch_size=config.patch_size,
        num_embeds_ada_norm=config.num_classes,
    )
    for module in model.modules():
        if type(module).__name__ == "LabelEmbedding":
            module.dropout_prob = 0.0
    _initialize_as_dit_paper(model)
    return model


def _initialize_as_dit_paper(model: nn.Module) -> None:
    """The initialization of Peebles & Xie (2023, §3.2 and their release), which diffusers' class does
    not apply (it keeps PyTorch's defaults): Xavier-uniform linear layers and patch projection with
    zero biases, N(0, 0.02²) label and timestep embeddings, and adaLN-Zero proper — every block's
    modulation (shift, scale, gate) and the final layer start at zero, so each block starts as the
    identity and the network's first output is 0. Trained here from both, this one learned faster
    (docs/teacher.md)."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            nn.init.zeros_(module.bias)
    projection = model.pos_embed.proj  # a Conv2d with stride = kernel = patch: a linear map per patch
    nn.init.xavier_uniform_(projection.weight.view(projection.weight.shape[0], -1))
    nn.init.zeros_(projection.bias)
    for block in model.transformer_blocks:
        embedding = block.norm1.emb
        nn.init.normal_(embedding.class_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(embedding.timestep_embedder.linear_1.weight, std=0.02)
        nn.init.normal_(embedding.timestep_embedder.linear_2.weight, std=0.02)
        nn.init.zeros_(block.norm1.linear.weight)  # adaLN-Zero: shift, scale and gate all 0
        nn.init.zeros_(block.norm1.linear.bias)
    for final in (model.proj_out_1, model.proj_out_2):
        nn.init.zeros_(final.weight)
        nn.init.zeros_(final.bias)


def label_table(model: nn.Module, declared: int | None = None) -> tuple[int, int | None]:
    """(K classes, the null label or None) from the model's label embedding; ``declared`` is the class
    count a checkpoint states (id2label). UNet2DModel: num_class_embeds rows are K + 1 with a null
    row (null = K) or K without; with nothing declared, this project's convention (rows = K + 1).
    DiT: K = num_embeds_ada_norm, and a null row K exists when it was trained with class dropout."""
    name = type(model).__name__
    if name == "UNet2DModel":
        rows = model.config.get("num_class_embeds")
        if not rows or rows < 2:
            raise ValueError(f"UNet2DModel is not class-conditional (num_class_embeds: {rows})")
        rows = int(rows)
        if declared is None or declared == rows - 1:
            return rows - 1, rows - 1
        if declared == rows:
            return rows, None
        raise ValueError(
            f"id2label names {declared} classes but the UNet2DModel embeds {rows} labels (K, or K + 1 with the null label)"
        )
    labels = next((module for module in model.modules() if type(module).__name__ == "LabelEmbedding"), None)
    if labels is None:
        raise ValueError(f"{name} is not class-conditional (no label embedding)")
    classes = int(labels.num_classes)
    if declared is not None and declared != classes:
        raise ValueError(f"id2label names {declared} classes but the {name} embeds {classes}")
    return classes, classes if labels.embedding_table.num_embeddings == classes + 1 else None


def num_classes_of(model: nn.Module) -> int:
    """K for a class-conditional model (label_table, this project's convention for a UNet)."""
    return label_table(model)[0]


def noise_prediction(model: nn.Module, x: Tensor, t: Tensor, labels: Tensor) -> Tensor:
    """The raw network output at (x, t, c) for a UNet or a DiT. A model that learns sigma (improved
    DDPM; DiT-XL/2: out_channels = 2 × in_channels) returns [prediction, variance]: keep the first C."""
    if type(model).__name__ == "DiTTransformer2DModel":
        output = model(x, timestep=t, class_labels=labels).sample
    else:
        output = model(x, t, class_labels=labels).sample
    return output[:, : x.shape[1]]


def check_output_channels(model: nn.Module) -> None:
    """A denoiser predicts C channels for C input channels, or 2C when it learns sigma; refuse the rest."""
    config = model.config
    inputs, outputs = int(config.in_channels), int(config.get("out_channels") or config.in_channels)
    if outputs not in (inputs, 2 * inputs):
        raise ValueError(
            f"{type(model).__name__} takes {inputs} channels but predicts {outputs}; a denoiser predicts "
            f"{inputs} (its noise, velocity or sample) or {2 * inputs} (that and a learned variance)"
        )


NO_NULL_LABEL = "this teacher has no null label (its label embedding has no classifier-free-guidance row)"


class Teacher(nn.Module):
    """A class-conditional denoiser, its noise schedule, and for a latent teacher its VAE.

    Pixel teacher: the diffusion runs on images in [-1, 1]. Latent teacher: it runs on VAE latents
    z = scaling_factor · E(x) (the posterior mean: deterministic), and images are D(z / scaling_factor).
    The network may run in bfloat16/float16 (``dtype``); every DDIM update and the returned ε stay
    in float32.
    """

    def __init__(
        self,
        denoiser: nn.Module,
        schedule: NoiseSchedule | None = None,
        vae: nn.Module | None = None,
        class_names: list[str] | None = None,
    ):
        super().__init__()
        self.denoiser, self.vae = denoiser, vae
        self.schedule = schedule or NoiseSchedule.default()
        self.num_classes, self.null_label = label_table(denoiser, None if class_names is None else len(class_names))
        self.class_names = class_names  # from the checkpoint's id2label, when it has one
        check_output_channels(denoiser)
        config = denoiser.config
        self.latent_shape = (int(config.in_channels), int(config.sample_size), int(config.sample_size))
        if vae is not None:
            if vae.config.latent_channels != self.latent_shape[0]:
                raise ValueError(
                    f"the VAE makes {vae.config.latent_channels}-channel latents but the denoiser takes {self.latent_shape[0]} channels"
                )
            if vae.config.in_channels != 3:
                raise ValueError(f"the VAE encodes {vae.config.in_channels}-channel images; the pipeline needs RGB (3)")
            self.scaling_factor = float(vae.config.get("scaling_factor", 1.0))
            self.resolution = self.latent_shape[1] * 2 ** (len(vae.config.block_out_channels) - 1)
        else:
            if self.latent_shape[0] != 3:
                raise ValueError(
                    f"a pixel teacher must take RGB images (3 channels), this one takes {self.latent_shape[0]}; a latent teacher needs its vae/"
                )
            self.resolution = self.latent_shape[1]

    @property
    def is_latent(self) -> bool:
        return self.vae is not None

    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.denoiser.parameters()).dtype

    def epsilon(self, x: Tensor, t: int, labels: Tensor, guidance: float = 1.0) -> Tensor:
        """CFG noise prediction ε_w(x_t, t, c) in float32 (the network run in its own dtype); guidance 1 is
        the conditional prediction (one forward)."""
        if guidance != 1.0 and self.null_label is None:
            raise ValueError(f"guidance {guidance}: {NO_NULL_LABEL}; use guidance 1 (--guidance 1)")
        times = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        raw = guided_noise(self.denoiser, x.to(self.dtype), times, labels, guidance, null_label=self.null_label)
        return self.schedule.to_epsilon(raw, x.float(), t)

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """Images in [-1, 1] -> the diffusion's space (latents for a latent teacher), float32."""
        if self.vae is None:
            return images.float()
        vae_dtype = next(self.vae.parameters()).dtype
        return self.vae.encode(images.to(vae_dtype)).latent_dist.mean.float() * self.scaling_factor

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """The diffusion's space -> images in [-1, 1] (clamped), float32."""
        if self.vae is None:
            return latents.float().clamp(-1, 1)
        vae_dtype = next(self.vae.parameters()).dtype
        return self.vae.decode((latents / self.scaling_factor).to(vae_dtype)).sample.float().clamp(-1, 1)


def as_teacher(model: nn.Module) -> Teacher:
    """A Teacher as is; a bare denoiser gets the default schedule and no VAE."""
    return model if isinstance(model, Teacher) else Teacher(model)


def guided_noise(
    model: nn.Module, x: Tensor, t: Tensor, labels: Tensor, guidance: float, null_label: int | None = None
) -> Tensor:
    """The CFG mix of a denoiser's raw outputs at per-sample times ``t``, in float32 (see the module
    docstring); guidance 1 is the conditional output (one forward), else the conditional and null
    halves run as one batch. ``null_label`` defaults to the model's (num_classes_of)."""
    if guidance == 1.0:
        return noise_prediction(model, x, t, labels).float()
    null = torch.full_like(labels, num_classes_of(model) if null_label is None else null_label)
    # (2B, C, H, W)
    both = noise_prediction(model, torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, null])).float()
    conditional, unconditional = both.chunk(2)
    return unconditional + guidance * (conditional - unconditional)
