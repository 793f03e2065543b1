"""Web-map tiles from an MBTiles file (a SQLite database of tiles) into a gallery folder.

    scan = mbtiles_gallery("area.mbtiles", "gallery")   # gallery/z/x/y.png and its manifest

MBTiles (version 1.3 of the specification) holds raster tiles of spherical Mercator in the
table `tiles(zoom_level, tile_column, tile_row, tile_data)`, rows counted from the south (TMS).
The tiles are written as `z/x/y.EXT` counted from the north (XYZ), and the folder is read as any
XYZ folder (`geoloc.geodata.xyz`). The gallery appears whole or not at all.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from geoloc import atomic
from geoloc.errors import GeolocError
from geoloc.geodata.xyz import XyzScan, xyz_manifest

IMAGE_FORMATS = {"png": ".png", "jpg": ".jpg", "jpeg": ".jpg", "webp": ".webp"}


def _suffix(connection: sqlite3.Connection, path: Path) -> str:
    """The tiles' file suffix, from the metadata's `format`."""
    try:
        row = connection.execute("SELECT value FROM metadata WHERE name = 'format'").fetchone()
    except sqlite3.DatabaseError:
        row = None
    form = (row[0] if row else "png").strip().lower()
    if form not in IMAGE_FORMATS:
        raise GeolocError(f"{path}: holds {form} tiles; geoloc reads image tiles (png, jpg, webp)")
    return IMAGE_FORMATS[form]


def extract_tiles(mbtiles: Path, folder: Path) -> int:
    """Write the tiles of `mbtiles` as `folder/z/x/y.EXT`, rows counted from the north; return how many."""
    try:
        connection = sqlite3.connect(f"file:{mbtiles}?mode=ro", uri=True)
        try:
            suffix = _suffix(connection, mbtiles)
            rows = connection.execute("SELECT zoom_level, tile_column, tile_row, tile_data FROM tiles")
            count = 0
            for z, x, tms_y, data in rows:
                if not (isinstance(z, int) and 0 <= z <= 30 and 0 <= x < 2**z and 0 <= tms_y < 2**z):
                    raise GeolocError(f"{mbtiles}: tile {z}/{x}/{tms_y} does not exist")
                tile = folder / str(z) / str(x) / f"{2**z - 1 - tms_y}{suffix}"
                tile.parent.mkdir(parents=True, exist_ok=True)
                tile.write_bytes(data)
                count += 1
        finally:
            connection.close()
    except sqlite3.DatabaseError as error:
        raise GeolocError(f"{mbtiles}: not an MBTiles file ({error})") from None
    return count


def mbtiles_gallery(mbtiles: str | Path, out: str | Path, max_transparent: float = 0.5) -> XyzScan:
    """Extract `mbtiles` into the new folder `out` and write its manifest; return the scan."""
    mbtiles, out = Path(mbtiles).absolute(), Path(out).absolute()
    if not mbtiles.is_file():
        raise GeolocError(f"{mbtiles}: no such file")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise GeolocError(f"{out}: exists and is not empty; choose a new folder for the tiles")
    with atomic.atomic_dir(out) as tmp:
        if extract_tiles(mbtiles, tmp) == 0:
            raise GeolocError(f"{mbtiles}: holds no tiles")
        scan = xyz_manifest(tmp, tms=False, max_transparent=max_transparent)
    scan.manifest = out / "manifest.jsonl"
    return scan
