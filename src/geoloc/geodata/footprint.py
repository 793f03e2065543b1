"""A tile's footprint: its ground extent as a polygon in WGS84 longitude / latitude.

A footprint is the exterior ring of a GeoJSON Polygon: a list of [lon, lat] positions, closed
(the last equals the first), counter-clockwise, as RFC 7946 (section 3.1.6) asks. Manifests
carry it as a GeoJSON geometry, `{"type": "Polygon", "coordinates": [ring]}`, so that a row can
be pasted into any GIS as it is.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

Ring = list[list[float]]


def signed_area(ring: Sequence[Sequence[float]]) -> float:
    """Twice the shoelace area of a closed ring in (x, y) = (lon, lat): positive when counter-clockwise."""
    return sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(ring[:-1], ring[1:], strict=True))


def make_ring(corners: Sequence[Sequence[float]], digits: int = 9) -> Ring:
    """A closed, counter-clockwise ring from the corners of a tile, in order around it.

    The corners may come clockwise (a raster whose rows run south to north, or mirrored); the
    ring is reversed then. 9 decimals of a degree is about 0.1 mm on the ground.
    """
    ring = [[round(float(lon), digits), round(float(lat), digits)] for lon, lat in corners]
    if ring[0] != ring[-1]:
        ring.append(list(ring[0]))
    if signed_area(ring) < 0:
        ring.reverse()
    return ring


def box_ring(west: float, south: float, east: float, north: float) -> Ring:
    """The ring of a longitude / latitude box."""
    return make_ring([(west, north), (west, south), (east, south), (east, north)])


def polygon(ring: Ring) -> dict[str, Any]:
    """The GeoJSON geometry of a footprint."""
    return {"type": "Polygon", "coordinates": [ring]}


def bounds(ring: Ring) -> tuple[float, float, float, float]:
    """(west, south, east, north) of a ring."""
    lons = [p[0] for p in ring]
    lats = [p[1] for p in ring]
    return min(lons), min(lats), max(lons), max(lats)


def parse_footprint(value: Any) -> Ring:
    """The ring of a manifest's `footprint` field, checked; ValueError says what is wrong.

    Accepted: a GeoJSON Polygon with one ring (no holes: a tile has none), at least four
    positions, closed, each [lon, lat] with lon in [-180, 180] and lat in [-90, 90]. The ring is
    returned counter-clockwise whatever order it was written in.
    """
    if not isinstance(value, dict) or value.get("type") != "Polygon":
        raise ValueError('must be a GeoJSON Polygon: {"type": "Polygon", "coordinates": [[[lon, lat], ...]]}')
    rings = value.get("coordinates")
    if not isinstance(rings, list) or len(rings) != 1 or not isinstance(rings[0], list):
        raise ValueError("must hold exactly one ring (a tile's outline, no holes)")
    ring: Ring = []
    for i, position in enumerate(rings[0]):
        if (
            not isinstance(position, list)
            or len(position) != 2
            or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in position)
        ):
            raise ValueError(f"position {i} must be [lon, lat], two numbers")
        lon, lat = float(position[0]), float(position[1])
        if not (math.isfinite(lon) and math.isfinite(lat)) or not (-180 <= lon <= 180 and -90 <= lat <= 90):
            raise ValueError(f"position {i} [{position[0]}, {position[1]}] is not a longitude / latitude")
        ring.append([lon, lat])
    if len(ring) < 4:
        raise ValueError(f"the ring has {len(ring)} positions; a closed polygon needs at least 4")
    if ring[0] != ring[-1]:
        raise ValueError("the ring is not closed: its last position must equal its first")
    if signed_area(ring) == 0:
        raise ValueError("the ring encloses no area")
    return ring if signed_area(ring) > 0 else ring[::-1]
