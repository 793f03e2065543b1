"""A score heat map over the whole gallery: "where am I likely to be?"

Every tile with coordinates is scored against the query (exactly: the stored vectors times the
query vector, one pass), and the scores are drawn as cells on the map. A gallery of up to
`max_cells` tiles that all have footprints gives one cell per tile: its footprint's bounds, and
the footprint itself, which the map draws (a rotated or polar tile is no box). Otherwise the
tiles' centres are binned into a grid of at most `max_cells` cells over the gallery, each cell
keeping the best score in it.

Longitudes are continuous, as footprints are: binned cells run east from the westernmost centre
(in [-180, 180)) and may pass 180, so that a gallery across the antimeridian gets cells across
it, side by side on a web map, not cells around the whole earth.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from geoloc.geodata.footprint import bounds, lon_extent
from geoloc.index.search import SearchIndex, check_query
from geoloc.index.store import Tiles

SMALLEST_STEP = 1e-4  # degrees: the cell size of a gallery in one row or one column


def score_gallery(index: SearchIndex, text: str) -> np.ndarray:
    """The cosine similarity of `text` with every tile of the index, in index order."""
    check_query(text, 1)
    query = index.encode([text])[0]
    return index.stored.vectors @ query


def heat_cells(tiles: Tiles, scores: np.ndarray, max_cells: int = 2500) -> list[dict[str, Any]]:
    """Cells (south, west, north, east, score, tiles, footprint) covering the placed `tiles`.

    `scores` holds one score per tile, in order. A cell's `footprint` is its tile's ring when
    the cell is one tile, else None.
    """
    # Whole columns at once (an opened index keeps them in Arrow memory): no coordinate is NaN.
    lat = np.asarray(tiles.lat, dtype=np.float64)
    lon = np.asarray(tiles.lon, dtype=np.float64)
    placed = np.flatnonzero(~np.isnan(lat) & ~np.isnan(lon)).tolist()
    if not placed:
        return []
    footprints = tiles.footprint or [None] * len(tiles)
    if len(placed) <= max_cells and all(footprints[i] for i in placed):
        cells = []
        for i in placed:
            ring = footprints[i]
            west, south, east, north = bounds(ring)  # every placed tile has a ring: all() above
            cells.append(_cell(south, west, north, east, float(scores[i]), 1, ring))
        return cells
    lats, lons = lat[placed], lon[placed]
    placed_scores = scores[placed]
    side = max(1, math.isqrt(max_cells))
    south, north = float(lats.min()), float(lats.max())
    # The narrowest span of longitudes holding every centre, across 180 degrees if that is it.
    west, east = lon_extent((lon, lon) for lon in lons.tolist())
    width = 360.0 if (west, east) == (-180.0, 180.0) else (east - west) % 360.0
    # A gallery in one row or column still gets cells of some size.
    lat_step = (north - south) / side or SMALLEST_STEP
    lon_step = width / side or SMALLEST_STEP
    rows = np.minimum(((lats - south) / lat_step).astype(int), side - 1)
    cols = np.minimum((((lons - west) % 360.0) / lon_step).astype(int), side - 1)
    best: dict[tuple[int, int], list[float]] = {}
    for row, col, score in zip(rows.tolist(), cols.tolist(), placed_scores.tolist(), strict=True):
        entry = best.setdefault((row, col), [score, 0])
        entry[0] = max(entry[0], score)
        entry[1] += 1
    cells = []
    for (row, col), (score, count) in sorted(best.items()):
        cell_west, cell_south = west + col * lon_step, south + row * lat_step
        cell_east, cell_north = cell_west + lon_step, cell_south + lat_step
        cells.append(_cell(cell_south, cell_west, cell_north, cell_east, score, int(count)))
    return cells


def _cell(
    south: float,
    west: float,
    north: float,
    east: float,
    score: float,
    count: int,
    footprint: list[list[float]] | None = None,
) -> dict[str, Any]:
    return {
        "south": south,
        "west": west,
        "north": north,
        "east": east,
        "score": score,
        "tiles": count,
        "footprint": footprint,
    }
