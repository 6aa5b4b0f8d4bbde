"""Every launch the Triton backend makes on a GPU, recorded from the launchers' own code.

``recorded_launches()`` runs each op table row's ``launch_cases`` (every block and flag choice its
launchers can make, over fp16/bf16/fp32/fp64, up to the documented limits) through the public op
on the triton backend, with CPU tensors and no interpreter. Each ``kernel[grid](...)`` call is
bound exactly as Triton's JIT binds it for a GPU (its own signature/specialization code: pointer
dtypes, ints equal to 1 or divisible by 16, constexprs, num_warps) and recorded instead of run;
the stage then returns what the op's torch reference stage of the same name returns, so the op
goes on (backward included) as it would on a GPU. A launcher that gains a choice is covered as soon
as a case reaches it; one no case reaches is named by ``unlaunched_kernels``.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import pkgutil
from dataclasses import dataclass
from typing import Iterator

import torch

from clarep_fast import backends, use_backend
from clarep_fast.ops import OPS
from clarep_fast.ops.spec import grad_leaves

KERNEL_PACKAGE = "clarep_fast.kernels"


@dataclass(frozen=True)
class Launch:
    """One specialization of one kernel, as Triton's JIT would compile it."""

    kernel: str  # "<module>.<kernel>", e.g. "cka._cka_stats_kernel"
    signature: tuple[tuple[str, str], ...]  # (argument, Triton type: "*fp32", "i32", "constexpr", ...)
    constexprs: tuple[tuple[str, object], ...]  # (argument, value): declared constexprs, and ints equal to 1
    declared: tuple[str, ...]  # the kernel's declared tl.constexpr parameters (block sizes, flags)
    attrs: tuple[tuple[tuple[int, ...], tuple], ...]  # (argument path, (("tt.divisibility", 16),))
    options: tuple[tuple[str, object], ...]  # the launch's compile options (num_warps, ...)

    @property
    def function(self):
        module, name = self.kernel.rsplit(".", 1)
        return getattr(importlib.import_module(f"{KERNEL_PACKAGE}.{module}"), name)

    def label(self) -> str:
        """The choices that tell specializations apart: constexprs, warps, pointer dtypes, int hints."""
        blocks = " ".join(
            f"{name}={value}" if name in self.declared else f"{name}==1" for name, value in self.constexprs
        )
        pointers = sorted({kind.removeprefix("*") for _, kind in self.signature if kind.startswith("*")})
        divisible = [
            self.signature[index][0]
            for (index, *_), attrs in self.attrs
            if attrs and self.signature[index][1][0] == "i"
        ]
        hints = f" ÷16:{','.join(divisible)}" if divisible else ""
        return f"{blocks} warps={dict(self.options).get('num_warps', 4)} {'/'.join(pointers)}{hints}".strip()


def kernel_functions() -> dict[str, object]:
    """Every @triton.jit function under kernels/ (launched kernels and the helpers they call)."""
    from triton.runtime.jit import JITFunction

    package = importlib.import_module(KERNEL_PACKAGE)
    found = {}
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{KERNEL_PACKAGE}.{info.name}")
        for name, value in vars(module).items():
            if isinstance(value, JITFunction) and value.fn.__module__ == module.__name__:
                found[f"{info.name}.{name}"] = value
    return found


@contextlib.contextmanager
def recording(arch: int = 90) -> Iterator[list[Launch]]:
    """Inside: every JIT kernel launch is bound for a ``cuda`` sm_<arch> target and recorded, not run."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import JITFunction, create_function_from_signature

    backend = make_backend(GPUTarget("cuda", arch, 32))
    names = {id(function): name for name, function in kernel_functions().items()}
    launches: list[Launch] = []
    binders = {}  # per kernel: Triton's generated argument binder (an exec'd function)
    original = JITFunction.run

    def record(self, *args, grid, warmup, **kwargs):
        binder = binders.get(id(self))
        if binder is None:
            binder = binders[id(self)] = create_function_from_signature(self.signature, self.params, backend)
        bound, specialization, options = binder(*args, **kwargs)
        options, signature, constexprs, attrs = self._pack_args(backend, kwargs, bound, specialization, options)
        arg_names = list(signature)
        launches.append(
            Launch(
                kernel=names.get(id(self), self.__name__),
                signature=tuple(signature.items()),
                constexprs=tuple((arg_names[path[0]], value) for path, value in sorted(constexprs.items())),
                declared=tuple(param.name for param in self.params if param.is_constexpr),
                attrs=tuple((path, tuple(tuple(a) for a in value)) for path, value in sorted(attrs.items())),
                options=tuple((key, kwargs[key]) for key in sorted(kwargs) if key not in arg_names),
            )
        )

    JITFunction.run = record
    try:
        yield launches
    finally:
        JITFunction.run = original


@contextlib.contextmanager
def stages_answered_by_the_reference() -> Iterator[None]:
    """The triton backend usable on CPU tensors, each stage launching (recorded) and then returning
    its reference stage's result: the stages share one contract (the op files write it down)."""
    original_on = backends.Kernels.on
    original_interpreting = backends._triton_interpreting

    def on(self, backend):
        stages = original_on(self, backend)
        if backend != "triton":
            return stages
        references = original_on(self, "torch")._asdict()

        def answered(name, launcher):
            def stage(*args, **kwargs):
                launcher(*args, **kwargs)
                return references[name](*args, **kwargs)

            return stage

        return stages._make(answered(name, launcher) for name, launcher in stages._asdict().items())

    backends.Kernels.on = on
    backends._triton_interpreting = lambda: True
    try:
        yield
    finally:
        backends.Kernels.on = original_on
        backends._triton_interpreting = original_interpreting


DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def run_case(spec, args, kwargs) -> None:
    """One call of the op, and its backward when an input requires grad."""
    out = spec.fused(*args, **kwargs)
    leaves = grad_leaves(args)
    if leaves:
        weights = torch.linspace(-1, 1, out.numel(), dtype=torch.float64).reshape(out.shape)
        torch.autograd.grad((out.double() * weights).sum(), leaves)


def recorded_launches(arch: int = 90) -> list[Launch]:
    """Every distinct launch of every op's launch cases, in first-seen order."""
    with recording(arch) as launches, stages_answered_by_the_reference(), use_backend("triton"):
        for spec in OPS:
            for dtype in DTYPES:
                for args, kwargs in spec.launch_cases(torch.device("cpu"), dtype):
                    run_case(spec, args, kwargs)
    return list(dict.fromkeys(launches))


def unlaunched_kernels(launches: list[Launch]) -> list[str]:
    """@triton.jit functions no launch reached, other than helpers a launched kernel calls."""
    launched = {launch.kernel for launch in launches}
    sources = {name: inspect.getsource(function.fn) for name, function in kernel_functions().items()}
    called = {
        name for name in sources if any(f"{name.split('.')[1]}(" in sources[user] for user in launched if user != name)
    }
    return sorted(set(sources) - launched - called)
