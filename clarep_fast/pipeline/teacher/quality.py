"""Teacher quality as class-consistency: does an independent judge read the conditioning class?

The judge is a small CNN trained only on the real training split, recomposited with backgrounds
independent of the class (rho = 0), so that it reads the digit and not the background. Its own
accuracy on the real test split is reported beside the score:

    class_consistency = mean over CFG samples of [judge(x̃) == conditioning class]
"""

from __future__ import annotations

from fractions import Fraction

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from clarep_fast.pipeline.data.sources.default import default_splits
from clarep_fast.pipeline.teacher.ddim import ddim_sample
from clarep_fast.pipeline.teacher.model import Teacher


def _block(inputs: int, outputs: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inputs, outputs, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(outputs), nn.ReLU()
    )


class Judge(nn.Module):
    """A small CNN for 16×16-ish RGB digits (~0.3M parameters)."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            _block(3, 48, 1),
            _block(48, 48, 1),
            _block(48, 96, 2),
            _block(96, 96, 1),
            _block(96, 128, 2),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Dropout(0.2),
        )
        self.head = nn.Linear(128, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # images in [0, 1]
        return self.head(self.features(images * 2 - 1))


def train_judge(
    resolution: int = 16, epochs: int = 20, seed: int = 0, progress: bool = True
) -> tuple[Judge, dict[str, float]]:
    """Judge trained on the default dataset's training digits with class-independent backgrounds; its test accuracies."""
    torch.manual_seed(seed)
    splits = default_splits(resolution, rho=0.0)
    train = splits["train"]
    judge = Judge()
    batches = -(-len(train.labels) // 128)
    optimizer = torch.optim.AdamW(judge.parameters(), lr=3e-3, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=epochs * batches)
    generator = torch.Generator().manual_seed(seed)
    judge.train()
    for _ in tqdm(range(epochs), desc="judge", disable=not progress):
        order = torch.randperm(len(train.labels), generator=generator)
        for batch in order.split(128):
            images = train.images[batch]
            shift = torch.randint(-1, 2, (2,), generator=generator).tolist()  # small translations
            images = torch.roll(images, shifts=shift, dims=(2, 3))
            loss = F.cross_entropy(judge(images), train.labels[batch], label_smoothing=0.05)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    judge.eval()
    accuracy = {}
    with torch.no_grad():
        for name in ("test", "test_only_foreground", "test_swapped"):
            split = splits[name]
            accuracy[name] = (judge(split.images).argmax(1) == split.labels).float().mean().item()
    return judge, accuracy


# The gate: at least 90% of the samples labeled as their conditioning class, compared as counts (a
# float32 mean put 450 of 500 at 0.89999998, below 0.90).
GATE = Fraction(9, 10)


def passes_gate(correct: int, total: int) -> bool:
    """Whether ``correct`` of ``total`` samples meet the gate, exactly."""
    return Fraction(correct, total) >= GATE


@torch.no_grad()
def class_consistency(
    teacher: Teacher,
    judge: Judge,
    *,
    per_class: int = 50,
    guidance: float = 3.0,
    steps: int = 50,
    seed: int = 0,
    batch: int = 100,
) -> tuple[float, torch.Tensor, torch.Tensor]:
    """(overall consistency, per-class consistency (K,), samples (K·per_class, 3, R, R) in [0, 1])."""
    num_classes = teacher.num_classes
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(len(labels), *teacher.latent_shape, generator=generator)
    device = teacher.device
    samples = []
    for chunk_noise, chunk_labels in tqdm(list(zip(noise.split(batch), labels.split(batch))), desc="sampling"):
        images = ddim_sample(teacher, chunk_noise.to(device), chunk_labels.to(device), guidance=guidance, steps=steps)
        samples.append(((teacher.decode(images) + 1) / 2).cpu())
    samples = torch.cat(samples)
    correct = (judge(samples).argmax(1) == labels).double()  # float64: a count over n, correctly rounded
    return correct.mean().item(), correct.view(num_classes, per_class).mean(1), samples
