"""The input pipeline: workers change how fast batches come, never which or in what order."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import numpy as np
import pytest
import torch

from geoloc.data.manifest import read_manifest
from geoloc.data.pipeline import PairCollator, PairDataset, make_loader, resolve_workers
from geoloc.encoder.loading import load_encoder
from geoloc.errors import DataError
from geoloc.train.batching import EpochBatchSampler, epoch_batches


@pytest.fixture(scope="module")
def encoder():
    return load_encoder("tiny-smolvlm")


def test_tiles_encoded_in_workers_equal_tiles_encoded_in_process(encoder, tiny_city: Path) -> None:
    tiles = [r.image for r in read_manifest(tiny_city).records[:24]]
    alone = encoder.encode_images(tiles, batch_size=8, num_workers=0)
    parallel = encoder.encode_images(tiles, batch_size=8, num_workers=2)
    assert parallel.shape == (24, encoder.embedding_dim)
    np.testing.assert_array_equal(parallel, alone)


def test_a_bad_tile_in_a_worker_stops_with_its_one_line_error_and_no_worker_left(
    encoder, tiny_city: Path, tmp_path: Path
) -> None:
    tiles = [r.image for r in read_manifest(tiny_city).records[:20]]
    broken = tmp_path / "broken.png"
    broken.write_bytes(Path(tiles[13]).read_bytes()[:200])  # cut off mid-file
    tiles[13] = str(broken)
    with pytest.raises(DataError) as caught:
        encoder.encode_images(tiles, batch_size=4, num_workers=2)
    message = str(caught.value)
    assert message.startswith(f"{broken}: ") and "\n" not in message and "Traceback" not in message
    assert not multiprocessing.active_children()


class _CountingPairs(PairDataset):
    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        super().__init__(*args, **kwargs)
        self.read: list[int] = []

    def __getitem__(self, index: int):  # noqa: ANN204
        self.read.append(index)
        return super().__getitem__(index)


def test_the_sampler_keeps_the_epoch_order_and_a_resumed_epoch_decodes_only_what_is_left(
    encoder, tiny_city: Path
) -> None:
    data = read_manifest(tiny_city)
    texts, tile_of_text = data.texts_with_image_index()
    groups = [data.groups[i] for i in tile_of_text]
    sampler = EpochBatchSampler()
    sampler.use(epoch_batches(groups, 8, 3, 2))
    assert list(sampler) == epoch_batches(groups, 8, 3, 2)
    sampler.use(epoch_batches(groups, 8, 3, 2), start=5)
    assert list(sampler) == epoch_batches(groups, 8, 3, 2)[5:]

    pairs = _CountingPairs(
        texts,
        tile_of_text,
        [r.image for r in data.records],
        [r.key for r in data.records],
        encoder.tile_processor,
    )
    collate = PairCollator(encoder.text_builder, encoder.tile_processor)
    loader = make_loader(pairs, collate, 0, torch.device("cpu"), batch_sampler=sampler)
    batches = list(loader)
    skipped = {i for batch in epoch_batches(groups, 8, 3, 2)[:5] for i in batch}
    assert len(batches) == len(sampler) and not skipped & set(pairs.read)
    first = epoch_batches(groups, 8, 3, 2)[5]
    assert torch.equal(
        batches[0].text["input_ids"], encoder.text_inputs([texts[i] for i in first])["input_ids"]
    )


def test_worker_counts() -> None:
    assert resolve_workers(3) == 3 and resolve_workers(0) == 0
    assert 0 <= resolve_workers("auto") <= 8
    with pytest.raises(ValueError, match="at least 0"):
        resolve_workers(-1)
