"""What one block may use on each GPU architecture, and the checks a compiled kernel must pass.

Figures from NVIDIA's CUDA C++ Programming Guide, "Technical Specifications per Compute Capability"
(8.0: A100; 9.0: H100/H200; 10.0: B200): 64 K 32-bit registers per SM and per block, at most 255
per thread, allocated per warp in units of 256; shared memory per SM and the most one block may
opt into (above 48 KiB of dynamic shared memory a launch must set
cudaFuncAttributeMaxDynamicSharedMemorySize; Triton's launcher does, csrc/ must); 1 KiB of each
block's shared memory is reserved by the system.
"""

from __future__ import annotations

from dataclasses import dataclass

KIB = 1024
DEFAULT_DYNAMIC_SHARED = 48 * KIB  # what a launch gets without opting in


@dataclass(frozen=True)
class Device:
    arch: int  # compute capability × 10
    name: str
    registers_per_sm: int = 65536
    registers_per_block: int = 65536
    registers_per_thread: int = 255
    register_unit: int = 256  # registers are allocated per warp in these units
    shared_per_sm: int = 228 * KIB
    shared_per_block: int = 227 * KIB  # with the opt-in
    reserved_shared_per_block: int = 1 * KIB
    threads_per_sm: int = 2048
    blocks_per_sm: int = 32


DEVICES = {
    80: Device(80, "sm_80 (A100)", shared_per_sm=164 * KIB, shared_per_block=163 * KIB),
    90: Device(90, "sm_90 (H100, H200)"),
    100: Device(100, "sm_100 (B200)"),
}


@dataclass(frozen=True)
class Resources:
    """One compiled kernel's use, read from its cubin (cuobjdump) and SASS."""

    registers: int  # per thread
    stack: int  # bytes of stack frame per thread
    local: int  # bytes of local memory per thread
    spill_stores: int  # STL instructions in the SASS: stores to local memory
    spill_loads: int  # LDL instructions
    static_shared: int  # bytes
    dynamic_shared: int  # bytes the launch requests (Triton: metadata.shared; CUDA: the op's cap)
    threads: int  # per block
    tensor_core: int  # HMMA / HGMMA / DMMA / IMMA instructions
    vector_loads: int  # LDG.E.64 / LDG.E.128 (and their .U16/.CONSTANT forms)
    scalar_loads: int  # other global loads (LDG)

    def resident_blocks(self, device: Device) -> int:
        """Blocks of this kernel one SM holds at once (0: the launch cannot run)."""
        warps = -(-self.threads // 32)
        per_warp = -(-max(self.registers, 1) * 32 // device.register_unit) * device.register_unit
        by_registers = (
            device.registers_per_sm // (per_warp * warps) if per_warp * warps <= device.registers_per_block else 0
        )
        shared = self.static_shared + self.dynamic_shared + device.reserved_shared_per_block
        by_shared = (
            device.shared_per_sm // shared if self.static_shared + self.dynamic_shared <= device.shared_per_block else 0
        )
        by_threads = device.threads_per_sm // self.threads if self.threads else 0
        return min(by_registers, by_shared, by_threads, device.blocks_per_sm)


CEILING_MARGIN = 16  # registers: a kernel closer to 255 than this is one change away from spilling
PARKED_STACK = 8  # bytes: one 64-bit value
PARKED_REGISTERS = 128  # at most: half the ceiling


def parks_one_value(resources: Resources) -> bool:
    """ptxas sometimes parks one long-lived value on the stack (8 B, one store, a load or two, outside
    the loops) in a kernel far below the register ceiling: seen at 32-80 registers, so it is not
    register pressure, and it costs a few instructions per program. Listed in docs/gpu.md, not failed."""
    return (
        0 < resources.stack <= PARKED_STACK
        and resources.local == 0
        and resources.spill_stores <= 2
        and resources.spill_loads <= 4
        and resources.registers <= PARKED_REGISTERS
    )


def problems(resources: Resources, device: Device) -> list[str]:
    """Why this kernel must not ship as compiled for ``device``: a spill (other than one parked
    value), a block that cannot be resident, shared memory over the block limit, the register
    ceiling (a kernel there is one variable away from spilling)."""
    found = []
    spills = resources.spill_stores or resources.spill_loads or resources.local or resources.stack
    if spills and not parks_one_value(resources):
        found.append(
            f"spills: {resources.spill_stores} local stores, {resources.spill_loads} local loads, "
            f"{resources.stack} B stack, {resources.local} B local memory per thread"
        )
    if resources.registers >= device.registers_per_thread - CEILING_MARGIN:
        found.append(
            f"{resources.registers} registers per thread: within {CEILING_MARGIN} of the ceiling of {device.registers_per_thread}"
        )
    shared = resources.static_shared + resources.dynamic_shared
    if shared > device.shared_per_block:
        found.append(
            f"{shared:,} B of shared memory per block, over the {device.shared_per_block:,} B of {device.name}"
        )
    elif resources.resident_blocks(device) < 1:
        found.append(
            f"no block of {resources.threads} threads at {resources.registers} registers and {shared:,} B shared "
            f"can be resident on {device.name}"
        )
    return found
