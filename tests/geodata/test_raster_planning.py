"""Planning a cut: windows counted, not listed; a dry run; a part of the raster with --bounds."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import pytest
from geo_rasters import NORTH, PIXEL_M, WEST

from geoloc.cli import main
from geoloc.errors import GeolocError
from geoloc.geodata.raster import TilingSettings, cut_raster, plan_cut


@pytest.fixture
def sparse_raster(tmp_path: Path) -> Path:
    """10^6 x 10^6 pixels of 1 m in UTM 18N, every block missing (GDAL's SPARSE_OK): 0.7 MB."""
    import rasterio
    from rasterio.transform import from_origin

    path = tmp_path / "sparse.tif"
    profile = {"tiled": True, "blockxsize": 4096, "blockysize": 4096, "sparse_ok": True, "BIGTIFF": "YES"}
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=10**6,
        height=10**6,
        count=1,
        dtype="uint8",
        nodata=0,
        crs="EPSG:32618",
        transform=from_origin(WEST, NORTH, 1, 1),
        **profile,
    ):
        pass
    return path


def test_millions_of_windows_are_planned_in_fixed_memory(sparse_raster: Path) -> None:
    settings = TilingSettings(tile_m=1000, overlap=0.5)
    plan_cut(sparse_raster, TilingSettings(tile_m=100_000))  # libraries loaded before measuring
    tracemalloc.start()
    try:
        plan = plan_cut(sparse_raster, settings)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # About 4 million windows of 1004 pixels (1 m pixels, UTM's scale away from its meridian).
    assert plan.window_px == (1004, 1004) and plan.windows == 1992 * 1992
    assert peak < 2_000_000  # bytes: 1992 rows of windows, not a list of 4 million windows
    assert plan.window(plan.windows - 1) == (10**6 - 1004, 10**6 - 1004, 1004, 1004)


