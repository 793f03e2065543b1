"""Batches without false negatives, formed at random or around hard neighbours (`train.batching`).

Several texts describe one tile, and one place may be seen by several tiles (a group). If two
items of one group shared a batch, each would be the other's negative. Batches here never hold
two items of the same group, under every method; a `BatchGuard` can also keep apart items closer
than a distance, or items whose model scores say they may match.

`form_batches` is the one algorithm behind all three methods. It walks the items in a seeded
random order and fills one batch at a time; an item that cannot join the batch being filled
waits for the next. Under `nearby` and `mined`, each item that joins pulls up to `neighbours`
of its partners in after it (its spatial neighbours, or the tiles the model confuses with it):
Sample4Geo's neighbour sampling (Deuser et al., ICCV 2023), where each anchor brings its nearest
neighbours into its batch. Under `random` nothing is pulled, which gives the released recipe's
shuffled batches. The order of epoch e is a pure function of (seed, e) and the partners, so a
resumed run sees exactly the batches the interrupted one would have.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch

from geoloc.distance import haversine_km

Batches = list[list[int]]


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The items' order in epoch `epoch`: a permutation that depends only on (seed, epoch)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator).tolist()


class BatchGuard:
    """Which items may share a batch: never two of one group, and optionally never two closer
    than `min_km` (positions in degrees). A partner pulled in as a hard negative must also pass
    the similarity guard (`text_emb` x `tile_emb`, see `fits_partner`): mining never picks as a
    negative what the model scores as a possible match."""

    def __init__(
        self,
        groups: Sequence[str],
        lat_lon: np.ndarray | None = None,
        min_km: float = 0.0,
        text_emb: np.ndarray | None = None,
        tile_emb: np.ndarray | None = None,
        margin: float = 0.0,
    ):
        self.groups = groups
        self.min_km = min_km
        self.lat_lon = lat_lon if min_km > 0 else None
        self.text_emb, self.tile_emb = text_emb, tile_emb
        if text_emb is not None and tile_emb is not None:
            # A partner scoring above this is a possible match: each text's own tile's score
            # less the margin.
            self.limit = np.einsum("ij,ij->i", text_emb, tile_emb) - margin

    def fits(self, index: int, batch: list[int]) -> bool:
        if any(self.groups[index] == self.groups[member] for member in batch):
            return False
        if self.lat_lon is not None and batch:
            lat, lon = self.lat_lon[index]
            others = self.lat_lon[batch]
            return bool(haversine_km(lat, lon, others[:, 0], others[:, 1]).min() >= self.min_km)
        return True

    def fits_partner(self, partner: int, anchor: int, batch: list[int]) -> bool:
        """`fits`, and for a partner that `anchor` pulls in as its hard negative, the similarity
        guard between the two (NV-Retriever's positive-aware TopK-MarginPos, both ways): a tile
        is no text's negative when the text scores it above its own tile's score less `margin`.
        """
        if not self.fits(partner, batch):
            return False
        if self.text_emb is None or self.tile_emb is None:
            return True
        return bool(
            self.text_emb[anchor] @ self.tile_emb[partner] <= self.limit[anchor]
            and self.text_emb[partner] @ self.tile_emb[anchor] <= self.limit[partner]
        )


def form_batches(
    order: Sequence[int],
    batch_size: int,
    guard: BatchGuard,
    partners: Callable[[int], Sequence[int]] | None = None,
    neighbours: int = 0,
) -> Batches:
    """Every item of `order` exactly once, cut into batches that the guard allows.

    Items are taken in `order`; one that does not fit the batch being filled waits and starts
    the next. Each item that joins pulls in up to `neighbours` of `partners(item)` (in their
    order) that are not yet placed and that the guard allows as partners. The last batch may be
    smaller.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    filler = _BatchFiller(max(order, default=-1) + 1, batch_size, guard, partners, neighbours)
    for index in order:
        filler.offer(index)
    return filler.finish()


class _BatchFiller:
    """`form_batches`' state as it walks the order: the batches cut so far, the batch being
    filled, the items waiting for a later batch, and which items are placed.

    Waiting items get the first places in each new batch, in the order they were deferred, ahead
    of the items after them in the order. Nothing else is consulted: the batches depend only on
    the order, the guard and the partners, which is what lets a resumed epoch repeat the
    interrupted one.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        guard: BatchGuard,
        partners: Callable[[int], Sequence[int]] | None,
        neighbours: int,
    ):
        self.batch_size = batch_size
        self.guard = guard
        self.partners = partners
        self.neighbours = neighbours
        self.placed = [False] * n
        self.batches: Batches = []
        self.batch: list[int] = []
        self.deferred: list[int] = []  # items that did not fit the batch being filled

    def offer(self, index: int) -> None:
        """The next item of the order: it joins the batch being filled if the guard allows, else waits."""
        if self.placed[index]:
            return  # pulled in earlier as another item's partner
        while len(self.batch) >= self.batch_size:  # waiting items may fill the next batch at once
            self._start_batch()
        if self.guard.fits(index, self.batch):
            self._join(index)
        else:
            self.deferred.append(index)

    def finish(self) -> Batches:
        """Every batch, once the order is walked: the waiting items fill as many more as they need."""
        while self.batch:
            self._start_batch()
        return self.batches

    def _join(self, index: int) -> None:
        self.batch.append(index)
        self.placed[index] = True
        self._pull_partners(index)

    def _pull_partners(self, index: int) -> None:
        """Bring up to `neighbours` of `index`'s partners into its batch: its hard negatives.

        A partner pulled in this way pulls in none of its own (no chaining): each batch is built
        around the anchors taken from the order.
        """
        if self.partners is None or not self.neighbours:
            return
        pulled = 0
        for partner in self.partners(index):
            if pulled == self.neighbours or len(self.batch) == self.batch_size:
                break
            if not self.placed[partner] and self.guard.fits_partner(partner, index, self.batch):
                self.batch.append(partner)
                self.placed[partner] = True
                pulled += 1

    def _start_batch(self) -> None:
        """Close the batch being filled and start the next with the items that waited for it."""
        self.batches.append(self.batch)
        self.batch = []
        waiting, self.deferred = self.deferred, []
        for index in waiting:
            if self.placed[index]:
                continue  # pulled in as a partner meanwhile
            if len(self.batch) < self.batch_size and self.guard.fits(index, self.batch):
                self._join(index)
            else:
                self.deferred.append(index)


def epoch_batches(groups: Sequence[str], batch_size: int, seed: int, epoch: int) -> Batches:
    """The released recipe's batches (`train.batching: random`): the items shuffled by (seed,
    epoch) and cut into batches of distinct groups."""
    return form_batches(epoch_order(len(groups), seed, epoch), batch_size, BatchGuard(groups))


class EpochBatchSampler(torch.utils.data.Sampler[list[int]]):
    """An epoch's batches as a DataLoader batch sampler: the order is decided in the main
    process, never by the workers, so any number of workers yields the same batches.

    `use(batches, start)` gives it an epoch's batches and skips the first `start` (a resumed
    run), which are never decoded. `local` maps a global batch to the indices this process
    encodes (its share of the batch when several processes train).
    """

    def __init__(self, local: Callable[[list[int]], list[int]] = lambda batch: batch):
        self.local = local
        self.batches: Batches = []
        self.start = 0

    def use(self, batches: Batches, start: int = 0) -> None:
        self.batches, self.start = batches, start

    def remaining(self) -> Batches:
        """The epoch's global batches from `start` on: what iterating yields, in order."""
        return self.batches[self.start :]

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.remaining():
            yield self.local(batch)

    def __len__(self) -> int:
        return len(self.batches) - self.start
