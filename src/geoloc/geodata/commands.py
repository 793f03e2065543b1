"""CLI: `geoloc tiles RASTER --out DIR` (cut a georeferenced raster) and `geoloc xyz FOLDER`."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from geoloc.errors import GeolocError

MANY_WINDOWS = 100_000  # a cut of more windows says so before it starts


def _numbers(text: str, what: str, kind: type = float) -> tuple[Any, ...]:
    try:
        return tuple(kind(part) for part in text.split(","))
    except ValueError:
        raise GeolocError(f"{what} must be comma-separated numbers, not {text!r}") from None


def _sizes(sizes: tuple[tuple[int, int], tuple[int, int]]) -> str:
    """'300 x 300', or '280 x 280 to 320 x 320' when the tile size changes across the raster."""
    (w0, h0), (w1, h1) = sizes
    return f"{w0} x {h0}" if (w0, h0) == (w1, h1) else f"{w0} x {h0} to {w1} x {h1}"


def cmd_tiles(args: argparse.Namespace) -> int:
    from geoloc.geodata.raster import TilingSettings, cut_raster, plan_cut

    bounds = _numbers(args.bounds, "--bounds") if args.bounds else None
    if bounds is not None and len(bounds) != 4:
        raise GeolocError(f"--bounds is WEST,SOUTH,EAST,NORTH, not {args.bounds!r}")
    settings = TilingSettings(
        tile_m=args.tile_m,
        overlap=args.overlap,
        px=args.px,
        bands=_numbers(args.bands, "--bands", int) if args.bands else None,
        max_nodata=args.max_nodata,
        scale=_numbers(args.scale, "--scale") if args.scale else None,
        bounds=bounds,
        bounds_crs=args.bounds_crs,
        resampling=args.resampling,
        world_files=args.world_files,
    )
    if settings.scale is not None and len(settings.scale) != 2:
        raise GeolocError(f"--scale is MIN,MAX, not {args.scale!r}")
    plan = plan_cut(args.raster, settings)
    if args.dry_run:
        print(
            f"{plan.windows} windows of {_sizes(plan.grid.sizes())} pixels in {len(plan.grid.strips)} rows "
            f"({plan.crs}) would be read; tiles more than {settings.max_nodata:.0%} nodata would be "
            "skipped. Nothing was written."
        )
        return 0
    if plan.windows > MANY_WINDOWS and not args.quiet:
        print(
            f"geoloc: note: {plan.windows} windows to read; --bounds cuts a part, --dry-run counts",
            file=sys.stderr,
        )
    result = cut_raster(args.raster, args.out, settings, show_progress=False if args.quiet else None)
    red, green, blue = result.bands
    resumed = f", {result.resumed} done by an earlier run" if result.resumed else ""
    print(
        f"cut {result.windows} windows of {_sizes(result.window_sizes)} pixels ({result.crs}; "
        f"bands red={red} green={green} blue={blue}): {result.tiles} tiles written, "
        f"{result.skipped_nodata} skipped as mostly nodata{resumed}; "
        f"{result.windows_per_s:.1f} tiles/s"
    )
    print(f"manifest: {result.manifest}")
    return 0


def cmd_xyz(args: argparse.Namespace) -> int:
    from pathlib import Path

    from geoloc.geodata.mbtiles import mbtiles_gallery
    from geoloc.geodata.xyz import xyz_manifest

    if Path(args.folder).suffix.lower() == ".mbtiles":
        if not args.out:
            raise GeolocError(f"{args.folder}: an MBTiles file needs --out, a folder for its tiles")
        scan = mbtiles_gallery(args.folder, args.out, max_transparent=args.max_nodata)
    else:
        if args.out:
            raise GeolocError("--out is for an MBTiles file; a folder's manifest is written in the folder")
        scan = xyz_manifest(args.folder, tms=True if args.tms else None, max_transparent=args.max_nodata)
    order = "from the south (TMS)" if scan.tms else "from the north (XYZ)"
    print(
        f"wrote the manifest of {len(scan.rows)} tiles, rows counted {order}: {scan.manifest}; "
        f"{len(scan.transparent)} mostly transparent tiles and {len(scan.not_tiles)} other files skipped"
    )
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "tiles", help="cut a georeferenced raster (GeoTIFF, COG) into a gallery of tiles and a manifest"
    )
    p.add_argument("raster", help="the raster: GeoTIFF, Cloud-Optimised GeoTIFF, or anything GDAL reads")
    p.add_argument("--out", required=True, help="gallery folder: tiles/, manifest.jsonl, tiles.json")
    p.add_argument("--tile-m", type=float, default=150.0, help="ground size of a tile, metres (default 150)")
    p.add_argument(
        "--overlap",
        type=float,
        default=0.0,
        help="share of a tile its neighbour overlaps, 0..0.9 (default 0)",
    )
    p.add_argument("--px", type=int, default=512, help="tile side in pixels, the model's size (default 512)")
    p.add_argument(
        "--bands",
        help="raster bands for red,green,blue, e.g. 3,2,1 (one band: grey; "
        "default: the raster's colour bands, else 1,2,3)",
    )
    p.add_argument(
        "--max-nodata",
        type=float,
        default=0.5,
        help="skip tiles with more nodata than this share (default 0.5)",
    )
    p.add_argument(
        "--scale",
        help="MIN,MAX raster values mapped to 0..255 (default: none for 8-bit rasters, "
        "else each band's 2nd..98th percentile)",
    )
    p.add_argument(
        "--bounds",
        help="cut only the windows overlapping WEST,SOUTH,EAST,NORTH (in --bounds-crs)",
    )
    p.add_argument(
        "--bounds-crs", help="the CRS of --bounds, e.g. EPSG:4326 for degrees (default: the raster's CRS)"
    )
    p.add_argument(
        "--resampling",
        help="GDAL's resampling to --px: nearest, bilinear, cubic, lanczos, average or mode "
        "(default: average when shrinking, bilinear when enlarging)",
    )
    p.add_argument(
        "--world-files",
        action="store_true",
        help="write each tile's georeferencing beside it (.pgw and .png.aux.xml), for QGIS and GDAL",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="print how many windows would be cut, and write nothing"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_tiles)

    p = subparsers.add_parser(
        "xyz", help="write the manifest of a z/x/y.png folder of web-map tiles, or of an MBTiles file's"
    )
    p.add_argument(
        "folder",
        help="the folder holding z/x/y.png (manifest.jsonl is written in it), or an .mbtiles file",
    )
    p.add_argument("--out", help="for an .mbtiles file: the new folder its tiles and manifest are written to")
    p.add_argument(
        "--tms",
        action="store_true",
        help="rows counted from the south (TMS, gdal2tiles' default; implied by a tilemapresource.xml)",
    )
    p.add_argument(
        "--max-nodata",
        type=float,
        default=0.5,
        help="skip tiles with more fully transparent pixels than this share (default 0.5)",
    )
    p.set_defaults(func=cmd_xyz)
