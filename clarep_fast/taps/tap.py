"""FeatureTap: multi-layer features of a teacher (diffusers) or student (timm) model in one packed tensor.

    tap = FeatureTap(unet, layers=["down_blocks.1", "mid_block"], pool=2, normalize=True)
    out = tap(x_t, t, class_labels)          # out.packed (B, Σ C_l·4), out.features["mid_block"] (B, C, 2, 2)

Steps of one call:
  1. Run the model's staged forward (clarep_fast/taps/stages.py) and stop after the deepest tapped
     stage when ``stop_early`` (later blocks never run); timm models use their own
     ``forward_intermediates(indices, stop_early=...)``. Layers nested inside a stage
     (e.g. "down_blocks.1.attentions.0") are captured with forward hooks registered once.
  2. Pool every tapped map to pool×pool, normalize per sample and layer if asked, cast, and pack
     with the fused ``feature_pool`` op: each map read once, one (B, Σ C_l·pool²) output.
Packed order is the order of ``layers``. ``fused=False`` pools with the pure-PyTorch reference
instead: for torch.func forward-mode transforms (CLARID's JVPs), which custom ops do not support.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
from torch import Tensor, nn

from clarep_fast.ops.feature_pool import feature_pool, split_packed, validated_maps
from clarep_fast.reference.feature_pool import feature_pool_reference
from clarep_fast.taps.stages import as_map, stages_for


class TapOutput(NamedTuple):
    packed: Tensor  # (B, Σ_l C_l·pool²), in the order of `layers`
    features: dict[str, Tensor]  # layer -> (B, C_l, pool, pool) view of `packed`


class FeatureTap(nn.Module):
    """Tap ``layers`` of ``model``; see the module docstring. ``layers`` are stage or module names
    (diffusers: "down_blocks.1", "mid_block", "up_blocks.0", "transformer_blocks.3", or any dotted
    submodule path) or, for timm models, the integer block indices of ``forward_intermediates`` or
    the names of those blocks in ``model.feature_info`` ("layer2"). ``fused=False``: pool with the
    reference (under torch.func.jvp / jacfwd). Nested layers are captured with forward hooks on the
    model: ``close()`` (or ``with FeatureTap(...) as tap:``) removes them.
    """

    _active = False  # hooks record only while this tap's own forward runs

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[str | int],
        *,
        pool: int = 2,
        normalize: bool = False,
        stop_early: bool = True,
        out_dtype: torch.dtype | None = None,
        fused: bool = True,
    ):
        super().__init__()
        layers = list(layers)
        if not layers:
            raise ValueError("layers is empty: name at least one layer to tap")
        if len(set(layers)) != len(layers):
            raise ValueError(f"layers has duplicates: {layers}")
        if not isinstance(pool, int) or pool < 1:
            raise ValueError(f"pool must be a positive int, got {pool!r}")
        layers = _timm_indices(model, layers)
        self.model, self.layers, self.pool = model, layers, pool
        self.normalize, self.stop_early, self.out_dtype, self.fused = normalize, stop_early, out_dtype, fused
        self._handles: list = []  # the forward hooks on the model, removed by close()
        self._closed = False
        self._timm = all(isinstance(layer, int) for layer in layers)
        self._stages = None if self._timm else stages_for(model)
        self._captured: dict[str, Tensor] = {}
        self._hooked: list[str] = []
        if self._timm:
            if not hasattr(model, "forward_intermediates"):
                raise ValueError(
                    f"integer layers need a timm model with forward_intermediates; {type(model).__name__} has none"
                )
            return
        if any(isinstance(layer, int) for layer in layers):
            raise ValueError("layers mixes integer indices and names; use names, or indices for timm models")
        modules = dict(model.named_modules())
        stage_names = self._stages.names if self._stages else []
        self._last_stage = 0
        for layer in layers:
            if layer in stage_names:
                self._last_stage = max(self._last_stage, stage_names.index(layer))
                continue
            if layer not in modules or layer == "":
                listing = stage_names or [name for name in modules if name and "." not in name]
                raise ValueError(
                    f"unknown layer {layer!r} of {type(model).__name__}; valid layers: {', '.join(listing)} (or a dotted submodule path)"
                )
            if self._stages is not None:
                parents = [i for i, stage in enumerate(stage_names) if layer.startswith(stage + ".")]
                if not parents:
                    raise ValueError(
                        f"layer {layer!r} lies outside the stages {stage_names}; tap a stage or a module inside one"
                    )
                self._last_stage = max(self._last_stage, parents[0])
            elif stop_early:
                raise ValueError(
                    f"stop_early needs a staged forward, which {type(model).__name__} lacks; pass stop_early=False"
                )
            self._handles.append(modules[layer].register_forward_hook(self._hook(layer)))
            self._hooked.append(layer)

    def close(self) -> None:
        """Remove this tap's hooks from the model (the model is the user's: it keeps running, untapped,
        after the tap is done). Calling the tap afterwards raises; closing twice is harmless."""
        for handle in self._handles:
            handle.remove()
        self._handles, self._closed = [], True

    def __enter__(self) -> "FeatureTap":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _hook(self, name: str):
        def capture(module, inputs, output):
            if self._active:
                self._captured[name] = as_map(output, name)

        return capture

    def forward(self, *args, **kwargs) -> TapOutput:
        """Run the model on its usual inputs (diffusers: sample, timestep, class_labels; timm: x)."""
        if self._closed:
            raise RuntimeError(
                "this FeatureTap is closed (its hooks are removed); make a new one to tap the model again"
            )
        _check_batches(args, kwargs)
        maps = self._maps(*args, **kwargs)
        names = [str(layer) for layer in self.layers]
        if self.fused:
            packed = feature_pool(maps, self.pool, normalize=self.normalize, out_dtype=self.out_dtype, names=names)
        else:  # the same checks as the fused op (adaptive pooling alone would upsample a map smaller than pool)
            packed = feature_pool_reference(
                validated_maps(maps, self.pool, self.out_dtype, names), self.pool, self.normalize, self.out_dtype
            )
        views = split_packed(packed, [m.shape[1] for m in maps], self.pool)
        return TapOutput(packed, dict(zip(names, views)))

    def _maps(self, *args, **kwargs) -> list[Tensor]:
        if self._timm:
            maps = self.model.forward_intermediates(
                args[0], indices=self.layers, stop_early=self.stop_early, intermediates_only=True, output_fmt="NCHW"
            )
            return [as_map(m, str(layer)) for m, layer in zip(maps, self.layers)]
        self._captured = {}
        self._active = True
        try:
            if self._stages is not None:
                last = self._last_stage if self.stop_early else len(self._stages.names) - 1
                self._captured.update(self._stages.run(set(self.layers), last, *args, **kwargs))
            else:
                self.model(*args, **kwargs)
        finally:
            self._active = False
        captured, self._captured = self._captured, {}
        return [captured[layer] for layer in self.layers]

    def at_conditions(self, sample: Tensor, timesteps: Tensor, class_labels: Tensor | None = None) -> Tensor:
        """Features of the same samples under K (timestep, class) conditions in ONE batched forward.

        sample (B, C, H, W); timesteps (K,); class_labels (B,) (same for every timestep) or (K, B).
        Returns (K, B, Σ C_l·pool²).
        """
        if timesteps.dim() != 1:
            raise ValueError(f"timesteps must have shape (K,), got {tuple(timesteps.shape)}")
        conditions, batch = timesteps.shape[0], sample.shape[0]
        stacked = sample.repeat(conditions, *([1] * (sample.dim() - 1)))  # (K·B, C, H, W)
        times = timesteps.repeat_interleave(batch)  # (K·B,)
        labels = None
        if class_labels is not None:
            if class_labels.dim() == 1:
                if class_labels.shape[0] != batch:
                    raise ValueError(f"class_labels has {class_labels.shape[0]} entries for a batch of {batch}")
                labels = class_labels.repeat(conditions)
            elif class_labels.shape == (conditions, batch):
                labels = class_labels.reshape(-1)
            else:
                raise ValueError(
                    f"class_labels must have shape ({batch},) or ({conditions}, {batch}), got {tuple(class_labels.shape)}"
                )
        return self(stacked, times, labels).packed.unflatten(0, (conditions, batch))

    def extra_repr(self) -> str:
        return f"layers={self.layers}, pool={self.pool}, normalize={self.normalize}, stop_early={self.stop_early}, fused={self.fused}"


def _timm_indices(model: nn.Module, layers: list) -> list:
    """timm layers by the module names timm users know ("layer2" of a ResNet, "stages.1" of a
    ConvNeXt) -> the indices of forward_intermediates: the positions in model.feature_info. Names
    that are not feature_info modules are refused with the valid names and indices."""
    if not hasattr(model, "forward_intermediates") or all(isinstance(layer, int) for layer in layers):
        return layers
    info = getattr(model, "feature_info", None)
    modules = [entry["module"] for entry in info] if info is not None else []
    valid = ", ".join(f"{index} ({name})" for index, name in enumerate(modules)) or "none listed"
    indices = []
    for layer in layers:
        if isinstance(layer, int):
            indices.append(layer)
        elif layer in modules:
            indices.append(modules.index(layer))
        else:
            raise ValueError(
                f"unknown layer {layer!r} of the timm model {type(model).__name__}; its feature stages are "
                f"{valid}: pass a name or an index of these"
            )
    return indices


def _check_batches(args, kwargs) -> None:
    """Every batched tensor argument (dim >= 1 and not a scalar timestep) must share the sample's batch."""
    tensors = [t for t in list(args) + list(kwargs.values()) if isinstance(t, Tensor)]
    if not tensors:
        raise ValueError("FeatureTap needs the model's input tensor")
    batch = tensors[0].shape[0]
    for tensor in tensors[1:]:
        if tensor.dim() >= 1 and tensor.shape[0] not in (batch, 1):
            raise ValueError(
                f"mismatched batch: the sample has {batch} entries but another input has shape {tuple(tensor.shape)}"
            )
