"""Robustness of a trained student: clean accuracy, adversarial accuracy, reliance on background.

Attacks (torchattacks, on images in [0, 1]; the student normalizes its inputs itself and is in eval
mode): PGD-20 (L∞ ε = 8/255, step 2/255, random start), APGD-CE (L∞ 8/255), APGD-CE with the L2
norm at ε₂ = 0.5·sqrt(d / 3072) for d input values (RobustBench's 0.5 at 32×32 RGB, scaled with the
image's size: 0.25 at 16×16 RGB), and AutoAttack (standard, L∞ 8/255, per-image worst case of its
four parts, evaluate/autoattack.py) only when asked: it is slow; ``attacks`` chooses which run.
CW-L2 is a minimum-norm attack without a budget, so its accuracy measures how often it fails to
finish, not robustness: it is reported as the median L2 distortion it needed on the images it
turned ("distortion/cw_l2_median"; images the student already gets wrong count as 0).
Distribution shift: accuracy under common corruptions (evaluate/corruptions.py) at severities 1–5
on ``corruption_samples`` images, per corruption and as the mean over corruptions and
severities (and mCE against a reference, evaluate/corruption_error.py); for the default dataset
also the clean accuracy on its background variants (only_foreground, mixed_random, swapped,
mixed_same, only_background; data/backgrounds.py) and BG-Gap = mixed_same − mixed_random.
The field's evaluation sets (ImageNet-9 backgrounds, ImageNet-C, -A, -R, ReaL: ``sets``) are scored
by their own modules (evaluate/sets/) with their own metrics.
Every figure is on the test split (the student was trained and monitored on train and validation),
unless ``split = validation``: the split on which settings are compared and chosen.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from tqdm import tqdm

from clarep_fast.pipeline.data.backgrounds import VARIANTS as BACKGROUND_VARIANTS
from clarep_fast.pipeline.data.images import TensorImages
from clarep_fast.pipeline.data.source import DataConfig, dataset_classes, load_splits
from clarep_fast.pipeline.distill.student import accuracy
from clarep_fast.pipeline.evaluate.autoattack import autoattack_accuracy
from clarep_fast.pipeline.evaluate.corruptions import CORRUPTIONS, SEVERITIES, corrupt
from clarep_fast.pipeline.evaluate.fold import fold_batchnorm
from clarep_fast.pipeline.evaluate.sets import EVALUATION_SETS, check_files, parse_set
from clarep_fast.pipeline.evaluate.sets.scoring import Scoring
from clarep_fast.pipeline.options import check_ranges, option

VARIANTS = BACKGROUND_VARIANTS[1:]  # the default dataset's background variants, beside in_distribution ("clean")
ATTACKS = ("pgd", "apgd_ce", "apgd_l2", "cw", "autoattack")
SPLITS = {"test": "test", "validation": "val"}  # --split -> the split's key in load_splits


@dataclass(frozen=True)
class EvaluateConfig:
    epsilon: float = option(8 / 255, "L∞ budget of PGD and APGD", low=0)
    pgd_steps: int = option(20, "PGD steps", low=1)
    pgd_step_size: float = option(2 / 255, "PGD step size", low=0, low_open=True)
    apgd_steps: int = option(50, "APGD-CE steps (L∞ and L2)", low=1)
    epsilon_l2: float | None = option(None, "L2 budget of APGD-L2 (default: 0.5·sqrt(d/3072), d the input size)", low=0)
    cw_steps: int = option(30, "CW-L2 steps", low=1)
    attacks: tuple[str, ...] = option(
        ("pgd", "apgd_ce", "apgd_l2", "cw"),
        "attacks to run (autoattack: slow; cw: reported as distortion)",
        choices=ATTACKS,
    )
    attack_samples: int | None = option(None, "images attacked (default: all of them)", low=1)
    corruption_samples: int = option(
        500, "images under each corruption and severity (0: no corruption evaluation)", low=0
    )
    split: str = option(
        "test", "the split scored (validation: for choosing settings; test: for reporting)", choices=tuple(SPLITS)
    )
    batch: int = option(250, "images per forward", low=1)
    seed: int = option(0, "seed of the attacks' random starts and the attacked subset")
    sets: tuple[str, ...] = option(
        (),
        "evaluation sets as published, NAME:PATH each: "
        + ", ".join(f"{name}:PATH" for name in EVALUATION_SETS)
        + " (docs/evaluation.md)",
    )
    in9_map: str | None = option(
        None, "imagenet9: the challenge's in_to_in9.json (class index -> IN-9 index), for a student of other classes"
    )
    mce_reference: str | None = option(
        None,
        "imagenet-c: a reference's errors for mCE (JSON {clean, errors: {corruption: [5]}}, or an evaluation.json)",
    )
    real_labels: str | None = option(None, "real: real.json (default: PATH/real.json)")

    def __post_init__(self):
        check_ranges(self)
        for spec in self.sets:
            parse_set(spec)


@torch.no_grad()
def cw_attack(model: nn.Module, config: EvaluateConfig):
    """CW-L2 (c = 1): a minimum-norm attack without a budget, measured by the distortion it needs."""
    import torchattacks

    return torchattacks.CW(model, c=1, kappa=0, steps=config.cw_steps, lr=0.01)


def l2_budget(config: EvaluateConfig, input_size: int) -> float:
    """ε₂ = 0.5·sqrt(d / 3072): RobustBench's CIFAR-10 budget, scaled so the per-value size stays the same."""
    return config.epsilon_l2 if config.epsilon_l2 is not None else 0.5 * (input_size / 3072) ** 0.5


