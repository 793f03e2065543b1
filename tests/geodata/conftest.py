"""A UTM raster of RGB noise for the geodata tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from geo_rasters import noise, write_raster


@pytest.fixture
def utm_raster(tmp_path: Path) -> Path:
    """1200 x 1000 pixels of RGB noise in EPSG:32618: 600 x 500 m."""
    return write_raster(tmp_path / "utm.tif", noise(3, 1000, 1200))
