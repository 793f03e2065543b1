"""GeoJSON out, checked against RFC 7946; footprints in manifests, checked on the way in."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from torch_threads import one_torch_thread  # noqa: F401  (autouse fixture)

from geoloc.cli import main
from geoloc.data.manifest import read_manifest
from geoloc.errors import DataError
from geoloc.geodata.footprint import box_ring, signed_area
from geoloc.geodata.geojson import feature_collection


def assert_rfc7946(collection: dict, lon_range: tuple[float, float], lat_range: tuple[float, float]) -> None:
    """The parts of RFC 7946 a reader relies on: types, [lon, lat] order, closed CCW rings."""
    assert collection["type"] == "FeatureCollection" and isinstance(collection["features"], list)
    assert "crs" not in collection  # RFC 7946 removed it: WGS84 is implied
    for feature in collection["features"]:
        assert feature["type"] == "Feature" and isinstance(feature["properties"], dict)
        geometry = feature["geometry"]
        assert geometry["type"] == "Polygon"
        (ring,) = geometry["coordinates"]  # an exterior ring, no holes
        assert len(ring) >= 4 and ring[0] == ring[-1]  # closed (3.1.6)
        assert signed_area(ring) > 0  # exterior counter-clockwise (3.1.6)
        for lon, lat in ring:  # longitude first (3.1.1)
            assert lon_range[0] <= lon <= lon_range[1] and lat_range[0] <= lat <= lat_range[1]
        properties = feature["properties"]
        assert "centre" not in properties
        assert all(not isinstance(value, (list, dict)) for value in properties.values())
        assert isinstance(properties["lon"], float) and isinstance(properties["lat"], float)
    west, south, east, north = collection["bbox"]
    assert west < east and south < north


def test_results_without_footprints_become_points_or_null_geometry() -> None:
    results = [
        {"rank": 1, "score": 0.9, "key": "a.png", "lat": 40.7, "lon": -74.0, "group": "a", "footprint": None},
        {"rank": 2, "score": 0.8, "key": "b.png", "lat": None, "lon": None, "group": "b", "footprint": None},
    ]
    collection = feature_collection(results, query="q")
    point, unplaced = collection["features"]
    assert point["geometry"] == {"type": "Point", "coordinates": [-74.0, 40.7]} and point["id"] == "a.png"
    assert unplaced["geometry"] is None and unplaced["properties"]["lon"] is None
    assert collection["query"] == "q" and collection["bbox"] == [-74.0, 40.7, -74.0, 40.7]


def _results() -> list[dict]:
    """A tile with a footprint, one known by its centre only, and one with no coordinates."""
    ring = box_ring(-74.01, 40.70, -74.00, 40.71)
    return [
        {
            "rank": 1,
            "score": 0.9,
            "key": "a.png",
            "lat": 40.705,
            "lon": -74.005,
            "group": "a",
            "footprint": ring,
        },
        {
            "rank": 2,
            "score": 0.8,
            "key": "b.png",
            "lat": 40.72,
            "lon": -74.02,
            "group": "b",
            "footprint": None,
        },
        {"rank": 3, "score": 0.7, "key": "c.png", "lat": None, "lon": None, "group": "c", "footprint": None},
    ]


def test_a_collection_holds_one_geometry_type() -> None:
    collection = feature_collection(_results())
    polygon, centre_only, unplaced = collection["features"]
    assert polygon["geometry"]["type"] == "Polygon"
    assert centre_only["geometry"] is None and unplaced["geometry"] is None  # not a Point among Polygons
    assert (centre_only["properties"]["lon"], centre_only["properties"]["lat"]) == (-74.02, 40.72)
    assert collection["bbox"] == [-74.01, 40.70, -74.00, 40.71]
    # One footprint across the antimeridian makes every polygon a MultiPolygon.
    across = {"rank": 4, "score": 0.6, "key": "d.png", "lat": -16.5, "lon": 180.0, "group": "d"}
    across["footprint"] = box_ring(179.99, -16.51, 180.01, -16.49)
    collection = feature_collection([*_results(), across])
    assert {f["geometry"]["type"] for f in collection["features"] if f["geometry"]} == {"MultiPolygon"}


@pytest.mark.skipif(shutil.which("ogr2ogr") is None, reason="GDAL's command-line tools are not installed")
@pytest.mark.parametrize("driver, suffix", [("ESRI Shapefile", ".shp"), ("GPKG", ".gpkg")])
def test_gdal_converts_the_answer_into_one_typed_layer(tmp_path: Path, driver: str, suffix: str) -> None:
    answer = tmp_path / "hits.geojson"
    answer.write_text(json.dumps(feature_collection(_results(), query="q", k=3)))
    out = tmp_path / f"hits{suffix}"
    done = subprocess.run(["ogr2ogr", "-f", driver, str(out), str(answer)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    info = subprocess.run(
        ["ogrinfo", "-so", "-al", str(out)], capture_output=True, text=True, check=True
    ).stdout
    assert "Geometry: Polygon" in info and "Feature Count: 3" in info


def test_raster_to_tiles_to_index_to_geojson(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The whole path a user with a GeoTIFF takes, through the CLI."""
    from geoloc.data.synth import generate_city

    generate_city(tmp_path / "city", tiles=14, seed=4, geotiff=True)
    gallery, index = tmp_path / "gallery", tmp_path / "index"
    raster = tmp_path / "city" / "city.tif"
    argv = ["tiles", str(raster), "--out", str(gallery), "--tile-m", "150", "--px", "128", "--quiet"]
    assert main(argv) == 0
    # A 4 x 4 grid of tiles of which 14 are drawn: the other two cells are nodata.
    assert "14 tiles written, 2 skipped as mostly nodata" in capsys.readouterr().out
    assert main(["index", "build", "tiny-smolvlm", "--gallery", str(gallery), "--out", str(index)]) == 0
    capsys.readouterr()
    assert main(["search", str(index), "a red building with a pond", "-k", "3", "--format", "geojson"]) == 0
    collection = json.loads(capsys.readouterr().out)
    assert_rfc7946(collection, (-74.03, -74.0), (40.69, 40.71))
    features = collection["features"]
    assert [f["properties"]["rank"] for f in features] == [1, 2, 3]
    assert all({"score", "key", "rank", "lon", "lat"} <= set(f["properties"]) for f in features)
    assert features[0]["properties"]["score"] >= features[1]["properties"]["score"]
    assert collection["query"] == "a red building with a pond" and collection["k"] == 3
    # The same hits as the JSON output, in the same order.
    assert main(["search", str(index), "a red building with a pond", "-k", "3", "--json"]) == 0
    plain = json.loads(capsys.readouterr().out)["results"]
    assert [f["id"] for f in features] == [r["key"] for r in plain]


