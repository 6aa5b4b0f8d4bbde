"""Tiny randomly initialized models for the tap tests (built from configs, no downloads)."""

import timm
import torch
from diffusers import DiTTransformer2DModel, UNet2DModel


def tiny_unet(num_classes: int = 10) -> UNet2DModel:
    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=16,
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=(16, 32, 32),
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        num_class_embeds=num_classes + 1,
        norm_num_groups=8,
        attention_head_dim=8,
    ).eval()


def tiny_dit(num_classes: int = 10) -> DiTTransformer2DModel:
    torch.manual_seed(0)
    return DiTTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        num_layers=3,
        sample_size=8,
        patch_size=2,
        num_embeds_ada_norm=num_classes,
        norm_num_groups=8,  # K classes; diffusers adds the null row K
    ).eval()


def tiny_timm():
    torch.manual_seed(0)
    return timm.create_model("resnet18", pretrained=False, num_classes=10).eval()
