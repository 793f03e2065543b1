"""The partners an item pulls into its batch: its spatial neighbours, or the tiles the model
confuses with it (`train.batching: nearby | mined`, see batching.py).

Items are training texts; each belongs to one tile. `nearby` ranks the other tiles by great-circle
distance from the text's tile; `mined` ranks them by how well the text's embedding matches them,
with the current model: the hardest negatives first. Either way the partners of a text are the
texts of those tiles, so a batch formed around a text holds the tiles that are hardest to tell
from its own. Tiles of the text's own group are never its partners.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from geoloc.data.manifest import Record
from geoloc.errors import ConfigError

CHUNK = 1024  # rows of a similarity matrix held at once: memory stays bounded on large sets


def tile_positions(records: Sequence[Record], why: str) -> np.ndarray:
    """(tiles, 2) lat/lon in degrees; refuses a record without coordinates, naming it."""
    missing = [r.key for r in records if r.lat is None or r.lon is None]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise ConfigError(
            f"{why} needs every training record's lat/lon; record {missing[0]!r}{more} has none"
        )
    return np.array([(r.lat, r.lon) for r in records], dtype=np.float64)


def _group_ids(groups: Sequence[str]) -> torch.Tensor:
    return torch.from_numpy(np.unique(np.asarray(groups, dtype=str), return_inverse=True)[1].reshape(-1))


def _top_other_groups(
    queries: torch.Tensor, keys: torch.Tensor, query_groups: torch.Tensor, key_groups: torch.Tensor, k: int
) -> np.ndarray:
    """For each query row, the indices of the k keys of highest score `queries @ keys.T` outside
    the query's own group, best first (fewer columns when fewer keys exist)."""
    k = min(k, keys.shape[0])
    out = []
    for start in range(0, queries.shape[0], CHUNK):
        scores = queries[start : start + CHUNK] @ keys.T
        same = query_groups[start : start + CHUNK, None] == key_groups[None, :]
        scores.masked_fill_(same, -torch.inf)
        top = scores.topk(k, dim=1)
        # A key of the query's own group is never a partner: -1 marks such a slot.
        out.append(torch.where(torch.isinf(top.values), -1, top.indices))
    return torch.cat(out).numpy() if out else np.zeros((0, k), dtype=np.int64)


def nearest_tiles(lat_lon: np.ndarray, groups: Sequence[str], k: int) -> np.ndarray:
    """For each tile, its k nearest tiles of other groups (great-circle order), nearest first."""
    lat, lon = np.radians(lat_lon[:, 0]), np.radians(lat_lon[:, 1])
    # On unit vectors a larger dot product is a shorter great circle, across 180 degrees too.
    xyz = torch.from_numpy(np.stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)], 1))
    ids = _group_ids(groups)
    return _top_other_groups(xyz, xyz, ids, ids, k)


def confusable_tiles(
    text_emb: np.ndarray, tile_emb: np.ndarray, text_groups: Sequence[str], tile_groups: Sequence[str], k: int
) -> np.ndarray:
    """For each text, the k tiles of other groups that it matches best (unit vectors), best first."""
    return _top_other_groups(
        torch.from_numpy(text_emb).float(),
        torch.from_numpy(tile_emb).float(),
        _group_ids(text_groups),
        _group_ids(tile_groups),
        k,
    )


class Partners:
    """`partners(text)`: the texts of the tiles ranked for it, in rank order, each tile's texts in
    the epoch's order (so each epoch pulls other descriptions of the same tiles).

    `ranked[row]` holds tile indices (-1: none); `row_of(text)` is the text's row: its tile's
    under `nearby`, its own under `mined`.
    """

    def __init__(
        self, ranked: np.ndarray, rows: Sequence[int], image_index: Sequence[int], order: Sequence[int]
    ):
        self.ranked, self.rows = ranked, rows
        self.texts_of: dict[int, list[int]] = {}
        for text in order:  # the epoch's order
            self.texts_of.setdefault(image_index[text], []).append(text)

    def __call__(self, text: int) -> list[int]:
        return [
            t for tile in self.ranked[self.rows[text]] if tile >= 0 for t in self.texts_of.get(int(tile), [])
        ]
