"""What every evaluation set needs to score a student: its predictions over a set of images, and
its class indices looked up by name (never by position)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from tqdm import tqdm

from clarep_fast.pipeline.data.images import ImageSet

if TYPE_CHECKING:  # robustness.py imports the sets' table, which imports this module
    from clarep_fast.pipeline.evaluate.robustness import EvaluateConfig

WNID = re.compile(r"n\d{8}")  # an ImageNet class id (WordNet noun id), the folder names of ImageNet's sets


@dataclass(frozen=True)
class Scoring:
    model: nn.Module  # frozen eval copy: images (b, 3, R, R) in [0, 1] -> logits (b, K)
    classes: list[str]  # the student's K class names, in the order of its logits
    resolution: int  # the side the student reads; set images are resized to it as its training data were
    batch: int  # images per forward
    workers: int  # DataLoader workers decoding the set's files (a run-time setting)
    clean: float | None = None  # the student's accuracy on its own test split (relative mCE needs it)
    options: EvaluateConfig | None = None  # set-specific files: --in9-map, --mce-reference, --real-labels


@torch.no_grad()
def predictions(scoring: Scoring, images: ImageSet, allowed: Tensor | None = None, desc: str = "") -> Tensor:
    """(N,) the student's predicted class index per image: the arg-max of its logits, over the
    classes ``allowed`` (indices into the student's classes) when given, over all of them otherwise."""
    device = next(scoring.model.parameters()).device
    found = []
    batches = images.sequential(scoring.batch, scoring.workers)
    for pixels, _ in tqdm(batches, total=-(-len(images) // scoring.batch), desc=desc, leave=False, disable=not desc):
        logits = scoring.model(pixels.to(device))
        if allowed is None:
            found.append(logits.argmax(1).cpu())
        else:
            found.append(allowed[logits[:, allowed.to(device)].argmax(1).cpu()])
    return torch.cat(found) if found else torch.empty(0, dtype=torch.long)


def student_indices(scoring: Scoring, names: list[str], where: str) -> Tensor:
    """The student's class index of each name; names it does not know are refused, listed."""
    position = {name: index for index, name in enumerate(scoring.classes)}
    missing = [name for name in names if name not in position]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ValueError(
            f"{where} holds classes the student does not know ({shown}); the student's classes are "
            f"{scoring.classes[:3]}... (classes are matched by name, never by position)"
        )
    return torch.tensor([position[name] for name in names])


def require_imagenet_order(scoring: Scoring, what: str) -> None:
    """A file indexed by ImageNet class number (real.json, in_to_in9.json) reads the student's
    logits by position: that is only right when the student's classes are in ImageNet's order,
    which for wnid-named classes is their sorted order (the order of ImageNet's class folders)."""
    if all(WNID.fullmatch(name) for name in scoring.classes) and scoring.classes != sorted(scoring.classes):
        raise ValueError(
            f"{what} indexes classes by ImageNet's order, but the student's wnid classes are not sorted "
            "(ImageNet's order is the sorted wnids)"
        )
