"""Processes: where this one stands among torchrun's, joining and leaving the process group."""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from tokenlm.core.runtime import cpu_threads, pick_device


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: its rank among ``world_size`` and the device it trains on."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    device: torch.device

    @classmethod
    def single(cls, device: str | torch.device = "cpu") -> DistContext:
        """One process alone on ``device``, whatever the environment says (models trained
        inside a stage that is not itself launched by torchrun)."""
        return cls(0, 1, 0, 1, torch.device(device))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()


def setup_distributed(device: str | None = None) -> DistContext:
    """Read torchrun's environment and join the process group (gloo on CPU, nccl on CUDA).

    Without torchrun this is one process of rank 0 (torch's thread setting is left alone).
    Calling it twice is harmless. Under torchrun on CPU the cores are shared out between the
    processes of a machine, so that 2 ranks on 2 cores do not fight over 4 threads.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size)))
    chosen = pick_device(device)
    if chosen.type == "cuda" and chosen.index is None:
        chosen = torch.device("cuda", local_rank)
    if chosen.type == "cuda":
        torch.cuda.set_device(chosen)
    elif local_world > 1:
        torch.set_num_threads(max(1, cpu_threads() // local_world))
    if world_size > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if chosen.type == "cuda" else "gloo"
        kwargs = {"device_id": chosen} if backend == "nccl" else {}
        torch.distributed.init_process_group(backend=backend, rank=rank, world_size=world_size, **kwargs)
    return DistContext(rank, world_size, local_rank, local_world, chosen)


def cleanup_distributed() -> None:
    """Leave the process group (if this process joined one)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


@contextmanager
def distributed_stage(stage, device: str | None):
    """``(work_dir, DistContext)`` for training a stage, alone or as one rank under torchrun:
    rank 0 prepares the work folder (it may wipe a stale one) before any rank reads it, and
    the process group is left at the end."""
    dist = setup_distributed(device)
    try:
        work = stage.start() if dist.is_main else None
        dist.barrier()
        yield work or stage.work_dir, dist
    finally:
        if dist.distributed:
            cleanup_distributed()


def all_reduce_sum(values: list[float], ctx: DistContext) -> list[float]:
    """Element-wise sum over the ranks (the values themselves when alone)."""
    if not ctx.distributed:
        return values
    backend_device = ctx.device if torch.distributed.get_backend() == "nccl" else torch.device("cpu")
    tensor = torch.tensor(values, dtype=torch.float64, device=backend_device)
    torch.distributed.all_reduce(tensor)
    return tensor.tolist()
