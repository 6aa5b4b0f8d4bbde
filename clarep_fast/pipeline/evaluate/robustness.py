"""Robustness of a trained student: clean accuracy, adversarial accuracy, reliance on background.

Attacks (torchattacks, on images in [0, 1]; the student normalizes its inputs itself and is in eval
mode): PGD-20 (L∞ ε = 8/255, step 2/255, random start), APGD-CE (L∞ 8/255), CW-L2 (c = 1; the
accuracy on its outputs), and AutoAttack (standard, L∞ 8/255) only when asked: it is slow.
Background reliance: clean accuracy on the default dataset's test variants (only_foreground,
mixed_random, swapped) beside the in-distribution test accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from tqdm import tqdm

from clarep_fast.pipeline.data.default import DataConfig, default_splits
from clarep_fast.pipeline.distill.student import accuracy
from clarep_fast.pipeline.evaluate.fold import fold_batchnorm
from clarep_fast.pipeline.options import check_ranges, option

VARIANTS = ("test", "test_only_foreground", "test_mixed_random", "test_swapped")


@dataclass(frozen=True)
class EvaluateConfig:
    epsilon: float = option(8 / 255, "L∞ budget of PGD and APGD", low=0)
    pgd_steps: int = option(20, "PGD steps", low=1)
    pgd_step_size: float = option(2 / 255, "PGD step size", low=0, low_open=True)
    apgd_steps: int = option(50, "APGD-CE steps", low=1)
    cw_steps: int = option(30, "CW-L2 steps", low=1)
    attack_samples: int = option(500, "test images attacked (all of them for clean and background accuracy)", low=1)
    autoattack: bool = option(False, "also run AutoAttack (slow)")
    batch: int = option(250, "images per forward", low=1)
    seed: int = option(0, "seed of the attacks' random starts and the attacked subset")

    def __post_init__(self):
        check_ranges(self)


@torch.no_grad()
def attacks(model: nn.Module, config: EvaluateConfig, num_classes: int) -> dict[str, object]:
    import torchattacks

    chosen = {
        f"pgd{config.pgd_steps}": torchattacks.PGD(model, eps=config.epsilon, alpha=config.pgd_step_size, steps=config.pgd_steps, random_start=True),
        "apgd_ce": torchattacks.APGD(model, norm="Linf", eps=config.epsilon, steps=config.apgd_steps, loss="ce", seed=config.seed),
        "cw_l2": torchattacks.CW(model, c=1, kappa=0, steps=config.cw_steps, lr=0.01),
    }
    if config.autoattack:
        chosen["autoattack"] = torchattacks.AutoAttack(model, norm="Linf", eps=config.epsilon, version="standard", n_classes=num_classes, seed=config.seed)
    return chosen


def adversarial_accuracy(model: nn.Module, attack, images: Tensor, labels: Tensor, batch: int, name: str = "attack") -> float:
    correct = 0
    for i in tqdm(range(0, len(labels), batch), desc=name, leave=False):
        adversarial = attack(images[i : i + batch], labels[i : i + batch])
        with torch.no_grad():
            correct += int((model(adversarial).argmax(1) == labels[i : i + batch]).sum())
    return correct / len(labels)


def evaluate_student(model: nn.Module, data: DataConfig, config: EvaluateConfig = EvaluateConfig()) -> dict[str, float]:
    """{"clean", each variant, each attack} accuracies of ``model`` (images in [0, 1] -> logits).

    Runs on a BatchNorm-folded frozen copy of the model (fold.py): the same function, fewer passes.
    """
    model = fold_batchnorm(model)
    device = next(model.parameters()).device
    splits = default_splits(data)
    results = {}
    for variant in VARIANTS:
        split = splits[variant]
        results["clean" if variant == "test" else variant.removeprefix("test_")] = accuracy(model, split.images.to(device), split.labels.to(device), config.batch)
    test = splits["test"]
    generator = torch.Generator().manual_seed(config.seed)
    chosen = torch.randperm(len(test.labels), generator=generator)[: config.attack_samples]
    images, labels = test.images[chosen].to(device), test.labels[chosen].to(device)
    torch.manual_seed(config.seed)  # PGD's random start
    for name, attack in attacks(model, config, int(test.labels.max()) + 1).items():
        results[name] = adversarial_accuracy(model, attack, images, labels, config.batch, name)
    return results


def markdown_table(rows: dict[str, dict[str, float]]) -> str:
    """One row per student (name -> results), one column per measure, accuracies in percent."""
    measures = list(next(iter(rows.values())))
    lines = ["| student | " + " | ".join(measures) + " |", "|---|" + "---|" * len(measures)]
    for name, results in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{100 * results[m]:.1f}" if isinstance(results[m], float) else str(results[m]) for m in measures) + " |")
    return "\n".join(lines)
