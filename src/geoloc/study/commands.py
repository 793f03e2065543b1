"""The study's sub-commands: `geoloc sweep` and `geoloc report`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from geoloc.cli_flags import add_device, add_overrides, add_split


def cmd_sweep(args: argparse.Namespace) -> int:
    from geoloc.study.sweep import load_sweep, run_sweep

    sweep = load_sweep(args.sweep, args.set)
    out = Path(args.out) if args.out else Path("runs") / "sweeps" / sweep.name
    if args.dry_run:
        for point in sweep.points:
            print(f"{out / 'runs' / point.name}")
        print(f"{len(sweep.points)} runs; results in {out}")
        return 0
    try:
        rows = run_sweep(sweep, out)
    except KeyboardInterrupt:
        print(f"sweep interrupted; run the same command again to resume it ({out})")
        raise
    print((out / "results.md").read_text(encoding="utf-8"))
    print(f"{len(rows)} runs; wrote {out / 'results.md'}, {out / 'results.csv'} and {out / 'results.png'}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from geoloc.study.report import ReportOptions, build_report

    options = ReportOptions(
        data=args.data,
        split=args.split,
        queries=args.queries,
        device=args.device,
        use_cache=not args.no_cache,
    )
    page = build_report(args.target, args.out, options)
    print(f"wrote {page}")
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("sweep", help="train and score a grid of configs; one results table")
    p.add_argument("sweep", help="the sweep file (YAML: base, set, grid, points, metric, eval)")
    add_overrides(p, "override for every run")
    p.add_argument("--out", help="output folder (default: runs/sweeps/<sweep name>)")
    p.add_argument("--dry-run", action="store_true", help="list the runs and stop")
    p.set_defaults(func=cmd_sweep)

    p = subparsers.add_parser("report", help="an HTML report of a training run or a sweep")
    p.add_argument("target", help="a run directory or a sweep output folder")
    p.add_argument("--out", help="folder for report.html and its figures (default: <target>/report)")
    p.add_argument("--data", help="manifest for the retrieval examples (default: the run's training data)")
    add_split(p, "split for the retrieval examples (default: test, else validation)")
    p.add_argument("--queries", type=int, default=6, help="queries in the retrieval grid (default: 6)")
    add_device(p)
    p.add_argument("--no-cache", action="store_true", help="encode again; neither read nor write the cache")
    p.set_defaults(func=cmd_report)
