"""`geoloc demo` and `geoloc demo-map`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def cmd_demo(args: argparse.Namespace) -> int:
    from geoloc.demo.run import run_demo

    return run_demo(Path(args.out), tiles=args.tiles, minutes=args.minutes, seed=args.seed)


def cmd_demo_map(args: argparse.Namespace) -> int:
    from geoloc.demo.run import run_map_demo

    return run_map_demo(
        Path(args.out),
        model=args.model,
        tiles=args.tiles,
        seed=args.seed,
        serve=not args.no_serve,
        host=args.host,
        port=args.port,
    )


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("demo", help="offline end-to-end demo on a synthetic city")
    p.add_argument("--out", default="demo_out", help="working folder (default: demo_out)")
    p.add_argument("--tiles", type=int, default=1200)
    p.add_argument("--minutes", type=float, default=2.5, help="training time budget")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo)

    p = subparsers.add_parser(
        "demo-map", help="offline demo of the real path: GeoTIFF -> tiles -> index -> search -> map"
    )
    p.add_argument("--out", default="demo_map", help="working folder (default: demo_map)")
    p.add_argument(
        "--model", help="the model (default: demo_out/run if `make demo` made it, else tiny-smolvlm)"
    )
    p.add_argument("--tiles", type=int, default=1200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--no-serve", action="store_true", help="stop after the searches instead of serving the map"
    )
    p.set_defaults(func=cmd_demo_map)
