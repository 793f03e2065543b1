"""A gallery manifest straight from a folder of slippy-map tiles, `z/x/y.png`.

    scan = xyz_manifest("tiles_folder")   # writes tiles_folder/manifest.jsonl

Every tile's footprint and centre come from the tile math of web maps (spherical Mercator,
EPSG:3857, through mercantile): tile x, y at zoom z covers a known longitude / latitude box.

Rows are counted from the north (XYZ, as OpenStreetMap and `gdal2tiles.py --xyz` write them)
unless the folder says otherwise: a `tilemapresource.xml` (which gdal2tiles writes beside a TMS
pyramid, its default) means rows counted from the south; `tms=True` says so for a folder
without one. A row's `tile.y` is the XYZ number, which for a TMS folder is not the number in
the file's name. A pyramid whose XML says the `geodetic` profile is a lon / lat grid from
(-180, -90) instead: its rows carry `crs: "EPSG:4326"` and the file's own numbers.

Files in the tile folders that are not tile images (gdal2tiles' `.kml` files) are passed over
and counted, and so are tiles that are mostly transparent (the edges of a pyramid). A symbolic
link that leads outside the folder is refused: an index would refuse its row. The folder is
checked whole before anything is written.
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geoloc.data.manifest import write_manifest
from geoloc.errors import GeolocError
from geoloc.geodata.footprint import box_ring, geometry

TILE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
MAX_ZOOM = 30
TILEMAP_FILE = "tilemapresource.xml"  # the OSGeo TMS description gdal2tiles writes
MERCATOR_SRS = {"EPSG:3857", "EPSG:900913", "OSGEO:41001"}


@dataclass
class XyzScan:
    """The rows of a tile folder and what was passed over."""

    rows: list[dict[str, Any]]
    tms: bool
    """Whether the files' rows were counted from the south."""
    transparent: list[str] = field(default_factory=list)
    """Tiles (paths relative to the folder) skipped as mostly transparent."""
    not_tiles: list[str] = field(default_factory=list)
    """Files in the tile folders that are not tile images (gdal2tiles' .kml, ...)."""
    manifest: Path | None = None


def _number(part: str, path: Path, what: str) -> int:
    if not part.isdigit() or not part.isascii():
        raise GeolocError(f"{path}: {what} {part!r} is not a number; an XYZ folder holds z/x/y.png only")
    return int(part)


@dataclass(frozen=True)
class TileMap:
    """What a `tilemapresource.xml` says: the grid's profile and the data's bounds in degrees."""

    profile: str
    """"mercator" (web-map tiles) or "geodetic" (a lon / lat grid from -180, -90)."""
    bbox: tuple[float, float, float, float] | None
    """(west, south, east, north) of the data, as gdal2tiles writes it."""


def _bbox(root: ElementTree.Element) -> tuple[float, float, float, float] | None:
    box = root.find("BoundingBox")
    if box is None:
        return None
    try:
        west, south, east, north = (float(box.get(k, "")) for k in ("minx", "miny", "maxx", "maxy"))
    except ValueError:
        return None
    return west, south, east, north


def read_tilemap(folder: Path) -> TileMap | None:
    """What `folder/tilemapresource.xml` says of a TMS pyramid, or None without one.

    A profile other than mercator or geodetic (gdal2tiles' raster profile: pixels with no place
    on the earth) is refused.
    """
    path = folder / TILEMAP_FILE
    if not path.is_file():
        return None
    try:
        root = ElementTree.parse(path).getroot()
    except (ElementTree.ParseError, OSError) as error:
        raise GeolocError(f"{path}: not a readable TMS description ({error})") from None
    srs = (root.findtext("SRS") or "").strip().upper()
    tile_sets = root.find("TileSets")
    profile = (tile_sets.get("profile") if tile_sets is not None else None) or ""
    if profile == "mercator" or (not profile and srs in MERCATOR_SRS):
        return TileMap("mercator", _bbox(root))
    if profile == "geodetic" or (not profile and srs == "EPSG:4326"):
        return TileMap("geodetic", _bbox(root))
    raise GeolocError(
        f"{path}: a {profile or srs or 'unknown'} pyramid, whose tiles have no place on the earth; "
        "tile the raster with gdal2tiles.py -p mercator, or cut it with geoloc tiles"
    )


