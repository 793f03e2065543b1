"""The command line as a whole (cli.py): every command in its place, and clear errors on bad input.

A command's own outputs are tested beside its package, e.g. tests/eval/test_eval_commands.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from geoloc.cli import build_parser, main


def _assert_clean_error(capsys: pytest.CaptureFixture[str], argv: list[str], *needles: str) -> None:
    # In-process: an error other than geoloc's one line would raise here (the traceback a user sees).
    assert main(argv) == 2
    error = capsys.readouterr().err
    for needle in needles:
        assert needle in error, error


def test_bad_inputs_give_clear_errors(
    small_city: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A manifest whose image is missing.
    data = tmp_path / "data"
    shutil.copytree(small_city.parent, data)
    rows = [json.loads(line) for line in (data / "manifest.jsonl").read_text().splitlines()]
    test_rows = [r for r in rows if r["split"] == "test"]
    (data / test_rows[0]["image"]).unlink()
    _assert_clean_error(
        capsys, ["eval", "tiny-smolvlm", "--data", str(data)], "manifest.jsonl", test_rows[0]["image"]
    )

    # A malformed manifest line.
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"image": "a.png", "texts": ["x"]}\n{"image": \n')
    _assert_clean_error(capsys, ["eval", "tiny-smolvlm", "--data", str(broken)], "broken.jsonl", "line")

    # An empty text.
    (tmp_path / "a.png").write_bytes((data / test_rows[1]["image"]).read_bytes())
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"image": "a.png", "texts": ["  "]}\n')
    _assert_clean_error(
        capsys, ["eval", "tiny-smolvlm", "--data", str(empty), "--split", "all"], "empty.jsonl", "line 1"
    )

    # An unreadable image: eval names the image file, exits 2, writes no metrics.
    corrupt = tmp_path / "corrupt"
    shutil.copytree(small_city.parent, corrupt)
    (corrupt / test_rows[1]["image"]).write_bytes(b"not a png")
    out = tmp_path / "never"
    _assert_clean_error(
        capsys, ["eval", "tiny-smolvlm", "--data", str(corrupt), "--out", str(out)], test_rows[1]["image"]
    )
    assert not out.exists()

    # A malformed config, and an unknown model.
    bad_config = tmp_path / "bad.yaml"
    bad_config.write_text("train: {batch_size: many}\n")
    _assert_clean_error(capsys, ["train", str(bad_config)], "bad.yaml", "train.batch_size")
    _assert_clean_error(capsys, ["eval", str(tmp_path / "no-model"), "--data", str(small_city)], "no-model")


# Other tools call these by name: a command is added here, never renamed or dropped.
COMMANDS = [
    "train",
    "eval",
    "embed",
    "params",
    "synth",
    "demo",
    "demo-map",
    "index",
    "search",
    "explain",
    "tiles",
    "xyz",
    "serve",
    "sweep",
    "report",
]


def test_every_package_registers_its_commands_in_order() -> None:
    import argparse

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert list(commands.choices) == COMMANDS
    for name, command in commands.choices.items():
        # The command's function lives in its package's commands.py, not in cli.py.
        func = command.get_default("func")
        if name != "index":  # `index` holds sub-commands of its own
            assert func.__module__.endswith(".commands"), (name, func.__module__)


def test_an_input_error_is_one_line_and_status_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["index", "remove", str(tmp_path / "idx")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("geoloc: error: no keys to remove") and len(error.strip().splitlines()) == 1