def attacks(model: nn.Module, config: EvaluateConfig, num_classes: int, input_size: int) -> dict[str, object]:
    import torchattacks

    built = {
        "pgd": lambda: torchattacks.PGD(
            model, eps=config.epsilon, alpha=config.pgd_step_size, steps=config.pgd_steps, random_start=True
        ),
        "apgd_ce": lambda: torchattacks.APGD(
            model, norm="Linf", eps=config.epsilon, steps=config.apgd_steps, loss="ce", seed=config.seed
        ),
        "apgd_l2": lambda: torchattacks.APGD(
            model, norm="L2", eps=l2_budget(config, input_size), steps=config.apgd_steps, loss="ce", seed=config.seed
        ),
    }
    names = {"pgd": f"pgd{config.pgd_steps}"}
    return {names.get(name, name): built[name]() for name in ATTACKS if name in config.attacks and name in built}


def median_distortion(
    model: nn.Module, attack, images: Tensor, labels: Tensor, batch: int, name: str = "attack"
) -> float:
    """Median over images of ‖x_adv - x‖₂ where the attack turned the prediction (0 where the student was
    already wrong); images it did not turn are left out, and their share is the attack's failure rate."""
    distances = []
    for i in tqdm(range(0, len(labels), batch), desc=name, leave=False):
        clean, truth = images[i : i + batch], labels[i : i + batch]
        adversarial = attack(clean, truth)
        with torch.no_grad():
            wrong_before = model(clean).argmax(1) != truth
            wrong_after = model(adversarial).argmax(1) != truth
        distance = (adversarial - clean).flatten(1).norm(dim=1)
        distances.append(
            torch.where(wrong_before, torch.zeros_like(distance), distance)[wrong_before | wrong_after].cpu()
        )
    distances = torch.cat(distances)
    return float(distances.median()) if len(distances) else float("inf")


def adversarial_accuracy(
    model: nn.Module, attack, images: Tensor, labels: Tensor, batch: int, name: str = "attack"
) -> float:
    correct = 0
    for i in tqdm(range(0, len(labels), batch), desc=name, leave=False):
        adversarial = attack(images[i : i + batch], labels[i : i + batch])
        with torch.no_grad():
            correct += int((model(adversarial).argmax(1) == labels[i : i + batch]).sum())
    return correct / len(labels)


def evaluate_student(
    model: nn.Module,
    data: DataConfig,
    config: EvaluateConfig = EvaluateConfig(),
    *,
    resolution: int,
    classes: list[str] | None = None,
    workers: int = 0,
) -> dict[str, float]:
    """Measures of ``model`` (images in [0, 1] -> logits over ``classes``, default the data's) on the
    test (or validation) split of ``data``: "clean", each background variant and "bg_gap" (default
    dataset), each attack of ``config.attacks`` ("autoattack" with "autoattack/<part>"),
    "distortion/cw_l2_median", "corruption_mean" with "corruption/<name>" (mean over severities),
    "corruption/<name>/<s>" and "corruption_severity/<s>", and the measures of each of
    ``config.sets`` (evaluate/sets/). File-backed images are decoded in ``workers`` DataLoader workers.

    Runs on a BatchNorm-folded frozen copy of the model (fold.py): the same function, fewer passes.
    Corruptions are numpy image code: computed on the CPU, then moved to the model's device.
    """
    check_files(config)  # a mistyped set path fails now, not after the attacks
    model = fold_batchnorm(model)
    device = next(model.parameters()).device
    classes = list(classes) if classes is not None else dataset_classes(data)
    splits = load_splits(data, resolution)
    key = SPLITS[config.split]
    scored = splits[key]
    results = {"clean": accuracy(model, scored, config.batch, workers)}
    for variant in VARIANTS:
        if f"{key}_{variant}" in splits:
            results[variant] = accuracy(model, splits[f"{key}_{variant}"], config.batch, workers)
    if {"mixed_same", "mixed_random"} <= set(results):
        results["bg_gap"] = results["mixed_same"] - results["mixed_random"]
    generator = torch.Generator().manual_seed(config.seed)
    order = torch.randperm(len(scored), generator=generator)
    chosen = order[: config.attack_samples]
    images, labels = scored.take(chosen, workers).to(device), scored.labels[chosen].to(device)
    torch.manual_seed(config.seed)  # PGD's random start
    for name, attack in attacks(model, config, len(classes), images[0].numel()).items():
        results[name] = adversarial_accuracy(model, attack, images, labels, config.batch, name)
    if "autoattack" in config.attacks:
        results.update(
            autoattack_accuracy(model, images, labels, config.batch, config.epsilon, len(classes), config.seed)
        )
    if "cw" in config.attacks:
        results["distortion/cw_l2_median"] = median_distortion(
            model, cw_attack(model, config), images, labels, config.batch, "cw_l2"
        )
    if config.corruption_samples:
        chosen = order[: config.corruption_samples]
        results.update(
            corruption_accuracy(
                model, TensorImages(scored.take(chosen, workers), scored.labels[chosen], scored.classes), config
            )
        )
    scoring = Scoring(model, classes, resolution, config.batch, workers, results["clean"], config)
    for spec in config.sets:
        name, path = parse_set(spec)
        results.update(EVALUATION_SETS[name].score(scoring, path))
    return results


