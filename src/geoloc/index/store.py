"""The index folder on disk, written whole or not at all.

    INDEX/
      manifest.json     what is inside, and exactly which model made the vectors (written last)
      vectors.npy       float32, one unit row per tile: the source of truth
      metadata.arrow    one row per vector, same order: key, image, lat, lon, group, footprint
                        (Arrow IPC, one record batch, memory-mapped when opened; folders of
                        format 1 and 2 hold metadata.parquet instead, still read)
      index.faiss       the IVF, HNSW, SQ8 or IVF-PQ structure (an exact index is rebuilt from vectors.npy)

An opened index memory-maps `vectors.npy`, `index.faiss` and `metadata.arrow`: the operating
system reads the pages a search touches, so a large index opens in a moment and its resident
memory is what searches use, in clean file pages the kernel may drop and read again.

The folder is assembled under a temporary name and renamed into place, so an interrupted build
leaves no INDEX that looks complete, and `add` / `remove` swap a whole new folder in.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import mmap
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from geoloc.atomic import atomic_dir, write_json
from geoloc.errors import GeolocError
from geoloc.index.ann import AnnSettings, apply_search_settings, build_faiss

# Version 2 added the compressed kinds: the manifest's index settings gained pq_m, train_size and
# rescore, which a geoloc of version 1 cannot read; the number makes it say so. Folders of
# version 1 open unchanged: their files are the same and the new settings take their defaults.
# Version 3 keeps the metadata as an Arrow IPC file (METADATA), which opens memory-mapped without
# decoding: 10 M tiles' Parquet took seconds to decode into the heap. Versions 1 and 2 hold
# PARQUET_METADATA, still read.
FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
MANIFEST = "manifest.json"
VECTORS = "vectors.npy"
METADATA = "metadata.arrow"
PARQUET_METADATA = "metadata.parquet"
FAISS_FILE = "index.faiss"
_MANIFEST_KEYS = ("model", "dimension", "count", "index", "galleries")
# FAISS maps the file rather than reading it: inverted lists (IVF kinds), or flat codes (SQ8, HNSW's
# vectors). The two flags do not combine.
_MMAP = {"ivf": faiss.IO_FLAG_MMAP, "ivf-pq": faiss.IO_FLAG_MMAP}

# Large (64-bit offset) strings: the metadata is one record batch, so that an opened column is one
# memory-mapped array, and 32-bit offsets would stop at 2 GB of image paths (about 30 M tiles).
_SCHEMA = pa.schema(
    [
        ("key", pa.large_string()),
        ("image", pa.large_string()),
        ("lat", pa.float64()),
        ("lon", pa.float64()),
        ("group", pa.large_string()),
        # The tile's WGS84 outline: a closed ring of [lon, lat] (null when the gallery has none).
        ("footprint", pa.list_(pa.list_(pa.float64()))),
    ]
)


_ROWS_AT_ONCE = 65_536  # a Column's iteration makes Python values this many rows at a time


class Column(Sequence[Any]):
    """One metadata column of an opened index, an Arrow array (a view of the memory-mapped file).

    Held as Python objects, ten million tiles' keys, images, groups and coordinates took 3.5 GB of
    a server's heap; as Arrow arrays mapped from the file they take none. A Python value is made
    only for what is asked: `column[row]` (a hit, a key looked up), a slice, or an iteration.
    `numpy.asarray` reads a number column whole (a view when it has no null; a null is NaN).
    """

    def __init__(self, values: pa.Array | pa.ChunkedArray):
        if isinstance(values, pa.ChunkedArray):
            # One chunk (a memory-mapped file's one record batch) is used as it is: combining copies.
            values = values.chunk(0) if values.num_chunks == 1 else values.combine_chunks()
        self.arrow: pa.Array = values

    def __len__(self) -> int:
        return len(self.arrow)

    @overload
    def __getitem__(self, item: int) -> Any: ...
    @overload
    def __getitem__(self, item: slice) -> list[Any]: ...
    def __getitem__(self, item: int | slice) -> Any:
        if isinstance(item, slice):
            return self.arrow[item].to_pylist()
        if not -len(self) <= item < len(self):
            raise IndexError(f"row {item} of a column of {len(self)}")
        return self.arrow[item].as_py()

    def __iter__(self) -> Iterator[Any]:
        for start in range(0, len(self), _ROWS_AT_ONCE):
            yield from self.arrow.slice(start, _ROWS_AT_ONCE).to_pylist()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and len(other) == len(self) and list(self) == list(other)

    __hash__ = None  # equal as a list is, so unhashable as a list is

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        return np.asarray(self.arrow.to_numpy(zero_copy_only=False), dtype=dtype)

    def take(self, rows: list[int]) -> Column:
        return Column(self.arrow.take(pa.array(rows, pa.int64())))


def _take(column: Sequence[Any], rows: list[int]) -> Sequence[Any]:
    return column.take(rows) if isinstance(column, Column) else [column[i] for i in rows]


@dataclass
class Tiles:
    """The metadata table: row i describes vector i.

    Each column is a list (a table being built) or a `Column` (an opened index's, in Arrow memory).
    """

    key: Sequence[str]
    image: Sequence[str]
    lat: Sequence[float | None]
    lon: Sequence[float | None]
    group: Sequence[str]
    footprint: Sequence[list[list[float]] | None] | None = None
    """Per tile, its closed [lon, lat] ring, or None; None for the whole column is all None."""

    def __post_init__(self) -> None:
        if self.footprint is None:
            self.footprint = [None] * len(self.key)

    def __len__(self) -> int:
        return len(self.key)

    def take(self, rows: list[int]) -> Tiles:
        return Tiles(*(_take(column, rows) for column in self._columns()))

    def concat(self, other: Tiles) -> Tiles:
        return Tiles(*(list(a) + list(b) for a, b in zip(self._columns(), other._columns(), strict=True)))

    def ring(self, row: int) -> list[list[float]] | None:
        """Tile `row`'s footprint ring, or None."""
        return self.footprint[row] if self.footprint is not None else None

    def _columns(self) -> tuple[Sequence[Any], ...]:
        return (self.key, self.image, self.lat, self.lon, self.group, self.footprint or [])

    def to_arrow(self) -> pa.Table:
        arrays = [
            c.arrow.cast(t.type) if isinstance(c, Column) else pa.array(c, t.type)
            for c, t in zip(self._columns(), _SCHEMA, strict=True)
        ]
        return pa.Table.from_arrays(arrays, schema=_SCHEMA)

    @classmethod
    def from_arrow(cls, table: pa.Table) -> Tiles:
        """The table's columns as `Column`s. Indexes written before footprints were carried have
        no such column: no footprints."""
        columns = [
            Column(table.column(f.name) if f.name in table.column_names else pa.nulls(len(table), f.type))
            for f in _SCHEMA
        ]
        return cls(*columns)


@dataclass
class StoredIndex:
    path: Path
    manifest: dict[str, Any]
    vectors: np.ndarray
    tiles: Tiles
    faiss: faiss.Index

    @property
    def settings(self) -> AnnSettings:
        return AnnSettings.from_dict(self.manifest["index"])


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def write_index(
    target: str | Path,
    vectors: np.ndarray,
    tiles: Tiles,
    model: dict[str, Any],
    settings: AnnSettings,
    galleries: list[str],
    created: str | None = None,
) -> None:
    """Write (or replace) the index folder `target` atomically."""
    if len(vectors) != len(tiles):
        raise ValueError(f"{len(vectors)} vectors but {len(tiles)} metadata rows")
    vectors = np.asarray(vectors, dtype=np.float32)  # a memory-mapped float32 gallery stays on disk
    with atomic_dir(target) as tmp:
        np.save(tmp / VECTORS, vectors)
        write_metadata(tiles, tmp / METADATA)
        if settings.kind != "exact":  # an exact index is a copy of the vectors: rebuilt on load
            faiss.write_index(build_faiss(vectors, settings), str(tmp / FAISS_FILE))
        manifest = {
            "format_version": FORMAT_VERSION,
            "model": model,
            "dimension": int(vectors.shape[1]),
            "count": len(tiles),
            "metric": "inner_product",
            "index": settings.to_dict(),
            "galleries": galleries,
            "created": created or _now(),
            "updated": _now(),
        }
        write_json(tmp / MANIFEST, manifest)  # last: a folder with a manifest is complete


def read_manifest_json(path: str | Path) -> dict[str, Any]:
    """The manifest of the index folder `path`, checked for its format version."""
    path = Path(path)
    file = path / MANIFEST
    if not file.is_file():
        what = (
            "no such folder"
            if not path.exists()
            else f"no {MANIFEST}: not a geoloc index, or an unfinished one"
        )
        raise GeolocError(f"{path}: {what}")
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise GeolocError(f"{file}: unreadable index manifest ({error})") from error
    if not isinstance(manifest, dict) or manifest.get("format_version") not in READABLE_VERSIONS:
        version = manifest.get("format_version") if isinstance(manifest, dict) else None
        *earlier, last = (str(v) for v in READABLE_VERSIONS)
        readable = f"{', '.join(earlier)} and {last}" if earlier else last
        raise GeolocError(
            f"{file}: index format version {version}; this geoloc reads versions {readable} "
            "(a newer geoloc wrote it, or it is damaged: rebuild it with `geoloc index build`)"
        )
    missing = [name for name in _MANIFEST_KEYS if name not in manifest]
    if missing:
        raise GeolocError(f"{file}: damaged index manifest (missing {', '.join(missing)})")
    return manifest


def write_metadata(tiles: Tiles, file: Path) -> None:
    """The tiles' table as an Arrow IPC file of one record batch (so each column maps as one array)."""
    table = tiles.to_arrow().combine_chunks()
    with pa.OSFile(str(file), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=max(1, len(table)))


def read_metadata(folder: Path) -> Tiles:
    """The tiles' table of an index folder: the Arrow file memory-mapped (no copy, no decoding),
    or an older folder's Parquet file decoded into memory."""
    older = folder / PARQUET_METADATA
    if older.is_file() and not (folder / METADATA).is_file():  # formats 1 and 2
        tiles = Tiles.from_arrow(pq.read_table(older))
        # The decoding's scratch buffers go back to the system: the allocator would keep them,
        # twice what the columns themselves hold.
        pa.default_memory_pool().release_unused()
        return tiles
    return Tiles.from_arrow(pa.ipc.open_file(pa.memory_map(str(folder / METADATA), "r")).read_all())


def map_vectors(file: str | Path) -> np.ndarray:
    """A .npy file's array, memory-mapped read-only and advised for random reads.

    Searches read scattered rows (the candidates to re-score, a region's tiles): the advice keeps
    the kernel from reading ahead of each row on disk. Pages read stay clean file pages, which
    the kernel drops under memory pressure.
    """
    with open(file, "rb") as f:
        version = np.lib.format.read_magic(f)
        read_header = {
            (1, 0): np.lib.format.read_array_header_1_0,
            (2, 0): np.lib.format.read_array_header_2_0,
        }
        if version not in read_header:
            raise ValueError(f"unsupported .npy version {version}")
        shape, fortran_order, dtype = read_header[version](f)
        if fortran_order or dtype.hasobject:
            raise ValueError("not a C-ordered array of numbers")
        offset = f.tell()
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    if hasattr(mmap, "MADV_RANDOM"):
        mapped.madvise(mmap.MADV_RANDOM)
    count = int(np.prod(shape))
    return np.frombuffer(mapped, dtype=dtype, count=count, offset=offset).reshape(shape)


def read_index(path: str | Path) -> StoredIndex:
    """Open an index folder, checking that its files agree with its manifest."""
    path = Path(path)
    manifest = read_manifest_json(path)
    settings = AnnSettings.from_dict(manifest["index"])
    try:
        vectors = map_vectors(path / VECTORS)
        tiles = read_metadata(path)
        index = (
            faiss.read_index(str(path / FAISS_FILE), _MMAP.get(settings.kind, faiss.IO_FLAG_MMAP_IFC))
            if settings.kind != "exact"
            else None
        )
    except (OSError, ValueError, RuntimeError, pa.ArrowException) as error:
        raise GeolocError(f"{path}: damaged index ({error})") from error
    count, dim = manifest["count"], manifest["dimension"]
    if vectors.shape != (count, dim) or len(tiles) != count or (index is not None and index.ntotal != count):
        raise GeolocError(
            f"{path}: damaged index: the manifest says {count} vectors of dimension {dim}, the files hold "
            f"{vectors.shape} vectors and {len(tiles)} metadata rows"
        )
    if index is None:
        index = build_faiss(vectors, settings)
    apply_search_settings(index, settings)
    return StoredIndex(path, manifest, vectors, tiles, index)


@contextlib.contextmanager
def index_lock(path: str | Path) -> Generator[None]:
    """Serialise changes to one index: two concurrent `add`s must not lose one another's tiles."""
    path = Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
