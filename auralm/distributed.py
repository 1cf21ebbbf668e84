"""One process or many under torchrun: which rank this is, on which device, and the few collectives recipes use.

    world = init_distributed("auto")   # reads torchrun's RANK / WORLD_SIZE / LOCAL_RANK; gloo on CPU, nccl on CUDA
    … DDP(model) when world.size > 1 …
    world.close()

Without torchrun it is a world of one and nothing is initialised.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from auralm.devices import resolve_device


@dataclass(frozen=True)
class World:
    rank: int
    size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0 writes logs, metrics and final outputs."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        """The sum over ranks of a tensor (a copy; the same tensor in a world of one)."""
        if self.size == 1:
            return value
        value = value.detach().clone()
        dist.all_reduce(value)
        return value

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean over ranks of a tensor."""
        return self.sum(value) / self.size

    def gather(self, value: object) -> list[object]:
        """Every rank's picklable value, in rank order (for counts and small reports)."""
        if self.size == 1:
            return [value]
        values: list[object] = [None] * self.size
        dist.all_gather_object(values, value)
        return values

    def close(self) -> None:
        if self.size > 1 and dist.is_initialized():
            dist.destroy_process_group()


def init_distributed(device: str = "auto") -> World:
    """device: "auto" (`auralm.devices`' rule: CUDA when there is one), "cpu" or "cuda". Under torchrun each rank takes
    GPU LOCAL_RANK and the process group starts (nccl on CUDA, gloo on CPU)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = resolve_device(device).type == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("device cuda was asked for, but no CUDA GPU is available")
    chosen = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(chosen)
    if size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", rank=rank, world_size=size)
    return World(rank, size, chosen)
