"""The flags several commands share, each declared here once: one name, one meaning, one help.

Light on purpose: building the parser imports this, so it imports no library beyond argparse
(geoloc.choices, where the choices are stated, is as light).
"""

from __future__ import annotations

import argparse

from geoloc.choices import OnBadRecord, WeightsDtype, canonical, options

ON_BAD_RECORD = options(OnBadRecord)
DTYPES = options(WeightsDtype)
OUT_LIST = "<out>/skipped_records.jsonl"


def flag_for(setting: str) -> str:
    """A data setting as `geoloc eval` spells it (data/readers.py names settings through this):
    the manifest is --data, `on_bad_record` is --on-bad-record."""
    return "--data" if setting == "manifest" else "--" + setting.replace("_", "-")


def split_or_none(value: str) -> str | None:
    """A --split value: `all` means every row, which the library spells None."""
    return None if value == "all" else value


def add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto (a GPU if there is one), cpu, cuda, cuda:1")


def add_dtype(parser: argparse.ArgumentParser) -> None:
    # bf16, the older spelling of bfloat16, still reads.
    parser.add_argument("--dtype", default="float32", type=canonical, choices=DTYPES)


def add_split(parser: argparse.ArgumentParser, help: str, default: str | None = None) -> None:
    """--split NAME; `all` (also as the default) reaches the command as None: every row."""
    parser.add_argument("--split", default=default, type=split_or_none, help=help)


def add_on_bad_record(
    parser: argparse.ArgumentParser, listed_in: str = OUT_LIST, from_config: bool = False
) -> None:
    """--on-bad-record error|skip; `from_config`: no default, the config's data.on_bad_record."""
    skip = f"skip: leave bad records out and list them in {listed_in}"
    if from_config:
        by_config = "(default: the config's data.on_bad_record, itself 'error')"
        help = f"error: stop at the first bad record; {skip} {by_config}"
    else:
        help = f"error (default): stop at the first bad record, writing nothing; {skip}"
    parser.add_argument(
        "--on-bad-record", default=None if from_config else "error", choices=ON_BAD_RECORD, help=help
    )


def add_overrides(parser: argparse.ArgumentParser, help: str) -> None:
    """--set KEY=VALUE, repeatable: config keys to override."""
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=help)
