"""`geoloc eval` (score a model on a data set) and `geoloc embed` (a gallery's tiles in shards)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from geoloc.choices import BenchmarkName, CvgTextTarget, CvgTextVersion, GeoTextProtocol, GeoTextView, options
from geoloc.cli_flags import add_device, add_dtype, add_on_bad_record, add_split, flag_for
from geoloc.errors import GeolocError

MODEL_HELP = "run directory, saved model, HF id / model folder, or preset"
DATA_HELP = "manifest file or folder holding manifest.jsonl"


def _default_eval_dir(model: str, split: str | None) -> Path:
    """Beside a saved model or run; in the current folder for a preset or hub id."""
    from geoloc.encoder.saved import saved_encoder_dir

    name = f"eval_{split or 'all'}"
    return Path(model) / name if saved_encoder_dir(model) is not None else Path(name)


def _geotext_protocol(args: argparse.Namespace) -> GeoTextProtocol:
    """--protocol, with --official-quirks as its older spelling."""
    if args.official_quirks and args.protocol not in (None, "official-quirks"):
        raise GeolocError(f"--official-quirks and --protocol {args.protocol} contradict each other")
    return "official-quirks" if args.official_quirks else args.protocol or "benchmark"


def cmd_eval(args: argparse.Namespace) -> int:
    from geoloc import atomic
    from geoloc.data.bad_records import verify_and_list
    from geoloc.encoder import card
    from geoloc.encoder.loading import load_encoder
    from geoloc.encoder.saved import saved_encoder_dir
    from geoloc.eval.benchmarks import BenchmarkRequest, format_metrics, load_benchmark, score_benchmark
    from geoloc.eval.cache import cached_embeddings
    from geoloc.eval.evaluate import embed_dataset, with_templates

    request = BenchmarkRequest(
        benchmark=args.benchmark,
        data=args.data or "",
        root=args.root or "",
        split=args.split,
        city=args.city or "",
        version=args.version,
        target=args.target,
        view=args.view,
        protocol=_geotext_protocol(args),
        full_city=args.full_city,
        on_bad_record=args.on_bad_record,
    )
    # Every record is read and every image decoded before the model loads: bad data stops the
    # command here, before anything is written, or (skip) is left out and listed.
    out = Path(args.out) if args.out else _default_eval_dir(args.model, args.split)
    dataset, skipped = verify_and_list(load_benchmark(request, flag_for), args.on_bad_record, out)
    saved = saved_encoder_dir(args.model)
    save_id = card.card_save_id(saved) if saved is not None else None  # before loading: same weights
    encoder = load_encoder(args.model, device=args.device, dtype=args.dtype)
    # The saved templates unless the evaluation sets its own (e.g. the released code's prefix).
    encoder = with_templates(encoder, args.text_template, args.image_template)
    if args.no_cache:
        embeddings = embed_dataset(encoder, dataset, batch_size=args.batch_size)
    else:
        embeddings, hit = cached_embeddings(encoder, dataset, args.cache_dir, batch_size=args.batch_size)
        if hit:
            print("embeddings read from the cache (same model weights, same data)")
    metrics = score_benchmark(request, embeddings, dataset)
    metrics = {**metrics, "model": args.model, "data": str(dataset.source), "split": args.split}
    metrics["templates"] = {"text": encoder.spec.text_template, "image": encoder.spec.image_template}
    if args.on_bad_record == "skip":
        metrics["skipped_records"] = len(skipped)
    # metrics.json last: its presence means the evaluation finished.
    if args.save_embeddings:
        embeddings.save(out / "embeddings.npz")
    atomic.write_json(out / "metrics.json", metrics)
    print(format_metrics(metrics, title=f"{args.model} on {dataset.source} (split: {args.split or 'all'})"))
    written = f"wrote {out / 'metrics.json'}"
    print(written + (f" and {out / 'embeddings.npz'}" if args.save_embeddings else ""))
    if saved is not None:  # the saved model's card (README.md) shows every result it has
        data_name = card.dataset_name(request.benchmark, str(dataset.source), **request.subset())
        if card.add_result(saved, card.eval_result(metrics, data_name, args.split), save_id=save_id):
            print(f"added the results to the model card: {saved / card.CARD}")
        else:
            print(f"{saved} was saved again while it was evaluated: its model card is left as it was")
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    from geoloc.data.bad_records import verify_and_list
    from geoloc.data.manifest import read_manifest
    from geoloc.encoder.loading import load_encoder
    from geoloc.eval.gallery import embed_gallery
    from geoloc.world import join_world

    world = join_world()
    try:
        out = Path(args.out)
        dataset, _ = verify_and_list(
            read_manifest(args.data, args.split, args.on_bad_record),
            args.on_bad_record,
            out,
            quiet=not world.is_main,  # the first process reports and lists
        )
        device = args.device
        if world.distributed and device in ("auto", "cuda"):
            import torch

            device = f"cuda:{world.local_rank}" if torch.cuda.is_available() else "cpu"
        encoder = load_encoder(args.model, device=device, dtype=args.dtype)
        result = embed_gallery(
            encoder, dataset, out, args.model, args.shard_size, args.batch_size, world, not args.quiet
        )
        if world.is_main:
            print(
                f"embedded {result.tiles} tiles in {result.shards} shards "
                f"({result.shards_done_here} encoded by this process, {result.tiles_per_s:.1f} tiles/s): "
                f"{out / 'embeddings.npz'}"
            )
    finally:
        if world.distributed:
            import torch.distributed as dist

            dist.destroy_process_group()
    return 0


def _register_eval(subparsers: Any) -> None:
    p = subparsers.add_parser("eval", help="evaluate a model on a data set")
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("--data", help=DATA_HELP)
    p.add_argument("--benchmark", default="manifest", choices=options(BenchmarkName))
    p.add_argument("--root", help="benchmark root folder (geotext1652, cvgtext)")
    p.add_argument("--city", help="cvgtext city, e.g. NewYork")
    p.add_argument("--version", default="mixed", choices=options(CvgTextVersion), help="cvgtext queries")
    p.add_argument("--target", default="satellite", choices=options(CvgTextTarget), help="cvgtext tiles")
    p.add_argument("--view", default="all", choices=options(GeoTextView), help="geotext1652")
    p.add_argument(
        "--protocol",
        choices=options(GeoTextProtocol),
        help="geotext1652: benchmark (default; one row per image), official-quirks (the official "
        "itm_eval exactly: one row per record, off-by-one labels), paper (one row per caption)",
    )
    p.add_argument("--official-quirks", action="store_true", help="geotext1652: --protocol official-quirks")
    p.add_argument(
        "--text-template",
        help="score with this text template instead of the saved one, e.g. '<|endoftext|>{text}'",
    )
    p.add_argument(
        "--image-template",
        help="score with this tile template instead of the saved one, e.g. '<|endoftext|>{image}'",
    )
    p.add_argument("--full-city", action="store_true", help="cvgtext: the whole city as gallery")
    add_split(p, "rows of this split only (default: test; 'all' for every row)", default="test")
    p.add_argument("--out", help="folder for metrics.json (default: <run>/eval_<split>)")
    p.add_argument("--save-embeddings", action="store_true", help="also write embeddings.npz")
    p.add_argument(
        "--cache-dir", help="embedding cache (default: $GEOLOC_CACHE/embeddings or ~/.cache/geoloc)"
    )
    p.add_argument("--no-cache", action="store_true", help="encode again; neither read nor write the cache")
    p.add_argument("--batch-size", type=int, default=32)
    add_device(p)
    add_dtype(p)
    add_on_bad_record(p)
    p.set_defaults(func=cmd_eval)


def _register_embed(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "embed", help="embed a gallery's tiles in resumable shards (several processes: torchrun -m geoloc)"
    )
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("--data", required=True, help=DATA_HELP)
    add_split(p, "rows of this split only (default: all)", default="all")
    p.add_argument("--out", required=True, help="output folder: shards/, embeddings.npz, embed.json")
    p.add_argument("--shard-size", type=int, default=1024, help="tiles per shard (default: 1024)")
    p.add_argument("--batch-size", type=int, default=16)
    add_device(p)
    add_dtype(p)
    add_on_bad_record(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_embed)


def register(subparsers: Any) -> None:
    _register_eval(subparsers)
    _register_embed(subparsers)
