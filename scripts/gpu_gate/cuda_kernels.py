"""Build every CUDA kernel of csrc/ for a GPU architecture with nvcc (no GPU needed) and read each
kernel's resources from the cubin. Only the raw kernel sources (csrc/<op>/<op>_cuda.cu: no torch
headers) are compiled, exactly as setup.py compiles them, into a scratch folder: what
scripts/setup.sh installs does not change.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import NamedTuple

from scripts.gpu_gate import cubin
from scripts.gpu_gate.limits import Resources

ROOT = Path(__file__).resolve().parents[2]
SETUP_NVCC_FLAGS = ("-O3", "-lineinfo", "-std=c++17")  # setup.py's nvcc flags (torch's BuildExtension adds its own)


class CudaKernel(NamedTuple):
    source: str  # "csrc/cka/cka_cuda.cu"
    name: str  # demangled, e.g. "cka_stats_kernel<float>"
    resources: Resources | None  # None: no launch bound declared
    dynamic_cap: int  # bytes of dynamic shared memory its launches may ask for


def sources() -> list[Path]:
    return sorted((ROOT / "csrc").glob("*/*_cuda.cu"))


def nvcc() -> str | None:
    return shutil.which("nvcc") or (
        os.path.join(os.environ["CUDA_HOME"], "bin", "nvcc") if "CUDA_HOME" in os.environ else None
    )


def _flags() -> tuple[str, ...]:
    """What a user's build passes: setup.py's flags and torch's BuildExtension's common ones."""
    from torch.utils.cpp_extension import COMMON_NVCC_FLAGS

    return (*SETUP_NVCC_FLAGS, *COMMON_NVCC_FLAGS)


def _demangle(names: list[str]) -> list[str]:
    """ "void clarep_fast::(anonymous namespace)::cka_stats_kernel<float>(float const*, ...)" -> "cka_stats_kernel<float>"."""
    output = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()
    plain = (re.sub(r"^void |clarep_fast::|\(anonymous namespace\)::", "", line) for line in output)
    return [name[: name.index("(")] if "(" in name else name for name in plain]


def _dynamic_kernels(source: Path) -> set[str]:
    """Kernels whose body declares `extern __shared__` (their launches pass a dynamic size)."""
    text = source.read_text()
    found = set()
    for match in re.finditer(r"__global__\s+void\s+(?:__launch_bounds__\([^)]*\)\s+)?(\w+)\s*\(", text):
        end = text.find("__global__", match.end())
        if "extern __shared__" in text[match.end() : end if end > 0 else len(text)]:
            found.add(match.group(1))
    return found


def build(arch: int, dynamic_caps: dict[str, int]) -> list[CudaKernel]:
    """Every kernel of every csrc/*/*_cuda.cu, compiled for sm_<arch>. ``dynamic_caps``: per source
    stem (``project_out_cuda``), the dynamic shared memory its launches are limited to."""
    compiler = nvcc()
    if compiler is None:
        raise FileNotFoundError("nvcc is not on PATH (nor under $CUDA_HOME/bin): the CUDA kernels cannot be built")
    kernels = []
    with tempfile.TemporaryDirectory() as folder:
        for source in sources():
            target = Path(folder) / f"{source.stem}.sm{arch}.cubin"
            command = [
                compiler,
                "-cubin",
                *_flags(),
                f"-gencode=arch=compute_{arch},code=sm_{arch}",
                "-o",
                str(target),
                str(source),
            ]
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode != 0:
                raise RuntimeError(f"nvcc failed on {source.relative_to(ROOT)} for sm_{arch}:\n{result.stderr[-2000:]}")
            functions = cubin.read(target)
            mangled = sorted(functions)
            dynamic = _dynamic_kernels(source)
            for raw, name in zip(mangled, _demangle(mangled)):
                use = functions[raw]
                base = re.sub(r"<.*", "", name).split("::")[-1]
                cap = dynamic_caps.get(source.stem, 0) if base in dynamic else 0
                resources = use.resources(dynamic_shared=cap, threads=use.max_threads) if use.max_threads else None
                kernels.append(CudaKernel(str(source.relative_to(ROOT)), name, resources, cap))
    return kernels
