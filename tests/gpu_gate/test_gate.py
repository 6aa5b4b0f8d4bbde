"""The GPU compile gate (scripts/gpu_gate): it passes on the tree, writes docs/gpu.md as committed,
and names each kind of fault planted in tests/gpu_gate/planted.py. Runs in subprocesses without
TRITON_INTERPRET: the compiler needs real @triton.jit functions, the interpreter replaces them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
ENV = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}


def _run(*args: str, timeout: int) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)


def test_the_gate_passes_and_docs_gpu_md_is_what_it_writes(tmp_path):
    pytest.importorskip("triton")
    written = tmp_path / "gpu.md"
    cuda = [] if shutil.which("nvcc") else ["--no-cuda"]
    result = _run("-m", "scripts.gpu_gate", "--write", str(written), *cuda, timeout=1500)
    output = result.stdout + result.stderr
    assert result.returncode == 0, "\n".join(line for line in output.splitlines() if "FAIL" in line)[-6000:]
    assert "gpu_gate: passed" in output
    if cuda:
        pytest.skip("nvcc is not on PATH: the CUDA kernels were not built, docs/gpu.md not compared")
    committed = (ROOT / "docs" / "gpu.md").read_text()
    assert written.read_text() == committed, (
        "docs/gpu.md is not what the gate writes now: regenerate it with "
        "`.venv/bin/python -m scripts.gpu_gate --write docs/gpu.md` and commit it"
    )


def test_the_gate_names_each_planted_fault():
    pytest.importorskip("triton")
    result = _run("-m", "tests.gpu_gate.planted", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    verdicts = dict(line.split(": ", 1) for line in result.stdout.splitlines() if ": " in line)
    assert "does not compile" in verdicts["_breaks_out_of_a_loop"] and "Break" in verdicts["_breaks_out_of_a_loop"]
    assert "of shared memory per block, over the 232,448 B" in verdicts["_huge_shared_tiles"]
    assert verdicts["_spills"].startswith("spills:") and "local stores" in verdicts["_spills"]


def test_the_interpreter_runs_the_kernel_the_compiler_rejects():
    """Why the gate exists: the CPU tests' interpreter accepts what the GPU compiler refuses."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs the Triton interpreter (set by tests/conftest.py without a GPU)")
    from tests.gpu_gate.planted import _breaks_out_of_a_loop

    x, out = torch.arange(64, dtype=torch.float32), torch.empty(64)
    _breaks_out_of_a_loop[(1,)](x, out, BLOCK=64)
    assert torch.equal(out, 3 * x)
