"""The bad-input corpus, written by the tests (binary and hostile files cannot be committed).

Every case is one bad record (or one bad file) of a kind, written in the format of each reader:
the manifest as JSONL, CSV and Parquet, GeoText-1652 and CVG-Text in their real layouts. A case
expects one of three outcomes:

- "record": that record is bad. `--on-bad-record error` stops with a one-line message naming
  the data file and the record; `skip` leaves it out and lists it;
- "file": the file as a whole is bad (or empty). Both modes stop, naming the file;
- "converted": an unusual but valid image (CMYK, 16-bit, RGBA, palette, grayscale) that is
  converted to RGB (geoloc.data.images documents how) and used.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

READERS = ("jsonl", "csv", "parquet", "geotext", "cvgtext")


# --- images -----------------------------------------------------------------------------------------


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(path: Path, side: int = 30_000) -> None:
    """A 60-byte PNG whose header claims side x side RGB pixels: refused before any decoding."""
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + _png_chunk(b"IEND", b"")
    )


def _noise(mode_size: int = 48) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (mode_size, mode_size, 3), dtype=np.uint8))


def _truncated(path: Path, fmt: str) -> None:
    _noise(64).save(path, format=fmt)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _symlink_out(path: Path) -> None:
    outside = path.parent.parent / f"outside_{path.name}"
    for parent in path.parents:  # a file above every data root of the corpus
        if parent.name.startswith("corpus-"):
            outside = parent.parent / f"outside_{path.name}"
            break
    _noise().save(outside, format="PNG")
    path.symlink_to(outside)


def _gray16(path: Path) -> None:
    values = (np.arange(48 * 48, dtype=np.uint16).reshape(48, 48) * 28).astype(np.uint16)
    image = Image.new("I;16", (48, 48))
    image.frombytes(values.astype("<u2").tobytes())
    image.save(path, format="PNG")
    with Image.open(path) as check:  # really 16 bits a pixel on disk
        assert check.mode in ("I;16", "I;16B", "I"), check.mode


def _palette(path: Path) -> None:
    _noise().convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(path, format="PNG")


IMAGE_CASES: dict[str, tuple[str, Callable[[Path], None]]] = {
    # name: (expected outcome, writer of the file at a path)
    "zero_byte": ("record", lambda p: p.write_bytes(b"")),
    "truncated_jpeg": ("record", lambda p: _truncated(p, "JPEG")),
    "truncated_png": ("record", lambda p: _truncated(p, "PNG")),
    "not_an_image": ("record", lambda p: p.write_text("these are notes, not pixels\n")),
    "bomb_30000px": ("record", bomb_png),
    "missing_file": ("record", lambda p: None),
    "symlink_out_of_root": ("record", _symlink_out),
    "cmyk": ("converted", lambda p: _noise().convert("CMYK").save(p, format="JPEG")),
    "gray16": ("converted", _gray16),
    "rgba": ("converted", lambda p: _noise().convert("RGBA").save(p, format="PNG")),
    "palette": ("converted", _palette),
    "grayscale": ("converted", lambda p: _noise().convert("L").save(p, format="PNG")),
}

# Record-level field cases; each reader maps them to its own fields (None: not applicable).
FIELD_CASES = (
    "wrong_type",
    "null_string",
    "empty_caption",
    "caption_100k",
    "duplicated_key",
    "duplicated_field",
    "coordinates_out_of_range",
    "non_utf8",
    "invalid_json",
)
FILE_CASES = ("empty_dataset", "file_not_utf8", "file_invalid")


@dataclass
class Written:
    """A data set of the corpus on disk, and how to run `geoloc eval` on it."""

    args: list[str]
    data_file: Path
    # For each bad or converted row, by case: (its record id as the reader names it, its image key).
    rows: dict[str, tuple[str, str]] = field(default_factory=dict)
    n_good: int = 0


def good_image(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path, format="PNG")


def json_text(value: Any) -> str:
    """JSON text; a `Pairs` value becomes an object that may repeat a field name."""
    if isinstance(value, Pairs):
        return "{" + ", ".join(f"{json.dumps(k)}: {json_text(v)}" for k, v in value) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(json_text(v) for v in value) + "]"
    return json.dumps(value)


class Pairs(list):
    """A JSON object as (name, value) pairs, so a test can give a name twice."""


def case_outcome(reader: str, case: str) -> str | None:
    if case in IMAGE_CASES:
        return IMAGE_CASES[case][0]
    if case in FILE_CASES:
        if reader == "parquet" and case == "file_not_utf8":
            return None  # a binary format: its strings are checked by pyarrow (see file_invalid)
        if reader in ("jsonl", "csv") and case == "file_not_utf8":
            return None  # line-by-line formats: a bad line is a record case ("non_utf8")
        if reader in ("jsonl", "csv") and case == "file_invalid":
            return None  # likewise: an invalid line is a record case ("invalid_json")
        return "file"
    applicable = {
        "jsonl": set(FIELD_CASES),
        "csv": set(FIELD_CASES) - {"duplicated_field"},  # a repeated column is a file case in CSV
        "parquet": set(FIELD_CASES) - {"duplicated_field", "non_utf8", "invalid_json"},
        "geotext": set(FIELD_CASES) - {"coordinates_out_of_range", "non_utf8", "invalid_json"},
        "cvgtext": set(FIELD_CASES) - {"duplicated_field", "non_utf8", "invalid_json"},
    }
    return "record" if case in applicable[reader] else None


def cases_for(reader: str, outcome: str | None = None) -> list[str]:
    every = list(IMAGE_CASES) + list(FIELD_CASES) + list(FILE_CASES)
    found = [c for c in every if case_outcome(reader, c) is not None]
    return [c for c in found if outcome is None or case_outcome(reader, c) == outcome]


# --- writers --------------------------------------------------------------------------------------


def write_dataset(reader: str, root: Path, cases: list[str]) -> Written:
    """Two good rows, then one row per case (or, for a file case, a bad file) under `root`."""
    root.mkdir(parents=True, exist_ok=True)
    writer = {
        "jsonl": _write_manifest,
        "csv": _write_manifest,
        "parquet": _write_manifest,
        "geotext": _write_geotext,
        "cvgtext": _write_cvgtext,
    }[reader]
    return writer(reader, root, cases)


def _caption(case: str, i: int) -> Any:
    return {
        "wrong_type": 5,
        "null_string": None,
        "empty_caption": "",
        "caption_100k": "x" * 100_000,
    }.get(case, f"a row of the corpus, number {i}, case {case}")


def _write_manifest(reader: str, root: Path, cases: list[str]) -> Written:
    tiles = root / "tiles"
    tiles.mkdir()
    rows: list[Any] = []  # a dict (a row), or bytes for a raw JSONL line / CSV cell
    written = Written(args=["--split", "all"], data_file=root / f"manifest.{reader}")
    for i in range(2):
        good_image(tiles / f"good{i}.png", i)
        rows.append(
            {"image": f"tiles/good{i}.png", "texts": [f"a good row {i}"], "lat": 10.0, "lon": 20.0 + i}
        )
    written.n_good = 2
    for case in cases:
        if case in FILE_CASES:
            continue
        image = f"tiles/{case}.png"
        if case in IMAGE_CASES:
            IMAGE_CASES[case][1](root / image)
        else:
            good_image(root / image, len(rows))
        row: Any = {"image": image, "texts": [_caption(case, len(rows))], "lat": 10.0, "lon": 30.0}
        if case == "wrong_type":
            # JSONL: a number for the list; CSV: a latitude that is not a number; Parquet (typed
            # columns): a number in the single-description 'text' column.
            row = {**row, "lat": "north"} if reader == "csv" else {**row, "texts": 5}
            if reader == "parquet":
                row = {**row, "texts": None, "text": 5}
        elif case == "null_string":
            row["texts"] = [None]
            if reader == "csv":
                row["image"] = ""  # an empty cell is CSV's null
        elif case == "duplicated_key":
            row["image"] = "tiles/good0.png"
        elif case == "coordinates_out_of_range":
            row["lat"] = 95.0
        elif case == "duplicated_field":
            row = f'{{"image": "{image}", "texts": ["one"], "texts": ["two"]}}'.encode()
        elif case == "non_utf8":
            row = b'{"image": "' + image.encode() + b'", "texts": ["caf\xe9 au lait"]}'
            if reader == "csv":
                row = {"image": image, "texts": b"caf\xe9 au lait", "lat": 1.0, "lon": 1.0}
        elif case == "invalid_json":
            row = f'{{"image": "{image}", "texts": ["unclosed'.encode()
            if reader == "csv":
                row = {"image": image, "texts": '["unclosed', "lat": 1.0, "lon": 1.0}
        named = row["image"] if isinstance(row, dict) and row["image"] else image
        written.rows[case] = (_manifest_id(reader, len(rows)), named)
        rows.append(row)
    file_case = next((c for c in cases if c in FILE_CASES), None)
    _write_manifest_file(reader, written.data_file, [] if file_case == "empty_dataset" else rows)
    if file_case == "file_invalid":  # Parquet only: not a Parquet file at all
        written.data_file.write_bytes(b"PAR1 and then nothing a Parquet reader understands")
    written.args += ["--data", str(written.data_file)]
    return written


def _manifest_id(reader: str, index: int) -> str:
    return {"jsonl": f"line {index + 1}", "csv": f"row {index + 2}", "parquet": f"row {index}"}[reader]


def _write_manifest_file(reader: str, path: Path, rows: list[Any]) -> None:
    if reader == "jsonl":
        lines = [r if isinstance(r, bytes) else json.dumps(r).encode() for r in rows]
        path.write_bytes(b"".join(line + b"\n" for line in lines))
    elif reader == "csv":
        out = [b"image,texts,lat,lon"]
        for r in rows:
            texts = r["texts"]
            cell = (
                texts
                if isinstance(texts, bytes)
                else (texts if isinstance(texts, str) else json.dumps(texts)).encode()
            )
            cells = [
                r["image"].encode(),
                b'"' + cell.replace(b'"', b'""') + b'"',
                str(r["lat"]).encode(),
                str(r["lon"]).encode(),
            ]
            out.append(b",".join(cells))
        path.write_bytes(b"\n".join(out) + b"\n")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table(
            {
                "image": pa.array([r["image"] for r in rows], pa.string()),
                "texts": pa.array([r["texts"] for r in rows], pa.list_(pa.string())),
                "text": pa.array([r.get("text") for r in rows], pa.int64()),
                "lat": pa.array([r["lat"] for r in rows], pa.float64()),
                "lon": pa.array([r["lon"] for r in rows], pa.float64()),
            }
        )
        pq.write_table(table, path)


def _write_geotext(reader: str, root: Path, cases: list[str]) -> Written:
    images = root / "images"
    records: list[Any] = []
    written = Written(
        args=["--benchmark", "geotext1652", "--root", str(root)], data_file=root / "test_951_version.json"
    )
    for i in range(2):
        good_image(images / "test" / f"000{i + 1}" / f"good{i}.png", i)
        records.append(
            {
                "image_id": f"000{i + 1}/good{i}.png",
                "image": f"test/000{i + 1}/good{i}.png",
                "caption": [f"good {i}"],
            }
        )
    written.n_good = 2
    for case in cases:
        if case in FILE_CASES:
            continue
        image_id = f"0001/{case}.png"
        path = f"test/{image_id}"
        if case in IMAGE_CASES:
            IMAGE_CASES[case][1](images / path)
        else:
            good_image(images / path, len(records))
        record: Any = {"image_id": image_id, "image": path, "caption": [_caption(case, len(records))]}
        if case in ("wrong_type", "null_string"):
            record["caption"] = 5 if case == "wrong_type" else None
        elif case == "duplicated_key":
            record["image_id"] = "0001/good0.png"  # the same image id, given another image
        elif case == "duplicated_field":
            record = Pairs(
                [("image_id", image_id), ("image", path), ("caption", ["one"]), ("caption", ["two"])]
            )
        written.rows[case] = (
            f"record {len(records)}",
            record["image_id"] if case != "duplicated_field" else image_id,
        )
        records.append(record)
    file_case = next((c for c in cases if c in FILE_CASES), None)
    text = json_text([] if file_case == "empty_dataset" else records)
    data = text.encode()
    if file_case == "file_not_utf8":
        data = data.replace(b"good 0", b"caf\xe9")
    elif file_case == "file_invalid":
        data = data[: len(data) // 2]
    written.data_file.write_bytes(data)
    return written


def _write_cvgtext(reader: str, root: Path, cases: list[str]) -> Written:
    # The panorama version: one annotation file (the mixed version reads two).
    tiles = root / "NewYork-satellite"
    annotation = root / "CVG-text" / "NewYork" / "test.json"
    annotation.parent.mkdir(parents=True)
    tiles.mkdir(parents=True)
    pairs: list[tuple[str, Any]] = []
    written = Written(
        args=["--benchmark", "cvgtext", "--root", str(root), "--city", "NewYork", "--version", "panorama"],
        data_file=annotation,
    )
    for i in range(2):
        name = f"40.7{i}000000,-74.00000000_2022-08_good{i}_d10_z3.jpg"
        good_image(tiles / name, i)
        pairs.append((name, f"a good street view {i}"))
    written.n_good = 2
    for n, case in enumerate(cases):
        if case in FILE_CASES:
            continue
        name = f"40.{7100 + n},-73.{9900 + n}_{case}.png"
        if case in IMAGE_CASES:
            IMAGE_CASES[case][1](tiles / name)
        else:
            good_image(tiles / name, n)
        description = _caption(case, len(pairs))
        if case == "duplicated_key":
            name = pairs[0][0]
        elif case == "coordinates_out_of_range":
            name = f"95.0,10.0_{case}.png"
            good_image(tiles / name, n)
        written.rows[case] = (name, name)
        pairs.append((name, description))
    file_case = next((c for c in cases if c in FILE_CASES), None)
    data = json_text(Pairs([] if file_case == "empty_dataset" else pairs)).encode()
    if file_case == "file_not_utf8":
        data = data.replace(b"a good street view 0", b"caf\xe9")
    elif file_case == "file_invalid":
        data = data[:-7]
    annotation.write_bytes(data)
    return written


@pytest.fixture
def corpus_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "corpus-data"
    folder.mkdir()
    return folder
