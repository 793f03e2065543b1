"""Manifests: the generic data format, one row per image.

A row, here as JSONL::

    {"image": "tiles/0001.png", "texts": ["a red building ...", "..."],
     "lat": 40.71, "lon": -74.0, "group": "0001", "split": "train"}

- `image` (required): a path relative to the manifest's own folder. It is the image's key.
- `texts`: a list of descriptions; a row may instead give a single `text` string. Every row needs
  at least one description. A description may not be empty, whitespace-only, or longer than
  `MAX_TEXT_CHARS` characters.
- `lat`, `lon` (optional): degrees, both or neither; lat in [-90, 90], lon in [-180, 180].
- `group` (optional): rows of the same group are the same answer. A number is turned into a
  string. Without it each image is its own group (group = the image key).
- `split` (optional): one of train / val / test.
- `footprint` (optional): the tile's ground extent in WGS84 lon / lat, as RFC 7946 writes it: a
  GeoJSON Polygon with one closed ring, or, for a tile across the antimeridian, a MultiPolygon of
  its two parts cut at 180 degrees (section 3.1.9), which is read back as one ring (`geoloc tiles`
  and `geoloc xyz` write it; see `geoloc.geodata.footprint`). In CSV, the cell holds the same JSON.
  The ring should start at the image's top-left corner: the map page draws the image from it.

A gallery to search needs no descriptions: `read_manifest(..., require_texts=False)` accepts
rows without `texts` (the index reads galleries so).

Unknown fields are ignored, and a `null` (or, in CSV, an empty cell) counts as an absent field.
A row that gives a field twice (a JSON object with a repeated name) is refused, as are a CSV
header or Parquet schema that name a column twice: which value is meant would be a guess.

Formats, by file extension:

- `.jsonl`: one JSON object a line; empty lines are skipped. Records are named `line N`, the
  line number in the file (from 1).
- `.csv`: a header row, then one row per image. `texts` holds a JSON list (`["a", "b"]`) or a
  plain string (one description); `lat` / `lon` are parsed as numbers. Records are named `row N`,
  counted as in a spreadsheet: the header is row 1, the first data row is row 2.
- `.parquet`: columns as above (`texts` a list of strings). Records are named `row N`, counted
  from 0 as in `pyarrow` / `pandas` (`df.iloc[N]`).

Image paths may not be absolute, and may not lead outside the manifest's folder once `..` and
symlinks are resolved: a manifest can only point at files under its own folder.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geoloc.atomic import write_text
from geoloc.choices import OnBadRecord, check_choice
from geoloc.data.records import (
    BadRecord,
    check_text,
    check_text_items,
    check_unique_fields,
    image_field,
    json_kind,
    json_object,
    relative_image_path,
)
from geoloc.errors import DataError

SPLITS = ("train", "val", "test")
MANIFEST_NAMES = ("manifest.jsonl", "manifest.csv", "manifest.parquet")
_FORMATS = (".jsonl", ".csv", ".parquet")


@dataclass(frozen=True)
class Record:
    """One image with its descriptions."""

    key: str
    """The manifest's image path exactly as written; identifies the image."""
    image: Path
    """Absolute path: the manifest's folder / key."""
    texts: tuple[str, ...]
    group: str
    lat: float | None = None
    lon: float | None = None
    split: str | None = None
    footprint: tuple[tuple[float, float], ...] | None = None
    """The closed, counter-clockwise ring of (lon, lat) positions of the tile's ground extent; a
    MultiPolygon across the antimeridian is joined into one ring whose longitudes run past 180."""


@dataclass
class Dataset:
    """The records of one manifest (of one split when asked), in file order."""

    records: list[Record]
    source: Path
    """The manifest file."""
    skipped: list[tuple[str, str]] = field(default_factory=list)
    """(record id, reason) for each bad record left out with on_bad_record="skip"."""

    @property
    def groups(self) -> list[str]:
        """The group of each record, in record order."""
        return [r.group for r in self.records]

    def texts_with_image_index(self) -> tuple[list[str], list[int]]:
        """All descriptions flattened in record order, and for each the index of its record."""
        texts: list[str] = []
        index: list[int] = []
        for i, record in enumerate(self.records):
            texts.extend(record.texts)
            index.extend([i] * len(record.texts))
        return texts, index

    def __len__(self) -> int:
        return len(self.records)


