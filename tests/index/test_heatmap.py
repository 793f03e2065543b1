"""Heat-map cells: one per tile as its footprint, or centres binned; right across the antimeridian."""

from __future__ import annotations

import numpy as np
import pytest

from geoloc.geodata.footprint import box_ring
from geoloc.index.heatmap import heat_cells
from geoloc.index.store import Tiles


def _tiles(lons: list[float], lat: float = -40.0, footprints: list | None = None) -> Tiles:
    n = len(lons)
    keys = [f"t{i}.png" for i in range(n)]
    return Tiles(keys, keys, [lat] * n, list(lons), keys, footprints)


def test_binned_cells_across_the_antimeridian_are_small_and_side_by_side() -> None:
    # Centres from 179.9 east to -179.9 (180.1): a gallery 0.2 degrees wide, not 359.8.
    lons = [179.9, 179.95, 179.99, -179.97, -179.9]
    cells = heat_cells(_tiles(lons), np.arange(5, dtype=np.float64), max_cells=4)
    assert sum(c["tiles"] for c in cells) == 5
    for cell in cells:
        assert cell["east"] - cell["west"] == pytest.approx(0.1)
        assert 179.9 - 1e-9 <= cell["west"] and cell["east"] <= 180.1 + 1e-9
        assert cell["footprint"] is None
    # Each centre falls in its cell, read with continuous longitudes (-179.9 is 180.1).
    west_cell, east_cell = sorted(cells, key=lambda c: c["west"])
    assert (west_cell["tiles"], east_cell["tiles"]) == (3, 2)
    assert (west_cell["score"], east_cell["score"]) == (2.0, 4.0)


def test_binned_cells_elsewhere_span_the_centres() -> None:
    cells = heat_cells(_tiles([10.0, 10.5, 11.0, 12.0]), np.zeros(4), max_cells=4)
    assert min(c["west"] for c in cells) == 10.0
    assert max(c["east"] for c in cells) == pytest.approx(12.0)
    assert sum(c["tiles"] for c in cells) == 4


def test_one_cell_per_tile_carries_its_footprint() -> None:
    rings = [box_ring(179.99, -40.01, 180.01, -39.99), box_ring(10.0, -40.01, 10.02, -39.99)]
    cells = heat_cells(_tiles([-179.999, 10.01], footprints=rings), np.array([0.5, 0.25]))
    assert [c["footprint"] for c in cells] == rings
    assert (cells[0]["west"], cells[0]["east"]) == (179.99, 180.01)  # the tile, not the globe
    assert [c["score"] for c in cells] == [0.5, 0.25]
    assert heat_cells(_tiles([10.0], footprints=[None]), np.zeros(1))[0]["footprint"] is None
