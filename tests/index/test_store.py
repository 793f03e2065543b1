"""The index's metadata table (store.py): an opened index keeps its columns in Arrow memory and
reads back exactly what was written."""

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from geoloc.index.store import Column, Tiles

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
    pq.write_table(tiles.to_arrow(), tmp_path / "metadata.parquet")
    return Tiles.from_arrow(pq.read_table(tmp_path / "metadata.parquet"))


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