def resolve_manifest(data: str | Path) -> Path:
    """Return the absolute path of the manifest file that `data` names.

    `data` is a manifest file (.jsonl, .csv or .parquet) or a folder that holds manifest.jsonl,
    else manifest.csv, else manifest.parquet.
    """
    path = Path(data).absolute()
    if not path.exists():
        raise DataError("data path does not exist", path=path)
    if path.is_dir():
        for name in MANIFEST_NAMES:
            if (path / name).is_file():
                return path / name
        raise DataError(f"folder holds no manifest (looked for {', '.join(MANIFEST_NAMES)})", path=path)
    if path.suffix.lower() not in _FORMATS:
        raise DataError(
            f"unknown manifest format {path.suffix or '(no extension)'!r}: expected {', '.join(_FORMATS)}",
            path=path,
        )
    return path


def read_manifest(
    data: str | Path,
    split: str | None = None,
    on_bad_record: OnBadRecord = "error",
    check_images: bool = True,
    require_texts: bool = True,
) -> Dataset:
    """Read and validate a manifest; return its records (only those of `split` when given).

    Every record of the file is validated, whatever `split`: duplicated image keys across splits
    are refused too. With `check_images`, the image files of the returned records must exist
    (they are not decoded here). With on_bad_record="skip", bad records are left out and listed
    in `Dataset.skipped`; problems with the file as a whole, or an empty result, still raise.
    `require_texts=False` accepts rows without descriptions (a gallery to search).
    """
    check_choice(on_bad_record, OnBadRecord, "on_bad_record")
    source = resolve_manifest(data)
    if split is not None and split not in SPLITS:
        raise DataError(f"unknown split {split!r}: expected one of {', '.join(SPLITS)}", path=source)

    folder = source.parent
    real_folder = folder.resolve()
    records: list[Record] = []
    skipped: list[tuple[str, str]] = []
    first_seen: dict[str, str] = {}
    split_counts: Counter[str | None] = Counter()

    for record_id, row in _read_rows(source):
        try:
            if isinstance(row, BadRecord):
                raise row
            record = _parse_row(row, folder, real_folder, require_texts)
            norm_key = os.path.normpath(record.key)
            if norm_key in first_seen:
                first = first_seen[norm_key]
                raise BadRecord(f"image {record.key!r} is listed twice ({first} and {record_id})")
            first_seen[norm_key] = record_id
            in_split = split is None or record.split == split
            # Images of other splits are not checked: an evaluation machine may hold only its own.
            if in_split and check_images:
                _check_image(record)
            split_counts[record.split] += 1
            if not in_split:
                continue
        except BadRecord as exc:
            if on_bad_record == "error":
                raise DataError(str(exc), path=source, record=record_id) from None
            skipped.append((record_id, str(exc)))
            continue
        records.append(record)

    if not records:
        raise DataError(_no_records_message(split, split_counts, len(skipped)), path=source)
    return Dataset(records=records, source=source, skipped=skipped)


def write_manifest(path: str | Path, rows: list[dict[str, Any]]) -> None:
    """Write `rows` as a JSONL manifest, atomically (a reader sees the old file or the new one)."""
    path = Path(path)
    if path.suffix.lower() != ".jsonl":
        raise ValueError(f"write_manifest writes JSONL; the file name must end in .jsonl, got {path.name!r}")
    # allow_nan=False: NaN is not JSON, and other readers would choke on it.
    lines = [json.dumps(row, ensure_ascii=False, allow_nan=False) for row in rows]
    write_text(path, "".join(line + "\n" for line in lines))


# --- readers: each yields (record id, row dict or BadRecord) -------------------------------------


def _read_rows(source: Path) -> Iterator[tuple[str, dict[str, Any] | BadRecord]]:
    suffix = source.suffix.lower()
    if suffix == ".jsonl":
        return _read_jsonl(source)
    if suffix == ".csv":
        return _read_csv(source)
    return _read_parquet(source)


def _read_bytes(source: Path) -> bytes:
    try:
        return source.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read manifest: {exc.strerror or exc}", path=source) from exc


def _read_jsonl(source: Path) -> Iterator[tuple[str, dict[str, Any] | BadRecord]]:
    data = _read_bytes(source)
    if data.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte order mark, as some editors write
        data = data[3:]
    for number, raw in enumerate(data.split(b"\n"), start=1):
        record_id = f"line {number}"
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield record_id, BadRecord(_utf8_reason(raw, exc))
            continue
        if not line.strip():
            continue
        try:
            row = json.loads(line, object_pairs_hook=json_object)
        except json.JSONDecodeError as exc:
            yield record_id, BadRecord(f"invalid JSON: {exc.msg} (column {exc.colno})")
            continue
        if not isinstance(row, dict):
            yield record_id, BadRecord(f"expected a JSON object, got {json_kind(row)}")
            continue
        try:
            check_unique_fields(row)
        except BadRecord as exc:
            yield record_id, exc
            continue
        yield record_id, row