def _manifest(tmp_path: Path, footprint: object) -> Path:
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    row = {"image": "a.png", "text": "a pond", "footprint": footprint}
    (tmp_path / "manifest.jsonl").write_text(json.dumps(row) + "\n")
    return tmp_path / "manifest.jsonl"


def test_a_clockwise_footprint_is_read_counter_clockwise(tmp_path: Path) -> None:
    clockwise = [[-74.0, 40.7], [-73.99, 40.7], [-73.99, 40.69], [-74.0, 40.69], [-74.0, 40.7]]
    (record,) = read_manifest(_manifest(tmp_path, {"type": "Polygon", "coordinates": [clockwise]})).records
    assert signed_area(record.footprint) > 0 and set(record.footprint) == {tuple(p) for p in clockwise}


@pytest.mark.parametrize(
    "footprint, reason",
    [
        ({"type": "Point", "coordinates": [0, 0]}, "must be a GeoJSON Polygon"),
        (
            {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0]], [[0, 0], [1, 0], [0, 0]]]},
            "one ring",
        ),
        ({"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1]]]}, "not closed"),
        (
            {
                "type": "Polygon",
                "coordinates": [[[47.6, -122.3], [47.7, -122.3], [47.7, -122.2], [47.6, -122.3]]],  # lat, lon
            },
            "not a longitude",
        ),
        ({"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [0, 0]]]}, "at least 4"),
        ("{not json", "not valid JSON"),
    ],
)
def test_bad_footprints_name_the_record(tmp_path: Path, footprint: object, reason: str) -> None:
    with pytest.raises(DataError, match=reason) as error:
        read_manifest(_manifest(tmp_path, footprint))
    assert "line 1" in str(error.value) and "'footprint'" in str(error.value)
