"""``imagenet-a:PATH`` and ``imagenet-r:PATH``: sets that hold a subset of ImageNet's classes, one
folder per class, PATH/<wnid>/<images> (ImageNet-A, Hendrycks et al. 2021, natural adversarial
examples; ImageNet-R, Hendrycks et al. 2021, renditions: 200 classes each).

Scored as their authors score them: the student's logits restricted to the classes the folder
holds (matched to the student's classes by wnid name, never by position), the arg-max over those,
accuracy ("imagenet_a", "imagenet_r"). A folder class the student does not know is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from clarep_fast.pipeline.data.images import FolderImages
from clarep_fast.pipeline.data.listing import list_image_folder
from clarep_fast.pipeline.evaluate.sets.scoring import Scoring, predictions, student_indices


@dataclass(frozen=True)
class ClassSubset:
    NAME: str  # the result's key
    USAGE: str

    def score(self, scoring: Scoring, root: Path) -> dict[str, float]:
        spec = f"--sets {self.NAME.replace('_', '-')}:{root}"
        if not root.is_dir():
            raise FileNotFoundError(f"{spec}: {root} does not exist or is not a directory")
        files, labels, wnids = list_image_folder(root)
        allowed = student_indices(scoring, wnids, spec)  # (C,) the student's index of each folder class
        predicted = predictions(scoring, FolderImages(files, labels, wnids, scoring.resolution), allowed, self.NAME)
        return {self.NAME: float((predicted == allowed[labels]).float().mean())}


IMAGENET_A = ClassSubset(
    "imagenet_a", "imagenet-a:PATH = ImageNet-A, PATH/<wnid>/<images> (200 classes; logits restricted to them)"
)
IMAGENET_R = ClassSubset(
    "imagenet_r", "imagenet-r:PATH = ImageNet-R, PATH/<wnid>/<images> (200 classes; logits restricted to them)"
)
