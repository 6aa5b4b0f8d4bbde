"""`import clarep_fast` imports no triton, loads no compiled extension, initializes no CUDA, and
imports nothing of the pipeline or its dependencies (the kernel library needs torch alone)."""

import subprocess
import sys

PROBE = """
import sys
import torch
import clarep_fast
assert "triton" not in sys.modules, "triton was imported"
assert "clarep_fast._C" not in sys.modules, "the compiled extension was loaded"
assert "clarep_fast.kernels" not in sys.modules, "the Triton kernels were imported"
assert not torch.cuda.is_initialized(), "CUDA was initialized"
for module in ("clarep_fast.pipeline", "diffusers", "timm", "torchattacks", "matplotlib", "scipy"):
    assert module not in sys.modules, f"{module} was imported"
clarep_fast.available_backends()  # asking what exists may load the extension, but never triton
assert "triton" not in sys.modules, "available_backends imported triton"
assert not torch.cuda.is_initialized(), "available_backends initialized CUDA"
print("lean")
"""


def test_import_is_lean():
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "lean"
