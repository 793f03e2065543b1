"""A manifest straight from a z/x/y.png folder: footprints from the tile math."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import mercantile
import numpy as np
import pytest
from PIL import Image

from geoloc.cli import main
from geoloc.data.manifest import read_manifest
from geoloc.geodata.footprint import signed_area


def _tile(folder: Path, z: int, x: int, y: int, suffix: str = ".png") -> None:
    path = folder / str(z) / str(x) / f"{y}{suffix}"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (256, 256), (x % 256, y % 256, z)).save(path)


@pytest.fixture
def xyz_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "xyz"
    # Four tiles of lower Manhattan at zoom 17, and one at zoom 16.
    for x, y in ((38589, 49284), (38590, 49284), (38589, 49285), (38590, 49285)):
        _tile(folder, 17, x, y)
    _tile(folder, 16, 19294, 24642, ".jpg")
    (folder / "README.txt").write_text("tiles from somewhere\n")  # files beside z/ are not tiles
    return folder


def test_manifest_from_tile_math(xyz_folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["xyz", str(xyz_folder)]) == 0
    assert "5 tiles" in capsys.readouterr().out
    rows = [json.loads(line) for line in (xyz_folder / "manifest.jsonl").read_text().splitlines()]
    assert [r["image"] for r in rows] == [
        "16/19294/24642.jpg",
        "17/38589/49284.png",
        "17/38589/49285.png",
        "17/38590/49284.png",
        "17/38590/49285.png",
    ]
    for row in rows:
        z, x, y = (row["tile"][name] for name in "zxy")
        box = mercantile.bounds(x, y, z)
        ring = row["footprint"]["coordinates"][0]
        assert ring[0] == ring[-1] and signed_area(ring) > 0
        assert {tuple(p) for p in ring} == {
            (round(box.west, 9), round(box.south, 9)),
            (round(box.west, 9), round(box.north, 9)),
            (round(box.east, 9), round(box.south, 9)),
            (round(box.east, 9), round(box.north, 9)),
        }
        assert box.west < row["lon"] < box.east and box.south < row["lat"] < box.north
        assert row["crs"] == "EPSG:3857"
    # Lower Manhattan, and a gallery geoloc reads as it is.
    assert rows[1]["lat"] == pytest.approx(40.705, abs=0.005)
    assert rows[1]["lon"] == pytest.approx(-74.01, abs=0.005)
    gallery = read_manifest(xyz_folder, require_texts=False)
    assert len(gallery) == 5 and all(r.footprint for r in gallery.records)


def test_tms_rows_count_from_the_south(tmp_path: Path) -> None:
    from geoloc.geodata.xyz import xyz_rows

    folder = tmp_path / "tms"
    _tile(folder, 17, 38589, 2**17 - 1 - 49284)
    (row,) = xyz_rows(folder, tms=True)
    assert row["tile"] == {"z": 17, "x": 38589, "y": 49284}
    assert row["lat"] == pytest.approx(40.70, abs=0.01)


@pytest.mark.parametrize(
    "z, x, y, reason",
    [
        ("17", "38589", "north", "row 'north' is not a number"),
        ("17", "col7", "49284", "column 'col7' is not a number"),
        ("zoom", "38589", "49284", "zoom level 'zoom' is not a number"),
        ("2", "4", "0", "does not exist"),
    ],
)
def test_bad_names_are_refused_and_nothing_written(
    xyz_folder: Path, capsys: pytest.CaptureFixture[str], z: str, x: str, y: str, reason: str
) -> None:
    bad = xyz_folder / z / x / f"{y}.png"
    bad.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8)).save(bad)
    assert main(["xyz", str(xyz_folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and reason in err and str(xyz_folder) in err
    assert not (xyz_folder / "manifest.jsonl").exists()


TILEMAP = """<?xml version="1.0" encoding="utf-8"?>
<TileMap version="1.0.0" tilemapservice="http://tms.osgeo.org/1.0.0">
  <SRS>{srs}</SRS>
  <BoundingBox minx="-74.0174" miny="40.7086" maxx="-74.0159" maxy="40.7097"/>
  <TileFormat width="256" height="256" mime-type="image/png" extension="png"/>
  <TileSets profile="{profile}"><TileSet href="17" units-per-pixel="1.19432856674194" order="17"/></TileSets>
