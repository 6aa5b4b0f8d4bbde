"""Compile one recorded Triton launch for a GPU architecture, without a GPU, and read its resources.

``triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=GPUTarget("cuda", arch, 32))``
runs the whole pipeline (TTIR → TTGIR → LLVM IR → PTX → cubin with the ptxas Triton carries); the
cubin is then read with cuobjdump (gpu_gate/cubin.py). sm_90 compiles as sm_90a, as on an H100.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from scripts.gpu_gate import cubin
from scripts.gpu_gate.launches import Launch
from scripts.gpu_gate.limits import Resources


class CompileError(Exception):
    """The compiler rejected a specialization the interpreter may well have run."""


def compile_launch(launch: Launch, arch: int, function=None) -> Resources:
    from triton import compile as triton_compile
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend

    target = GPUTarget("cuda", arch, 32)
    options = make_backend(target).parse_options(dict(launch.options))
    names = [name for name, _ in launch.signature]
    source = ASTSource(
        fn=function or launch.function,
        signature=dict(launch.signature),
        constexprs={(names.index(name),): value for name, value in launch.constexprs},
        attrs={path: [list(attr) for attr in attrs] for path, attrs in launch.attrs},
    )
    try:
        compiled = triton_compile(source, target=target, options=options.__dict__)
    except Exception as error:  # Triton raises CompilationError, RuntimeError (MLIR passes), ptxas failures
        message = " ".join(str(error).split())
        raise CompileError(f"{type(error).__name__}: {message[-600:]}") from error
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "kernel.cubin"
        path.write_bytes(compiled.asm["cubin"])
        (use,) = cubin.read(path).values()
    return use.resources(dynamic_shared=compiled.metadata.shared, threads=options.num_warps * 32)


def compile_job(job: tuple[Launch, int]) -> tuple[Resources | None, str | None]:
    """(launch, arch) -> (resources, None), or (None, the compiler's complaint); for a process pool."""
    launch, arch = job
    try:
        return compile_launch(launch, arch), None
    except CompileError as error:
        return None, str(error)
