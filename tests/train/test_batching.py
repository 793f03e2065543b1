"""Batches: every item once, never two of one group, the guards, the released order."""

import random

import numpy as np

from geoloc.distance import haversine_km
from geoloc.train.batching import BatchGuard, epoch_batches, epoch_order, form_batches
from geoloc.train.mining import Partners, confusable_tiles


def test_every_item_once_and_no_group_twice_in_a_batch() -> None:
    rng = random.Random(0)
    groups = [str(rng.randrange(30)) for _ in range(500)]
    batches = epoch_batches(groups, batch_size=10, seed=3, epoch=1)
    assert sorted(i for b in batches for i in b) == list(range(500))
    for batch in batches:
        assert 1 <= len(batch) <= 10
        assert len({groups[i] for i in batch}) == len(batch)


def test_order_depends_only_on_seed_and_epoch() -> None:
    groups = [str(i // 3) for i in range(90)]
    assert epoch_batches(groups, 8, seed=1, epoch=0) == epoch_batches(groups, 8, seed=1, epoch=0)
    assert epoch_batches(groups, 8, seed=1, epoch=0) != epoch_batches(groups, 8, seed=1, epoch=1)
    assert epoch_batches(groups, 8, seed=1, epoch=0) != epoch_batches(groups, 8, seed=2, epoch=0)


def test_one_dominant_group_still_terminates() -> None:
    groups = ["a"] * 6 + ["b", "c"]
    batches = epoch_batches(groups, batch_size=3, seed=0, epoch=0)
    assert sorted(i for b in batches for i in b) == list(range(8))
    assert all(sum(groups[i] == "a" for i in b) <= 1 for b in batches)


def test_random_batches_are_the_released_order() -> None:
    """The released recipe's order, as every earlier version formed it (checkpoints resume on it)."""
    groups = [str(i // 3) for i in range(20)]
    assert epoch_batches(groups, 4, seed=1, epoch=0) == [
        [14, 7, 0, 16],
        [8, 19, 11, 3],
        [6, 5, 2, 13],
        [10, 18, 17, 1],
        [12, 9, 15, 4],
    ]


def _city(n_tiles: int = 60, texts_per_tile: int = 3, seed: int = 0):  # noqa: ANN202
    """Unit-vector texts and tiles: each text near its tile; positions on a small grid."""
    rng = np.random.default_rng(seed)
    tiles = rng.normal(size=(n_tiles, 16))
    tiles /= np.linalg.norm(tiles, axis=1, keepdims=True)
    image_index = np.repeat(np.arange(n_tiles), texts_per_tile)
    texts = tiles[image_index] + 0.8 * rng.normal(size=(len(image_index), 16))
    texts /= np.linalg.norm(texts, axis=1, keepdims=True)
    positions = np.stack([40 + (np.arange(n_tiles) // 8) * 0.01, 10 + (np.arange(n_tiles) % 8) * 0.01], 1)
    return texts, tiles, image_index, positions


def _check_every_item_once(batches: list[list[int]], n: int, size: int) -> None:
    assert sorted(i for b in batches for i in b) == list(range(n))
    assert all(1 <= len(b) <= size for b in batches)


def test_every_guard_holds_with_partners_pulled_in() -> None:
    texts, tiles, image_index, positions = _city()
    groups = [str(i // 2) for i in image_index]  # two tiles per group: groups span tiles
    text_positions = positions[image_index]
    guard = BatchGuard(groups, text_positions, 1.5, texts, tiles[image_index], margin=0.0)
    ranked = confusable_tiles(texts, tiles, groups, [str(i // 2) for i in range(len(tiles))], 12)
    order = epoch_order(len(texts), seed=0, epoch=0)
    batches = form_batches(order, 8, guard, Partners(ranked, range(len(texts)), image_index, order), 3)
    _check_every_item_once(batches, len(texts), 8)
    pulled = 0
    for batch in batches:
        assert len({groups[i] for i in batch}) == len(batch)
        for a in batch:
            for b in batch:
                if a != b:
                    assert haversine_km(*text_positions[a], *text_positions[b]) >= 1.5
        pulled += sum(image_index[i] in set(ranked[batch[0]]) for i in batch[1:])
    assert pulled > 0  # partners did join their anchors


def test_the_similarity_guard_keeps_possible_matches_out_of_a_partners_batch() -> None:
    tiles = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.8, 0.6, 0.0]])
    texts = tiles.copy()  # each text matches its own tile with score 1
    guard = BatchGuard(["a", "b", "c", "d"], text_emb=texts, tile_emb=tiles, margin=0.3)
    # Text 0 scores tile 3 at 0.8, within 0.3 of its own tile's 1: a possible match, never pulled
    # in as its negative; as a plain member it may still join (only mining avoids it).
    assert not guard.fits_partner(3, 0, [0])
    assert guard.fits(3, [0])
    # The check goes both ways: text 3 scores tile 0 at 0.8 too.
    assert not guard.fits_partner(0, 3, [3])
    assert guard.fits_partner(1, 0, [0]) and guard.fits_partner(2, 0, [0])
    # With margin -1 nothing is suspect (a partner would have to score 1 above the positive).
    assert BatchGuard(["a", "b", "c", "d"], text_emb=texts, tile_emb=tiles, margin=-1.0).fits_partner(
        3, 0, [0]
    )


def test_formed_batches_depend_only_on_their_inputs() -> None:
    texts, tiles, image_index, _ = _city()
    groups = [str(i) for i in image_index]
    ranked = confusable_tiles(texts, tiles, groups, [str(i) for i in range(len(tiles))], 12)

    def plan(epoch: int) -> list[list[int]]:
        order = epoch_order(len(texts), seed=4, epoch=epoch)
        guard = BatchGuard(groups, text_emb=texts, tile_emb=tiles[image_index])
        return form_batches(order, 8, guard, Partners(ranked, range(len(texts)), image_index, order), 3)

    assert plan(0) == plan(0) and plan(0) != plan(1)