</TileMap>
"""


def _gdal2tiles_layout(folder: Path, profile: str = "mercator", srs: str = "EPSG:3857") -> Path:
    """What gdal2tiles.py writes by default: TMS rows, the XML, .kml beside tiles, transparent edges."""
    _tile(folder, 17, 38589, 2**17 - 1 - 49284)
    edge = folder / "17" / "38590" / f"{2**17 - 1 - 49284}.png"
    edge.parent.mkdir(parents=True)
    Image.new("RGBA", (256, 256), (0, 0, 0, 0)).save(edge)  # beyond the raster's edge: transparent
    (folder / "17" / "38589" / f"{2**17 - 1 - 49284}.kml").write_text("<kml/>")
    (folder / "doc.kml").write_text("<kml/>")
    (folder / "tilemapresource.xml").write_text(TILEMAP.format(profile=profile, srs=srs))
    return folder


def test_a_gdal2tiles_pyramid_is_read_as_its_xml_says(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _gdal2tiles_layout(tmp_path / "pyramid")
    assert main(["xyz", str(folder)]) == 0  # no --tms: the XML says the rows count from the south
    printed = capsys.readouterr().out
    assert "1 tiles, rows counted from the south (TMS)" in printed
    assert "1 mostly transparent tiles and 1 other files skipped" in printed
    (row,) = [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]
    assert row["tile"] == {"z": 17, "x": 38589, "y": 49284}  # XYZ numbers; the file is 17/38589/81787.png
    assert row["lat"] == pytest.approx(40.70, abs=0.01) and row["lon"] == pytest.approx(-74.01, abs=0.01)


def test_a_geodetic_pyramid_is_placed_on_its_lon_lat_grid(tmp_path: Path) -> None:
    from geoloc.geodata.xyz import scan_xyz

    folder = tmp_path / "geodetic"
    # gdal2tiles -p geodetic (its default grid: a zoom-0 tile of 360 degrees) over lower Manhattan.
    _tile(folder, 16, 19293, 23794)
    (folder / "tilemapresource.xml").write_text(TILEMAP.format(profile="geodetic", srs="EPSG:4326"))
    (row,) = scan_xyz(folder).rows
    side = 360 / 2**16
    west, south = -180 + 19293 * side, -90 + 23794 * side
    assert row["crs"] == "EPSG:4326" and row["tile"] == {"z": 16, "x": 19293, "y": 23794}
    assert row["lon"] == pytest.approx(west + side / 2) and row["lat"] == pytest.approx(south + side / 2)
    assert -74.0174 > west and 40.7097 > south  # on the data's BoundingBox, not 9,500 km away


def test_a_raster_profile_pyramid_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = _gdal2tiles_layout(tmp_path / "raster", profile="raster", srs="")
    assert main(["xyz", str(folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        "\n" not in err and "tilemapresource.xml" in err and "raster pyramid" in err and "-p mercator" in err
    )
    assert not (folder / "manifest.jsonl").exists()


def test_a_link_leading_outside_the_folder_is_refused(
    xyz_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    outside = tmp_path / "elsewhere.png"
    Image.new("RGB", (8, 8)).save(outside)
    (xyz_folder / "17" / "38589" / "49286.png").symlink_to(outside)
    assert main(["xyz", str(xyz_folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert "49286.png: a symbolic link to" in err and "outside" in err
    assert not (xyz_folder / "manifest.jsonl").exists()


@pytest.mark.skipif(
    shutil.which("gdal2tiles.py") is None, reason="GDAL's command-line tools are not installed"
)
@pytest.mark.parametrize("profile", [[], ["-p", "geodetic"], ["-p", "geodetic", "--tmscompatible"]])
def test_gdal2tiles_own_output_lands_where_the_raster_is(tmp_path: Path, profile: list[str]) -> None:
    import rasterio
    from geo_rasters import noise, write_raster
    from rasterio.warp import transform_bounds

    from geoloc.geodata.xyz import scan_xyz

    raster = write_raster(tmp_path / "r.tif", noise(3, 256, 256))
    folder = tmp_path / "pyramid"
    # 128 m of raster; zoom 19's tiles are about 45 m here: a few whole ones, transparent edges.
    subprocess.run(["gdal2tiles.py", "-q", *profile, "-z", "19", str(raster), str(folder)], check=True)
    scan = scan_xyz(folder)  # no tms=True: the pyramid's XML says so
    assert scan.tms and len(scan.rows) >= 2 and scan.transparent
    with rasterio.open(raster) as src:
        west, south, east, north = transform_bounds(src.crs, "EPSG:4326", *src.bounds)
    for row in scan.rows:
        lons, lats = zip(*row["footprint"]["coordinates"][0], strict=True)
        assert min(lons) < east and max(lons) > west and min(lats) < north and max(lats) > south


def _mbtiles(path: Path, tiles: dict[tuple[int, int, int], bytes], form: str = "png") -> Path:
    """An MBTiles file: tiles by (z, x, TMS row)."""
    import sqlite3

    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE metadata (name TEXT, value TEXT)")
        db.execute(
            "CREATE TABLE tiles (zoom_level INTEGER, tile_column INTEGER, tile_row INTEGER, tile_data BLOB)"
        )
        db.execute("INSERT INTO metadata VALUES ('format', ?)", (form,))
        db.executemany("INSERT INTO tiles VALUES (?, ?, ?, ?)", [(*key, data) for key, data in tiles.items()])
    return path


def _png(colour: tuple[int, int, int]) -> bytes:
    import io

    buffer = io.BytesIO()
    Image.new("RGB", (256, 256), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def test_an_mbtiles_file_becomes_a_gallery(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tms_row = 2**17 - 1 - 49284
    source = _mbtiles(
        tmp_path / "area.mbtiles",
        {(17, 38589, tms_row): _png((200, 0, 0)), (17, 38590, tms_row): _png((0, 200, 0))},
    )
    out = tmp_path / "gallery"
    assert main(["xyz", str(source), "--out", str(out)]) == 0
    assert "2 tiles, rows counted from the north (XYZ)" in capsys.readouterr().out
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [r["image"] for r in rows] == ["17/38589/49284.png", "17/38590/49284.png"]
    assert rows[0]["lat"] == pytest.approx(40.70, abs=0.01) and rows[0]["lon"] == pytest.approx(
        -74.01, abs=0.01
    )
    assert np.asarray(Image.open(out / rows[0]["image"]))[0, 0].tolist() == [200, 0, 0]
    assert len(read_manifest(out, require_texts=False)) == 2
    # Vector tiles are not images: refused, and no folder is left.
    vector = _mbtiles(tmp_path / "vector.mbtiles", {(0, 0, 0): b"\x1f\x8b"}, form="pbf")
    assert main(["xyz", str(vector), "--out", str(tmp_path / "v")]) == 2
    assert "holds pbf tiles" in capsys.readouterr().err and not (tmp_path / "v").exists()
