"""Lazy loader for the compiled extension ``clarep_fast._C`` (C++ CPU kernels, CUDA kernels if built).

Nothing here runs at ``import clarep_fast``. The first op that needs the extension imports it; a
failure is reported once as a warning and remembered, and the registry then reports the reason.
"""

from __future__ import annotations

import functools
import importlib
import warnings
from types import ModuleType


@functools.cache
def _load() -> tuple[ModuleType | None, str]:
    try:
        import torch  # noqa: F401  (the extension links against libtorch: load it first)

        module = importlib.import_module("clarep_fast._C")
    except ImportError as error:
        reason = f"compiled extension clarep_fast._C is not importable ({error}); build it with `pip install -e . --no-build-isolation`"
        warnings.warn(reason, RuntimeWarning, stacklevel=3)
        return None, reason
    return module, ""


def extension() -> ModuleType | None:
    """The loaded ``clarep_fast._C`` module, or None when it cannot be imported."""
    return _load()[0]


def extension_error() -> str:
    """Why the extension is unavailable ('' when it loaded)."""
    return _load()[1]
