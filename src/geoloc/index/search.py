"""Search an index with words: encode the query with the index's own model, rank the tiles.

index = SearchIndex.open("city_index")
for hit in index.search("a red building by a pond", k=5):
    print(hit.rank, hit.score, hit.key, hit.lat, hit.lon)

# only the tiles whose centre lies in a region (see `region`); exactly the top k of those tiles
index.search("a red building by a pond", k=5, region=Region.bbox(2.2, 48.8, 2.5, 48.9))
"""

from __future__ import annotations

import bisect
import functools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from geoloc.errors import GeolocError
from geoloc.index import ann, towers
from geoloc.index.identity import check_same_model, load_index_model
from geoloc.index.limits import MAX_K, MAX_QUERY_CHARS
from geoloc.index.region import Region
from geoloc.index.store import Column, StoredIndex, read_index, read_manifest_json

if TYPE_CHECKING:
    from geoloc.encoder.base import Encoder
    from geoloc.encoder.query_tower import QueryTower


@dataclass
class Hit:
    """One ranked tile. `score` is the cosine similarity of query and tile."""

    rank: int
    score: float
    key: str
    lat: float | None
    lon: float | None
    group: str
    footprint: list[list[float]] | None = None
    """The tile's WGS84 outline, a closed counter-clockwise ring of [lon, lat], when known."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _open_with_model(
    path: str | Path, record: dict[str, Any], model: str | None, device: str
) -> tuple[StoredIndex, Encoder]:
    """The index and its model, checked. The index opens while the model loads: reading the
    tiles' table and mapping the FAISS file wait on the disk and on C++, the model on imports and
    its weights' files."""
    with ThreadPoolExecutor(1, thread_name_prefix="geoloc-open-index") as pool:
        opening = pool.submit(read_index, path)
        try:
            # load_index_model checks the model: weights are hashed once, not again here.
            loaded = load_index_model(record, str(path), model, device)
        except Exception:
            opening.result()  # a damaged index is reported before its model's failure
            raise
        stored = opening.result()
    if stored.manifest["model"] != record:  # the folder was replaced meanwhile (index add / remove)
        check_same_model(stored.manifest["model"], loaded, str(path))
    return stored, loaded


def check_query(text: str, k: int) -> None:
    if not isinstance(text, str) or not text.strip():
        raise GeolocError("the query is empty: describe the place in a few words")
    if len(text) > MAX_QUERY_CHARS:
        raise GeolocError(f"the query has {len(text)} characters; the limit is {MAX_QUERY_CHARS}")
    if not 1 <= k <= MAX_K:
        raise GeolocError(f"k must be between 1 and {MAX_K}, not {k}")


