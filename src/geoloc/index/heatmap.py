"""A score heat map over the whole gallery: "where am I likely to be?"

Every tile with coordinates is scored against the query (exactly: the stored vectors times the
query vector, one pass), and the scores are drawn as cells on the map. A gallery of up to
`max_cells` tiles that all have footprints gives one cell per tile, its footprint's bounds;
otherwise the tiles' centres are binned into a grid of at most `max_cells` cells over the
gallery, each cell keeping the best score in it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from geoloc.geodata.footprint import bounds
from geoloc.index.search import SearchIndex, check_query


def score_gallery(index: SearchIndex, text: str) -> np.ndarray:
    """The cosine similarity of `text` with every tile of the index, in index order."""
    check_query(text, 1)
    query = index.encode([text])[0]
    return index.stored.vectors @ query


def heat_cells(index: SearchIndex, scores: np.ndarray, max_cells: int = 2500) -> list[dict[str, Any]]:
    """Cells (south, west, north, east, score, tiles) covering the gallery's placed tiles."""
    tiles = index.stored.tiles
    placed = [i for i in range(len(tiles)) if tiles.lat[i] is not None and tiles.lon[i] is not None]
    if not placed:
        return []
    footprints = tiles.footprint or [None] * len(tiles)
    if len(placed) <= max_cells and all(footprints[i] for i in placed):
        cells = []
        for i in placed:
            west, south, east, north = bounds(footprints[i])  # type: ignore[arg-type]
            cells.append(_cell(south, west, north, east, float(scores[i]), 1))
        return cells
    lats = np.array([tiles.lat[i] for i in placed], dtype=np.float64)
    lons = np.array([tiles.lon[i] for i in placed], dtype=np.float64)
    placed_scores = scores[placed]
    side = max(1, math.isqrt(max_cells))
    south, north = float(lats.min()), float(lats.max())
    west, east = float(lons.min()), float(lons.max())
    # A gallery in one row or column still gets cells of some size.
    lat_step = (north - south) / side or 1e-4
    lon_step = (east - west) / side or 1e-4
    rows = np.minimum(((lats - south) / lat_step).astype(int), side - 1)
    cols = np.minimum(((lons - west) / lon_step).astype(int), side - 1)
    best: dict[tuple[int, int], list[float]] = {}
    for row, col, score in zip(rows.tolist(), cols.tolist(), placed_scores.tolist(), strict=True):
        entry = best.setdefault((row, col), [score, 0])
        entry[0] = max(entry[0], score)
        entry[1] += 1
    return [
        _cell(
            south + row * lat_step,
            west + col * lon_step,
            south + (row + 1) * lat_step,
            west + (col + 1) * lon_step,
            score,
            int(count),
        )
        for (row, col), (score, count) in sorted(best.items())
    ]


def _cell(south: float, west: float, north: float, east: float, score: float, count: int) -> dict[str, Any]:
    return {"south": south, "west": west, "north": north, "east": east, "score": score, "tiles": count}
