"""``real:PATH``: ImageNet-ReaL (Beyer et al. 2020, "Are we done with ImageNet?"), the reassessed
labels of ImageNet's validation images. PATH holds the 50,000 validation images, flat or in
<wnid>/ folders; --real-labels gives ``real.json`` (default PATH/real.json): one list of class
indices per image, in the order of the images' file names (ILSVRC2012_val_00000001.JPEG, ...).

Scored: ReaL accuracy ("real_accuracy"): a prediction is right when it is in the image's label
set; images whose set is empty are left out (the authors' rule). Beside it, for images in <wnid>/
folders, the accuracy against the original labels on the same images ("real_original_accuracy").
The indices in real.json are ImageNet's class order, read against the student's logits by
position: a student with wnid classes must have them in ImageNet's (sorted) order.
"""

from __future__ import annotations

from pathlib import Path

import torch

from clarep_fast.pipeline.data.images import FolderImages
from clarep_fast.pipeline.data.listing import IMAGE_SUFFIXES, class_folders, image_files
from clarep_fast.pipeline.evaluate.sets.scoring import Scoring, predictions, require_imagenet_order, student_indices
from clarep_fast.pipeline.files import read_given_json

NAME = "real"
USAGE = (
    "real:PATH = ImageNet's validation images, flat or PATH/<wnid>/ (--real-labels real.json, default PATH/real.json)"
)


def validation_images(root: Path) -> tuple[list[Path], list[str | None]]:
    """(files sorted by file name, the wnid folder of each or None for a flat folder)."""
    if not root.is_dir():
        raise FileNotFoundError(f"--sets real:{root}: {root} does not exist or is not a directory")
    flat = image_files(root)
    folders = [] if flat else class_folders(root)
    found = [(file, None) for file in flat] + [(file, wnid) for wnid in folders for file in image_files(root / wnid)]
    if not found:
        raise ValueError(
            f"--sets real:{root}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {root} or its folders"
        )
    found.sort(key=lambda pair: pair[0].name)
    return [file for file, _ in found], [wnid for _, wnid in found]


def read_label_sets(path: Path, count: int, num_classes: int) -> list[list[int]]:
    """real.json: a list of ``count`` lists of class indices in [0, num_classes)."""
    sets = read_given_json(path, "--real-labels")
    if not isinstance(sets, list) or not all(isinstance(s, list) for s in sets):
        raise ValueError(f"--real-labels {path}: expected a JSON list of label lists, one per image")
    if len(sets) != count:
        raise ValueError(f"--real-labels {path} has {len(sets)} label sets but the folder holds {count} images")
    for position, labels in enumerate(sets):
        if not all(isinstance(i, int) and 0 <= i < num_classes for i in labels):
            raise ValueError(
                f"--real-labels {path}: entry {position} ({labels}) holds an index outside the student's 0..{num_classes - 1}"
            )
    return sets


def score(scoring: Scoring, root: Path) -> dict[str, float]:
    files, wnids = validation_images(root)
    labels_file = Path(scoring.options.real_labels) if scoring.options.real_labels else root / "real.json"
    require_imagenet_order(scoring, f"--real-labels {labels_file}")
    label_sets = read_label_sets(labels_file, len(files), len(scoring.classes))
    images = FolderImages(files, torch.zeros(len(files), dtype=torch.long), scoring.classes, scoring.resolution)
    predicted = predictions(scoring, images, desc="real").tolist()
    judged = [p in labels for p, labels in zip(predicted, label_sets) if labels]
    if not judged:
        raise ValueError(f"--real-labels {labels_file}: every label set is empty, so nothing can be scored")
    results = {"real_accuracy": sum(judged) / len(judged)}
    if all(wnids):
        truth = student_indices(scoring, sorted(set(wnids)), f"--sets real:{root}")
        index = {wnid: int(i) for wnid, i in zip(sorted(set(wnids)), truth)}
        results["real_original_accuracy"] = sum(p == index[w] for p, w in zip(predicted, wnids)) / len(files)
    return results
