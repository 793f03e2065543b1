"""The flags several commands share (cli_flags.py): the same choices, default and meaning in each."""

from __future__ import annotations

import argparse
from typing import get_args, get_type_hints

import pytest

from geoloc import cli_flags
from geoloc.cli import build_parser


def _commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> dict[tuple[str, ...], argparse.ArgumentParser]:
    """Every command's parser, sub-commands included, by its words (("index", "build"), ...)."""
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found[(*path, name)] = sub
                found |= _commands(sub, (*path, name))
    return found


COMMANDS = _commands(build_parser())


def _flag(parser: argparse.ArgumentParser, flag: str) -> argparse.Action | None:
    return next((a for a in parser._actions if flag in a.option_strings), None)


def _with(flag: str) -> dict[tuple[str, ...], argparse.Action]:
    return {words: action for words, p in COMMANDS.items() if (action := _flag(p, flag)) is not None}


def test_the_flags_offer_the_configs_choices() -> None:
    from geoloc.config import DataConfig, ModelConfig

    assert cli_flags.ON_BAD_RECORD == get_args(get_type_hints(DataConfig)["on_bad_record"])
    assert cli_flags.DTYPES == get_args(get_type_hints(ModelConfig)["dtype"])


def test_each_shared_flag_is_the_same_everywhere() -> None:
    devices = _with("--device")
    assert set(devices) == {
        ("eval",),
        ("embed",),
        ("index", "build"),
        ("index", "add"),
        ("search",),
        ("explain",),
        ("serve",),
        ("report",),
    }
    assert {(a.default, a.help) for a in devices.values()} == {("auto", devices[("eval",)].help)}
    dtypes = _with("--dtype")
    assert set(dtypes) == {("eval",), ("embed",), ("index", "build")}
    assert {(a.default, tuple(a.choices)) for a in dtypes.values()} == {("float32", cli_flags.DTYPES)}
    bad_records = _with("--on-bad-record")
    assert set(bad_records) == {("train",), ("eval",), ("embed",), ("index", "build"), ("index", "add")}
    assert {tuple(a.choices) for a in bad_records.values()} == {cli_flags.ON_BAD_RECORD}
    # train takes the config's data.on_bad_record unless told; the others stop at the first.
    assert {words: a.default for words, a in bad_records.items()}[("train",)] is None
    assert {a.default for words, a in bad_records.items() if words != ("train",)} == {"error"}


@pytest.mark.parametrize(
    "argv",
    [
        ["eval", "m"],
        ["embed", "m", "--data", "d", "--out", "o"],
        ["index", "build", "m", "--gallery", "g", "--out", "o"],
        ["index", "add", "idx", "--gallery", "g"],
        ["report", "run"],
    ],
)
def test_split_all_reaches_every_command_as_none(argv: list[str]) -> None:
    parser = build_parser()
    assert parser.parse_args([*argv, "--split", "all"]).split is None
    assert parser.parse_args([*argv, "--split", "test"]).split == "test"


def test_the_default_splits() -> None:
    parser = build_parser()
    assert parser.parse_args(["eval", "m"]).split == "test"
    assert parser.parse_args(["embed", "m", "--data", "d", "--out", "o"]).split is None  # `all`
    assert parser.parse_args(["index", "add", "idx", "--gallery", "g"]).split is None


def test_the_shared_flags_are_declared_only_in_cli_flags() -> None:
    from pathlib import Path

    import geoloc

    shared = ("--device", "--dtype", "--split", "--on-bad-record", "--set")
    package = Path(geoloc.__file__).parent
    for path in package.rglob("*.py"):
        if path.name != "cli_flags.py":
            text = path.read_text(encoding="utf-8")
            declared = [flag for flag in shared if f'add_argument("{flag}"' in text]
            assert not declared, f"{path.relative_to(package)} declares {declared}: use geoloc.cli_flags"
