"""Where a search looks: the tiles whose centre lies inside an area, or within a radius of a point.

    Region.bbox(west, south, east, north)       degrees; west > east crosses the antimeridian
    Region.from_geojson(obj)                    a Polygon, MultiPolygon, Feature or FeatureCollection
    Region.near(lat, lon, radius_km)            a great-circle radius around a point

A region only chooses rows; the search over those rows is the index's (see `SearchIndex`), so a
search within a region ranks exactly the tiles inside it. Positions are WGS84 [lon, lat], as in
GeoJSON (RFC 7946): a geometry that crosses the antimeridian comes split into parts, and a bbox
that crosses it has west > east. Rings are read as the area they enclose: an unclosed ring is
closed, and a self-crossing one is repaired the way `shapely.make_valid` repairs it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

from geoloc.distance import EARTH_RADIUS_KM, haversine_km
from geoloc.errors import GeolocError

MAX_RADIUS_KM = math.pi * EARTH_RADIUS_KM  # half the Earth's circumference: the whole sphere
_AREAS = ("Polygon", "MultiPolygon")


def _check_lat_lon(lat: float, lon: float, where: str) -> None:
    if not (math.isfinite(lat) and -90 <= lat <= 90):
        raise GeolocError(f"{where}: latitude {lat} is not between -90 and 90")
    if not (math.isfinite(lon) and -180 <= lon <= 180):
        raise GeolocError(f"{where}: longitude {lon} is not between -180 and 180")


@dataclass(frozen=True)
class Region:
    """An area (`area`, a shapely geometry in lon / lat) and / or a circle (`centre`, `radius_km`).

    Given both, a tile must lie in both.
    """

    area: BaseGeometry | None = None
    centre: tuple[float, float] | None = None  # (lat, lon)
    radius_km: float | None = None

    @classmethod
    def bbox(cls, west: float, south: float, east: float, north: float) -> Region:
        """The box between two meridians and two parallels; west > east crosses the antimeridian."""
        where = f"bbox {west},{south},{east},{north}"
        _check_lat_lon(south, west, where)
        _check_lat_lon(north, east, where)
        if south > north:
            raise GeolocError(f"{where}: south ({south}) is north of north ({north})")
        if west <= east:
            return cls(area=shapely.box(west, south, east, north))
        # RFC 7946 section 5.2: the two parts on either side of the antimeridian.
        return cls(
            area=shapely.MultiPolygon(
                [shapely.box(west, south, 180, north), shapely.box(-180, south, east, north)]
            )
        )

    @classmethod
    def from_geojson(cls, obj: Any, where: str = "the region") -> Region:
        """The area of a GeoJSON Polygon, MultiPolygon, or a Feature / FeatureCollection of them."""
        return cls(area=_area(obj, where))

    @classmethod
    def near(cls, lat: float, lon: float, radius_km: float) -> Region:
        where = f"near {lat},{lon}"
        _check_lat_lon(lat, lon, where)
        if not (math.isfinite(radius_km) and 0 < radius_km <= MAX_RADIUS_KM):
            raise GeolocError(
                f"{where}: the radius must be above 0 and at most {MAX_RADIUS_KM:.0f} km, not {radius_km}"
            )
        return cls(centre=(lat, lon), radius_km=radius_km)

    def __and__(self, other: Region) -> Region:
        """Tiles in both regions (one given as an area, the other as a circle)."""
        if (self.area is not None and other.area is not None) or (self.centre and other.centre):
            raise ValueError("combine an area with a circle, not two of a kind")
        return Region(self.area if self.area is not None else other.area, self.centre or other.centre,
                      self.radius_km or other.radius_km)  # fmt: skip

    def contains(self, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
        """Which points (degrees; NaN for a tile without coordinates) lie in the region, edges included."""
        lat, lon = np.asarray(lat, dtype=np.float64), np.asarray(lon, dtype=np.float64)
        inside = np.isfinite(lat) & np.isfinite(lon)
        if self.area is not None:
            west, south, east, north = self.area.bounds
            inside &= (lat >= south) & (lat <= north) & (lon >= west) & (lon <= east)
            candidates = np.flatnonzero(inside)  # the exact test only on the points in its bounds
            inside[candidates] = shapely.intersects_xy(self.area, lon[candidates], lat[candidates])
        if self.centre is not None:
            candidates = np.flatnonzero(inside)
            distance = haversine_km(self.centre[0], self.centre[1], lat[candidates], lon[candidates])
            inside[candidates] = distance <= self.radius_km
        return inside


def _area(obj: Any, where: str) -> BaseGeometry:
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        raise GeolocError(f'{where}: not a GeoJSON object (an object with a "type")')
    kind = obj["type"]
    if kind == "FeatureCollection":
        features = obj.get("features")
        if not isinstance(features, list) or not features:
            raise GeolocError(f"{where}: a FeatureCollection without features")
        return shapely.union_all([_area(f, f"{where}, feature {i}") for i, f in enumerate(features)])
    if kind == "Feature":
        return _area(obj.get("geometry"), f"{where} (its geometry)")
    if kind not in _AREAS:
        raise GeolocError(f"{where}: a {kind} encloses no area; give a Polygon or MultiPolygon")
    polygons = [obj.get("coordinates")] if kind == "Polygon" else obj.get("coordinates")
    if not isinstance(polygons, list) or not polygons:
        raise GeolocError(f"{where}: a {kind} without coordinates")
    return shapely.make_valid(shapely.MultiPolygon([_polygon(p, where) for p in polygons]))


def _polygon(rings: Any, where: str) -> shapely.Polygon:
    if not isinstance(rings, list) or not rings:
        raise GeolocError(f"{where}: a polygon must be a list of rings of [lon, lat] positions")
    checked = []
    for ring in rings:
        if not isinstance(ring, list) or len(ring) < 3:
            raise GeolocError(f"{where}: a ring needs at least 3 positions, got {ring!r:.80}")
        for position in ring:
            if not _is_position(position):
                raise GeolocError(f"{where}: a position must be [lon, lat], not {position!r:.80}")
            _check_lat_lon(position[1], position[0], where)
        checked.append([(p[0], p[1]) for p in ring])
    return shapely.Polygon(checked[0], checked[1:])


def _is_position(value: Any) -> bool:
    numbers = isinstance(value, list) and all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in value
    )
    return numbers and 2 <= len(value) <= 3


def parse_within(value: str) -> Region:
    """The CLI's --within: `W,S,E,N` in degrees, or a GeoJSON file."""
    parts = value.split(",")
    if len(parts) == 4:
        try:
            return Region.bbox(*(float(p) for p in parts))
        except ValueError:
            pass  # not four numbers: perhaps a file whose name has commas
    path = Path(value)
    if not path.is_file():
        raise GeolocError(f"--within {value}: neither W,S,E,N (four numbers, degrees) nor a GeoJSON file")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise GeolocError(f"{path}: not readable as GeoJSON ({error})") from error
    return Region.from_geojson(obj, str(path))


def parse_near(value: str, radius_km: float | None) -> Region:
    """The CLI's --near LAT,LON with --radius-km R."""
    parts = value.split(",")
    try:
        lat, lon = (float(p) for p in parts)
    except ValueError:
        raise GeolocError(f"--near {value}: give LAT,LON in degrees, e.g. --near 48.85,2.35") from None
    if radius_km is None:
        raise GeolocError("--near needs --radius-km, the search radius in kilometres")
    return Region.near(lat, lon, radius_km)
