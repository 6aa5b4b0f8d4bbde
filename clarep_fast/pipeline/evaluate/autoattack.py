"""AutoAttack as RobustBench reports it (Croce & Hein 2020, "Reliable evaluation of adversarial
robustness with an ensemble of diverse parameter-free attacks"): the standard version's four
attacks, each run on every attacked image, and robust accuracy as the per-image worst case,

    robust(x) = correct under APGD-CE(x) and APGD-T(x) and FAB-T(x) and Square(x),

so AutoAttack's accuracy is never above any of its parts' on the same images (tests/pipeline/evaluate/
test_sets.py checks it).
The parts are torchattacks' classes (named with its version in the report) at the standard
version's settings: APGD-CE 100 steps, APGD-T 100 steps on the 9 most likely wrong classes, FAB-T
100 steps on 9 target classes, Square 5,000 queries (p_init 0.8), one restart each. torchattacks'
own ``AutoAttack`` differs from this: it runs APGD with 10 steps and targets every other class,
and it attacks later parts only on the images earlier ones left standing.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from tqdm import tqdm

STANDARD_TARGETS = 9  # target classes of APGD-T and FAB-T in the standard version
STANDARD_STEPS = 100  # iterations of APGD-CE, APGD-T and FAB-T
SQUARE_QUERIES = 5000
PARTS = ("apgd-ce", "apgd-t", "fab-t", "square")


def implementation() -> str:
    import torchattacks

    return (
        f"AutoAttack standard (APGD-CE, APGD-T, FAB-T, Square; per-image worst case), parts from torchattacks "
        f"{torchattacks.__version__} at the standard settings"
    )


def standard_parts(model: nn.Module, epsilon: float, num_classes: int, seed: int) -> dict[str, object]:
    """The four attacks of the standard version, L∞ ``epsilon``."""
    import torchattacks

    targets = min(STANDARD_TARGETS, num_classes - 1)
    apgd_t = torchattacks.APGDT(
        model, eps=epsilon, steps=STANDARD_STEPS, n_restarts=1, seed=seed, n_classes=num_classes
    )
    fab_t = torchattacks.FAB(
        model, eps=epsilon, steps=STANDARD_STEPS, n_restarts=1, seed=seed, multi_targeted=True, n_classes=num_classes
    )
    apgd_t.n_target_classes = fab_t.n_target_classes = targets  # torchattacks sets num_classes - 1
    return {
        "apgd-ce": torchattacks.APGD(model, eps=epsilon, steps=STANDARD_STEPS, n_restarts=1, loss="ce", seed=seed),
        "apgd-t": apgd_t,
        "fab-t": fab_t,
        "square": torchattacks.Square(
            model, eps=epsilon, n_queries=SQUARE_QUERIES, n_restarts=1, p_init=0.8, seed=seed
        ),
    }


def still_correct(model: nn.Module, attack, images: Tensor, labels: Tensor, batch: int, name: str) -> Tensor:
    """(N,) bool: whether the model still classifies each image right after ``attack``."""
    correct = []
    for i in tqdm(range(0, len(labels), batch), desc=name, leave=False):
        adversarial = attack(images[i : i + batch], labels[i : i + batch])
        with torch.no_grad():
            correct.append((model(adversarial).argmax(1) == labels[i : i + batch]).cpu())
    return torch.cat(correct)


def worst_case(correct: dict[str, Tensor]) -> dict[str, float]:
    """ "autoattack" (robust under every part) and "autoattack/<part>" from per-image correctness."""
    robust = torch.stack(list(correct.values())).all(0)
    results = {"autoattack": float(robust.float().mean())}
    for name, part in correct.items():
        results[f"autoattack/{name}"] = float(part.float().mean())
    return results


def autoattack_accuracy(
    model: nn.Module, images: Tensor, labels: Tensor, batch: int, epsilon: float, num_classes: int, seed: int
) -> dict[str, float]:
    """Robust accuracy under the standard AutoAttack and under each of its parts, same images."""
    parts = standard_parts(model, epsilon, num_classes, seed)
    return worst_case({name: still_correct(model, a, images, labels, batch, name) for name, a in parts.items()})
