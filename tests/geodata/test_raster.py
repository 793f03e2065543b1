"""Cutting a georeferenced raster into a gallery: placement, nodata, bands, resume, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from geo_rasters import NORTH, PIXEL_M, WEST, noise, write_raster
from PIL import Image

from geoloc.cli import main
from geoloc.data.manifest import read_manifest
from geoloc.errors import GeolocError
from geoloc.geodata import raster as raster_module
from geoloc.geodata.footprint import signed_area
from geoloc.geodata.raster import TilingSettings, cut_raster


def _rows(manifest: Path) -> list[dict]:
    return [json.loads(line) for line in manifest.read_text().splitlines()]


def test_centres_and_footprints_are_pyproj_s_transformation(utm_raster: Path, tmp_path: Path) -> None:
    from pyproj import Transformer

    result = cut_raster(utm_raster, tmp_path / "out", TilingSettings(tile_m=150, overlap=0.5, px=64))
    # 150 m = 300 pixels of 0.5 m (measured geodesically, UTM's scale factor rounds away);
    # stride 150: 7 columns (the last flush with the edge) x 6 rows (0..700, 700 + 300 = 1000).
    assert result.window_px == (300, 300)
    assert (result.windows, result.tiles, result.skipped_nodata) == (42, 42, 0)
    to_wgs84 = Transformer.from_crs("EPSG:32618", "EPSG:4326", always_xy=True)
    rows = _rows(result.manifest)
    assert len(rows) == 42
    for row in rows:
        window = row["window"]
        col, top, size = window["col_off"], window["row_off"], window["width"]
        assert (size, window["height"]) == (300, 300) and row["crs"] == "EPSG:32618"
        x0, y0 = WEST + col * PIXEL_M, NORTH - top * PIXEL_M
        x1, y1 = x0 + size * PIXEL_M, y0 - size * PIXEL_M
        lon, lat = to_wgs84.transform((x0 + x1) / 2, (y0 + y1) / 2)
        assert row["lon"] == pytest.approx(lon, abs=1e-7) and row["lat"] == pytest.approx(lat, abs=1e-7)
        ring = row["footprint"]["coordinates"][0]
        assert row["footprint"]["type"] == "Polygon" and ring[0] == ring[-1] and len(ring) == 5
        assert signed_area(ring) > 0  # counter-clockwise, as RFC 7946 asks
        expected = [to_wgs84.transform(x, y) for x, y in ((x0, y0), (x0, y1), (x1, y1), (x1, y0))]
        assert np.allclose(ring[:4], expected, atol=1e-7, rtol=0)
        assert Image.open(result.manifest.parent / row["image"]).size == (64, 64)
    assert {r["window"]["col_off"] for r in rows} == {0, 150, 300, 450, 600, 750, 900}
    # The manifest is a gallery geoloc reads: no descriptions needed, footprints carried.
    gallery = read_manifest(result.manifest, require_texts=False)
    assert len(gallery) == 42 and gallery.records[0].footprint is not None
    summary = json.loads((result.manifest.parent / "tiles.json").read_text())
    assert summary["bands"] == {"red": 1, "green": 2, "blue": 3} and summary["skipped_nodata"] == 0


def test_tile_pixels_are_the_raster_s_own(tmp_path: Path) -> None:
    data = noise(3, 256, 256, seed=3)
    path = write_raster(tmp_path / "r.tif", data)
    # 64 m tiles of 0.5 m pixels = 128 pixels, written at 128: no resampling at all.
    result = cut_raster(path, tmp_path / "out", TilingSettings(tile_m=64, px=128))
    row = next(r for r in _rows(result.manifest) if r["image"] == "tiles/r/r000000_c000128_128x128.png")
    tile = np.asarray(Image.open(result.manifest.parent / row["image"]))
    assert np.array_equal(tile, data[:, 0:128, 128:256].transpose(1, 2, 0))


def test_nodata_borders_are_skipped_and_counted(tmp_path: Path) -> None:
    data = noise(3, 600, 600)
    data[:, :, :200] = 0  # a nodata band down the west side, a third of the raster
    path = write_raster(tmp_path / "r.tif", data, nodata=0)
    result = cut_raster(path, tmp_path / "out", TilingSettings(tile_m=50, px=32))  # 100-pixel windows
    assert result.windows == 36
    assert result.skipped_nodata == 12  # the two western columns are all nodata
    assert result.tiles == 24
    rows = _rows(result.manifest)
    assert min(r["window"]["col_off"] for r in rows) == 200
    assert all(r["nodata_share"] == 0 for r in rows)

    # A tile that is partly nodata is kept under the threshold and blacked out where nodata is.
    data = noise(3, 200, 200)
    data[:, :, :40] = 0
    path = write_raster(tmp_path / "p.tif", data, nodata=0)
    result = cut_raster(path, tmp_path / "p", TilingSettings(tile_m=100, px=200, max_nodata=0.5))
    (row,) = _rows(result.manifest)
    assert row["nodata_share"] == pytest.approx(0.2)
    tile = np.asarray(Image.open(result.manifest.parent / row["image"]))
    assert (tile[:, :40] == 0).all() and (tile[:, 40:] > 0).all()
    out = tmp_path / "strict"
    with pytest.raises(GeolocError, match="more than 10% nodata"):
        cut_raster(path, out, TilingSettings(tile_m=100, px=200, max_nodata=0.1))
    assert not out.exists()


def test_rgba_alpha_is_the_mask_and_not_a_colour(tmp_path: Path) -> None:
    rgb = noise(3, 200, 400)
    alpha = np.full((1, 200, 400), 255, np.uint8)
    alpha[:, :, 200:] = 0  # the east half transparent
    path = write_raster(tmp_path / "rgba.tif", np.concatenate([rgb, alpha]), photometric="RGB", alpha="YES")
    result = cut_raster(path, tmp_path / "out", TilingSettings(tile_m=100, px=100))
    assert result.bands == [1, 2, 3]
    assert (result.tiles, result.skipped_nodata) == (1, 1)
    (row,) = _rows(result.manifest)
    assert row["window"]["col_off"] == 0
    tile = np.asarray(Image.open(result.manifest.parent / row["image"]))
    assert tile.shape == (100, 100, 3)


def test_band_order_is_stated_and_settable(tmp_path: Path) -> None:
    # Four bands of no stated colour (say blue, green, red, near-infrared): each a constant.
    data = np.stack([np.full((200, 200), v, np.uint8) for v in (10, 20, 30, 40)])
    path = write_raster(tmp_path / "bgrn.tif", data)
    default = cut_raster(path, tmp_path / "a", TilingSettings(tile_m=100, px=16))
    assert default.bands == [1, 2, 3]
    pixel = np.asarray(Image.open(default.manifest.parent / _rows(default.manifest)[0]["image"]))[0, 0]
    assert pixel.tolist() == [10, 20, 30]
    chosen = cut_raster(path, tmp_path / "b", TilingSettings(tile_m=100, px=16, bands=(3, 2, 1)))
    pixel = np.asarray(Image.open(chosen.manifest.parent / _rows(chosen.manifest)[0]["image"]))[0, 0]
    assert chosen.bands == [3, 2, 1] and pixel.tolist() == [30, 20, 10]
    summary = json.loads((chosen.manifest.parent / "tiles.json").read_text())
    assert summary["bands"] == {"red": 3, "green": 2, "blue": 1}
    with pytest.raises(GeolocError, match="has 4 band"):
        cut_raster(path, tmp_path / "c", TilingSettings(tile_m=100, px=16, bands=(5, 2, 1)))


def test_16_bit_values_are_stretched_to_8_bits(tmp_path: Path) -> None:
    data = np.stack([np.tile(np.linspace(0, 10_000, 200, dtype=np.uint16), (200, 1))] * 3)
    path = write_raster(tmp_path / "u16.tif", data)
    result = cut_raster(path, tmp_path / "out", TilingSettings(tile_m=100, px=200))
    tile = np.asarray(Image.open(result.manifest.parent / _rows(result.manifest)[0]["image"]))
    assert tile[0, 0, 0] == 0 and tile[0, -1, 0] == 255 and 100 < tile[0, 100, 0] < 155


def test_a_lon_lat_raster_gets_tiles_of_true_metres(tmp_path: Path) -> None:
    from rasterio.transform import from_origin

    # 1e-5 degree pixels at 40.7 N: about 1.11 m down and 0.84 m across.
    transform = from_origin(-74.02, 40.70, 1e-5, 1e-5)
    path = write_raster(tmp_path / "ll.tif", noise(3, 400, 400), crs="EPSG:4326", transform=transform)
    result = cut_raster(path, tmp_path / "out", TilingSettings(tile_m=100, px=32))
    width, height = result.window_px
    assert width == pytest.approx(100 / 0.8436, abs=1) and height == pytest.approx(100 / 1.1105, abs=1)


def test_an_interrupted_cut_resumes_to_the_same_gallery(
    utm_raster: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = TilingSettings(tile_m=150, overlap=0.5, px=32)
    whole = cut_raster(utm_raster, tmp_path / "whole", settings)

    real_read = raster_module._read_window
    calls = {"n": 0}

    def dies_at_the_tenth(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 10:
            raise KeyboardInterrupt
        return real_read(*args, **kwargs)

    monkeypatch.setattr(raster_module, "_read_window", dies_at_the_tenth)
    out = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        cut_raster(utm_raster, out, settings)
    assert not (out / "manifest.jsonl").exists()  # the manifest appears only when every tile is done
    assert len(list((out / "tiles" / "utm").iterdir())) == 9
    monkeypatch.setattr(raster_module, "_read_window", real_read)

    resumed = cut_raster(utm_raster, out, settings)
    assert resumed.resumed == 9 and resumed.tiles == 42
    assert resumed.manifest.read_text() == whole.manifest.read_text()  # rows name the raster, not the folder
    for row in _rows(whole.manifest):
        assert (out / row["image"]).read_bytes() == (tmp_path / "whole" / row["image"]).read_bytes()
    # Resuming with other settings is refused, not mixed in.
    with pytest.raises(GeolocError, match="other settings"):
        cut_raster(utm_raster, out, TilingSettings(tile_m=100, px=32))


def _cli_fails(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main(list(argv)) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("geoloc: error: ")
    return err


def test_bad_input_is_one_line_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    no_crs = write_raster(tmp_path / "nocrs.tif", noise(3, 100, 100), crs=None)
    err = _cli_fails(capsys, "tiles", str(no_crs), "--out", str(out))
    assert "nocrs.tif" in err and "no CRS" in err

    text = tmp_path / "notes.tif"
    text.write_text("these are not pixels\n")
    err = _cli_fails(capsys, "tiles", str(text), "--out", str(out))
    assert "notes.tif" in err and "not a raster" in err

    raster = write_raster(tmp_path / "r.tif", noise(3, 100, 100))
    err = _cli_fails(capsys, "tiles", str(raster), "--out", str(out), "--tile-m", "0.2")
    assert "r.tif" in err and "smaller than one pixel" in err

    err = _cli_fails(capsys, "tiles", str(tmp_path / "missing.tif"), "--out", str(out))
    assert "missing.tif" in err and "no such file" in err
    assert not out.exists()

    # A folder that is not a tile folder is never written into.
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    err = _cli_fails(capsys, "tiles", str(raster), "--out", str(other), "--tile-m", "25", "--px", "16")
    assert "not a folder of geoloc tiles" in err
    assert [p.name for p in other.iterdir()] == ["keep.txt"]


def test_cli_cuts_and_reports(utm_raster: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "gallery"
    argv = ["tiles", str(utm_raster), "--out", str(out), "--tile-m", "150", "--px", "32", "--quiet"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    # No overlap: 4 x 4 windows of 300 pixels (the last row flush with the bottom edge).
    assert "16 tiles written, 0 skipped as mostly nodata" in printed
    assert "bands red=1 green=2 blue=3" in printed
    assert "tiles/s" in printed and str(out / "manifest.jsonl") in printed


def test_a_paletted_raster_is_cut_in_its_colours(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    indices = rng.integers(0, 16, (1, 200, 200), dtype=np.uint8)
    colours = {i: (int(r), int(g), int(b), 255) for i, (r, g, b) in enumerate(rng.integers(0, 256, (16, 3)))}
    path = write_raster(tmp_path / "pct.tif", indices, photometric="palette")
    import rasterio

    with rasterio.open(path, "r+") as dst:
        dst.write_colormap(1, colours)
    table = np.array([colours[i][:3] for i in range(16)], np.uint8)
    # At the window's own size the tile is the colour table applied to the indices, exactly.
    exact = cut_raster(path, tmp_path / "exact", TilingSettings(tile_m=50, px=100))
    row = next(
        r for r in _rows(exact.manifest) if r["window"]["col_off"] == 100 and r["window"]["row_off"] == 0
    )
    tile = np.asarray(Image.open(exact.manifest.parent / row["image"]))
    assert np.array_equal(tile, table[indices[0, 0:100, 100:200]])
    # Shrunk, each pixel is still one of the table's colours (nearest index), never an average.
    shrunk = cut_raster(path, tmp_path / "shrunk", TilingSettings(tile_m=50, px=32))
    pixels = np.concatenate(
        [
            np.asarray(Image.open(shrunk.manifest.parent / r["image"])).reshape(-1, 3)
            for r in _rows(shrunk.manifest)
        ]
    )
    assert {tuple(p) for p in pixels.tolist()} <= {tuple(c) for c in table.tolist()}
    assert json.loads((shrunk.manifest.parent / "tiles.json").read_text())["palette"] is True


def test_galleries_cut_from_two_rasters_or_at_two_sizes_share_no_key(tmp_path: Path) -> None:
    first = write_raster(tmp_path / "first.tif", noise(3, 400, 400, seed=1))
    second = write_raster(tmp_path / "second.tif", noise(3, 400, 400, seed=2))
    keys = []
    for path, tile_m, out in ((first, 100, "a"), (second, 100, "b"), (first, 50, "c")):
        result = cut_raster(path, tmp_path / out, TilingSettings(tile_m=tile_m, px=16))
        keys.append({r.key for r in read_manifest(result.manifest, require_texts=False).records})
    assert all(keys) and not (keys[0] & keys[1]) and not (keys[0] & keys[2]) and not (keys[1] & keys[2])
    assert "tiles/first/r000000_c000000_200x200.png" in keys[0]


def test_resampling_can_be_chosen(tmp_path: Path) -> None:
    board = np.where((np.indices((200, 200)).sum(axis=0) % 2) == 0, 10, 200).astype(np.uint8)
    path = write_raster(tmp_path / "board.tif", np.stack([board] * 3))
    values = {}
    for name in (None, "nearest"):
        result = cut_raster(path, tmp_path / str(name), TilingSettings(tile_m=100, px=50, resampling=name))
        tile = np.asarray(Image.open(result.manifest.parent / _rows(result.manifest)[0]["image"]))
        values[name] = set(np.unique(tile).tolist())
    assert values[None] == {105}  # averaged: a one-pixel checkerboard turns grey
    assert values["nearest"] <= {10, 200}
    with pytest.raises(GeolocError, match="resampling is one of"):
        cut_raster(path, tmp_path / "bad", TilingSettings(tile_m=100, px=50, resampling="fancy"))


def test_world_files_place_each_tile_in_gdal(tmp_path: Path) -> None:
    import rasterio
    from affine import Affine

    # A geotransform rotated by 30 degrees, as a raster in a polar CRS can be.
    transform = Affine.translation(WEST, NORTH) * Affine.rotation(30) * Affine.scale(PIXEL_M, -PIXEL_M)
    path = write_raster(tmp_path / "rot.tif", noise(3, 200, 200), transform=transform)
    result = cut_raster(path, tmp_path / "out", TilingSettings(tile_m=50, px=50, world_files=True))
    for row in _rows(result.manifest):
        window = row["window"]
        tile = result.manifest.parent / row["image"]
        with rasterio.open(tile) as placed:  # GDAL reads the .pgw and the .png.aux.xml beside it
            assert placed.crs.to_epsg() == 32618
            expected = (
                transform
                * Affine.translation(window["col_off"], window["row_off"])
                * Affine.scale(window["width"] / 50, window["height"] / 50)
            )
            assert np.allclose(tuple(placed.transform)[:6], tuple(expected)[:6], atol=1e-6)
