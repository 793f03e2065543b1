"""Several processes, one contrastive batch: who holds which rows, and gathering them with gradients.

Launch with `torchrun --standalone --nproc_per_node N -m geoloc train ...` (or `accelerate launch
--multi_gpu --num_processes N -m geoloc train ...` on GPUs): the launcher's environment starts the
process group (NCCL on GPUs, gloo on CPUs). The engine is torch's DistributedDataParallel; what is specific to
contrastive learning is here: every process encodes its slice of the global batch, the
embeddings of all slices are gathered WITH gradients, and each process scores its own rows
against every column, so N processes x B rows train exactly like 1 process x N*B rows.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from geoloc.world import World


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