def _read_csv(source: Path) -> Iterator[tuple[str, dict[str, Any] | BadRecord]]:
    # surrogateescape keeps bad bytes as lone surrogates, so one bad row is reported (or skipped)
    # by itself instead of failing the whole file.
    text = _read_bytes(source).decode("utf-8-sig", errors="surrogateescape")
    reader = csv.reader(io.StringIO(text, newline=""))
    header = _csv_header(reader, source)
    for row_number, cells in _csv_cells(reader):
        row = cells if isinstance(cells, BadRecord) else _csv_record(header, cells)
        if row is not None:
            yield f"row {row_number}", row


def _csv_header(reader: Iterator[list[str]], source: Path) -> list[str]:
    """The CSV's column names, stripped; a file without a usable header is a `DataError` as a whole.

    Unlike a bad row, a bad header leaves no row readable, so it cannot be skipped.
    """
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise DataError(f"invalid CSV header: {exc}", path=source) from exc
    if header is None:
        raise DataError("CSV file is empty: no header row", path=source)
    header = [name.strip() for name in header]
    _check_unique_columns(header, source, "CSV header")
    if "image" not in header:
        raise DataError(f"CSV has no 'image' column (columns: {', '.join(header)})", path=source)
    return header


def _csv_cells(reader: Iterator[list[str]]) -> Iterator[tuple[int, list[str] | BadRecord]]:
    """Each row after the header, numbered from 2 (the header is row 1), as its cells.

    A row the csv module cannot split comes as a `BadRecord` instead, and reading goes on, so one
    malformed row is reported (or skipped) by itself.
    """
    for row_number in itertools.count(2):
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield row_number, BadRecord(f"invalid CSV: {exc}")
        else:
            yield row_number, cells


def _csv_record(header: list[str], cells: list[str]) -> dict[str, Any] | BadRecord | None:
    """One CSV row as a row dict, a `BadRecord` saying what is wrong with it, or None for a blank row."""
    if not any(cell.strip() for cell in cells):
        return None  # blank lines (an editor's trailing ones, say) are not records
    if len(cells) != len(header):
        return BadRecord(f"row has {len(cells)} cells but the header has {len(header)}")
    bad = next((i for i, cell in enumerate(cells) if _bad_byte(cell) is not None), None)
    if bad is not None:
        byte = _bad_byte(cells[bad])
        return BadRecord(f"not valid UTF-8: byte 0x{byte:02x} in column {header[bad]!r}")
    try:
        return _csv_row(dict(zip(header, cells, strict=True)))
    except BadRecord as exc:
        return exc


def _csv_row(cells: dict[str, str]) -> dict[str, Any]:
    """Turn CSV strings into the values a JSON row would hold."""
    row: dict[str, Any] = {name: (value if value.strip() else None) for name, value in cells.items()}
    texts = row.get("texts")
    if texts is not None:
        stripped = texts.strip()
        # A plain description rarely starts with `["`, or with `[` and ends with `]`; such a cell
        # is taken as a JSON list, so a broken list is reported instead of read as one text.
        if stripped.startswith("[") and (stripped.endswith("]") or stripped[1:].lstrip().startswith('"')):
            try:
                row["texts"] = json.loads(stripped)
            except json.JSONDecodeError as exc:
                raise BadRecord(f"'texts' looks like a JSON list but is not valid JSON: {exc.msg}") from None
        else:
            row["texts"] = [texts]
    for name in ("lat", "lon"):
        value = row.get(name)
        if value is not None:
            try:
                row[name] = float(value)
            except ValueError:
                raise BadRecord(f"{name!r} is not a number: {value!r}") from None
    return row


def _read_parquet(source: Path) -> Iterator[tuple[str, dict[str, Any] | BadRecord]]:
    import pyarrow as pa  # imported here: only Parquet manifests need it
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(source)
        names = parquet.schema_arrow.names
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"cannot read Parquet file: {exc}", path=source) from exc
    _check_unique_columns(names, source, "Parquet file")
    if "image" not in names:
        raise DataError(f"Parquet file has no 'image' column (columns: {', '.join(names)})", path=source)
    number = 0
    try:
        for batch in parquet.iter_batches():
            for row in batch.to_pylist():
                yield f"row {number}", row
                number += 1
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"cannot read Parquet file: {exc}", path=source) from exc


def _check_unique_columns(names: list[str], source: Path, what: str) -> None:
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise DataError(f"{what} names column(s) {', '.join(map(repr, twice))} more than once", path=source)


# --- validation ---------------------------------------------------------------------------------


def _parse_row(row: dict[str, Any], folder: Path, real_folder: Path, require_texts: bool = True) -> Record:
    key = image_field(row)
    image = relative_image_path(key, folder, real_folder, "the manifest's folder")
    no_texts = row.get("texts") is None and row.get("text") is None
    texts = () if no_texts and not require_texts else _texts(row)
    lat, lon = _lat_lon(row)
    return Record(
        key=key,
        image=image,
        texts=texts,
        group=_group(row.get("group"), key),
        lat=lat,
        lon=lon,
        split=_split(row.get("split")),
        footprint=_footprint(row.get("footprint")),
    )


