"""scripts/gpu_check.sh keeps working on the GPU machine's image, checked here without a GPU.

The GPU image lacks diffusers, torchattacks, imagecorruptions, mlxtend (and importlib_metadata); the
script carries them as wheels in .whl/. Here every one of them is installed, so a `sitecustomize`
hides them unless they come from the folder the script installs the carried wheels into: then
`--dry-run` installs the wheels exactly as the GPU run does and collects every test and benchmark
that run executes. A module that imports a package the image lacks and the wheels do not carry, a
collection error, or a plan over 9 minutes fails here, not in a rare GPU lease.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOT_ON_THE_IMAGE = ("diffusers", "torchattacks", "imagecorruptions", "mlxtend", "importlib_metadata")
PLAN_LIMIT_S = 540  # the steps' limits with the build: under 9 minutes of a 10-minute command

SITECUSTOMIZE = f'''
import importlib.abc, importlib.machinery, os, sys

HIDDEN = {NOT_ON_THE_IMAGE!r}
SITE = os.environ.get("GPU_SITE", "")


class OnlyCarried(importlib.abc.MetaPathFinder):
    """Top-level packages the GPU image lacks resolve only from the carried-wheel folder."""

    def find_spec(self, name, path, target=None):
        if path is not None or name not in HIDDEN:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, [SITE]) if os.path.isdir(SITE) else None
        if spec is None:
            raise ModuleNotFoundError(f"No module named {{name!r}} (not on the GPU image)", name=name)
        return spec


sys.meta_path.insert(0, OnlyCarried())
'''


@pytest.fixture(scope="module")
def image_like(tmp_path_factory):
    """An environment whose Python sees only the GPU image's packages plus what the wheels carry."""
    hider = tmp_path_factory.mktemp("hider")
    (hider / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = dict(
        os.environ,
        PYTHON=sys.executable,
        PYTHONPATH=str(hider),
        GPU_SITE=str(tmp_path_factory.mktemp("gpu-site") / "site"),
        WHEELS=str(tmp_path_factory.mktemp("wheels")),
    )
    env.pop("TRITON_INTERPRET", None)  # as on the GPU machine
    return env


def test_the_hider_hides_what_the_image_lacks(image_like):
    for name in NOT_ON_THE_IMAGE:
        result = subprocess.run(
            [sys.executable, "-c", f"import {name}"], env=image_like, capture_output=True, text=True
        )
        assert result.returncode != 0 and "not on the GPU image" in result.stderr, (
            f"{name} was importable: {result.stderr[-300:]}"
        )


def test_prepare_then_dry_run_collects_every_step(image_like, tmp_path):
    prepared = subprocess.run(
        ["bash", "scripts/gpu_check.sh", "--prepare"], cwd=ROOT, env=image_like, capture_output=True, text=True
    )
    assert prepared.returncode == 0, prepared.stdout[-2000:] + prepared.stderr[-2000:]
    wheels = sorted(path.name for path in Path(image_like["WHEELS"]).glob("*.whl"))
    for name in NOT_ON_THE_IMAGE:
        assert any(wheel.lower().startswith(name.lower()) for wheel in wheels), (
            f"--prepare did not fetch {name}: {wheels}"
        )
    size = sum(path.stat().st_size for path in Path(image_like["WHEELS"]).glob("*.whl"))
    assert size < 32 * 2**20, f"the carried wheels take {size / 2**20:.1f} MiB of the device tool's 64 MiB"

    dry = subprocess.run(
        ["bash", "scripts/gpu_check.sh", "--dry-run", str(tmp_path / "out")],
        cwd=ROOT,
        env=image_like,
        capture_output=True,
        text=True,
    )
    output = dry.stdout + dry.stderr
    assert dry.returncode == 0, output[-4000:]
    assert "FAILED" not in output and "every step ok" in output, output[-4000:]
    for step in ("tests", "sanitizer", "bench", "host", "pipeline", "profile"):
        assert re.search(rf"^{step}: ok", output, re.M), f"step {step} missing from the dry run:\n{output[-3000:]}"
    collected = [int(count) for count in re.findall(r"^(\d+)(?:/\d+)? tests? (?:collected|selected)", output, re.M)]
    assert len(collected) >= 3 and all(count > 0 for count in collected), f"a step collects nothing:\n{output[-3000:]}"
    total = int(re.search(r"sum of limits: (\d+) s", output).group(1))
    assert total <= PLAN_LIMIT_S, f"the plan's limits add up to {total} s, over {PLAN_LIMIT_S} s"


def test_an_unknown_step_is_refused():
    result = subprocess.run(
        ["bash", "scripts/gpu_check.sh", "--steps", "tests,nonsense", "/tmp/unused"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "unknown step nonsense" in result.stdout