def _geodetic_box(z: int, x: int, y: int, zoom0: float) -> tuple[float, float, float, float]:
    """(west, south, east, north) of geodetic tile z/x/y (rows from the south), zoom 0 `zoom0` degrees."""
    side = zoom0 / 2**z
    return -180 + x * side, -90 + y * side, -180 + (x + 1) * side, -90 + (y + 1) * side


def _geodetic_zoom0(
    tiles: list[tuple[int, int, int, Path]], bbox: tuple[float, float, float, float] | None, path: Path
) -> float:
    """The side of gdal2tiles' geodetic zoom-0 tile: 180 degrees (--tmscompatible) or 360 (its default).

    Its XML gives the same units-per-pixel for both, so the tiles are placed both ways and the
    way that puts them on the data's BoundingBox is taken.
    """

    if bbox is None:
        raise GeolocError(f"{path}: a geodetic pyramid without a BoundingBox, so its grid is unknown")
    west, south, east, north = bbox

    def on_the_data(zoom0: float) -> int:
        boxes = [_geodetic_box(z, x, y, zoom0) for z, x, y, _ in tiles]
        return sum(1 for w, s, e, n in boxes if w < east and e > west and s < north and n > south)

    if max(on_the_data(180.0), on_the_data(360.0)) == 0:
        raise GeolocError(f"{path}: a geodetic pyramid whose tiles do not lie on its BoundingBox")
    return max((180.0, 360.0), key=on_the_data)


def _transparent_share(file: Path) -> float:
    """The share of fully transparent pixels in a tile image (0 for one without alpha)."""
    import numpy as np
    from PIL import Image

    with Image.open(file) as image:
        if "A" not in image.getbands() and "transparency" not in image.info:
            return 0.0
        alpha = np.asarray(image.convert("RGBA").getchannel("A"))
    return float((alpha == 0).mean())


def _inside(path: Path, real_folder: Path) -> bool:
    return path.resolve().is_relative_to(real_folder)


def _tiles(folder: Path, scan: XyzScan) -> list[tuple[int, int, int, Path]]:
    """(z, x, y, file) of every tile under `folder`, in z, x, y order; bad names refused."""
    found: list[tuple[int, int, int, Path]] = []
    real_folder = folder.resolve()
    for z_dir in sorted(folder.iterdir()):
        if z_dir.name.startswith(".") or z_dir.is_file():  # the manifest, a README, hidden files
            continue
        z = _zoom_level(z_dir)
        for x_dir in sorted(z_dir.iterdir()):
            if x_dir.name.startswith("."):
                continue
            x = _column(x_dir)
            found.extend(_column_tiles(folder, real_folder, z, x, x_dir, scan))
    return sorted(found, key=lambda t: (t[0], t[1], t[2]))


def _zoom_level(z_dir: Path) -> int:
    """The zoom level a top folder names; web maps stop well before `MAX_ZOOM`, so more is a mistake."""
    z = _number(z_dir.name, z_dir, "zoom level")
    if z > MAX_ZOOM:
        raise GeolocError(f"{z_dir}: zoom level {z} is beyond {MAX_ZOOM}")
    return z


def _column(x_dir: Path) -> int:
    """The tile column a second-level entry names; it must be a folder of rows."""
    x = _number(x_dir.name, x_dir, "column")
    if not x_dir.is_dir():
        raise GeolocError(f"{x_dir}: expected a folder of tiles z/x/y.png")
    return x


def _column_tiles(
    folder: Path, real_folder: Path, z: int, x: int, x_dir: Path, scan: XyzScan
) -> list[tuple[int, int, int, Path]]:
    """(z, x, y, file) of the tiles in column folder `x_dir`; other files are listed in `scan.not_tiles`.

    Hidden files are passed over silently (an editor's or a file manager's); anything else that
    is not an image, such as gdal2tiles' .kml files, is counted so the user sees it was left out.
    """
    found: list[tuple[int, int, int, Path]] = []
    for file in sorted(x_dir.iterdir()):
        if file.name.startswith("."):
            continue
        if file.suffix.lower() not in TILE_SUFFIXES or not file.is_file():
            scan.not_tiles.append(file.relative_to(folder).as_posix())
            continue
        found.append((z, x, _row(file, z, x, folder, real_folder), file))
    return found


