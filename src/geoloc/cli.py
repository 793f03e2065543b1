"""The `geoloc` command: a thin layer over the library.

Errors caused by input (bad files, bad options) print one clear line and exit with status 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from geoloc.errors import GeolocError

# Modules that add their own sub-commands: each has `register(subparsers)`, whose parsers set
# `func` (args -> exit status). The core commands below are defined in this file.
COMMAND_MODULES: tuple[str, ...] = (
    "geoloc.index.commands",
    "geoloc.geodata.commands",
    "geoloc.serve.commands",
    "geoloc.study.commands",
)


def _quiet_libraries() -> None:
    # transformers prints load reports and advice on every model load; users want geoloc's output.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Also hides transformers' per-save "Writing model shards" bars; geoloc shows its own progress.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import warnings

    warnings.filterwarnings("ignore", message=".*TRANSFORMERS_CACHE.*")


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


def cmd_train(args: argparse.Namespace) -> int:
    from geoloc.config import load_config
    from geoloc.data.bad_records import list_skipped
    from geoloc.train.splits import carve_splits
    from geoloc.train.trainer import train

    overrides = list(args.set)
    if args.on_bad_record:
        overrides.append(f"data.on_bad_record={args.on_bad_record}")
    config = load_config(args.config, overrides)
    out = Path(args.out) if args.out else Path("runs") / Path(args.config).stem
    # The data is read and every image decoded before the run directory is touched: bad data
    # stops here with nothing written, or its bad records are listed beside the run.
    splits = carve_splits(config)
    if config.data.on_bad_record == "skip":
        # A run that exists (and is not resumed) is refused by the trainer: its list stays.
        writes = args.resume or not (out / "metrics.jsonl").exists()
        list_skipped(splits.skipped, "skip", out if writes else None)
    result = train(config, out, resume=args.resume, splits=splits)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, the first process reports
        print(json.dumps({"run_dir": str(out), **result, "skipped_records": len(splits.skipped)}, indent=2))
    return 0


def _default_eval_dir(model: str, split: str | None) -> Path:
    """Beside a saved model or run; in the current folder for a preset or hub id."""
    from geoloc.encoder.base import saved_encoder_dir

    name = f"eval_{split or 'all'}"
    return Path(model) / name if saved_encoder_dir(model) is not None else Path(name)


def _geotext_protocol(args: argparse.Namespace) -> str:
    """--protocol, with --official-quirks as its older spelling."""
    if args.official_quirks and args.protocol not in (None, "official-quirks"):
        raise GeolocError(f"--official-quirks and --protocol {args.protocol} contradict each other")
    return "official-quirks" if args.official_quirks else args.protocol or "benchmark"


def cmd_eval(args: argparse.Namespace) -> int:
    from geoloc import atomic
    from geoloc.data.bad_records import verify_and_list
    from geoloc.encoder import card
    from geoloc.encoder.base import saved_encoder_dir
    from geoloc.encoder.loading import load_encoder
    from geoloc.eval.benchmarks import BenchmarkRequest, format_metrics, load_benchmark, score_benchmark
    from geoloc.eval.cache import cached_embeddings
    from geoloc.eval.evaluate import embed_dataset, with_templates

    request = BenchmarkRequest(
        benchmark=args.benchmark,
        data=args.data,
        root=args.root,
        split=args.split,
        city=args.city,
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
    dataset, skipped = verify_and_list(load_benchmark(request), args.on_bad_record, out)
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


def cmd_params(args: argparse.Namespace) -> int:
    from geoloc.config import load_config
    from geoloc.encoder.counting import count_for_config, format_counts

    # A training config names its own backbone; otherwise MODEL is the backbone and --set
    # chooses the tuning and pooling.
    is_training_config = Path(args.model).suffix in (".yaml", ".yml")
    config = load_config(args.model if is_training_config else None, args.set)
    if not is_training_config:
        config.model.backbone = args.model
    result = count_for_config(config)
    print(json.dumps(result, indent=2) if args.json else format_counts(result))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from geoloc.demo import run_demo

    return run_demo(Path(args.out), tiles=args.tiles, minutes=args.minutes, seed=args.seed)


def cmd_demo_map(args: argparse.Namespace) -> int:
    from geoloc.demo import run_map_demo

    return run_map_demo(
        Path(args.out),
        model=args.model,
        tiles=args.tiles,
        seed=args.seed,
        serve=not args.no_serve,
        host=args.host,
        port=args.port,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="geoloc", description="Find the satellite tile a person describes.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train an encoder from a YAML config")
    p.add_argument("config", help="the training config (YAML)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--out", help="run directory (default: runs/<config name>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out where it stopped")
    p.add_argument(
        "--on-bad-record",
        choices=["error", "skip"],
        help="error: stop at the first bad record; skip: leave bad records out and list them in "
        "<out>/skipped_records.jsonl (default: the config's data.on_bad_record, itself 'error')",
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a model on a data set")
    p.add_argument("model", help="run directory, saved model, HF id / model folder, or preset")
    p.add_argument("--data", help="manifest file or folder holding manifest.jsonl")
    p.add_argument("--benchmark", default="manifest", choices=["manifest", "geotext1652", "cvgtext"])
    p.add_argument("--root", help="benchmark root folder (geotext1652, cvgtext)")
    p.add_argument("--city", help="cvgtext city, e.g. NewYork")
    p.add_argument(
        "--version", default="mixed", choices=["mixed", "panorama", "photos"], help="cvgtext queries"
    )
    p.add_argument("--target", default="satellite", choices=["satellite", "osm"], help="cvgtext tiles")
    p.add_argument(
        "--view", default="all", choices=["all", "satellite", "drone", "ground"], help="geotext1652"
    )
    p.add_argument(
        "--protocol",
        choices=["benchmark", "official-quirks", "paper"],
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
    p.add_argument(
        "--split", default="test", help="rows of this split only (default: test; 'all' for every row)"
    )
    p.add_argument("--out", help="folder for metrics.json (default: <run>/eval_<split>)")
    p.add_argument("--save-embeddings", action="store_true", help="also write embeddings.npz")
    p.add_argument(
        "--cache-dir", help="embedding cache (default: $GEOLOC_CACHE/embeddings or ~/.cache/geoloc)"
    )
    p.add_argument("--no-cache", action="store_true", help="encode again; neither read nor write the cache")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument(
        "--on-bad-record",
        default="error",
        choices=["error", "skip"],
        help="error (default): stop at the first bad record, writing nothing; skip: leave bad "
        "records out and list them in <out>/skipped_records.jsonl",
    )
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser(
        "embed", help="embed a gallery's tiles in resumable shards (several processes: torchrun -m geoloc)"
    )
    p.add_argument("model", help="run directory, saved model, HF id / model folder, or preset")
    p.add_argument("--data", required=True, help="manifest file or folder holding manifest.jsonl")
    p.add_argument("--split", default="all", help="rows of this split only (default: all)")
    p.add_argument("--out", required=True, help="output folder: shards/, embeddings.npz, embed.json")
    p.add_argument("--shard-size", type=int, default=1024, help="tiles per shard (default: 1024)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--on-bad-record", default="error", choices=["error", "skip"])
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("params", help="exact total / trainable parameter counts, on the meta device")
    p.add_argument(
        "model",
        help="smolvlm-256m | smolvlm-500m | internvl3_5-1b, an HF id, a config.json, "
        "a tiny preset, or a training config (YAML)",
    )
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="e.g. tuning.strategy=dora"
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_params)

    p = sub.add_parser("synth", help="write a synthetic city in the manifest format")
    p.add_argument("out", help="output folder")
    p.add_argument("--tiles", type=int, default=1200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--texts-per-tile", type=int, default=4)
    p.add_argument("--geotiff", action="store_true", help="also write the city as one UTM GeoTIFF, city.tif")
    p.add_argument(
        "--style",
        choices=["demo", "holdout"],
        default="demo",
        help="the look and vocabulary: the demo city's, or another kept for testing methods (default: demo)",
    )
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("demo", help="offline end-to-end demo on a synthetic city")
    p.add_argument("--out", default="demo_out", help="working folder (default: demo_out)")
    p.add_argument("--tiles", type=int, default=1200)
    p.add_argument("--minutes", type=float, default=2.5, help="training time budget")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
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

    import importlib

    for module in COMMAND_MODULES:
        importlib.import_module(module).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    _quiet_libraries()
    args = build_parser().parse_args(argv)
    if getattr(args, "split", None) == "all":
        args.split = None
    try:
        return args.func(args)
    except GeolocError as error:
        print(f"geoloc: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("geoloc: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
