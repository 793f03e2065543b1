"""`geoloc train`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from geoloc.cli_flags import add_on_bad_record, add_overrides


def cmd_train(args: argparse.Namespace) -> int:
    from geoloc.config import load_config
    from geoloc.data.bad_records import list_skipped
    from geoloc.train.splits import carve_splits
    from geoloc.train.trainer import train
    from geoloc.world import join_world

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
    world = join_world()  # the trainer joins the same group; it leaves it when the run ends
    result = train(config, out, resume=args.resume, splits=splits)
    if world.is_main:  # under torchrun, the first process reports
        print(json.dumps({"run_dir": str(out), **result, "skipped_records": len(splits.skipped)}, indent=2))
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("train", help="train an encoder from a YAML config")
    p.add_argument("config", help="the training config (YAML)")
    add_overrides(p, "override a config key")
    p.add_argument("--out", help="run directory (default: runs/<config name>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out where it stopped")
    add_on_bad_record(p, from_config=True)
    p.set_defaults(func=cmd_train)
