"""Small georeferenced rasters written with rasterio, each with a known geotransform (helpers)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

# A UTM 18N origin in Manhattan, 0.5 m pixels.
WEST, NORTH, PIXEL_M = 583_000.0, 4_507_000.0, 0.5


def write_raster(
    path: Path,
    data: np.ndarray,
    crs: str | None = "EPSG:32618",
    transform: Any = None,
    driver: str = "GTiff",
    **profile: Any,
) -> Path:
    import rasterio
    from rasterio.transform import from_origin

    count, height, width = data.shape
    with rasterio.open(
        path,
        "w",
        driver=driver,
        width=width,
        height=height,
        count=count,
        dtype=data.dtype,
        crs=crs,
        transform=transform if transform is not None else from_origin(WEST, NORTH, PIXEL_M, PIXEL_M),
        **profile,
    ) as dst:
        dst.write(data)
    return path


def noise(bands: int, height: int, width: int, seed: int = 0, dtype: str = "uint8") -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random((bands, height, width)) * 250 + 5).astype(dtype)