def test_a_dry_run_counts_and_writes_nothing(
    sparse_raster: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    argv = [
        "tiles",
        str(sparse_raster),
        "--out",
        str(out),
        "--tile-m",
        "1000",
        "--overlap",
        "0.5",
        "--dry-run",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "3968064 windows of 1004 x 1004 pixels in 1992 rows" in printed
    assert not out.exists()
    # --bounds in the raster's CRS: 3 km x 2 km from the top-left corner.
    box = f"{WEST},{NORTH - 2000},{WEST + 3000},{NORTH}"
    assert main([*argv, "--bounds", box]) == 0
    assert "24 windows" in capsys.readouterr().out  # 6 columns x 4 rows of windows 502 pixels apart
    # In degrees, a box inside that one (its lon / lat box, back in UTM, is a little larger).
    from pyproj import Transformer

    to_lonlat = Transformer.from_crs("EPSG:32618", "EPSG:4326", always_xy=True)
    west, north = to_lonlat.transform(WEST + 100, NORTH - 100)
    east, south = to_lonlat.transform(WEST + 2900, NORTH - 1900)
    degrees = [f"--bounds={west},{south},{east},{north}", "--bounds-crs", "EPSG:4326"]  # = : west < 0
    assert main([*argv, *degrees]) == 0
    assert "24 windows" in capsys.readouterr().out


def test_a_cut_of_a_part_gives_the_whole_cut_s_tiles(utm_raster: Path, tmp_path: Path) -> None:
    settings = TilingSettings(tile_m=100, px=16)  # 200-pixel windows of the 1200 x 1000 raster
    whole = cut_raster(utm_raster, tmp_path / "whole", settings)
    # Pixels 300 to 500 across, 20 to 180 down: the windows at columns 200 and 400 of the top row.
    box = (WEST + 300 * PIXEL_M, NORTH - 180 * PIXEL_M, WEST + 500 * PIXEL_M, NORTH - 20 * PIXEL_M)
    part = cut_raster(utm_raster, tmp_path / "part", TilingSettings(tile_m=100, px=16, bounds=box))
    rows = [json.loads(line) for line in part.manifest.read_text().splitlines()]
    assert [(r["window"]["col_off"], r["window"]["row_off"]) for r in rows] == [(200, 0), (400, 0)]
    whole_rows = {json.loads(line)["image"]: line for line in whole.manifest.read_text().splitlines()}
    for row in rows:
        assert json.loads(whole_rows[row["image"]]) == row
        assert (part.manifest.parent / row["image"]).read_bytes() == (
            whole.manifest.parent / row["image"]
        ).read_bytes()
    with pytest.raises(GeolocError, match="do not overlap the raster"):
        plan_cut(utm_raster, TilingSettings(tile_m=100, bounds=(0, 0, 10, 10)))


def test_a_large_cut_says_how_many_windows_before_it_starts(
    utm_raster: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from geoloc.geodata import commands

    monkeypatch.setattr(commands, "MANY_WINDOWS", 10)  # "many" for this 16-window cut
    argv = ["tiles", str(utm_raster), "--out", str(tmp_path / "out"), "--tile-m", "150", "--px", "8"]
    assert main(argv) == 0
    assert (
        "geoloc: note: 16 windows to read; --bounds cuts a part, --dry-run counts" in capsys.readouterr().err
    )
    with pytest.raises(GeolocError, match="give --bounds too"):
        plan_cut(utm_raster, TilingSettings(bounds_crs="EPSG:4326"))


def test_a_tile_covers_its_ground_size_wherever_it_lies(tmp_path: Path) -> None:
    from geo_rasters import noise, write_raster
    from pyproj import Geod, Transformer
    from rasterio.transform import from_origin

    # Web Mercator from 4 to 68 degrees north (its metres stretch 2.7 times up there), 20 km pixels.
    to_3857 = Transformer.from_crs("EPSG:4326", "EPSG:3857", always_xy=True)
    _, north = to_3857.transform(0, 68)
    _, south = to_3857.transform(0, 4)
    rows = round((north - south) / 20_000)
    raster = write_raster(
        tmp_path / "merc.tif",
        noise(3, rows, 150),
        crs="EPSG:3857",
        transform=from_origin(0, north, 20_000, 20_000),
    )
    result = cut_raster(raster, tmp_path / "out", TilingSettings(tile_m=700_000, px=8))
    (small_w, small_h), (large_w, large_h) = result.window_sizes
    assert large_h > 2 * small_h  # windows of more pixels where the pixels cover less ground
    to_lonlat = Transformer.from_crs("EPSG:3857", "EPSG:4326", always_xy=True)
    geod = Geod(ellps="WGS84")
    for row in [json.loads(line) for line in result.manifest.read_text().splitlines()]:
        w = row["window"]
        x0, x1 = w["col_off"] * 20_000, (w["col_off"] + w["width"]) * 20_000
        y0, y1 = north - w["row_off"] * 20_000, north - (w["row_off"] + w["height"]) * 20_000
        left, right = to_lonlat.transform(x0, (y0 + y1) / 2), to_lonlat.transform(x1, (y0 + y1) / 2)
        top, bottom = to_lonlat.transform((x0 + x1) / 2, y0), to_lonlat.transform((x0 + x1) / 2, y1)
        across = geod.inv(*left, *right)[2]
        down = geod.inv(*top, *bottom)[2]
        assert across == pytest.approx(700_000, rel=0.1) and down == pytest.approx(700_000, rel=0.1)


def test_a_lon_lat_raster_reaching_the_pole_is_planned(tmp_path: Path) -> None:
    from geo_rasters import noise, write_raster
    from rasterio.transform import from_origin

    # 0 to 10 degrees east, 85 to 90 degrees south: a pixel's width shrinks to nothing at the pole.
    raster = write_raster(
        tmp_path / "pole.tif", noise(3, 100, 200), crs="EPSG:4326", transform=from_origin(0, -85, 0.05, 0.05)
    )
    plan = plan_cut(raster, TilingSettings(tile_m=20_000))
    windows = [plan.window(i) for i in range(plan.windows)]
    assert windows and all(c >= 0 and r >= 0 and c + w <= 200 and r + h <= 100 for c, r, w, h in windows)
    assert max(r + h for _, r, _, h in windows) == 100  # down to the pole
    _, largest = plan.grid.sizes()
    assert largest[0] == 200  # near the pole a row's tile takes the raster's whole width
