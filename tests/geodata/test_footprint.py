"""Footprints as GIS tools draw them: cut in two across the antimeridian (RFC 7946), longitudes in
range, and curved edges of large tiles kept."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from geo_rasters import noise, write_raster

from geoloc.data.manifest import read_manifest
from geoloc.geodata.footprint import bounds, geometry, lon_extent, make_ring, parse_footprint, signed_area
from geoloc.geodata.geojson import feature_collection
from geoloc.geodata.raster import TilingSettings, cut_raster


def _inside(point: tuple[float, float], ring: list[list[float]]) -> bool:
    """Ray casting: whether `point` lies inside the closed ring."""
    x, y = point
    inside = False
    for (x0, y0), (x1, y1) in zip(ring[:-1], ring[1:], strict=True):
        if (y0 > y) != (y1 > y) and x < x0 + (y - y0) * (x1 - x0) / (y1 - y0):
            inside = not inside
    return inside


def _polygons(shape: dict) -> list[list[list[float]]]:
    """The exterior rings of a Polygon or MultiPolygon."""
    return [shape["coordinates"][0]] if shape["type"] == "Polygon" else [p[0] for p in shape["coordinates"]]


def _rows(manifest: Path) -> list[dict]:
    return [json.loads(line) for line in manifest.read_text().splitlines()]


@pytest.fixture
def zone_60_south(tmp_path: Path) -> Path:
    """2 x 1.5 km in UTM 60S (Fiji) with 10 m pixels; 180 degrees runs through its second column of tiles."""
    from rasterio.transform import from_origin

    return write_raster(
        tmp_path / "fiji.tif",
        noise(3, 150, 200),
        crs="EPSG:32760",
        transform=from_origin(819_500, 8_174_000, 10, 10),
    )


def test_utm_tiles_across_180_are_cut_in_two(zone_60_south: Path, tmp_path: Path) -> None:
    result = cut_raster(zone_60_south, tmp_path / "out", TilingSettings(tile_m=500, px=16))
    rows = _rows(result.manifest)
    assert len(rows) == 12
    crossing = 0
    for row in rows:
        shape = row["footprint"]
        parts = _polygons(shape)
        for ring in parts:
            assert ring[0] == ring[-1] and signed_area(ring) > 0
            assert all(-180 <= lon <= 180 for lon, _ in ring)
        assert -180 <= row["lon"] <= 180
        # The centre lies inside its own footprint (in one of its parts).
        assert sum(_inside((row["lon"], row["lat"]), ring) for ring in parts) == 1
        if shape["type"] == "MultiPolygon":
            crossing += 1
            assert len(parts) == 2 and row["window"]["col_off"] == 50
            east_part, west_part = sorted(parts, key=lambda ring: -max(lon for lon, _ in ring))
            assert max(lon for lon, _ in east_part) == 180 and min(lon for lon, _ in west_part) == -180
    assert crossing == 3  # one column of three rows

    # Read back, each footprint is one small ring again: a tile 500 m wide, not the whole world.
    records = read_manifest(result.manifest, require_texts=False).records
    for record in records:
        west, _, east, _ = bounds([list(p) for p in record.footprint])
        assert 0 < east - west < 0.01
    # As GeoJSON: one geometry type, and a bbox with west > east (RFC 7946, section 5.2).
    results = [
        {"key": r.key, "lat": r.lat, "lon": r.lon, "footprint": [list(p) for p in r.footprint]}
        for r in records
    ]
    collection = feature_collection(results)
    assert {f["geometry"]["type"] for f in collection["features"]} == {"MultiPolygon"}
    west, south, east, north = collection["bbox"]
    assert 179.98 < west < 180 and -180 < east < -179.98 and south < north


def test_a_lon_lat_raster_past_180_writes_longitudes_in_range(tmp_path: Path) -> None:
    from rasterio.transform import from_origin

    # 179.995 to 180.015 degrees east: the last two thirds lie past 180.
    path = write_raster(
        tmp_path / "past.tif",
        noise(3, 100, 200),
        crs="EPSG:4326",
        transform=from_origin(179.995, -16.5, 1e-4, 1e-4),
    )
    result = cut_raster(path, tmp_path / "out", TilingSettings(tile_m=500, px=16))
    rows = _rows(result.manifest)
    for row in rows:
        assert -180 <= row["lon"] <= 180
        assert all(-180 <= lon <= 180 for ring in _polygons(row["footprint"]) for lon, _ in ring)
    assert min(row["lon"] for row in rows) < -179.99  # the tiles past 180 are written as west of it
    records = read_manifest(result.manifest, require_texts=False).records  # what `index build` reads
    assert len(records) == len(rows)


def test_a_footprint_round_trips_through_its_two_parts() -> None:
    ring = make_ring([(179.99, -16.0), (179.99, -16.01), (-179.995, -16.012), (-179.99, -15.99)])
    assert np.allclose([lon for lon, _ in ring], [179.99, 179.99, 180.005, 180.01, 179.99])
    shape = geometry(ring)
    assert shape["type"] == "MultiPolygon" and len(shape["coordinates"]) == 2
    assert parse_footprint(shape) == ring
    # Two parts that do not meet at the antimeridian are not one tile.
    apart = {
        "type": "MultiPolygon",
        "coordinates": [[[[0, 0], [1, 0], [1, 1], [0, 0]]], [[[5, 5], [6, 5], [6, 6], [5, 5]]]],
    }
    with pytest.raises(ValueError, match="cut in two at the antimeridian"):
        parse_footprint(apart)


def test_the_longitude_extent_crosses_180_only_when_narrower() -> None:
    assert lon_extent([(179.99, 180.01), (170.0, 171.0)]) == (170.0, -179.99)
    assert lon_extent([(-74.1, -74.0), (-73.9, -73.8)]) == (-74.1, -73.8)
    assert lon_extent([(-170.0, -169.0), (169.0, 170.0)]) == (169.0, -169.0)


def test_large_tiles_get_their_curved_edges(tmp_path: Path) -> None:
    from pyproj import Transformer
    from rasterio.transform import from_origin

    # Polar stereographic north (EPSG:3413), 1 km pixels over Greenland: 100 km tiles, whose
    # straight edges bow by up to 0.75 km in longitude / latitude.
    transform = from_origin(-300_000, -1_700_000, 1000, 1000)
    path = write_raster(tmp_path / "polar.tif", noise(3, 300, 300), crs="EPSG:3413", transform=transform)
    result = cut_raster(path, tmp_path / "out", TilingSettings(tile_m=100_000, px=16))
    to_lonlat = Transformer.from_crs("EPSG:3413", "EPSG:4326", always_xy=True)
    along = [0.001 + 0.998 * t / 20 for t in range(21)]
    inside = [(u, 0.001) for u in along] + [(0.001, v) for v in along]
    inside += [(1 - u, 1 - v) for u, v in inside]  # 100 m inside each of the four edges
    for row in _rows(result.manifest):
        (ring,) = _polygons(row["footprint"])
        w = row["window"]
        x0, y0, size = -300_000 + w["col_off"] * 1000, -1_700_000 - w["row_off"] * 1000, w["width"] * 1000
        points = [to_lonlat.transform(x0 + u * size, y0 - v * size) for u, v in inside]
        assert len(ring) > 5 and all(_inside(p, ring) for p in points)
        # The four corners alone would leave some of them outside.
        corners = make_ring(
            [to_lonlat.transform(x0 + u * size, y0 - v * size) for u, v in ((0, 0), (0, 1), (1, 1), (1, 0))]
        )
        assert not all(_inside(p, corners) for p in points)
