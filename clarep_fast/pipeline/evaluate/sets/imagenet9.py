"""``imagenet9:PATH``: the Backgrounds Challenge (Xiao et al. 2020, "Noise or Signal: The Role of
Image Backgrounds in Object Recognition"), ImageNet-9 as its ``bg_challenge`` folder lays it out:
PATH/<variant>/val/<class folder>/<images>, variants

    original    the unmodified image              only_fg     the object on black
    no_fg       the object's box blacked out      only_bg_b   the background, object box black
    only_bg_t   the background, object box tiled mixed_same  the object on another image's background of its class
    mixed_rand  the object on a random class's background   mixed_next  the object on the next class's background

Scored: accuracy per variant present ("in9/<variant>") and BG-Gap = mixed_same − mixed_rand
("in9_bg_gap"; the challenge reports ResNet-50 at 86.2 − 78.9 = 7.3 points).
A student whose classes are the 9 class folders (by name) is scored on them directly. Any other
student (1,000 ImageNet classes) needs the challenge's mapping file (--in9-map, ``in_to_in9.json``:
ImageNet class index -> IN-9 class index, -1 for classes outside the nine): as in the challenge's
own evaluation, the arg-max over all the student's classes is mapped, and a prediction that maps
to -1 is wrong.
"""

from __future__ import annotations

from pathlib import Path

import torch

from clarep_fast.pipeline.data.images import FolderImages
from clarep_fast.pipeline.data.listing import list_image_folder
from clarep_fast.pipeline.evaluate.sets.scoring import Scoring, predictions, require_imagenet_order
from clarep_fast.pipeline.files import read_given_json

NAME = "in9"
USAGE = "imagenet9:PATH = the Backgrounds Challenge's bg_challenge folder, PATH/<variant>/val/<class>/ (--in9-map for an ImageNet student)"
VARIANTS = ("original", "only_fg", "no_fg", "only_bg_b", "only_bg_t", "mixed_same", "mixed_rand", "mixed_next")


def variant_sets(root: Path, resolution: int) -> dict[str, FolderImages]:
    """The variants present under ``root``, each listed (not decoded); the same 9 classes in each."""
    if not root.is_dir():
        raise FileNotFoundError(f"--sets imagenet9:{root}: {root} does not exist or is not a directory")
    present = [variant for variant in VARIANTS if (root / variant).is_dir()]
    if not present:
        raise ValueError(f"--sets imagenet9:{root}: no variant folder found; expected some of {', '.join(VARIANTS)}")
    sets, classes = {}, None
    for variant in present:
        folder = root / variant / "val"
        if not folder.is_dir():
            raise ValueError(
                f"--sets imagenet9:{root}: {root / variant} has no val/ folder (expected {variant}/val/<class>/)"
            )
        files, labels, names = list_image_folder(folder, classes)
        classes = names
        sets[variant] = FolderImages(files, labels, names, resolution)
    return sets


def read_map(path: str | Path, num_classes: int, num_in9: int) -> torch.Tensor:
    """(K,) the IN-9 class of each student class (-1: none), from a JSON {"<class index>": <IN-9 index>}."""
    mapping = read_given_json(path, "--in9-map")
    if not isinstance(mapping, dict) or not mapping:
        raise ValueError(f"--in9-map {path}: expected a JSON object of class index -> IN-9 index (in_to_in9.json)")
    table = torch.full((num_classes,), -1, dtype=torch.long)
    for key, value in mapping.items():
        if not str(key).isdigit() or not 0 <= int(key) < num_classes:
            raise ValueError(f"--in9-map {path}: key {key!r} is not a class index of the student's {num_classes}")
        if not isinstance(value, int) or not -1 <= value < num_in9:
            raise ValueError(f"--in9-map {path}: value {value!r} of {key} is not an IN-9 index in -1..{num_in9 - 1}")
        table[int(key)] = value
    if (table < 0).all():
        raise ValueError(f"--in9-map {path} maps nothing: every class maps to -1")
    return table


def score(scoring: Scoring, root: Path) -> dict[str, float]:
    sets = variant_sets(root, scoring.resolution)
    classes = next(iter(sets.values())).classes
    if sorted(scoring.classes) == classes:  # a 9-class student: its own classes, by name
        to_in9 = torch.tensor([classes.index(name) for name in scoring.classes])
    elif scoring.options.in9_map is not None:
        require_imagenet_order(scoring, f"--in9-map {scoring.options.in9_map}")
        to_in9 = read_map(scoring.options.in9_map, len(scoring.classes), len(classes))
    else:
        raise ValueError(
            f"--sets imagenet9:{root}: the student's {len(scoring.classes)} classes are not the set's {classes}; "
            "give the challenge's mapping file with --in9-map (in_to_in9.json)"
        )
    results = {}
    for variant, images in sets.items():
        predicted = to_in9[predictions(scoring, images, desc=f"in9 {variant}")]
        results[f"{NAME}/{variant}"] = float((predicted == images.labels).float().mean())
    if {"mixed_same", "mixed_rand"} <= set(sets):
        results[f"{NAME}_bg_gap"] = results[f"{NAME}/mixed_same"] - results[f"{NAME}/mixed_rand"]
    return results