class SearchIndex:
    """An opened index with the model that encodes its queries.

    Queries are encoded by the model itself, or by its exported query side (`tower`, see
    `towers`) when the index was opened with one; the model is then loaded only when something
    else needs it (`explain`, the reranker).
    """

    def __init__(
        self,
        stored: StoredIndex,
        encoder: Encoder | None,
        tower: QueryTower | None = None,
        load_model: Callable[[], Encoder] | None = None,
    ):
        """`encoder` must be the index's own model, and `tower` exported from it: use `open`,
        which checks both. Without `encoder`, `load_model` loads it at its first use."""
        self.stored = stored
        self._encoder = encoder
        self.tower = tower
        self._load_model = load_model
        self.tower_problem: str | None = None
        """Set by `open` when it could not export the model's query side, to say why."""
        # One model call at a time: a server's threads share this model, and its forward pass
        # neither gains from concurrent calls on a CPU nor is documented as thread-safe.
        self.model_lock = threading.Lock()
        self._loading_lock = threading.Lock()
        # The rows in the order of their keys, for a look-up by key (a tile's image): sorted at the
        # first look-up, not at start. 8 B a tile, where a dict of keys took about 100.
        self._key_order: np.ndarray | None = None
        self._keys_lock = threading.Lock()
        self._tile_roots = [Path(gallery).parent.resolve() for gallery in stored.manifest["galleries"]]
        # The tiles' centres as arrays (NaN where unknown), for region filters: views of the
        # memory-mapped metadata when no centre is unknown.
        self._lat = np.asarray(stored.tiles.lat, dtype=np.float64)
        self._lon = np.asarray(stored.tiles.lon, dtype=np.float64)

    @classmethod
    def open(
        cls,
        path: str | Path,
        model: str | None = None,
        device: str = "cpu",
        encoder: Encoder | None = None,
        export_tower: bool = False,
    ) -> SearchIndex:
        """Open the index at `path`; load its model (from `model` if it moved) unless `encoder` is given.

        On the CPU, a query tower cached for the model's files encodes the queries instead, and
        the model loads at its first other use; with `export_tower` (a server), the model's
        query side is exported to the cache when none is there, for the next open.
        """
        if encoder is not None:
            stored = read_index(path)
            check_same_model(stored.manifest["model"], encoder, str(path))
            return cls(stored, encoder)
        record = read_manifest_json(path)["model"]
        key = towers.tower_key(record, model, device)  # the model's files before any load
        tower = towers.cached_tower(key, record)
        if tower is not None:
            stored = read_index(path)
            if stored.manifest["model"] == record:  # else replaced meanwhile: load the new model
                load = functools.partial(load_index_model, record, str(path), model, device)
                return cls(stored, None, tower, load)
        stored, loaded = _open_with_model(path, record, model, device)
        index = cls(stored, loaded)
        if export_tower and key is not None and stored.manifest["model"] == record:
            index.tower_problem = towers.export_tower(loaded, record, key, model)
        return index

    @property
    def manifest(self) -> dict[str, Any]:
        return self.stored.manifest

    def __len__(self) -> int:
        return len(self.stored.tiles)

    @property
    def encoder(self) -> Encoder:
        """The index's model: loaded (and checked) at its first use when a tower encodes the queries."""
        with self._loading_lock:
            if self._encoder is None:
                if self._load_model is None:
                    raise GeolocError("this index was opened without its model")
                self._encoder = self._load_model()
            return self._encoder

    def encode(self, texts: list[str]) -> np.ndarray:
        with self.model_lock:
            if self.tower is not None:
                return self.tower.encode_text(texts, batch_size=max(1, len(texts)))
            return self.encoder.encode_text(texts, batch_size=max(1, len(texts)))

    def inside(self, region: Region) -> np.ndarray:
        """Which tiles (a boolean per row) have their centre in `region`."""
        return region.contains(self._lat, self._lon)

    def search_vectors(self, queries: np.ndarray, k: int, region: Region | None = None) -> list[list[Hit]]:
        """The top `k` tiles for each query vector, best first; only tiles inside `region` if given."""
        allowed = None if region is None else self.inside(region)
        stored = self.stored
        scores, rows = ann.search(stored.faiss, stored.vectors, stored.settings, queries, k, allowed)
        tiles = self.stored.tiles
        results: list[list[Hit]] = []
        for query_scores, query_rows in zip(scores, rows, strict=True):
            hits: list[Hit] = []
            for score, row in zip(query_scores, query_rows, strict=True):
                if row < 0:  # IVF / HNSW (or the region) gave fewer than k tiles
                    continue
                hits.append(
                    Hit(
                        len(hits) + 1,
                        float(score),
                        tiles.key[row],
                        tiles.lat[row],
                        tiles.lon[row],
                        tiles.group[row],
                        tiles.ring(row),
                    )
                )
            results.append(hits)
        return results

    def search_many(self, texts: list[str], k: int = 10, region: Region | None = None) -> list[list[Hit]]:
        for text in texts:
            check_query(text, k)
        return self.search_vectors(self.encode(texts), k, region)

    def search(self, text: str, k: int = 10, region: Region | None = None) -> list[Hit]:
        return self.search_many([text], k, region)[0]

    def row(self, key: str) -> int | None:
        """The row of the tile `key`, or None: a binary search of the rows in key order."""
        keys = self.stored.tiles.key
        order = self._rows_in_key_order()
        place = bisect.bisect_left(order, key, key=lambda row: keys[int(row)])
        return int(order[place]) if place < len(order) and keys[int(order[place])] == key else None

    def _rows_in_key_order(self) -> np.ndarray:
        with self._keys_lock:
            if self._key_order is None:
                keys = self.stored.tiles.key
                arrow = keys.arrow if isinstance(keys, Column) else pa.array(list(keys), pa.large_string())
                # Arrow orders strings by their UTF-8 bytes, which is Python's order of str.
                self._key_order = pc.call_function("sort_indices", [arrow]).to_numpy()
            return self._key_order

    def image_path(self, key: str) -> Path | None:
        """The image file of the tile `key`, only if it is one of this index's own tiles.

        The key is looked up, never joined onto a folder, and the file must still resolve
        inside one of the galleries' folders (no symlink planted since the build leads out).
        """
        row = self.row(key)
        if row is None:
            return None
        path = Path(self.stored.tiles.image[row])
        try:
            real = path.resolve(strict=True)
        except (OSError, RuntimeError):
            return None
        if not real.is_file() or not any(real.is_relative_to(root) for root in self._tile_roots):
            return None
        return real
