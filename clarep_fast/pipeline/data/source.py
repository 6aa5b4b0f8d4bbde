"""Which dataset a command runs on (``--data SPEC``) and its train / validation / test splits.

The spec names a source of the table in data/sources/ (default, folder:PATH, cifar10:PATH); each
source module owns its listing, class names, native resolution and loading, and this module only
looks it up. Validation is cut from train for every source that does not cut it itself
(stratified, seeded, --val-fraction, data/split.py): checkpoints and hyper-parameters are judged
on it, never on test. The image side comes from --resolution, else from the teacher, else from
the data itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from types import ModuleType

from clarep_fast.pipeline.data.images import ImageSet
from clarep_fast.pipeline.data.sources import SOURCES
from clarep_fast.pipeline.data.split import stratified_split
from clarep_fast.pipeline.options import check_ranges, option


@dataclass(frozen=True)
class DataConfig:
    dataset: str = option(
        "default",
        "dataset: " + " | ".join(f"{n}:PATH" if m.TAKES_PATH else n for n, m in SOURCES.items()),
        flag="--data",
    )
    resolution: int | None = option(
        None, "image side in pixels (default: the teacher's, else the data's own)", low=8, high=4096
    )
    rho: float = option(0.8, "class correlation of the default dataset's backgrounds", low=0, high=1)
    test_fraction: float = option(
        0.2,
        "share of every class held out for test (default data; a folder without train/ and test/)",
        low=0,
        high=1,
        low_open=True,
        high_open=True,
    )
    val_fraction: float = option(
        0.1, "share of every class of train held out for validation", low=0, high=1, low_open=True, high_open=True
    )
    seed: int = option(0, "seed of the splits")

    def __post_init__(self):
        check_ranges(self)
        if parse_spec(self.dataset)[0] != "default" and self.rho != DataConfig.rho:
            raise ValueError(f"rho sets the default dataset's backgrounds; it means nothing for --data {self.dataset}")

    @property
    def kind(self) -> str:
        return parse_spec(self.dataset)[0]

    @property
    def path(self) -> Path | None:
        return parse_spec(self.dataset)[1]

    @property
    def source(self) -> ModuleType:
        """The source module of the spec (data/sources/)."""
        return SOURCES[self.kind]


def parse_spec(spec: str) -> tuple[str, Path | None]:
    """(source name, PATH or None); a spec naming no source of the table is refused, listing them."""
    kind, colon, path = spec.partition(":")
    source = SOURCES.get(kind)
    if source is None or source.TAKES_PATH != bool(path) or (colon and not source.TAKES_PATH):
        usage = "; ".join(m.USAGE for m in SOURCES.values())
        raise ValueError(f"data must be one of: {usage}; got {spec!r}")
    return kind, Path(path).expanduser() if path else None


def native_resolution(config: DataConfig) -> int:
    """The data's own image side (default 16, CIFAR-10 32, a folder's first image if square)."""
    return config.source.native_resolution(config)


def resolve(config: DataConfig, teacher_resolution: int | None = None, source: str = "the teacher") -> int:
    """The image side a run uses: --resolution, else the teacher's (or the bank's), else the data's
    own; a --resolution that does not match the teacher is refused naming both."""
    if config.resolution is not None:
        if teacher_resolution is not None and config.resolution != teacher_resolution:
            raise ValueError(
                f"--resolution {config.resolution} but {source} makes {teacher_resolution}×{teacher_resolution} images"
            )
        return config.resolution
    return teacher_resolution if teacher_resolution is not None else native_resolution(config)


def load_splits(config: DataConfig, resolution: int) -> dict[str, ImageSet]:
    """{"train", "val", "test"} and the source's extra sets (the default data's background variants
    "test_<variant>" and "val_<variant>"), images at ``resolution``."""
    splits = config.source.splits(config, resolution)
    if "val" not in splits:
        train = splits["train"]
        kept, held = stratified_split(train.labels, config.val_fraction, config.seed + 2)
        splits.update(train=train.subset(kept), val=train.subset(held))
    return splits


def dataset_classes(config: DataConfig) -> list[str]:
    """The class names, without decoding images."""
    return config.source.classes(config)
