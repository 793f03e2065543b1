"""Rasters GIS users bring that cannot be cut as they are: one line naming the problem, exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest
from geo_rasters import NORTH, PIXEL_M, WEST, noise, write_raster

from geoloc.cli import main


def _fails(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    capsys.readouterr()  # what writing the raster printed
    assert main(list(argv)) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("geoloc: error: ")
    return err


def _truncated(path: Path, driver: str) -> Path:
    """A 256 x 256 raster in 64-pixel blocks, deflated, cut off at 60% of its bytes."""
    profile = {"tiled": True, "blockxsize": 64, "blockysize": 64} if driver == "GTiff" else {"blocksize": 64}
    write_raster(path, noise(3, 256, 256), driver=driver, compress="deflate", **profile)
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(int(size * 0.6))
    return path


@pytest.mark.parametrize("driver", ["GTiff", "COG"])
def test_a_truncated_raster_stops_with_the_window_and_leaves_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], driver: str
) -> None:
    raster = _truncated(tmp_path / f"{driver}.tif", driver)
    out = tmp_path / "out"
    # At full resolution: shrunk, a COG is read from its overviews, which lie before the cut.
    argv = ["tiles", str(raster), "--out", str(out), "--tile-m", "32", "--px", "64", "--quiet"]
    err = _fails(capsys, *argv)
    assert f"{driver}.tif" in err and "cannot read the window at column" in err and "64 x 64 pixels" in err
    assert not out.exists()  # no tiles, no progress file: nothing half-written
    assert _fails(capsys, *argv) == err  # a rerun says the same, rather than resuming into it


def test_a_raster_placed_by_ground_control_points_only_is_told_to_warp(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import rasterio
    from rasterio.control import GroundControlPoint

    path = tmp_path / "gcps.tif"
    with rasterio.open(path, "w", driver="GTiff", width=100, height=100, count=3, dtype="uint8") as dst:
        dst.write(noise(3, 100, 100))
        corners = [(0, 0), (0, 100), (100, 100), (100, 0)]
        gcps = [
            GroundControlPoint(row=r, col=c, x=WEST + c * PIXEL_M, y=NORTH - r * PIXEL_M) for r, c in corners
        ]
        dst.gcps = (gcps, "EPSG:32618")
    err = _fails(capsys, "tiles", str(path), "--out", str(tmp_path / "out"))
    assert "gcps.tif" in err and "ground control points only" in err and "gdalwarp" in err
    assert "gdal_edit" not in err
