"""torchrun support shared by the search and the distillation: rank, world size, barrier."""

from __future__ import annotations

import os

import torch


def join_process_group() -> tuple[int, int]:
    """(rank, world size) of this process: (0, 1) outside torchrun. Under torchrun the first call
    joins the process group (nccl on GPUs, gloo on CPUs) and makes this rank's GPU the current device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        if torch.cuda.is_available():
            # this rank's GPU becomes the current device: kernels that launch on the current device
            # (Triton's, NCCL's) would otherwise all run on GPU 0 with another GPU's pointers
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), world


def is_main_process() -> bool:
    """Rank 0 under torchrun (read from the environment: no process group needed), or a plain run."""
    return int(os.environ.get("RANK", "0")) == 0


def barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def default_device() -> str:
    """This rank's GPU under torchrun (LOCAL_RANK), the GPU, or the CPU."""
    return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu"
