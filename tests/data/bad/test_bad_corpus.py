"""The bad-input corpus (see conftest.py) through every reader, the image loader, the training
config, and the `geoloc eval` / `geoloc train` commands, with --on-bad-record error and skip."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from conftest import IMAGE_CASES, READERS, case_outcome, cases_for, write_dataset

from geoloc.cli import main
from geoloc.data.images import load_image
from geoloc.errors import DataError

BAD = [
    (reader, case)
    for reader in READERS
    for case in cases_for(reader)
    if case_outcome(reader, case) != "converted"
]


def one_clean_error(err: str) -> str:
    """The command's stderr must be exactly one `geoloc: error:` line (no traceback)."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("geoloc: error: "), err
    return lines[0]


def names_the_record(message: str, record: str, key: str) -> bool:
    return record in message or f"record {key}:" in message


# --- the image loader ------------------------------------------------------------------------------


@pytest.mark.parametrize("case", list(IMAGE_CASES))
def test_image_loader(case: str, corpus_dir: Path) -> None:
    outcome, write = IMAGE_CASES[case]
    path = corpus_dir / f"{case}.png"
    write(path)
    if outcome == "converted":
        image = load_image(path, root=corpus_dir)
        assert image.mode == "RGB" and image.size == (48, 48)
        return
    with pytest.raises(DataError) as info:
        load_image(path, root=corpus_dir, record="tile 7")
    assert str(path) in str(info.value) and "record tile 7" in str(info.value)


def test_the_bomb_is_cheap_and_refused_before_decoding(corpus_dir: Path) -> None:
    path = corpus_dir / "bomb.png"
    IMAGE_CASES["bomb_30000px"][1](path)
    assert path.stat().st_size < 100
    assert struct.unpack(">II", path.read_bytes()[16:24]) == (30_000, 30_000)  # the IHDR's claim
    with pytest.raises(DataError, match="decompression bomb"):
        load_image(path)


# --- every reader, one bad case at a time: a clear error and nothing written ------------------------


# With skip, a bad record is left out (next test); a bad file still stops the command.
STOPS = [(reader, case, "error") for reader, case in BAD] + [
    (reader, case, "skip") for reader, case in BAD if case_outcome(reader, case) == "file"
]


@pytest.mark.parametrize(("reader", "case", "mode"), STOPS)
def test_eval_stops_on_each_bad_case(reader: str, case: str, mode: str, corpus_dir: Path, capsys) -> None:
    outcome = case_outcome(reader, case)
    written = write_dataset(reader, corpus_dir, [case])
    out = corpus_dir.parent / "out"
    code = main(["eval", "tiny-smolvlm", *written.args, "--out", str(out), "--on-bad-record", mode])
    message = one_clean_error(capsys.readouterr().err)
    assert code == 2
    assert str(written.data_file) in message
    if outcome == "record":
        record, key = written.rows[case]
        assert names_the_record(message, record, key), message
    assert not out.exists()  # no metrics.json, no partial output


@pytest.mark.parametrize("reader", READERS)
def test_eval_skips_and_lists_every_bad_record(reader: str, corpus_dir: Path, capsys) -> None:
    bad = cases_for(reader, "record")
    converted = cases_for(reader, "converted")
    written = write_dataset(reader, corpus_dir, bad + converted)
    out = corpus_dir.parent / "out"
    args = ["eval", "tiny-smolvlm", *written.args, "--out", str(out), "--on-bad-record", "skip", "--no-cache"]
    assert main(args) == 0, capsys.readouterr().err
    err = capsys.readouterr().err
    assert f"skipped {len(bad)} bad record(s)" in err and "Traceback" not in err

    listed = [json.loads(line) for line in (out / "skipped_records.jsonl").read_text().splitlines()]
    assert len(listed) == len(bad)
    for case in bad:
        record, key = written.rows[case]
        matches = [e for e in listed if e["record"] in (record, f"image {key}")]
        assert len(matches) == 1, (case, listed)
        assert matches[0]["file"] == str(written.data_file) and matches[0]["reason"]
    for case in converted:  # converted images are used, not skipped
        record, key = written.rows[case]
        assert not [e for e in listed if e["record"] in (record, f"image {key}")]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["skipped_records"] == len(bad)
    n_images = metrics["n_images"] if "n_images" in metrics else metrics["subsets"]["all"]["n"]
    assert n_images == written.n_good + len(converted)


# --- geoloc train: the same corpus, and bad training configs -----------------------------------------


def _train_config(folder: Path, manifest: Path) -> Path:
    path = folder / "train.yaml"
    path.write_text(
        f"model: {{backbone: tiny-smolvlm}}\ntuning: {{strategy: full}}\ndata: {{train: '{manifest}'}}\n"
        "train: {max_steps: 1, batch_size: 4, progress: false, device: cpu, save_every: 0}\n"
    )
    return path


@pytest.mark.parametrize("case", cases_for("jsonl", "record"))
def test_train_stops_on_each_bad_record(case: str, corpus_dir: Path, capsys) -> None:
    written = write_dataset("jsonl", corpus_dir, [case])
    run = corpus_dir.parent / "run"
    assert main(["train", str(_train_config(corpus_dir.parent, written.data_file)), "--out", str(run)]) == 2
    message = one_clean_error(capsys.readouterr().err)
    record, key = written.rows[case]
    assert str(written.data_file) in message and names_the_record(message, record, key), message
    assert not run.exists()  # the data is checked before the run directory is created


def test_train_skips_and_lists_bad_records(corpus_dir: Path, capsys) -> None:
    bad = cases_for("jsonl", "record")
    written = write_dataset("jsonl", corpus_dir, bad + cases_for("jsonl", "converted"))
    config = _train_config(corpus_dir.parent, written.data_file)
    run = corpus_dir.parent / "run"
    assert main(["train", str(config), "--out", str(run), "--on-bad-record", "skip"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["skipped_records"] == len(bad)
    assert f"skipped {len(bad)} bad record(s)" in captured.err
    listed = [json.loads(line) for line in (run / "skipped_records.jsonl").read_text().splitlines()]
    assert len(listed) == len(bad)
    for case in bad:
        record, key = written.rows[case]
        assert len([e for e in listed if e["record"] in (record, f"image {key}")]) == 1, (case, listed)
    saved = (run / "config.yaml").read_text()
    assert "on_bad_record: skip" in saved  # the run records that it skipped


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"model: {backbone: caf\xe9}\n", "not UTF-8"),
        (b"train: {epochs: 1\n", "invalid YAML"),
        (b"train: {epochs: one}\n", "train.epochs: expected int"),
        (b"model: {backbone: null}\n", "model.backbone: expected str"),
        (b"data: {trian: x}\n", "unknown key(s) trian"),
        (b"data: {train: a}\ndata: {train: b}\n", "key 'data' is given twice"),
        (b"data: {on_bad_record: ignore}\n", "data.on_bad_record"),
        (b"", "no data: set data.train"),
        (b"- a list\n", "expected a mapping"),
    ],
)
def test_bad_training_configs(content: bytes, needle: str, tmp_path: Path, capsys) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(content)
    run = tmp_path / "run"
    assert main(["train", str(path), "--out", str(run)]) == 2
    message = one_clean_error(capsys.readouterr().err)
    assert needle in message
    if content:
        assert str(path) in message
    assert not run.exists()
