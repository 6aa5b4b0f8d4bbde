"""Read a cubin with the tools Triton's package carries (triton/backends/nvidia/bin): per function,
the resource line of ``cuobjdump --dump-resource-usage``, the launch bound of ``cuobjdump -elf``
(EIATTR_MAX_THREADS) and instruction counts from ``cuobjdump -sass``."""

from __future__ import annotations

import os
import re
import subprocess
from collections import Counter
from pathlib import Path
from typing import NamedTuple

from scripts.gpu_gate.limits import Resources

_RESOURCE = re.compile(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")
_OPCODE = re.compile(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)")
TENSOR_CORE = ("HMMA", "HGMMA", "DMMA", "IMMA", "UTCHMMA", "UTCQMMA")


def tool(name: str) -> str:
    import triton

    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: this Triton build carries no {name}")
    return str(path)


class FunctionUse(NamedTuple):
    registers: int
    stack: int
    static_shared: int
    local: int
    max_threads: int  # the launch bound (0: none declared)
    opcodes: Counter

    def resources(self, dynamic_shared: int, threads: int) -> Resources:
        """This function's use, with what its launch adds: dynamic shared memory and block size."""
        return Resources(
            registers=self.registers,
            stack=self.stack,
            local=self.local,
            spill_stores=count(self.opcodes, "STL"),
            spill_loads=count(self.opcodes, "LDL"),
            static_shared=self.static_shared,
            dynamic_shared=dynamic_shared,
            threads=threads,
            tensor_core=count(self.opcodes, *TENSOR_CORE),
            vector_loads=vector_loads(self.opcodes),
            scalar_loads=scalar_loads(self.opcodes),
        )


def _run(*command: str) -> str:
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout


def read(cubin: Path) -> dict[str, FunctionUse]:
    """Every function of ``cubin`` by its (mangled) name."""
    usage = {}
    function = None
    for line in _run(tool("cuobjdump"), "--dump-resource-usage", os.fspath(cubin)).splitlines():
        line = line.strip()
        if line.startswith("Function "):
            function = line.removeprefix("Function ").rstrip(":")
        elif function and (match := _RESOURCE.search(line)):
            usage[function] = tuple(int(value) for value in match.groups())
            function = None
    bounds, section = {}, None
    lines = _run(tool("cuobjdump"), "-elf", os.fspath(cubin)).splitlines()
    for index, line in enumerate(lines):
        if line.startswith(".nv.info."):
            section = line.removeprefix(".nv.info.").strip()
        elif section and "EIATTR_MAX_THREADS" in line:
            values = next(text for text in lines[index + 1 : index + 4] if "Value:" in text)
            bounds[section] = int(values.split("Value:")[1].split()[0], 16)
    opcodes, function = {}, None
    for line in _run(tool("cuobjdump"), "-sass", os.fspath(cubin)).splitlines():
        stripped = line.strip()
        if stripped.startswith("Function : "):
            function = stripped.removeprefix("Function : ")
            opcodes[function] = Counter()
        elif function and (match := _OPCODE.search(line)):
            opcodes[function][match.group(1)] += 1
    return {
        name: FunctionUse(registers, stack, shared, local, bounds.get(name, 0), opcodes.get(name, Counter()))
        for name, (registers, stack, shared, local) in usage.items()
    }


def count(opcodes: Counter, *prefixes: str) -> int:
    return sum(n for opcode, n in opcodes.items() if opcode.split(".")[0] in prefixes)


def vector_loads(opcodes: Counter) -> int:
    """Global loads of 64 or 128 bits per thread (LDG.E.64, LDG.E.128, LDG.E.128.CONSTANT, ...)."""
    return sum(n for opcode, n in opcodes.items() if opcode.startswith("LDG") and (".64" in opcode or ".128" in opcode))


def scalar_loads(opcodes: Counter) -> int:
    return count(opcodes, "LDG") - vector_loads(opcodes)
