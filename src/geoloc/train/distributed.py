"""Several processes, one contrastive batch: who holds which rows, and gathering them with gradients.

Launch with `torchrun --standalone --nproc_per_node N -m geoloc train ...` (or `accelerate launch
--multi_gpu --num_processes N -m geoloc train ...` on GPUs): the launcher's environment starts the
process group (NCCL on GPUs, gloo on CPUs). The engine is torch's DistributedDataParallel; what is specific to
contrastive learning is here: every process encodes its slice of the global batch, the
embeddings of all slices are gathered WITH gradients, and each process scores its own rows
against every column, so N processes x B rows train exactly like 1 process x N*B rows.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

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


def pad_rows(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    """`tensor` with rows of zeros appended up to `rows` rows."""
    if tensor.shape[0] >= rows:
        return tensor
    return torch.cat([tensor, tensor.new_zeros((rows - tensor.shape[0], *tensor.shape[1:]))])


def gather_with_grad(local: torch.Tensor, world: World) -> torch.Tensor:
    """All processes' rows, in rank order; gradients flow back to the process that made each row.

    Rows per process may differ by one (see `World.slice_of`): shares are padded to the largest
    for the collective and trimmed after.
    """
    if not world.distributed:
        return local
    from torch.distributed.nn.functional import all_gather

    count = torch.tensor([local.shape[0]], device=local.device)
    counts = [torch.zeros_like(count) for _ in range(world.size)]
    dist.all_gather(counts, count)
    sizes = [int(c) for c in counts]
    pieces = all_gather(pad_rows(local, max(sizes)))
    return torch.cat([piece[:size] for piece, size in zip(pieces, sizes, strict=True)])


def sum_across(value: torch.Tensor, world: World) -> torch.Tensor:
    """The sum over processes of a (detached) tensor."""
    if world.distributed:
        value = value.detach().clone()
        dist.all_reduce(value)
    return value


def average_gradients(parameters: list[torch.nn.Parameter], world: World) -> None:
    """Average the gradients of parameters outside the DDP-wrapped model (the learnable temperature)."""
    if not world.distributed:
        return
    for parameter in parameters:
        if parameter.grad is not None:
            dist.all_reduce(parameter.grad)
            parameter.grad /= world.size
