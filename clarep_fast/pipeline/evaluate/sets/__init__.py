"""The evaluation sets of ``--sets NAME:PATH``, as their publishers lay them out, one module each
in one table. A set exposes:
    NAME                    the prefix of its results' keys
    USAGE                   its spec and layout, one line (--help and errors quote it)
    score(scoring, path)    {result key: value}; ``scoring`` (sets/scoring.py) holds the student, its
                            class names, the image side, the batch, the workers and the options
Adding a set is one module and one row below; docs/evaluation.md describes each.
"""

from __future__ import annotations

from pathlib import Path

from clarep_fast.pipeline.evaluate.sets import imagenet9, imagenet_c, real
from clarep_fast.pipeline.evaluate.sets.class_subset import IMAGENET_A, IMAGENET_R

EVALUATION_SETS = {
    "imagenet9": imagenet9,
    "imagenet-c": imagenet_c,
    "imagenet-a": IMAGENET_A,
    "imagenet-r": IMAGENET_R,
    "real": real,
}


def check_files(options) -> None:
    """Every set folder and set file of an EvaluateConfig exists: refused by name before any work."""
    for spec in options.sets:
        if not parse_set(spec)[1].is_dir():
            raise FileNotFoundError(f"--sets {spec}: {parse_set(spec)[1]} does not exist or is not a directory")
    for flag, file in (("--in9-map", options.in9_map), ("--mce-reference", options.mce_reference),
                       ("--real-labels", options.real_labels)):  # fmt: skip
        if file is not None and not Path(file).is_file():
            raise FileNotFoundError(f"{flag} {file} does not exist")


def parse_set(spec: str) -> tuple[str, Path]:
    """(set name, PATH) of ``NAME:PATH``; an unknown name or a missing path is refused, listing the sets."""
    name, _, path = spec.partition(":")
    if name not in EVALUATION_SETS or not path:
        usage = "; ".join(s.USAGE for s in EVALUATION_SETS.values())
        raise ValueError(f"sets: each must be NAME:PATH, one of: {usage}; got {spec!r}")
    return name, Path(path).expanduser()
