"""The processes of one job: who this one is, and how many there are.

Training, evaluation and gallery embedding all run either as one process or as several launched
by `torchrun` (or `accelerate launch`), so this sits outside any one of them: `join_world()`
joins the process group the launcher set up, and `World` says this process's rank, how a batch is
shared out, and waits for the others.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0  # the GPU of this process on its machine

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def slice_of(self, batch: list[int]) -> tuple[list[int], int]:
        """This process's contiguous share of a global batch, and the offset of its first row.

        Shares differ by at most one row, so a last batch smaller than the world still splits.
        """
        base, extra = divmod(len(batch), self.size)
        start = self.rank * base + min(self.rank, extra)
        length = base + (1 if self.rank < extra else 0)
        return batch[start : start + length], start

    def padded_slice_of(self, batch: list[int]) -> tuple[list[int], int, int]:
        """`slice_of`, padded to the largest share by repeating rows: (rows, offset, real rows).

        With FSDP every process must run the same passes in step, so every process gets as many
        rows as the largest share; only the first `real rows` count (see ContrastiveStep).
        """
        local, offset = self.slice_of(batch)
        largest = -(-len(batch) // self.size)
        filler = (local or batch)[:1] * (largest - len(local))
        return local + filler, offset, len(local)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def any_of(self, flag: bool) -> bool:
        """Whether `flag` holds in any process: a decision every process takes together, such as
        stopping when each one's clock says the time is up (clocks differ a little)."""
        return any(self.gather_objects(bool(flag)))

    def gather_objects(self, value: Any) -> list[Any]:
        """Every process's `value`, in rank order (picklable objects; a one-item list alone)."""
        if not self.distributed:
            return [value]
        gathered: list[Any] = [None] * self.size
        dist.all_gather_object(gathered, value)
        return gathered


def join_world() -> World:
    """Join the process group when launched by torchrun (or accelerate on GPUs); else one process.

    The launcher sets WORLD_SIZE, RANK, LOCAL_RANK and the rendezvous address; NCCL carries the
    collectives between GPUs, gloo between CPU processes.
    """
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend, init_method="env://")
    return World(
        rank=dist.get_rank(), size=dist.get_world_size(), local_rank=int(os.environ.get("LOCAL_RANK", 0))
    )
