"""A tile's footprint: its ground extent as a polygon in WGS84 longitude / latitude.

Inside geoloc a footprint is one ring: a list of [lon, lat] positions, closed (the last equals
the first), counter-clockwise. Its longitudes are continuous: a tile that crosses the
antimeridian keeps one ring, whose westernmost longitude lies in [-180, 180) and whose eastern
side may go past 180 (179.99 ... 180.01). Bounds, heat-map cells and web maps read such a ring
as the small tile it is, not as a band around the earth.

Written out (manifests, GeoJSON) a footprint follows RFC 7946: a Polygon, or, when it crosses
the antimeridian, a MultiPolygon of its two parts cut at 180 degrees (section 3.1.9), every
longitude in [-180, 180]. Reading a manifest joins the parts back into one ring.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

Ring = list[list[float]]
DIGITS = 9  # decimals of a degree: about 0.1 mm on the ground
DENSIFY_TOLERANCE = 1e-6  # degrees, about 0.1 m: a straight lon / lat edge this close stays straight
MAX_HALVINGS = 5  # at most 32 segments an edge


def signed_area(ring: Sequence[Sequence[float]]) -> float:
    """Twice the shoelace area of a closed ring in (x, y) = (lon, lat): positive when counter-clockwise."""
    return sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(ring[:-1], ring[1:], strict=True))


def normalise_lon(lon: float) -> float:
    """A longitude in [-180, 180]: 180.01 becomes -179.99; 180 itself stays 180."""
    wrapped = (lon + 180.0) % 360.0 - 180.0
    return 180.0 if wrapped == -180.0 and lon > 0 else wrapped


def make_ring(corners: Sequence[Sequence[float]], digits: int = DIGITS) -> Ring:
    """A closed, counter-clockwise ring with continuous longitudes from a tile's corners, in order.

    The corners may come clockwise (a raster whose rows run south to north, or mirrored); the
    ring is reversed then. Longitudes may come wrapped (179.99 then -179.99, as a projection to
    WGS84 gives them) or past 180: each step between corners is taken the short way round, and
    the ring is shifted by whole turns until its westernmost longitude lies in [-180, 180).
    """
    lons = [float(corners[0][0])]
    for lon, _ in corners[1:]:
        step = (float(lon) - lons[-1] + 180.0) % 360.0 - 180.0
        lons.append(lons[-1] + step)
    shift = 360.0 * math.floor((min(lons) + 180.0) / 360.0)
    lats = [float(lat) for _, lat in corners]
    ring = [[round(lon - shift, digits), round(lat, digits)] for lon, lat in zip(lons, lats, strict=True)]
    if ring[0] != ring[-1]:
        ring.append(list(ring[0]))
    if signed_area(ring) < 0:
        ring.reverse()
    return ring


def _wrapped(step: float) -> float:
    """A longitude difference taken the short way round, in [-180, 180)."""
    return (step + 180.0) % 360.0 - 180.0


def densified(
    corners: Sequence[tuple[float, float]],
    to_lonlat: Callable[[float, float], tuple[float, float]],
    tolerance: float = DENSIFY_TOLERANCE,
) -> list[tuple[float, float]]:
    """[lon, lat] points around a tile given by its `corners` in its own coordinates.

    Each edge is halved until its true midpoint lies within `tolerance` degrees of the straight
    lon / lat line between its ends, at most MAX_HALVINGS times: a 150 m UTM tile keeps its four
    corners, a 700 km Web-Mercator tile or a polar stereographic one gets its curved edges.
    """

    def edge(a: tuple[float, float], b: tuple[float, float], halvings: int) -> list[tuple[float, float]]:
        (lon0, lat0), (lon1, lat1) = to_lonlat(*a), to_lonlat(*b)
        mid = ((a[0] + b[0]) / 2, (a[1] + b[1]) / 2)
        lon, lat = to_lonlat(*mid)
        off_lon = _wrapped(lon - (lon0 + _wrapped(lon1 - lon0) / 2))
        off_lat = lat - (lat0 + lat1) / 2
        if halvings >= MAX_HALVINGS or max(abs(off_lon), abs(off_lat)) <= tolerance:
            return [a]
        return edge(a, mid, halvings + 1) + edge(mid, b, halvings + 1)

    points = []
    for a, b in zip(corners, [*corners[1:], corners[0]], strict=True):
        points += edge(a, b, 0)
    return [to_lonlat(*point) for point in points]


def box_ring(west: float, south: float, east: float, north: float) -> Ring:
    """The ring of a longitude / latitude box."""
    return make_ring([(west, north), (west, south), (east, south), (east, north)])


def _clip(ring: Ring, line: float, keep_west: bool) -> Ring:
    """The part of a closed ring west (or east) of the meridian `line` (Sutherland-Hodgman)."""

    def inside(lon: float) -> bool:
        return lon <= line if keep_west else lon >= line

    part: Ring = []
    for (x0, y0), (x1, y1) in zip(ring[:-1], ring[1:], strict=True):
        if inside(x0):
            part.append([x0, y0])
        if inside(x0) != inside(x1) and line not in (x0, x1):
            lat = y0 + (y1 - y0) * (line - x0) / (x1 - x0)
            part.append([line, round(lat, DIGITS)])
    if part and part[0] != part[-1]:
        part.append(list(part[0]))
    return part


def geometry(ring: Ring) -> dict[str, Any]:
    """The RFC 7946 geometry of a footprint: a Polygon, or a MultiPolygon cut at the antimeridian."""
    if max(lon for lon, _ in ring) <= 180.0:
        return {"type": "Polygon", "coordinates": [ring]}
    west = _clip(ring, 180.0, keep_west=True)
    east = [[round(lon - 360.0, DIGITS), lat] for lon, lat in _clip(ring, 180.0, keep_west=False)]
    parts = [part for part in (west, east) if len(part) >= 4 and signed_area(part) != 0]
    if len(parts) == 1:
        return {"type": "Polygon", "coordinates": parts}
    return {"type": "MultiPolygon", "coordinates": [[part] for part in parts]}


def bounds(ring: Ring) -> tuple[float, float, float, float]:
    """(west, south, east, north) of a ring; east may pass 180 for a ring across the antimeridian."""
    lons = [p[0] for p in ring]
    lats = [p[1] for p in ring]
    return min(lons), min(lats), max(lons), max(lats)


def lon_extent(spans: Iterable[tuple[float, float]]) -> tuple[float, float]:
    """The narrowest (west, east) covering every (west, east) span of continuous longitudes.

    Both ends are in [-180, 180]; west > east when the extent crosses the antimeridian, as an
    RFC 7946 bbox writes it (section 5.2). A whole turn gives (-180, 180).
    """
    starts = sorted(((w + 180.0) % 360.0 - 180.0, e - w) for w, e in spans)
    merged: list[list[float]] = []
    for west, width in starts:
        east = west + width
        if merged and west <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], east)
        else:
            merged.append([west, east])
    if not merged:
        raise ValueError("no longitudes")
    gaps = [
        (merged[(k + 1) % len(merged)][0] + (360.0 if k + 1 == len(merged) else 0.0) - merged[k][1], k)
        for k in range(len(merged))
    ]
    gap, k = max(gaps)
    if gap <= 0:
        return -180.0, 180.0
    return normalise_lon(merged[(k + 1) % len(merged)][0]), normalise_lon(merged[k][1])


def _parse_ring(rings: Any, where: str) -> Ring:
    if not isinstance(rings, list) or len(rings) != 1 or not isinstance(rings[0], list):
        raise ValueError(f"{where}must hold exactly one ring (a tile's outline, no holes)")
    ring: Ring = []
    for i, position in enumerate(rings[0]):
        if (
            not isinstance(position, list)
            or len(position) != 2
            or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in position)
        ):
            raise ValueError(f"{where}position {i} must be [lon, lat], two numbers")
        lon, lat = float(position[0]), float(position[1])
        if not (math.isfinite(lon) and math.isfinite(lat)) or not (-180 <= lon <= 180 and -90 <= lat <= 90):
            where_i = f"{where}position {i} [{position[0]}, {position[1]}]"
            raise ValueError(f"{where_i} is not a longitude / latitude")
        ring.append([lon, lat])
    if len(ring) < 4:
        raise ValueError(f"{where}the ring has {len(ring)} positions; a closed polygon needs at least 4")
    if ring[0] != ring[-1]:
        raise ValueError(f"{where}the ring is not closed: its last position must equal its first")
    if signed_area(ring) == 0:
        raise ValueError(f"{where}the ring encloses no area")
    return ring if signed_area(ring) > 0 else ring[::-1]


def _cut_edge(ring: Ring, line: float) -> int:
    """The index i of the one edge ring[i] -> ring[i + 1] that lies along the meridian `line`."""
    edges = [i for i in range(len(ring) - 1) if ring[i][0] == ring[i + 1][0] == line]
    if len(edges) != 1:
        raise ValueError("a MultiPolygon footprint must be one tile cut in two at the antimeridian")
    return edges[0]


def _from(ring: Ring, start: int) -> Ring:
    """The open ring (no closing position) rotated to begin at position `start`."""
    positions = ring[:-1]
    start %= len(positions)
    return positions[start:] + positions[:start]


def _on_a_straight_edge(before: list[float], point: list[float], after: list[float]) -> bool:
    cross = (point[0] - before[0]) * (after[1] - point[1]) - (point[1] - before[1]) * (after[0] - point[0])
    return abs(cross) <= 1e-8 * (abs(after[0] - before[0]) + abs(after[1] - before[1]))


def _join_at_antimeridian(west: Ring, east: Ring) -> Ring:
    """One ring from the two parts of a footprint cut at 180: `west` ends at 180, `east` starts at -180."""
    east = [[lon + 360.0, lat] for lon, lat in east]
    i, j = _cut_edge(west, 180.0), _cut_edge(east, 180.0)
    # Counter-clockwise, the western part runs north along the cut and the eastern part south.
    if west[i] != east[j + 1] or west[i + 1] != east[j]:
        raise ValueError("the two parts of a MultiPolygon footprint must meet along the antimeridian")
    west_path = _from(west, i + 1)  # from the cut's north end round to its south end
    east_path = _from(east, j + 1)  # from the cut's south end round to its north end
    joined = west_path + east_path[1:-1]
    # Drop the points the cut added on the antimeridian, where the ring runs straight through it.
    n = len(joined)
    kept = [
        p
        for k, p in enumerate(joined)
        if not (p[0] == 180.0 and _on_a_straight_edge(joined[k - 1], p, joined[(k + 1) % n]))
    ]
    return make_ring(kept + [kept[0]])


def parse_footprint(value: Any) -> Ring:
    """The ring of a manifest's `footprint` field, checked; ValueError says what is wrong.

    Accepted: a GeoJSON Polygon with one ring (no holes: a tile has none), at least four
    positions, closed, each [lon, lat] with lon in [-180, 180] and lat in [-90, 90]; or a
    MultiPolygon of two such polygons that meet along the antimeridian (RFC 7946, 3.1.9), which
    becomes one ring with continuous longitudes. The ring is returned counter-clockwise whatever
    order it was written in.
    """
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "Polygon":
        return _parse_ring(value.get("coordinates"), "")
    if kind == "MultiPolygon":
        polygons = value.get("coordinates")
        if not isinstance(polygons, list) or not 1 <= len(polygons) <= 2:
            raise ValueError("a MultiPolygon footprint must be one tile cut in two at the antimeridian")
        rings = [_parse_ring(rings, f"part {k}: ") for k, rings in enumerate(polygons)]
        if len(rings) == 1:
            return rings[0]
        west, east = sorted(rings, key=lambda ring: -max(lon for lon, _ in ring))
        return _join_at_antimeridian(west, east)
    raise ValueError(
        'must be a GeoJSON Polygon: {"type": "Polygon", "coordinates": [[[lon, lat], ...]]} '
        "(or a MultiPolygon cut at the antimeridian)"
    )
