"""The index's metadata table (store.py): an opened index keeps its columns in Arrow memory and
reads back exactly what was written."""

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from geoloc.index.search import SearchIndex
from geoloc.index.store import (
    METADATA,
    PARQUET_METADATA,
    Column,
    StoredIndex,
    Tiles,
    read_metadata,
    write_metadata,
)

RING = [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 0.0]]


def _tiles() -> Tiles:
    return Tiles(
        key=["a", "b", "c"],
        image=["a.png", "b.png", "c.png"],
        lat=[10.0, None, -5.5],
        lon=[20.0, None, 179.9],
        group=["g1", "g1", "g2"],
        footprint=[RING, None, None],
    )


def _opened(tiles: Tiles, tmp_path: Path) -> Tiles:
    write_metadata(tiles, tmp_path / METADATA)
    return read_metadata(tmp_path)


def test_an_older_folders_parquet_table_reads_the_same(tmp_path: Path) -> None:
    pq.write_table(_tiles().to_arrow(), tmp_path / PARQUET_METADATA)
    (tmp_path / "new").mkdir()
    assert read_metadata(tmp_path) == _tiles() == _opened(_tiles(), tmp_path / "new")


def test_an_opened_table_is_mapped_not_copied(tmp_path: Path) -> None:
    """Opening a large table allocates nothing: its columns are views of the mapped file."""
    count = 200_000
    keys = [f"tile-{i:07d}" for i in range(count)]
    write_metadata(Tiles(keys, keys, [1.5] * count, [2.5] * count, ["g"] * count), tmp_path / METADATA)
    before = pa.total_allocated_bytes()
    opened = read_metadata(tmp_path)
    lat = np.asarray(opened.lat, dtype=np.float64)  # no unknown centre: a view, as a region filter reads it
    assert pa.total_allocated_bytes() - before < 10_000  # the columns alone are over 5 MB
    assert not lat.flags.owndata and lat[0] == 1.5 and opened.key[count - 1] == keys[-1]


def test_an_opened_table_reads_back_what_was_written(tmp_path: Path) -> None:
    written = _tiles()
    opened = _opened(written, tmp_path)
    assert all(isinstance(column, Column) for column in opened._columns())
    assert opened == written and len(opened) == 3
    assert (opened.key[1], opened.lat[1], opened.lat[2], opened.ring(0), opened.ring(1)) == (
        "b", None, -5.5, RING, None,
    )  # fmt: skip
    assert opened.key[-1] == "c" and opened.image[1:] == ["b.png", "c.png"] and list(opened.group) == [
        "g1", "g1", "g2",
    ]  # fmt: skip
    with pytest.raises(IndexError):
        opened.key[3]
    # A number column reads whole into numpy, a null as NaN, as a list of floats and Nones does.
    np.testing.assert_array_equal(np.asarray(opened.lat, dtype=np.float64), [10.0, np.nan, -5.5])
    np.testing.assert_array_equal(np.asarray(written.lat, dtype=np.float64), [10.0, np.nan, -5.5])


def test_taking_and_adding_rows_of_an_opened_table(tmp_path: Path) -> None:
    opened = _opened(_tiles(), tmp_path)
    kept = opened.take([2, 0])
    assert kept == _tiles().take([2, 0]) and isinstance(kept.key, Column)
    grown = opened.concat(_tiles().take([1]))
    assert list(grown.key) == ["a", "b", "c", "b"] and grown.ring(0) == RING
    assert _opened(grown, tmp_path) == grown  # written again from mixed columns


def test_an_index_written_before_footprints_has_none(tmp_path: Path) -> None:
    table = _tiles().to_arrow().drop_columns(["footprint"])
    opened = Tiles.from_arrow(table)
    assert [opened.ring(i) for i in range(3)] == [None, None, None]


def test_a_long_column_iterates_in_order() -> None:
    values = [f"k{i}" for i in range(70_000)]  # more than one slice of rows at a time
    column = Column(pa.chunked_array([values[:30_000], values[30_000:]]))
    assert list(column) == values and column == values and column != values[:-1]


@pytest.mark.parametrize("mapped", [True, False])
def test_a_tile_is_found_by_its_key(tmp_path: Path, mapped: bool) -> None:
    """The rows in key order are searched by bisection; keys in any script, in any order."""
    keys = ["b", "a", "é-tile", "A", "Z9", "ab", "日本", "a b"]
    tiles = Tiles(keys, keys, [0.0] * 8, [0.0] * 8, [""] * 8)
    if mapped:
        tiles = _opened(tiles, tmp_path)
    index = SearchIndex(StoredIndex(tmp_path, {"galleries": []}, np.zeros((8, 2)), tiles, None), encoder=None)
    assert [index.row(key) for key in keys] == list(range(8))
    assert [index.row(key) for key in ("", "c", "a c", "日", "é")] == [None] * 5
