"""CLI: `geoloc index build|add|remove|info`, `geoloc search`, `geoloc explain`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from geoloc.cli_flags import add_device, add_dtype, add_on_bad_record, add_split
from geoloc.errors import GeolocError


def _fmt_coord(value: float | None) -> str:
    return f"{value:.6f}" if value is not None else "-"


def _print_table(rows: list[dict[str, Any]], extra: tuple[str, ...] = ()) -> None:
    header = ["rank", "score", *extra, "lat", "lon", "key"]
    print("  ".join(f"{h:>10}" for h in header[:-1]) + "  key")
    for row in rows:
        cells = [f"{row['rank']:>10}", f"{row['score']:>10.4f}"]
        cells += [
            f"{row[name]:>10.3f}" if isinstance(row[name], float) else f"{row[name]:>10}" for name in extra
        ]
        cells += [f"{_fmt_coord(row['lat']):>10}", f"{_fmt_coord(row['lon']):>10}", row["key"]]
        print("  ".join(cells))


def cmd_index_build(args: argparse.Namespace) -> int:
    from geoloc.index.ann import AnnSettings
    from geoloc.index.build import build_index

    settings = AnnSettings(
        kind=args.kind,
        nlist=args.nlist,
        nprobe=args.nprobe,
        hnsw_m=args.hnsw_m,
        ef_search=args.ef_search,
        pq_m=args.pq_m,
        train_size=args.train_size,
        rescore=args.rescore,
    )
    if args.from_parquet:
        from geoloc.index.build import build_index_from_geoparquet

        manifest = build_index_from_geoparquet(
            args.model, args.from_parquet, args.out, settings=settings, device=args.device
        )
    else:
        manifest = build_index(
            args.model,
            args.gallery,
            args.out,
            settings=settings,
            split=args.split,
            device=args.device,
            dtype=args.dtype,
            batch_size=args.batch_size,
            cache_dir=args.cache_dir,
            use_cache=not args.no_cache,
            on_bad_record=args.on_bad_record,
        )
    count, dim = manifest["count"], manifest["dimension"]
    print(f"indexed {count} tiles ({settings.kind}, dimension {dim}) in {args.out}")
    return 0


def cmd_index_add(args: argparse.Namespace) -> int:
    from geoloc.index.build import add_to_index

    added = add_to_index(
        args.index,
        args.gallery,
        split=args.split,
        device=args.device,
        batch_size=args.batch_size,
        cache_dir=args.cache_dir,
        use_cache=not args.no_cache,
        model=args.model,
        on_bad_record=args.on_bad_record,
    )
    print(f"added {added} tiles to {args.index}")
    return 0


def cmd_index_remove(args: argparse.Namespace) -> int:
    from geoloc.index.build import remove_from_index

    keys = list(args.keys)
    if args.keys_file:
        try:
            keys += [line.strip() for line in Path(args.keys_file).read_text(encoding="utf-8").splitlines()]
        except (OSError, UnicodeDecodeError) as error:
            raise GeolocError(f"{args.keys_file}: cannot read the keys ({error})") from error
    keys = [key for key in keys if key]
    if not keys:
        raise GeolocError("no keys to remove: give tile keys, or --keys-file with one key a line")
    removed = remove_from_index(args.index, keys)
    print(f"removed {removed} tiles from {args.index}")
    return 0


def cmd_index_export(args: argparse.Namespace) -> int:
    from geoloc.index.geoparquet import export_geoparquet

    collection = export_geoparquet(args.index, args.out)
    print(f"wrote {args.out} (GeoParquet 1.1) and its STAC Collection {collection}")
    return 0


def cmd_index_info(args: argparse.Namespace) -> int:
    from geoloc.index.store import read_manifest_json

    print(json.dumps(read_manifest_json(args.index), indent=2))
    return 0


def _region(args: argparse.Namespace) -> Any:
    """The --within / --near region (both: the tiles in both), or None."""
    from geoloc.index.region import parse_near, parse_within

    if args.radius_km is not None and args.near is None:
        raise GeolocError("--radius-km needs --near LAT,LON, the centre of the search")
    regions = []
    if args.within is not None:
        regions.append(parse_within(args.within))
    if args.near is not None:
        regions.append(parse_near(args.near, args.radius_km))
    return regions[0] & regions[1] if len(regions) == 2 else (regions[0] if regions else None)


def cmd_search(args: argparse.Namespace) -> int:
    from geoloc.index.explain import search_and_judge
    from geoloc.index.search import SearchIndex, check_query

    check_query(args.text, args.k)  # before loading the model: a bad query fails at once
    region = _region(args)
    index = SearchIndex.open(args.index, model=args.model, device=args.device)
    if args.rerank:
        judged = search_and_judge(index, args.text, args.k, rerank_results=True, region=region)
        rows = [j.to_dict() for j in judged]
    else:
        rows = [hit.to_dict() for hit in index.search(args.text, args.k, region)]
    output = "json" if args.json else args.format
    if output == "geojson":
        from geoloc.geodata.geojson import feature_collection

        collection = feature_collection(rows, query=args.text, k=args.k, rerank=args.rerank)
        print(json.dumps(collection, indent=2))
    elif output == "json":
        print(json.dumps({"query": args.text, "k": args.k, "rerank": args.rerank, "results": rows}, indent=2))
    else:
        _print_table(rows, ("judgement", "retrieval_rank") if args.rerank else ())
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from geoloc.index.explain import search_and_judge
    from geoloc.index.search import SearchIndex, check_query

    check_query(args.text, args.top)
    index = SearchIndex.open(args.index, model=args.model, device=args.device)
    judged = search_and_judge(
        index,
        args.text,
        args.top,
        rerank_results=args.rerank,
        explain=True,
        max_new_tokens=args.max_new_tokens,
    )
    rows = [j.to_dict() for j in judged]
    if args.json:
        print(
            json.dumps(
                {"query": args.text, "top": args.top, "rerank": args.rerank, "results": rows}, indent=2
            )
        )
        return 0
    for row in rows:
        where = f"({_fmt_coord(row['lat'])}, {_fmt_coord(row['lon'])})"
        print(
            f"#{row['rank']} {row['key']} {where}  score {row['score']:.4f}  "
            f"judgement {row['judgement']:+.3f}  (retrieval rank {row['retrieval_rank']})"
        )
        print(f"    {row['explanation']}")
    return 0


def _add_model_options(p: argparse.ArgumentParser) -> None:
    add_device(p)
    p.add_argument(
        "--model", help="where the index's model is now, if it moved (checked to be the same model)"
    )


def _add_encoding_options(p: argparse.ArgumentParser) -> None:
    add_split(p, "only this split of the gallery manifest (train, val, test)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument(
        "--cache-dir", help="embedding cache (default: $GEOLOC_CACHE/embeddings or ~/.cache/geoloc)"
    )
    p.add_argument(
        "--no-cache", action="store_true", help="encode the tiles; neither read nor write the cache"
    )
    add_on_bad_record(p, "<INDEX>.skipped_records.jsonl beside the index")


def register(subparsers: Any) -> None:
    from geoloc.index.limits import KINDS, MAX_K

    index = subparsers.add_parser("index", help="build or change a search index of satellite tiles")
    actions = index.add_subparsers(dest="index_action", required=True)

    p = actions.add_parser("build", help="embed a gallery's tiles into a new index folder")
    p.add_argument("model", help="run directory, saved model, HF id / model folder, or preset")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--gallery", help="gallery manifest, or a folder holding manifest.jsonl")
    source.add_argument(
        "--from",
        dest="from_parquet",
        metavar="FILE.parquet",
        help="a GeoParquet file of `geoloc index export`: its vectors, not encoded again (MODEL must be "
        "the model that made them)",
    )
    p.add_argument("--out", required=True, help="the index folder to write")
    p.add_argument(
        "--kind",
        default="exact",
        choices=KINDS,
        help="exact (default), ivf, hnsw, or compressed: sq8 (d bytes a tile), ivf-pq (--pq-m bytes a tile)",
    )
    p.add_argument(
        "--nlist", type=int, default=0, help="ivf, ivf-pq: clusters (default: about 4 x sqrt(tiles))"
    )
    p.add_argument("--nprobe", type=int, default=16, help="ivf, ivf-pq: clusters scanned per query")
    p.add_argument(
        "--pq-m", type=int, default=0, help="ivf-pq: bytes per tile (default: largest divisor of d up to 48)"
    )
    p.add_argument(
        "--train-size",
        type=int,
        default=0,
        help="sq8, ivf-pq: tiles sampled to train on (default: 256 a cluster, at most 2^19, at least 2^16)",
    )
    p.add_argument(
        "--rescore",
        type=int,
        default=1000,
        help="sq8, ivf-pq: candidates re-scored with the exact vectors on disk (default 1000; 0: none)",
    )
    p.add_argument("--hnsw-m", type=int, default=32, help="hnsw: links per node")
    p.add_argument("--ef-search", type=int, default=64, help="hnsw: candidates kept while searching")
    add_device(p)
    add_dtype(p)
    _add_encoding_options(p)
    p.set_defaults(func=cmd_index_build)

    p = actions.add_parser("add", help="embed more tiles (with the index's own model) into an index")
    p.add_argument("index", help="the index folder")
    p.add_argument("--gallery", required=True, help="manifest of the tiles to add")
    _add_encoding_options(p)
    _add_model_options(p)
    p.set_defaults(func=cmd_index_add)

    p = actions.add_parser("remove", help="remove tiles from an index by key")
    p.add_argument("index", help="the index folder")
    p.add_argument("keys", nargs="*", help="tile keys (the manifest's image paths)")
    p.add_argument("--keys-file", help="a file of keys, one a line")
    p.set_defaults(func=cmd_index_remove)

    p = actions.add_parser(
        "export", help="write an index's tiles and embeddings as GeoParquet 1.1, with a STAC Collection"
    )
    p.add_argument("index", help="the index folder")
    p.add_argument("--out", required=True, help="the .parquet file (the STAC Collection goes beside it)")
    p.set_defaults(func=cmd_index_export)

    p = actions.add_parser("info", help="print an index's manifest")
    p.add_argument("index", help="the index folder")
    p.set_defaults(func=cmd_index_info)

    p = subparsers.add_parser("search", help="find the tiles a description matches")
    p.add_argument("index", help="the index folder")
    p.add_argument("text", help="the description, in quotes")
    p.add_argument("-k", type=int, default=10, help=f"how many tiles (1..{MAX_K}, default 10)")
    p.add_argument(
        "--format",
        default="table",
        choices=["table", "json", "geojson"],
        help="table (default), json, or geojson: an RFC 7946 FeatureCollection of the tiles' footprints",
    )
    p.add_argument("--json", action="store_true", help="the same as --format json")
    p.add_argument("--rerank", action="store_true", help="re-order the top k by the generator's judgement")
    p.add_argument(
        "--within",
        metavar="W,S,E,N|FILE",
        help="only tiles whose centre is inside: a box in degrees (west > east crosses the antimeridian), "
        "or a GeoJSON file (Polygon, MultiPolygon, Feature or FeatureCollection)",
    )
    p.add_argument("--near", metavar="LAT,LON", help="only tiles within --radius-km of this point")
    p.add_argument("--radius-km", type=float, help="the radius around --near, in kilometres")
    _add_model_options(p)
    p.set_defaults(func=cmd_search)

    p = subparsers.add_parser("explain", help="ask the generator why each top tile does or does not match")
    p.add_argument("index", help="the index folder")
    p.add_argument("text", help="the description, in quotes")
    p.add_argument("--top", type=int, default=5, help="how many top tiles to explain (default 5)")
    p.add_argument("--rerank", action="store_true", help="re-order the tiles by the generator's judgement")
    p.add_argument("--max-new-tokens", type=int, default=48, help="length of each explanation")
    p.add_argument("--json", action="store_true", help="print JSON")
    _add_model_options(p)
    p.set_defaults(func=cmd_explain)
