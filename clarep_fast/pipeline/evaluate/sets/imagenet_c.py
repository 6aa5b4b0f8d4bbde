"""``imagenet-c:PATH``: ImageNet-C (Hendrycks & Dietterich 2019) as released, PATH/<corruption>/<severity
1-5>/<wnid>/<images>; its images are 224×224 and are read as they are (no resize or crop for a
224-pixel student; a student of another side gets them resized to it, as its training data were).

Scored: accuracy per corruption and severity ("imagenet_c/<corruption>/<s>"), per corruption (mean
over severities) and overall ("imagenet_c_accuracy"); with a reference's errors (--mce-reference:
AlexNet's from the paper, or another student's evaluation.json) mCE and relative mCE
(evaluate/corruption_error.py). Classes are matched to the student's by wnid name.
"""

from __future__ import annotations

from pathlib import Path

from clarep_fast.pipeline.data.images import FolderImages
from clarep_fast.pipeline.data.listing import list_image_folder
from clarep_fast.pipeline.evaluate.corruption_error import (
    BENCHMARK,
    EXTRA,
    errors_of,
    mean_corruption_error,
    read_reference,
)
from clarep_fast.pipeline.evaluate.corruptions import SEVERITIES
from clarep_fast.pipeline.evaluate.sets.scoring import Scoring, predictions, student_indices

NAME = "imagenet_c"
USAGE = "imagenet-c:PATH = ImageNet-C as released, PATH/<corruption>/<severity 1-5>/<wnid>/ (--mce-reference for mCE)"


def severity_sets(root: Path, resolution: int) -> dict[tuple[str, int], FolderImages]:
    """Every (corruption, severity) folder, listed; an unknown corruption or a missing severity is refused."""
    if not root.is_dir():
        raise FileNotFoundError(f"--sets imagenet-c:{root}: {root} does not exist or is not a directory")
    found = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not found:
        raise ValueError(
            f"--sets imagenet-c:{root}: no corruption folders; expected PATH/<corruption>/<severity>/<wnid>/"
        )
    unknown = [name for name in found if name not in BENCHMARK + EXTRA]
    if unknown:
        raise ValueError(
            f"--sets imagenet-c:{root}: unknown corruption folder(s) {', '.join(unknown)}; ImageNet-C's are {', '.join(BENCHMARK + EXTRA)}"
        )
    sets = {}
    for name in found:
        for severity in SEVERITIES:
            folder = root / name / str(severity)
            if not folder.is_dir():
                raise ValueError(
                    f"--sets imagenet-c:{root}: severity folder {folder} is missing (each corruption has 1-5)"
                )
            files, labels, classes = list_image_folder(folder)
            sets[name, severity] = FolderImages(files, labels, classes, resolution)
    return sets


def score(scoring: Scoring, root: Path) -> dict[str, float]:
    reference_file = scoring.options.mce_reference
    # read first: a bad reference is refused before any image is scored
    reference = read_reference(reference_file, NAME) if reference_file is not None else None
    results = {}
    for (name, severity), images in severity_sets(root, scoring.resolution).items():
        truth = student_indices(scoring, images.classes, f"--sets imagenet-c:{root / name / str(severity)}")
        predicted = predictions(scoring, images, desc=f"imagenet-c {name} {severity}")
        results[f"{NAME}/{name}/{severity}"] = float((predicted == truth[images.labels]).float().mean())
    corruptions = sorted({key.split("/")[1] for key in results})
    for name in corruptions:
        results[f"{NAME}/{name}"] = sum(results[f"{NAME}/{name}/{s}"] for s in SEVERITIES) / len(SEVERITIES)
    results[f"{NAME}_accuracy"] = sum(results[f"{NAME}/{name}"] for name in corruptions) / len(corruptions)
    if reference is not None:
        clean = None if scoring.clean is None else 1.0 - scoring.clean
        reference_errors, reference_clean = reference
        results.update(mean_corruption_error(errors_of(results, NAME), reference_errors, clean, reference_clean, NAME))
    return results
