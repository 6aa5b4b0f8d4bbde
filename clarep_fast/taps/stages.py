"""Staged forwards: a model family's forward pass as named top-level stages that can stop early.

A tap asks for the outputs of some stages and the index of the last stage it needs; the stage
runner returns those outputs as (B, C, H, W) maps and never runs a later stage. Supported:

  diffusers UNet2DModel:          conv_in, down_blocks.<i>, mid_block, up_blocks.<i>, conv_out
  diffusers DiTTransformer2DModel: pos_embed, transformer_blocks.<i>, proj_out
                                  (tokens (B, N, D) viewed as the (B, D, h, w) patch grid, no copy)
  timm models with forward_intermediates: stages are the integer indices timm uses

Each runner replicates its library's forward step by step (tests compare it with the full forward).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def as_map(output, name: str) -> Tensor:
    """A module output as a (B, C, H, W) map: first element of tuples; square token grids as views."""
    if isinstance(output, (tuple, list)):
        output = output[0]
    if hasattr(output, "sample"):  # diffusers output dataclasses
        output = output.sample
    if not isinstance(output, Tensor):
        raise TypeError(f"layer {name!r} returned {type(output).__name__}, not a tensor")
    if output.dim() == 4:
        return output
    if output.dim() == 3:  # (B, N, D) tokens on a square patch grid
        side = int(round(output.shape[1] ** 0.5))
        if side * side != output.shape[1]:
            raise ValueError(f"layer {name!r} returned {output.shape[1]} tokens, not a square patch grid")
        return output.transpose(1, 2).unflatten(2, (side, side))  # (B, D, h, w) view
    raise ValueError(f"layer {name!r} returned shape {tuple(output.shape)}; expected (B, C, H, W) or (B, N, D)")


class UNetStages:
    """diffusers UNet2DModel.forward, stage by stage (diffusers 0.3x–0.4x layout)."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.names = (
            ["conv_in"]
            + [f"down_blocks.{i}" for i in range(len(model.down_blocks))]
            + (["mid_block"] if model.mid_block is not None else [])
            + [f"up_blocks.{i}" for i in range(len(model.up_blocks))]
            + ["conv_out"]
        )

    def run(
        self, wanted: set[str], last: int, sample: Tensor, timestep, class_labels: Tensor | None = None
    ) -> dict[str, Tensor]:
        model, captured = self.model, {}
        stage = iter(range(len(self.names)))

        def keep(value: Tensor) -> bool:
            index = next(stage)
            if self.names[index] in wanted:
                captured[self.names[index]] = value
            return index >= last  # True: stop here

        # 1. time and class embedding
        timesteps = (
            timestep if torch.is_tensor(timestep) else torch.tensor([timestep], dtype=torch.long, device=sample.device)
        )
        if timesteps.dim() == 0:
            timesteps = timesteps[None].to(sample.device)
        timesteps = timesteps * torch.ones(sample.shape[0], dtype=timesteps.dtype, device=timesteps.device)
        emb = model.time_embedding(model.time_proj(timesteps).to(dtype=model.dtype))
        if model.class_embedding is not None:
            if class_labels is None:
                raise ValueError("class_labels are required: the model is class-conditional")
            if model.config.class_embed_type == "timestep":
                class_labels = model.time_proj(class_labels)
            emb = emb + model.class_embedding(class_labels).to(dtype=model.dtype)
        # 2. stem
        skip_sample = sample
        sample = model.conv_in(sample)
        if keep(sample):
            return captured
        # 3. down
        residuals = (sample,)
        for block in model.down_blocks:
            if hasattr(block, "skip_conv"):
                sample, res, skip_sample = block(hidden_states=sample, temb=emb, skip_sample=skip_sample)
            else:
                sample, res = block(hidden_states=sample, temb=emb)
            residuals += res
            if keep(sample):
                return captured
        # 4. mid
        if model.mid_block is not None:
            sample = model.mid_block(sample, emb)
            if keep(sample):
                return captured
        # 5. up
        skip_sample = None
        for block in model.up_blocks:
            res = residuals[-len(block.resnets) :]
            residuals = residuals[: -len(block.resnets)]
            if hasattr(block, "skip_conv"):
                sample, skip_sample = block(sample, res, emb, skip_sample)
            else:
                sample = block(sample, res, emb)
            if keep(sample):
                return captured
        # 6. head
        sample = model.conv_out(model.conv_act(model.conv_norm_out(sample)))
        if skip_sample is not None:
            sample = sample + skip_sample
        if model.config.time_embedding_type == "fourier":
            sample = sample / timesteps.reshape((sample.shape[0], *([1] * len(sample.shape[1:]))))
        keep(sample)
        return captured


class DiTStages:
    """diffusers DiTTransformer2DModel.forward, stage by stage."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.names = (
            ["pos_embed"] + [f"transformer_blocks.{i}" for i in range(len(model.transformer_blocks))] + ["proj_out"]
        )

    def run(
        self, wanted: set[str], last: int, hidden_states: Tensor, timestep, class_labels: Tensor
    ) -> dict[str, Tensor]:
        model, captured = self.model, {}
        tokens = model.pos_embed(hidden_states)  # (B, N, D)
        for index, name in enumerate(self.names[:-1]):
            if index > 0:
                tokens = model.transformer_blocks[index - 1](tokens, timestep=timestep, class_labels=class_labels)
            if name in wanted:
                captured[name] = as_map(tokens, name)
            if index >= last:
                return captured
        conditioning = model.transformer_blocks[0].norm1.emb(timestep, class_labels, hidden_dtype=tokens.dtype)
        shift, scale = model.proj_out_1(F.silu(conditioning)).chunk(2, dim=1)
        tokens = model.proj_out_2(model.norm_out(tokens) * (1 + scale[:, None]) + shift[:, None])  # (B, N, p²·C)
        side, patch = int(round(tokens.shape[1] ** 0.5)), model.patch_size
        output = tokens.reshape(-1, side, side, patch, patch, model.out_channels)
        output = torch.einsum("nhwpqc->nchpwq", output).reshape(-1, model.out_channels, side * patch, side * patch)
        captured["proj_out"] = output
        return captured


def stages_for(model: nn.Module):
    """The staged forward of a supported model family, or None."""
    kind = type(model).__name__
    if kind == "UNet2DModel":
        return UNetStages(model)
    if kind == "DiTTransformer2DModel":
        return DiTStages(model)
    return None