def _footprint(value: Any) -> tuple[tuple[float, float], ...] | None:
    from geoloc.geodata.footprint import parse_footprint

    if value is None:
        return None
    if isinstance(value, str):  # a CSV cell, or a Parquet string column: the geometry's JSON
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise BadRecord(f"'footprint' is not valid JSON: {exc.msg}") from None
    try:
        ring = parse_footprint(value)
    except ValueError as exc:
        raise BadRecord(f"'footprint' {exc}") from None
    return tuple((lon, lat) for lon, lat in ring)


def _texts(row: dict[str, Any]) -> tuple[str, ...]:
    texts = row.get("texts")
    text = row.get("text")
    if texts is not None and text is not None:
        raise BadRecord("give either 'texts' or 'text', not both")
    if texts is None and text is None:
        raise BadRecord("no description: give 'texts' (a list of strings) or 'text' (a string)")
    if text is not None:
        if not isinstance(text, str):
            raise BadRecord(f"'text' must be a string, got {json_kind(text)}")
        check_text(text, "'text'")
        return (text,)
    if not isinstance(texts, list):
        hint = " (use 'text' for a single description)" if isinstance(texts, str) else ""
        raise BadRecord(f"'texts' must be a list of strings, got {json_kind(texts)}{hint}")
    if not texts:
        raise BadRecord("'texts' is an empty list; give at least one description")
    return check_text_items(texts, "texts")


def _lat_lon(row: dict[str, Any]) -> tuple[float | None, float | None]:
    lat, lon = row.get("lat"), row.get("lon")
    if lat is None and lon is None:
        return None, None
    if lon is None:
        raise BadRecord("'lat' is given without 'lon'")
    if lat is None:
        raise BadRecord("'lon' is given without 'lat'")
    return _degrees(lat, "lat", 90.0), _degrees(lon, "lon", 180.0)


def _degrees(value: Any, name: str, limit: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadRecord(f"{name!r} must be a number, got {json_kind(value)}")
    degrees = float(value)
    if not math.isfinite(degrees):
        raise BadRecord(f"{name!r} is not a finite number: {value!r}")
    if not -limit <= degrees <= limit:
        raise BadRecord(f"{name!r} is {value!r}, outside [-{limit:g}, {limit:g}]")
    return degrees


def _group(value: Any, key: str) -> str:
    if value is None:
        return key
    if isinstance(value, bool):
        raise BadRecord(f"'group' must be a string or a number, got {json_kind(value)}")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise BadRecord(f"'group' is not a finite number: {value!r}")
        # 7.0 and 7 name the same group: tables often store integer ids as floats.
        return str(int(value)) if value.is_integer() else str(value)
    if not isinstance(value, str):
        raise BadRecord(f"'group' must be a string or a number, got {json_kind(value)}")
    if not value.strip():
        raise BadRecord("'group' is empty")
    return value


def _split(value: Any) -> str | None:
    if value is None:
        return None
    if value not in SPLITS:
        shown = repr(value) if isinstance(value, str) else json_kind(value)
        raise BadRecord(f"'split' must be one of {', '.join(SPLITS)}, got {shown}")
    return value


def _check_image(record: Record) -> None:
    if not record.image.exists():
        raise BadRecord(f"image file not found: {record.image}")
    if not record.image.is_file():
        raise BadRecord(f"image path is not a file: {record.image}")


def _no_records_message(split: str | None, split_counts: Counter[str | None], n_skipped: int) -> str:
    total = sum(split_counts.values())
    where = f" in split {split!r}" if split is not None else ""
    if total == 0 and n_skipped == 0:
        return f"no records{where}: the manifest lists no images"
    parts = [f"{n} {name if name is not None else 'without a split'}" for name, n in split_counts.items()]
    found = f"the manifest has {total} valid record(s)" + (f" ({', '.join(parts)})" if parts else "")
    if n_skipped:
        found += f", and {n_skipped} bad record(s) were skipped"
    if split is not None:
        found += "; `--split all` scores every row"  # the CLI's default split is test
    return f"no records{where}: {found}"


def _utf8_reason(raw: bytes, exc: UnicodeDecodeError) -> str:
    return f"not valid UTF-8: byte 0x{raw[exc.start]:02x} at byte {exc.start + 1} of the line"


def _bad_byte(text: str) -> int | None:
    """The first undecodable byte that surrogateescape kept in `text`, if any."""
    for ch in text:
        if "\udc80" <= ch <= "\udcff":
            return ord(ch) - 0xDC00
    return None
