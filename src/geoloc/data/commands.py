"""`geoloc synth`: a synthetic city in the manifest format."""

from __future__ import annotations

import argparse
from typing import Any

from geoloc.choices import CityStyleName, options


def cmd_synth(args: argparse.Namespace) -> int:
    from geoloc.data.synth import STYLES, generate_city

    manifest = generate_city(
        args.out,
        tiles=args.tiles,
        seed=args.seed,
        texts_per_tile=args.texts_per_tile,
        geotiff=args.geotiff,
        style=STYLES[args.style],
    )
    print(f"wrote {args.tiles} tiles and their descriptions: {manifest}")
    if args.geotiff:
        print(f"and the city as one UTM raster: {manifest.parent / 'city.tif'}")
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("synth", help="write a synthetic city in the manifest format")
    p.add_argument("out", help="output folder")
    p.add_argument("--tiles", type=int, default=1200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--texts-per-tile", type=int, default=4)
    p.add_argument("--geotiff", action="store_true", help="also write the city as one UTM GeoTIFF, city.tif")
    p.add_argument(
        "--style",
        choices=options(CityStyleName),
        default="demo",
        help="the look and vocabulary: the demo city's, or another kept for testing methods (default: demo)",
    )
    p.set_defaults(func=cmd_synth)
