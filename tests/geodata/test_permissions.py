"""Written files get the permissions an ordinary write gives: the umask decides, as for `open`."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from geo_rasters import noise, write_raster

from geoloc import atomic
from geoloc.geodata.raster import TilingSettings, cut_raster


@pytest.fixture
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    before = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(before)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("umask", [0o022, 0o077], indirect=True)
def test_a_gallery_s_files_follow_the_umask(tmp_path: Path, umask: int) -> None:
    raster = write_raster(tmp_path / "r.tif", noise(3, 200, 200))
    out = tmp_path / "gallery"
    result = cut_raster(raster, out, TilingSettings(tile_m=50, px=16))
    files = [p for p in out.rglob("*") if p.is_file()]
    assert result.manifest in files and out / "tiles.json" in files and len(files) > 4
    assert {_mode(p) for p in files} == {0o666 & ~umask}
    with atomic.atomic_dir(tmp_path / "index") as folder:
        atomic.write_json(folder / "manifest.json", {})
    assert _mode(tmp_path / "index") == 0o777 & ~umask
    assert _mode(tmp_path / "index" / "manifest.json") == 0o666 & ~umask
