"""A gallery manifest straight from a folder of slippy-map tiles, `z/x/y.png`.

    manifest = xyz_manifest("tiles_folder")   # writes tiles_folder/manifest.jsonl

Every tile's footprint and centre come from the tile math of web maps (spherical Mercator,
EPSG:3857, through mercantile): tile x, y at zoom z covers a known longitude / latitude box.
Folders written in the TMS layout (y counted from the south, as gdal2tiles writes by default)
need `tms=True`. The folder is checked whole before anything is written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from geoloc.data.manifest import write_manifest
from geoloc.errors import GeolocError
from geoloc.geodata.footprint import box_ring, polygon

TILE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
MAX_ZOOM = 30


def _number(part: str, path: Path, what: str) -> int:
    if not part.isdigit() or not part.isascii():
        raise GeolocError(f"{path}: {what} {part!r} is not a number; an XYZ folder holds z/x/y.png only")
    return int(part)


def _tiles(folder: Path) -> list[tuple[int, int, int, Path]]:
    """(z, x, y, file) of every tile under `folder`, in z, x, y order; bad names refused."""
    found: list[tuple[int, int, int, Path]] = []
    for z_dir in sorted(folder.iterdir()):
        if z_dir.name.startswith(".") or z_dir.is_file():  # the manifest, a README, hidden files
            continue
        z = _number(z_dir.name, z_dir, "zoom level")
        if z > MAX_ZOOM:
            raise GeolocError(f"{z_dir}: zoom level {z} is beyond {MAX_ZOOM}")
        for x_dir in sorted(z_dir.iterdir()):
            if x_dir.name.startswith("."):
                continue
            x = _number(x_dir.name, x_dir, "column")
            if not x_dir.is_dir():
                raise GeolocError(f"{x_dir}: expected a folder of tiles z/x/y.png")
            for file in sorted(x_dir.iterdir()):
                if file.name.startswith("."):
                    continue
                if file.suffix.lower() not in TILE_SUFFIXES or not file.is_file():
                    raise GeolocError(f"{file}: not a tile image (expected y.png, .jpg, .jpeg or .webp)")
                y = _number(file.stem, file, "row")
                if x >= 2**z or y >= 2**z:
                    raise GeolocError(f"{file}: tile {z}/{x}/{y} does not exist (x and y go to {2**z - 1})")
                found.append((z, x, y, file))
    return sorted(found, key=lambda t: (t[0], t[1], t[2]))


def xyz_rows(folder: str | Path, tms: bool = False) -> list[dict[str, Any]]:
    """The manifest rows of the tiles under `folder` (image paths relative to it)."""
    import mercantile

    folder = Path(folder).absolute()
    if not folder.is_dir():
        raise GeolocError(f"{folder}: no such folder")
    tiles = _tiles(folder)
    if not tiles:
        raise GeolocError(f"{folder}: holds no z/x/y tiles ({', '.join(TILE_SUFFIXES)})")
    rows = []
    for z, x, y, file in tiles:
        xyz_y = (2**z - 1 - y) if tms else y
        box = mercantile.bounds(x, xyz_y, z)
        # The centre in the map's own projection: half way across the tile as drawn.
        west, south, east, north = mercantile.xy_bounds(x, xyz_y, z)
        lon, lat = mercantile.lnglat((west + east) / 2, (south + north) / 2)
        rows.append(
            {
                "image": file.relative_to(folder).as_posix(),
                "lat": round(lat, 9),
                "lon": round(lon, 9),
                "footprint": polygon(box_ring(box.west, box.south, box.east, box.north)),
                "crs": "EPSG:3857",
                "tile": {"z": z, "x": x, "y": xyz_y},
            }
        )
    return rows


def xyz_manifest(folder: str | Path, tms: bool = False) -> Path:
    """Write `folder/manifest.jsonl` for the tiles under `folder`; return its path.

    The manifest sits in the folder because a manifest's image paths are relative to its own
    folder and may not leave it.
    """
    rows = xyz_rows(folder, tms)
    manifest = Path(folder).absolute() / "manifest.jsonl"
    write_manifest(manifest, rows)
    return manifest
