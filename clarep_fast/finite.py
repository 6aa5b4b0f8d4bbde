"""The NaN/Inf rule of the fused ops, and how it is enforced without a host sync on CUDA.

Every op refuses an input that holds NaN or Inf (or whose sums overflow the accumulation dtype).
Each op sees this in the few statistics it computes anyway (norms, traces, HSIC terms), so the
test is a reduction over a handful of numbers. What costs is the answer's trip to the host: on
CPU it is free, on CUDA it is a host sync per call, which drains the launch queue and leaves the
GPU idle while Python catches up (most of a small-shape call's time).

Modes, from (in order) the innermost ``finite_check(...)`` block, the environment variable
``CLAREP_FAST_FINITE_CHECK``, else "auto":
  sync   -- read the flags on the host and raise ``ValueError`` naming the argument and the
            sample or pair (one host sync per call on CUDA).
  async  -- queue ``torch._assert_async`` on the flags: no host sync. On CUDA a bad input stops
            the device at that point with a device-side assert, reported as a RuntimeError at
            the next synchronizing call; like every device-side assert it leaves the CUDA
            context unusable, so the process has to restart. Rerun with ``sync`` to have the
            argument named. (On CPU the assert raises at once, as a RuntimeError.)
  auto   -- sync for CPU tensors, async for CUDA tensors (the default).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import sys
from typing import Callable, Iterator

import torch
from torch import Tensor

MODES = ("auto", "sync", "async")
ENV_VAR = "CLAREP_FAST_FINITE_CHECK"

_requested: contextvars.ContextVar[str | None] = contextvars.ContextVar("clarep_fast_finite_check", default=None)


def _checked(mode: str, source: str) -> str:
    if mode not in MODES:
        raise ValueError(f"{source} must be one of {MODES}, got {mode!r}")
    return mode


@contextlib.contextmanager
def finite_check(mode: str) -> Iterator[None]:
    """Check the fused ops' inputs for NaN/Inf in ``mode`` ("auto", "sync" or "async") inside this block."""
    token = _requested.set(_checked(mode, "finite_check mode"))
    try:
        yield
    finally:
        _requested.reset(token)


def finite_check_mode(device: torch.device) -> str:
    """ "sync" or "async": how a call on ``device`` checks its inputs right now."""
    mode = _requested.get()
    if mode is None:
        mode = _checked(os.environ.get(ENV_VAR, "auto").strip().lower() or "auto", ENV_VAR)
    if mode == "auto":
        return "sync" if device.type == "cpu" else "async"
    return mode


def refuse_non_finite(values: Tensor, op: str, explain: Callable[[Tensor], str]) -> None:
    """Refuse the call if any entry of ``values`` (the few statistics an op checks) is NaN or Inf.

    sync: raise ValueError(explain(bad)), ``bad`` the bool map of the non-finite entries (``explain``
    may read tensors: it runs on the error path only). The test itself is _all_finite.
    async: one device-side assert over the entries, no host sync.
    """
    if finite_check_mode(values.device) == "async":
        message = (
            f"{op}: an input holds NaN or Inf (or its sums overflow); set {ENV_VAR}=sync to have the argument named"
        )
        torch._assert_async(torch.isfinite(values).all(), message)
        return
    if _all_finite(values):
        return
    bad = ~torch.isfinite(values)
    if bool(bad.any()):
        raise ValueError(explain(bad))


def _all_finite(values: Tensor) -> bool:
    """Whether every entry is finite. On CPU, with the extension already loaded (never loaded for
    this), a plain C++ loop (csrc/module.cpp: ~1 µs against ~7 for the torch ops below, which at
    training-loop sizes is a visible part of a call). Otherwise one sum in fp64: finite exactly when
    every entry is, unless finite fp64 entries near 1e308 overflow it, and then the elementwise
    test that follows in refuse_non_finite finds nothing bad and the call goes on."""
    extension = sys.modules.get("clarep_fast._C")
    if extension is not None and values.device.type == "cpu":
        return extension.all_finite(values)
    return bool(torch.isfinite(values.sum(dtype=torch.float64)))
