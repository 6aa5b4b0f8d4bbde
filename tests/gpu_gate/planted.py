"""Kernels with one planted fault each, for tests/gpu_gate/test_gate.py: the gate must name every one.

python -m tests.gpu_gate.planted     # (no TRITON_INTERPRET) one verdict line per kernel
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _breaks_out_of_a_loop(x_ptr, out_ptr, BLOCK: tl.constexpr):
    """Python runs `break` (so does the interpreter); Triton's compiler has no `break`."""
    offsets = tl.arange(0, BLOCK)
    total = tl.zeros([BLOCK], dtype=tl.float32)
    for step in range(4):
        total += tl.load(x_ptr + offsets)
        if step == 2:
            break
    tl.store(out_ptr + offsets, total)


@triton.jit
def _huge_shared_tiles(a_ptr, b_ptr, c_ptr, BLOCK: tl.constexpr):
    """A 256×256 fp32 tl.dot: its operands are staged in shared memory, 256 KiB each."""
    rows = tl.arange(0, BLOCK)
    a = tl.load(a_ptr + rows[:, None] * BLOCK + rows[None, :])
    b = tl.load(b_ptr + rows[:, None] * BLOCK + rows[None, :])
    tl.store(c_ptr + rows[:, None] * BLOCK + rows[None, :], tl.dot(a, b))


@triton.jit
def _spills(x_ptr, out_ptr, BLOCK: tl.constexpr):
    """A 64×64 fp64 tile kept alive across a reduction by one warp: 128 doubles per thread."""
    rows = tl.arange(0, BLOCK)
    tile = tl.load(x_ptr + rows[:, None] * BLOCK + rows[None, :])
    scaled = tile * tl.sum(tile, axis=0)[None, :] + tl.sum(tile * tile, axis=1)[:, None]
    tl.store(out_ptr + rows[:, None] * BLOCK + rows[None, :], scaled)


def launch_all() -> None:
    """One launch of each (run by the interpreter in the tests, recorded by the gate here)."""
    x = torch.randn(64)
    _breaks_out_of_a_loop[(1,)](x, torch.empty(64), BLOCK=64)
    square = torch.randn(256, 256)
    _huge_shared_tiles[(1,)](square, square, torch.empty(256, 256), BLOCK=256)
    tile = torch.randn(64, 64, dtype=torch.float64)
    _spills[(1,)](tile, torch.empty(64, 64, dtype=torch.float64), BLOCK=64, num_warps=1)


if __name__ == "__main__":
    from scripts.gpu_gate.compile_triton import CompileError, compile_launch
    from scripts.gpu_gate.launches import recording
    from scripts.gpu_gate.limits import DEVICES, problems

    with recording() as launches:
        launch_all()
    functions = {
        "_breaks_out_of_a_loop": _breaks_out_of_a_loop,
        "_huge_shared_tiles": _huge_shared_tiles,
        "_spills": _spills,
    }
    for launch in launches:
        try:
            found = problems(compile_launch(launch, 90, functions[launch.kernel]), DEVICES[90])
        except CompileError as error:
            found = [f"does not compile: {error}"]
        print(f"{launch.kernel}: {'; '.join(found) or 'clean'}")
