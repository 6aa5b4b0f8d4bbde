"""The training-data sources of ``--data SPEC``, one module each, in one table.

A source module owns everything about its data and exposes four names:
    USAGE                          the spec and what it reads, one line (--help and errors quote it)
    TAKES_PATH                     whether the spec is NAME:PATH (else just NAME)
    classes(config)                the class names, without decoding images
    native_resolution(config)      the data's own image side
    splits(config, resolution)     {"train", "test"} image sets (and any named extra sets, such as
                                   the default data's background variants; "val" when the source
                                   cuts validation itself), images at ``resolution``
``data/source.py`` looks a spec up here and cuts validation out of train (``data/split.py``) for
every source that does not. Adding a source is one module and one row below.
"""

from __future__ import annotations

from types import ModuleType

from clarep_fast.pipeline.data.sources import cifar10, default, folder

SOURCES: dict[str, ModuleType] = {
    "default": default,
    "folder": folder,
    "cifar10": cifar10,
}