def _row(file: Path, z: int, x: int, folder: Path, real_folder: Path) -> int:
    """The row a tile file names, refused where the tile cannot exist or the file lies outside `folder`."""
    y = _number(file.stem, file, "row")
    if x >= 2**z or y >= 2**z:
        raise GeolocError(f"{file}: tile {z}/{x}/{y} does not exist (x and y go to {2**z - 1})")
    if not _inside(file, real_folder):
        raise GeolocError(
            f"{file}: a symbolic link to {file.resolve()}, outside {folder}; an index reads "
            "tiles inside their gallery only: copy the tile in, or remove the link"
        )
    return y


def scan_xyz(folder: str | Path, tms: bool | None = None, max_transparent: float = 0.5) -> XyzScan:
    """The manifest rows of the tiles under `folder` (image paths relative to it), and what was skipped.

    `tms`: rows counted from the south (True) or north (False); None: from `tilemapresource.xml`
    when the folder has one (TMS), else from the north. A tile with more than `max_transparent`
    of its pixels fully transparent is skipped.
    """
    import mercantile

    folder = Path(folder).absolute()
    if not folder.is_dir():
        raise GeolocError(f"{folder}: no such folder")
    tilemap = read_tilemap(folder)
    scan = XyzScan(rows=[], tms=tms if tms is not None else tilemap is not None)
    tiles = _tiles(folder, scan)
    if not tiles:
        raise GeolocError(f"{folder}: holds no z/x/y tiles ({', '.join(TILE_SUFFIXES)})")
    geodetic = tilemap is not None and tilemap.profile == "geodetic"
    zoom0 = _geodetic_zoom0(tiles, tilemap.bbox, folder / TILEMAP_FILE) if tilemap and geodetic else 0.0
    for z, x, y, file in tiles:
        image = file.relative_to(folder).as_posix()
        if _transparent_share(file) > max_transparent:
            scan.transparent.append(image)
            continue
        if geodetic:
            box = _geodetic_box(z, x, y, zoom0)
            scan.rows.append(
                {
                    "image": image,
                    "lat": round((box[1] + box[3]) / 2, 9),
                    "lon": round((box[0] + box[2]) / 2, 9),
                    "footprint": geometry(box_ring(*box)),
                    "crs": "EPSG:4326",
                    "tile": {"z": z, "x": x, "y": y},
                }
            )
            continue
        xyz_y = (2**z - 1 - y) if scan.tms else y
        box = mercantile.bounds(x, xyz_y, z)
        # The centre in the map's own projection: half way across the tile as drawn.
        west, south, east, north = mercantile.xy_bounds(x, xyz_y, z)
        lon, lat = mercantile.lnglat((west + east) / 2, (south + north) / 2)
        scan.rows.append(
            {
                "image": image,
                "lat": round(lat, 9),
                "lon": round(lon, 9),
                "footprint": geometry(box_ring(box.west, box.south, box.east, box.north)),
                "crs": "EPSG:3857",
                "tile": {"z": z, "x": x, "y": xyz_y},
            }
        )
    if not scan.rows:
        raise GeolocError(f"{folder}: every one of its {len(tiles)} tiles is mostly transparent")
    return scan


def xyz_rows(folder: str | Path, tms: bool | None = None) -> list[dict[str, Any]]:
    """The manifest rows of the tiles under `folder`: see `scan_xyz`."""
    return scan_xyz(folder, tms).rows


def xyz_manifest(folder: str | Path, tms: bool | None = None, max_transparent: float = 0.5) -> XyzScan:
    """Write `folder/manifest.jsonl` for the tiles under `folder`; return the scan, with its path.

    The manifest sits in the folder because a manifest's image paths are relative to its own
    folder and may not leave it.
    """
    scan = scan_xyz(folder, tms, max_transparent)
    scan.manifest = Path(folder).absolute() / "manifest.jsonl"
    write_manifest(scan.manifest, scan.rows)
    return scan
