"""A wheel built with `pip wheel .` carries clarep_fast._C and clarep_fast.kernels, and they import."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_wheel_carries_extension_and_kernels(tmp_path):
    environment = dict(os.environ, CLAREP_FAST_CUDA="0", MAX_JOBS="2")  # CPU build keeps this under a minute
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-build-isolation", "--no-deps", "-q", "-w", str(tmp_path / "dist")],
        capture_output=True, text=True, env=environment, timeout=900,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("clarep_fast-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert any(name.startswith("clarep_fast/_C") and name.endswith(".so") for name in names), names
    assert "clarep_fast/kernels/cka.py" in names
    assert "clarep_fast/pipeline/cli.py" in names and "clarep_fast/pipeline/clarid/search.py" in names, (
        "the pipeline layer is missing"
    )
    assert "clarep_fast/pipeline/assets/teacher/config.json" in names
    assert "clarep_fast/pipeline/assets/teacher/diffusion_pytorch_model.safetensors" in names
    assert not any(name.startswith("kernels/") for name in names), "a top-level `kernels` package leaked"
    target = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    probe = "import clarep_fast, clarep_fast._C, clarep_fast.kernels, clarep_fast.pipeline.cli, torch; torch.ops.clarep_fast_C.cka_stats.default; print(clarep_fast.__file__)"
    result = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=str(target)),
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert str(target) in result.stdout