CORRUPTION_CACHE_BYTES = 2**28  # corrupted test sets up to 256 MiB are kept for the next student


class _CorruptedSets:
    """The corrupted copies of the last test subset, kept between students: the corruptions are
    numpy code on the CPU and cost more than classifying, and the demo evaluates every student on
    the same subset with the same seed. Keyed by the images themselves (a digest), never by name."""

    key, sets = None, {}

    @classmethod
    def get(cls, images: Tensor, seed: int) -> dict[tuple[str, int], Tensor]:
        import hashlib

        key = (hashlib.sha256(images.cpu().contiguous().numpy().tobytes()).hexdigest(), seed)
        if key == cls.key:
            return cls.sets
        sets = {
            (name, severity): corrupt(images, name, severity, seed)
            for name in tqdm(CORRUPTIONS, desc="corruptions", leave=False)
            for severity in SEVERITIES
        }
        keep = images.numel() * images.element_size() * len(sets) <= CORRUPTION_CACHE_BYTES
        cls.key, cls.sets = (key, sets) if keep else (None, {})
        return sets


def corruption_accuracy(model: nn.Module, test: TensorImages, config: EvaluateConfig) -> dict[str, float]:
    """Accuracy under every corruption and severity ("corruption/<name>/<s>"); means per corruption,
    per severity and overall."""
    sets = _CorruptedSets.get(test.images, config.seed)
    table = {
        (name, severity): accuracy(model, TensorImages(images, test.labels, test.classes), config.batch)
        for (name, severity), images in sets.items()
    }
    results = {"corruption_mean": sum(table.values()) / len(table)}
    results.update({f"corruption/{name}/{severity}": value for (name, severity), value in table.items()})
    for name in CORRUPTIONS:
        results[f"corruption/{name}"] = sum(table[name, s] for s in SEVERITIES) / len(SEVERITIES)
    for severity in SEVERITIES:
        results[f"corruption_severity/{severity}"] = sum(table[n, severity] for n in CORRUPTIONS) / len(CORRUPTIONS)
    return results


DETAIL_TITLES = {  # the groups of detail measures ("<group>/<measure>"), each a table of its own
    "corruption": "Per corruption, generated (mean over severities 1-5)",
    "corruption_severity": "Per severity, generated (mean over corruptions)",
    "autoattack": "AutoAttack's parts, each on every attacked image",
    "in9": "ImageNet-9 backgrounds, per variant",
    "imagenet_c": "ImageNet-C, per corruption (mean over severities 1-5)",
}


def detail_groups(measures) -> dict[str, list[str]]:
    """group -> its one-level detail measures ("<group>/<measure>"), for the groups of DETAIL_TITLES."""
    groups = {}
    for key in measures:
        group, _, measure = key.partition("/")
        if group in DETAIL_TITLES and measure and "/" not in measure:
            groups.setdefault(group, []).append(key)
    return groups


def headline(results: dict[str, float]) -> list[str]:
    """The measures of the main table: all but the per-corruption and per-severity detail."""
    return [name for name in results if "/" not in name]


def markdown_table(rows: dict[str, dict[str, float]], measures: list[str] | None = None) -> str:
    """One row per student (name -> results), one column per measure, accuracies in percent."""
    measures = measures or headline(next(iter(rows.values())))
    lines = ["| student | " + " | ".join(measures) + " |", "|---|" + "---|" * len(measures)]
    for name, results in rows.items():
        lines.append(
            f"| {name} | "
            + " | ".join(
                f"{100 * results[m]:.1f}" if isinstance(results[m], float) else str(results[m]) for m in measures
            )
            + " |"
        )
    return "\n".join(lines)
