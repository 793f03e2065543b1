"""CLI: `geoloc serve INDEX` -- the HTTP API and web page on loopback (uvicorn); elsewhere only
with a bearer token (from $GEOLOC_API_TOKEN or --token-file)."""

from __future__ import annotations

import argparse
import ipaddress
import sys
from typing import Any

from geoloc.cli_flags import add_device


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from geoloc.errors import GeolocError
    from geoloc.index.search import SearchIndex
    from geoloc.serve.app import create_app
    from geoloc.serve.auth import ENV, HOW, read_token

    token = read_token(args.token_file)
    if token is None and not _is_loopback(args.host):
        raise GeolocError(
            f"serving on {args.host} reaches other machines: give a bearer token in ${ENV} or a file "
            f"with --token-file ({HOW}); clients then send Authorization: Bearer TOKEN"
        )
    index = SearchIndex.open(args.index, model=args.model, device=args.device, export_tower=True)
    _report_query_encoder(index)
    app = create_app(index, max_body_bytes=args.max_body_bytes, token=token)
    if token is not None:
        print("geoloc: every request for data needs the bearer token", file=sys.stderr)
    print(f"serving {len(index)} tiles of {args.index} on http://{args.host}:{args.port}/ (API docs: /docs)")
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=args.access_log)
    return 0


def _report_query_encoder(index: Any) -> None:
    """Say what encodes the queries: the exported query side starts a server in seconds."""
    if index.tower is not None:
        print("geoloc: queries are encoded by the exported query side (ONNX Runtime)", file=sys.stderr)
    elif index.tower_problem is not None:
        print(f"geoloc: no exported query side for quicker starts: {index.tower_problem}", file=sys.stderr)


def register(subparsers: Any) -> None:
    from geoloc.serve.limits import MAX_BODY_BYTES

    p = subparsers.add_parser("serve", help="serve an index: HTTP API and a web page with a map")
    p.add_argument("index", help="the index folder")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    add_device(p)
    p.add_argument(
        "--model", help="where the index's model is now, if it moved (checked to be the same model)"
    )
    p.add_argument(
        "--max-body-bytes", type=int, default=MAX_BODY_BYTES, help="request body limit (413 past it)"
    )
    p.add_argument(
        "--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"]
    )
    p.add_argument("--access-log", action="store_true", help="log every request")
    p.add_argument(
        "--token-file",
        help="file holding the bearer token clients must send (else $GEOLOC_API_TOKEN); needed off loopback",
    )
    p.set_defaults(func=cmd_serve)
