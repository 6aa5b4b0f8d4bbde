"""The student: any timm classifier with input normalization inside, tapped at a few blocks.

Images enter in [0, 1] (attacks work in that box); the model normalizes them itself. The tapped
blocks (timm ``forward_intermediates`` indices) come out pooled to pool×pool by the fused
``feature_pool`` op, in the same forward that gives the logits.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from clarep_fast.ops.feature_pool import feature_pool
from clarep_fast.pipeline.data.images import ImageSet


def last_stages(name: str, count: int) -> tuple[int, ...]:
    """The forward_intermediates indices of the last ``count`` feature stages of the timm model
    ``name`` (resnet18, count 3: (2, 3, 4)); the model is built on the meta device (no weights)."""
    import timm

    try:
        with torch.device("meta"):
            model = timm.create_model(name, pretrained=False)
    except RuntimeError as error:
        raise ValueError(f"unknown timm model {name!r}: {error}") from None
    stages = len(getattr(model, "feature_info", []))
    if not 1 <= count <= stages:
        raise ValueError(
            f"the bank has {count} teacher layers but timm model {name!r} has {stages} feature stages to pair them with; "
            "pass --teacher-layers (fewer) or --student-layers"
        )
    return tuple(range(stages - count, stages))


class Student(nn.Module):
    def __init__(self, name: str, num_classes: int, layers: Sequence[int], pool: int = 1):
        super().__init__()
        import timm

        try:
            self.model = timm.create_model(name, pretrained=False, num_classes=num_classes)
        except RuntimeError as error:
            raise ValueError(f"unknown timm model {name!r}: {error}") from None
        if not hasattr(self.model, "forward_intermediates"):
            raise ValueError(
                f"timm model {name!r} has no forward_intermediates; pick a model that has (resnet18, convnext, vit ...)"
            )
        stages = len(getattr(self.model, "feature_info", []))
        bad = [
            layer
            for layer in layers
            if isinstance(layer, bool) or not isinstance(layer, int) or (stages and not -stages <= layer < stages)
        ]
        if bad or not layers:
            raise ValueError(
                f"student_layers {list(layers)}: timm model {name!r} has feature stages 0..{stages - 1} (forward_intermediates indices; negative ones count from the end); got {bad or 'none'}"
            )
        self.name, self.layers, self.pool = name, list(layers), pool
        self.register_buffer("mean", torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1))

    def forward(self, images: Tensor) -> Tensor:
        """Logits of images in [0, 1]."""
        return self.model((images - self.mean) / self.std)

    def features(self, images: Tensor) -> tuple[Tensor, list[Tensor]]:
        """(logits, [pooled tapped features (B, C_l·pool²)]) from one forward."""
        final, maps = self.model.forward_intermediates(
            (images - self.mean) / self.std, indices=self.layers, output_fmt="NCHW"
        )
        pooled = feature_pool(maps, self.pool)
        widths = [m.shape[1] * self.pool * self.pool for m in maps]
        return self.model.forward_head(final), list(pooled.split(widths, dim=1))

    def feature_widths(self, resolution: int) -> list[int]:
        with torch.no_grad():
            was_training = self.training
            self.eval()
            _, features = self.features(torch.zeros(2, 3, resolution, resolution, device=self.mean.device))
            self.train(was_training)
        return [f.shape[1] for f in features]


class DistillModel(nn.Module):
    """Student + one linear projector per (student layer, teacher layer) pair: what DDP wraps."""

    def __init__(self, student: Student, student_widths: Sequence[int], teacher_widths: Sequence[int]):
        super().__init__()
        self.student = student
        self.projectors = nn.ModuleList(nn.Linear(s, t) for s, t in zip(student_widths, teacher_widths))

    def forward(self, images: Tensor) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        """(logits, raw student features per pair, projected student features per pair)."""
        logits, features = self.student.features(images)
        return logits, features, [projector(f) for projector, f in zip(self.projectors, features)]


@torch.no_grad()
def accuracy(model: nn.Module, data: ImageSet, batch: int = 500, workers: int = 0) -> float:
    """Top-1 accuracy over an image set, in eval mode, in batches (decoded in ``workers`` DataLoader
    workers); the model's train/eval mode is restored."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct = 0
    for images, labels in data.sequential(batch, workers):
        correct += int((model(images.to(device)).argmax(1) == labels.to(device)).sum())
    model.train(was_training)
    return correct / len(data)
