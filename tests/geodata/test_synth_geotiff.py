"""The synthetic city as one UTM GeoTIFF, and the demo of the real path on it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torch_threads import one_torch_thread  # noqa: F401  (autouse fixture)

from geoloc.cli import main


def test_the_raster_cuts_back_into_the_city_s_own_tiles(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    import rasterio

    assert main(["synth", str(tmp_path / "city"), "--tiles", "10", "--seed", "3", "--geotiff"]) == 0
    assert "city.tif" in capsys.readouterr().out
    with rasterio.open(tmp_path / "city" / "city.tif") as src:
        assert src.crs.to_string() == "EPSG:32618" and (src.width, src.height) == (4 * 128, 3 * 128)
        assert src.res == pytest.approx((150 / 128, 150 / 128))
    assert (
        main(["tiles", str(tmp_path / "city" / "city.tif"), "--out", str(tmp_path / "cut"), "--px", "128"])
        == 0
    )
    synth = [json.loads(line) for line in (tmp_path / "city" / "manifest.jsonl").read_text().splitlines()]
    cut = [json.loads(line) for line in (tmp_path / "cut" / "manifest.jsonl").read_text().splitlines()]
    assert len(cut) == 10  # 12 cells, the last two empty: skipped as nodata
    for tile in synth:
        (same,) = [
            c for c in cut if abs(c["lat"] - tile["lat"]) < 1e-6 and abs(c["lon"] - tile["lon"]) < 1e-6
        ]
        # The same place, the same footprint, the same pixels: the raster path loses nothing.
        assert np.allclose(same["footprint"]["coordinates"], tile["footprint"]["coordinates"], atol=1e-8)
        original = np.asarray(Image.open(tmp_path / "city" / tile["image"]))
        assert np.array_equal(np.asarray(Image.open(tmp_path / "cut" / same["image"])), original)


def test_a_city_on_a_lat_lon_grid_has_footprints_too(tmp_path: Path) -> None:
    from geoloc.data.manifest import read_manifest
    from geoloc.data.synth import generate_city

    records = read_manifest(generate_city(tmp_path / "c", tiles=4, seed=0)).records
    for record in records:
        lons, lats = zip(*record.footprint, strict=True)
        assert min(lons) < record.lon < max(lons) and min(lats) < record.lat < max(lats)
    assert not (tmp_path / "c" / "city.tif").exists()


def test_demo_map_runs_the_real_path_and_serves_the_map(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uvicorn
    from fastapi.testclient import TestClient

    served = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: served.update(app=app, **kwargs))
    out = tmp_path / "demo"
    argv = ["demo-map", "--out", str(out), "--tiles", "22", "--model", "tiny-smolvlm", "--port", "8123"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "22 tiles, 3 empty windows skipped" in printed  # a 5 x 5 grid of which 22 are drawn
    assert printed.count("Query ") == 2  # 22 tiles: 2 in the test split
    assert "serving the map on http://127.0.0.1:8123/" in printed
    collection = json.loads((out / "results.geojson").read_text())
    assert collection["type"] == "FeatureCollection" and len(collection["features"]) == 5
    assert served["port"] == 8123
    with TestClient(served["app"]) as client:
        assert "leaflet" in client.get("/").text
        body = client.post("/search", json={"text": "a red building", "k": 3, "format": "geojson"}).json()
        assert [f["geometry"]["type"] for f in body["features"]] == ["Polygon"] * 3
