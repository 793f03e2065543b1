"""The `geoloc` command: a thin layer over the library.

Each package's `commands.py` adds its own sub-commands; this file only builds the top-level
parser and runs the chosen command. Errors caused by input (bad files, bad options) print one
clear line and exit with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from geoloc.errors import GeolocError

# Each module has `register(subparsers)`, whose parsers set `func` (args -> exit status); this
# order is the order of `geoloc --help`.
COMMAND_MODULES: tuple[str, ...] = (
    "geoloc.train.commands",  # train
    "geoloc.eval.commands",  # eval, embed
    "geoloc.encoder.commands",  # params
    "geoloc.data.commands",  # synth
    "geoloc.demo.commands",  # demo, demo-map
    "geoloc.index.commands",  # index build|add|remove|export|info, search, explain
    "geoloc.geodata.commands",  # tiles, xyz
    "geoloc.serve.commands",  # serve
    "geoloc.study.commands",  # sweep, report
)


def _quiet_libraries() -> None:
    # transformers prints load reports and advice on every model load; users want geoloc's output.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Also hides transformers' per-save "Writing model shards" bars; geoloc shows its own progress.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import warnings

    warnings.filterwarnings("ignore", message=".*TRANSFORMERS_CACHE.*")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="geoloc", description="Find the satellite tile a person describes.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module in COMMAND_MODULES:
        importlib.import_module(module).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    _quiet_libraries()
    args = build_parser().parse_args(argv)
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
