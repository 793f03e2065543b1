"""The parallel input pipeline: tiles decoded and preprocessed in DataLoader workers.

Every path that turns tile files into model inputs goes through here: training
(`PairDataset`, in the order of train/batching.py's `EpochBatchSampler`), and encoding for
evaluation, `index build` / `index add`, `geoloc embed` and the tile-feature cache
(`TileDataset`, in file order). Workers only decode and preprocess; the order is decided by the
sampler in the main process, so any number of workers gives the same batches as none.

A bad image found in a worker comes back as a `BadTile` (its one-line message naming the file and
the record) and is raised in the main process as the same `DataError` the in-process path raises;
the DataLoader then shuts its workers down.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from geoloc.encoder.inputs import Inputs, TextInputs, TileProcessor
from geoloc.errors import DataError

MAX_AUTO_WORKERS = 8


@dataclass(frozen=True)
class BadTile:
    """A tile a worker could not read: the DataError's message, raised again in the main process."""

    message: str

    def raise_error(self) -> None:
        raise DataError(self.message)


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def auto_workers(processes_per_machine: int = 1, device: torch.device | None = None) -> int:
    """Workers per process when `num_workers` is "auto": the cores this process may use, less
    what computing takes (on a CPU, torch's threads; on an accelerator, one core to drive it), at
    most 8. On a CPU whose cores torch's threads already fill, decoding stays in the process:
    a worker there would only take turns with the model's own threads."""
    cores = available_cores() // max(1, processes_per_machine)
    computing = torch.get_num_threads() if device is None or device.type == "cpu" else 1
    return max(0, min(MAX_AUTO_WORKERS, cores - computing))


def resolve_workers(
    num_workers: int | str, processes_per_machine: int = 1, device: torch.device | None = None
) -> int:
    if num_workers == "auto":
        return auto_workers(processes_per_machine, device)
    if not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers must be 'auto' or a count of at least 0, not {num_workers!r}")
    return num_workers


def _load_tile(item: str | Path | Image.Image, record: str | None) -> Image.Image:
    from geoloc.data.images import load_image, pil_from_any

    if isinstance(item, Image.Image):
        return pil_from_any(item)
    return load_image(item, record=record)


class TileDataset(torch.utils.data.Dataset):
    """Item i: the pixel tensor of tile i (a file or a PIL image), or a BadTile."""

    def __init__(
        self,
        tiles: Sequence[str | Path | Image.Image],
        processor: TileProcessor,
        records: Sequence[str] | None = None,
    ):
        self.tiles, self.processor, self.records = tiles, processor, records

    def __len__(self) -> int:
        return len(self.tiles)

    def __getitem__(self, index: int) -> torch.Tensor | BadTile:
        record = self.records[index] if self.records is not None else None
        try:
            return self.processor.raw(_load_tile(self.tiles[index], record))
        except DataError as error:
            return BadTile(str(error))


@dataclass
class TileCollator:
    """A batch of TileDataset items -> pixel inputs (or the batch's first BadTile)."""

    processor: TileProcessor

    def __call__(self, items: list[torch.Tensor | BadTile]) -> Inputs | BadTile:
        tiles: list[torch.Tensor] = []
        for item in items:
            if isinstance(item, BadTile):
                return item
            tiles.append(item)
        return self.processor.collate(tiles)


class PairDataset(torch.utils.data.Dataset):
    """Item i: training text i, and its tile's pixel tensor (None when tiles come as cached
    features instead: `processor` None)."""

    def __init__(
        self,
        texts: Sequence[str],
        tile_of_text: Sequence[int],
        tiles: Sequence[str | Path],
        tile_records: Sequence[str],
        processor: TileProcessor | None,
    ):
        self.texts, self.tile_of_text = texts, tile_of_text
        self.tiles, self.tile_records, self.processor = tiles, tile_records, processor

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, index: int) -> tuple[str, torch.Tensor | BadTile | None]:
        if self.processor is None:
            return self.texts[index], None
        tile = self.tile_of_text[index]
        try:
            pixels = self.processor.raw(_load_tile(self.tiles[tile], self.tile_records[tile]))
        except DataError as error:
            return self.texts[index], BadTile(str(error))
        return self.texts[index], pixels


@dataclass
class PairBatch:
    """A training batch's model inputs: texts, and tiles' pixels (None: cached features)."""

    text: Inputs
    pixels: Inputs | None

    def pin_memory(self) -> PairBatch:  # called by the DataLoader when pin_memory is on
        pin = lambda inputs: {k: v.pin_memory() for k, v in inputs.items()}  # noqa: E731
        return PairBatch(pin(self.text), pin(self.pixels) if self.pixels is not None else None)


@dataclass
class PairCollator:
    """A batch of PairDataset items -> PairBatch (or the batch's first BadTile)."""

    text_inputs: TextInputs
    processor: TileProcessor | None

    def __call__(self, items: list[tuple[str, Any]]) -> PairBatch | BadTile:
        for _, pixels in items:
            if isinstance(pixels, BadTile):
                return pixels
        text = self.text_inputs([text for text, _ in items])
        if self.processor is None:
            return PairBatch(text, None)
        return PairBatch(text, self.processor.collate([pixels for _, pixels in items]))


def _seed_worker(worker_id: int) -> None:
    # torch seeds each worker from the loader's generator; numpy and random follow it, so any
    # randomness added to preprocessing later is reproducible too.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def make_loader(
    dataset: torch.utils.data.Dataset,
    collate: Callable[[list[Any]], Any],
    num_workers: int,
    device: torch.device,
    seed: int = 0,
    batch_size: int | None = None,
    batch_sampler: Any = None,
    persistent: bool = False,
) -> torch.utils.data.DataLoader:
    """A DataLoader with this project's settings: seeded workers, its own generator (the global
    random state, which dropout draws from, is never touched), pinned memory and prefetching on
    CUDA."""
    workers = num_workers > 0
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size if batch_sampler is None else 1,
        batch_sampler=batch_sampler,
        shuffle=False,
        collate_fn=collate,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        prefetch_factor=4 if workers else None,
        persistent_workers=persistent and workers,
        worker_init_fn=_seed_worker if workers else None,
        generator=torch.Generator().manual_seed(seed),
    )


def checked(batch: Any) -> Any:
    """The batch, or the DataError its bad tile stands for."""
    if isinstance(batch, BadTile):
        batch.raise_error()
    return batch


def batches_of(loader: torch.utils.data.DataLoader) -> Generator[Any]:
    """A DataLoader's batches, bad tiles raised as DataError. Its workers are shut down as soon
    as this generator ends, is closed or fails, not whenever the garbage collector gets to them
    (an error's traceback would otherwise keep them alive)."""
    iterator = iter(loader)
    try:
        for batch in iterator:
            yield checked(batch)
    finally:
        del iterator  # the last reference: the DataLoader's iterator stops its workers
