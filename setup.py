"""Build clarep_fast and its compiled extension clarep_fast._C.

  C++ CPU kernels (csrc/<op>/<op>.cpp and <op>_cpu.cpp, OpenMP, -O3, no debug info): always.
  CUDA kernels (csrc/<op>/<op>_cuda.cu): when a CUDA toolkit and a CUDA build of torch are found.
Environment:
  CLAREP_FAST_CUDA=auto|1|0   auto (default) builds CUDA when possible; 1 requires it; 0 skips it.
  TORCH_CUDA_ARCH_LIST        honoured; defaults to 9.0 (H100/H200) when no GPU is visible.
  CUDA_HOME                   toolkit root (holding bin/nvcc and lib64/libcudart*); found from nvcc if unset.
  MAX_JOBS                    parallel compile jobs (ninja), honoured by torch's BuildExtension.
Build with `pip install -e . --no-build-isolation` (build isolation cannot see the installed torch).
"""

import os
import shutil
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent


def _find_cuda_home() -> str | None:
    """The toolkit root: $CUDA_HOME, else the real location of nvcc (a wrapper script may sit on PATH)."""
    if os.environ.get("CUDA_HOME"):
        return os.environ["CUDA_HOME"]
    for candidate in ("/usr/local/cuda",):
        if (Path(candidate) / "bin" / "nvcc").exists():
            return candidate
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    root = Path(nvcc).resolve().parent.parent
    return (
        str(root)
        if (root / "bin" / "nvcc").exists() and any((root / lib).exists() for lib in ("lib64", "lib"))
        else None
    )


def _want_cuda() -> bool:
    mode = os.environ.get("CLAREP_FAST_CUDA", "auto").strip().lower()
    if mode not in ("auto", "1", "0"):
        raise SystemExit(f"CLAREP_FAST_CUDA must be auto, 1 or 0, got {mode!r}")
    if mode == "0":
        return False
    cuda_home = _find_cuda_home()
    import torch

    problem = None
    if torch.version.cuda is None:
        problem = f"torch {torch.__version__} is a CPU-only build"
    elif cuda_home is None:
        problem = "no CUDA toolkit found (set CUDA_HOME to the folder holding bin/nvcc)"
    if problem:
        if mode == "1":
            raise SystemExit(f"CLAREP_FAST_CUDA=1 but CUDA cannot be built: {problem}")
        print(f"clarep_fast: building without CUDA: {problem}")
        return False
    os.environ["CUDA_HOME"] = cuda_home  # torch.utils.cpp_extension reads it at import
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = "9.0"
    return True


def _extensions():
    with_cuda = _want_cuda()
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    cxx_flags = ["-O3", "-g0", "-fopenmp", "-std=c++20"]  # torch >= 2.14 headers need C++20
    # Every op is a folder csrc/<op>/ that registers itself with the PyTorch dispatcher: adding
    # one needs no edit here. <op>.cpp and <op>_cpu.cpp always; <op>_cuda.cu with CUDA.
    sources = ["csrc/module.cpp"] + sorted(str(path.relative_to(ROOT)) for path in ROOT.glob("csrc/*/*.cpp"))
    cuda_sources = sorted(str(path.relative_to(ROOT)) for path in ROOT.glob("csrc/*/*.cu"))
    if with_cuda:
        extension = CUDAExtension(
            "clarep_fast._C",
            sources + cuda_sources,
            define_macros=[("WITH_CUDA", None)],
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "-lineinfo"]},
            extra_link_args=["-fopenmp"],
        )
    else:
        extension = CppExtension(
            "clarep_fast._C", sources, extra_compile_args={"cxx": cxx_flags}, extra_link_args=["-fopenmp"]
        )
    return [extension], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()

setup(
    name="clarep_fast",
    version="0.1.0",
    description="Fused kernels for canonical latent representations (CLAReps) and CaDistill",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8") if (ROOT / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["clarep_fast", "clarep_fast.*"]) + ["clarep_fast.kernels"],
    package_dir={"clarep_fast": "clarep_fast", "clarep_fast.kernels": "kernels"},
    package_data={"clarep_fast": ["pipeline/assets/*/*.json", "pipeline/assets/*/*.safetensors"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    # The kernel library needs torch alone; the pipeline (CLARID, CaDistill, evaluation, the CLI's
    # pipeline commands) is the [pipeline] extra. torchattacks pins an old `requests` it never imports:
    # scripts/setup.sh installs it with --no-deps (requirements-nodeps.txt), and imagecorruptions too (it
    # asks for the GUI OpenCV; the extra lists the headless one).
    install_requires=["torch>=2.4", "numpy"],
    extras_require={
        "triton": ["triton"],
        "pipeline": [
            "diffusers",
            "timm",
            "torchvision",
            "torchattacks",
            "matplotlib",
            "scipy",
            "safetensors",
            "pillow",
            "tqdm",
            "scikit-image",
            "opencv-python-headless",
            "setuptools<81",
        ],
        "test": ["pytest", "pytest-benchmark", "hypothesis"],
    },
    entry_points={"console_scripts": ["clarep-fast=clarep_fast.pipeline.cli:main"]},
    zip_safe=False,
)
