"""docs/gpu.md, rendered from one gate run (python -m scripts.gpu_gate --write docs/gpu.md)."""

from __future__ import annotations

from scripts.gpu_gate.limits import DEVICES, parks_one_value
from scripts.gpu_gate.notes import FOOTER, HEADER, toolchain


def _triton_rows(launches, results, archs):
    yield (
        "| kernel | specialization | "
        + " | ".join(f"sm_{a} regs / blocks per SM" for a in archs)
        + " | shared B (static + dynamic, sm_90) | tensor-core / vector / scalar loads (sm_90) |"
    )
    yield "|---|---|" + "---:|" * len(archs) + "---:|---|"
    for launch in launches:
        cells = []
        for arch in archs:
            resources, error = results[(launch, arch)]
            if error:
                cells.append("does not compile")
            else:
                parked = " (parks 8 B)" if parks_one_value(resources) else ""
                cells.append(f"{resources.registers} / {resources.resident_blocks(DEVICES[arch])}{parked}")
        reference = results.get((launch, 90), results[(launch, archs[0])])[0]
        shared = f"{reference.static_shared} + {reference.dynamic_shared}" if reference else "–"
        loads = f"{reference.tensor_core} / {reference.vector_loads} / {reference.scalar_loads}" if reference else "–"
        yield f"| `{launch.kernel}` | {launch.label()} | " + " | ".join(cells) + f" | {shared} | {loads} |"


def _cuda_rows(cuda, archs):
    built = [a for a in archs if a in cuda]
    if not built:
        return
    yield (
        "| source | kernel | threads | "
        + " | ".join(f"sm_{a} regs / blocks per SM" for a in built)
        + " | shared B (static + dynamic cap) | vector / scalar loads (sm_90) |"
    )
    yield "|---|---|---:|" + "---:|" * len(built) + "---:|---|"
    for index, kernel in enumerate(cuda[built[0]]):
        per_arch = [cuda[a][index].resources for a in built]
        if any(r is None for r in per_arch):
            cells = ["no launch bound"] * len(built)
        else:
            cells = [f"{r.registers} / {r.resident_blocks(DEVICES[a])}" for r, a in zip(per_arch, built)]
        first = per_arch[-1]
        threads = first.threads if first else "–"
        shared = f"{first.static_shared} + {first.dynamic_shared}" if first else "–"
        loads = f"{first.vector_loads} / {first.scalar_loads}" if first else "–"
        yield f"| `{kernel.source}` | `{kernel.name}` | {threads} | " + " | ".join(cells) + f" | {shared} | {loads} |"


def render(launches, results, cuda, limits, archs) -> str:
    parts = [HEADER.format(toolchain=toolchain(), count=len(launches), archs=", ".join(f"sm_{a}" for a in archs))]
    parts.append("## Triton kernels\n")
    parts += list(_triton_rows(launches, results, archs))
    parts.append("\n## CUDA kernels (csrc/)\n")
    parts += list(_cuda_rows(cuda, archs)) or ["Not built in this run (no nvcc)."]
    parts.append("\n## Limits\n")
    parts += [f"- {line}" for line in limits]
    parts.append(FOOTER)
    return "\n".join(parts) + "\n"
