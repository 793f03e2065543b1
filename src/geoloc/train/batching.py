"""Batches without false negatives, in an order that depends only on the seed.

Several texts describe one tile, and one place may be seen by several tiles (a group). If two
items of one group shared a batch, each would be the other's negative. Batches here never hold
two items of the same group. The order of epoch e is a pure function of (seed, e), so a resumed
run sees exactly the batches the interrupted one would have.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch


def epoch_batches(groups: Sequence[str], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Indices of the items, shuffled and cut into batches of distinct groups.

    Every item appears exactly once. Items that cannot join a batch because their group is
    already in it wait for the next batch; the last batch may be smaller.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(len(groups), generator=generator).tolist()
    batches: list[list[int]] = []
    deferred: list[int] = []  # items whose group was already in the batch being filled
    batch: list[int] = []
    seen: set[str] = set()

    def take(index: int) -> None:
        batch.append(index)
        seen.add(groups[index])

    def start_batch() -> None:
        nonlocal batch, seen, deferred
        batches.append(batch)
        batch, seen = [], set()
        waiting, deferred = deferred, []
        for index in waiting:
            if len(batch) < batch_size and groups[index] not in seen:
                take(index)
            else:
                deferred.append(index)

    for index in order:
        if len(batch) == batch_size:
            start_batch()
        if groups[index] in seen:
            deferred.append(index)
        else:
            take(index)
    while batch:
        start_batch()
    return batches


class EpochBatchSampler(torch.utils.data.Sampler[list[int]]):
    """`epoch_batches` as a DataLoader batch sampler: the order is decided here, in the main
    process, never by the workers, so any number of workers yields the same batches.

    `set_epoch(epoch, start)` picks the epoch and skips its first `start` batches (a resumed
    run), which are never decoded. `local` maps a global batch to the indices this process
    encodes (its share of the batch when several processes train).
    """

    def __init__(
        self,
        groups: Sequence[str],
        batch_size: int,
        seed: int,
        local: Callable[[list[int]], list[int]] = lambda batch: batch,
    ):
        self.groups, self.batch_size, self.seed, self.local = groups, batch_size, seed, local
        self.set_epoch(0)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start
        self.batches = epoch_batches(self.groups, self.batch_size, self.seed, epoch)

    def remaining(self) -> list[list[int]]:
        """The epoch's global batches from `start` on: what iterating yields, in order."""
        return self.batches[self.start :]

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.remaining():
            yield self.local(batch)

    def __len__(self) -> int:
        return len(self.batches) - self.start
