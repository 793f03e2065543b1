"""Tests for geoloc.data.manifest: the JSONL / CSV / Parquet readers and their validation."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from geoloc.data.manifest import (
    Dataset,
    Record,
    read_manifest,
    resolve_manifest,
    write_manifest,
)
from geoloc.data.records import MAX_TEXT_CHARS
from geoloc.errors import DataError


def make_images(folder: Path, *names: str) -> None:
    # read_manifest only checks that image files exist; it never decodes them.
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"png")


def write_jsonl(folder: Path, rows: list[Any], name: str = "manifest.jsonl") -> Path:
    path = folder / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def write_csv(folder: Path, header: list[str], rows: list[list[str]]) -> Path:
    path = folder / "manifest.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def row(image: str = "a.png", **fields: Any) -> dict[str, Any]:
    return {"image": image, "texts": ["a red roof"], **fields}


def assert_names(exc: pytest.ExceptionInfo[DataError], path: Path, record: str | None) -> None:
    message = str(exc.value)
    assert str(path) in message
    if record is not None:
        assert f"record {record}:" in message
        assert exc.value.record == record


# --- good manifests -----------------------------------------------------------------------------


def test_jsonl_all_fields(tmp_path: Path) -> None:
    make_images(tmp_path, "tiles/0001.png", "tiles/0002.png", "tiles/0003.png")
    path = write_jsonl(
        tmp_path,
        [
            {
                "image": "tiles/0001.png",
                "texts": ["a red building", "a park"],
                "lat": 40.71,
                "lon": -74,
                "group": "g1",
                "split": "train",
                "extra": {"ignored": True},
            },
            {"image": "tiles/0002.png", "text": "a river", "group": 7},
            {"image": "tiles/0003.png", "texts": ["a bridge"], "group": "g1", "lat": None, "lon": None},
        ],
    )
    ds = read_manifest(path)
    assert isinstance(ds, Dataset)
    assert ds.source == path
    assert len(ds) == 3
    assert ds.records[0] == Record(
        key="tiles/0001.png",
        image=tmp_path / "tiles/0001.png",
        texts=("a red building", "a park"),
        group="g1",
        lat=40.71,
        lon=-74.0,
        split="train",
    )
    assert ds.records[0].image.is_absolute()
    assert ds.records[1].texts == ("a river",)
    assert ds.records[1].lat is None and ds.records[1].split is None
    assert ds.groups == ["g1", "7", "g1"]
    assert ds.texts_with_image_index() == (["a red building", "a park", "a river", "a bridge"], [0, 0, 1, 2])
    assert ds.skipped == []


def test_group_defaults_to_image_key(tmp_path: Path) -> None:
    make_images(tmp_path, "x/a.png", "b.png")
    ds = read_manifest(write_jsonl(tmp_path, [row("x/a.png"), row("b.png", group=3.0)]))
    assert ds.groups == ["x/a.png", "3"]


def test_folder_and_relative_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_images(tmp_path / "data", "a.png")
    write_jsonl(tmp_path / "data", [row()])
    monkeypatch.chdir(tmp_path)
    ds = read_manifest("data")
    assert ds.source == tmp_path / "data" / "manifest.jsonl"
    assert ds.records[0].image == tmp_path / "data" / "a.png"


def test_empty_lines_skipped_and_counted(tmp_path: Path) -> None:
    make_images(tmp_path, "a.png")
    path = write_jsonl(tmp_path, ["", row(), "   ", "{broken"])
    with pytest.raises(DataError, match="invalid JSON") as exc:
        read_manifest(path)
    assert_names(exc, path, "line 4")


def test_utf8_bom_and_crlf_accepted(tmp_path: Path) -> None:
    make_images(tmp_path, "a.png", "b.png")
    path = tmp_path / "m.jsonl"
    lines = [json.dumps(row()).encode(), json.dumps(row("b.png")).encode()]
    path.write_bytes(b"\xef\xbb\xbf" + b"\r\n".join(lines))
    assert [r.key for r in read_manifest(path).records] == ["a.png", "b.png"]


def test_csv(tmp_path: Path) -> None:
    make_images(tmp_path, "a.png", "b.png", "c.png", "d.png")
    path = write_csv(
        tmp_path,
        ["image", "texts", "lat", "lon", "group", "split"],
        [
            ["a.png", json.dumps(["one", "two, with a comma"]), "40.5", "-74", "0001", "train"],
            ["b.png", "a plain description", "", "", "", "test"],
            ["c.png", "multi\nline", "1", "2", "0001", ""],
            ["d.png", "[sic] an old mill", "", "", "", ""],
        ],
    )
    ds = read_manifest(path)
    assert ds.records[0].texts == ("one", "two, with a comma")
    assert (ds.records[0].lat, ds.records[0].lon) == (40.5, -74.0)
    assert ds.records[0].group == "0001"  # stays a string: leading zeros kept
    texts = ("a plain description",)
    assert ds.records[1] == Record("b.png", tmp_path / "b.png", texts, "b.png", split="test")
    assert ds.records[2].texts == ("multi\nline",) and ds.records[2].split is None
    assert ds.records[3].texts == ("[sic] an old mill",)  # a bracket alone does not make a JSON list


def test_parquet(tmp_path: Path) -> None:
    make_images(tmp_path, "a.png", "b.png")
    table = pa.table(
        {
            "image": ["a.png", "b.png"],
            "texts": [["one", "two"], ["three"]],
            "lat": [10.0, None],
            "lon": [20.0, None],
            "group": [5, 6],
            "split": ["val", None],
        }
    )
    pq.write_table(table, tmp_path / "manifest.parquet")
    ds = read_manifest(tmp_path)
    assert ds.source.name == "manifest.parquet"
    assert ds.records[0] == Record("a.png", tmp_path / "a.png", ("one", "two"), "5", 10.0, 20.0, "val")
    assert ds.records[1].lat is None and ds.records[1].group == "6"


def test_split_filter(tmp_path: Path) -> None:
    make_images(tmp_path, "a.png", "b.png", "c.png")
    path = write_jsonl(tmp_path, [row("a.png", split="train"), row("b.png", split="val"), row("c.png")])
    assert [r.key for r in read_manifest(path, split="train").records] == ["a.png"]
    assert len(read_manifest(path)) == 3
    with pytest.raises(DataError, match="no records in split 'test'") as exc:
        read_manifest(path, split="test")
    assert_names(exc, path, None)
    assert "`--split all` scores every row" in str(exc.value)


def test_unknown_split_argument(tmp_path: Path) -> None:
    make_images(tmp_path, "a.png")
    path = write_jsonl(tmp_path, [row()])
    with pytest.raises(DataError, match="unknown split 'validation'") as exc:
        read_manifest(path, split="validation")
    assert_names(exc, path, None)


def test_images_of_other_splits_are_not_checked(tmp_path: Path) -> None:
    make_images(tmp_path, "test.png")
    path = write_jsonl(tmp_path, [row("train.png", split="train"), row("test.png", split="test")])
    assert [r.key for r in read_manifest(path, split="test").records] == ["test.png"]
    with pytest.raises(DataError, match="image file not found"):
        read_manifest(path, split="train")


def test_check_images_off(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path, [row("missing.png")])
    assert read_manifest(path, check_images=False).records[0].key == "missing.png"


# --- manifest location --------------------------------------------------------------------------


def test_resolve_manifest_prefers_jsonl_then_csv(tmp_path: Path) -> None:
    write_csv(tmp_path, ["image", "texts"], [])
    assert resolve_manifest(tmp_path) == tmp_path / "manifest.csv"
    write_jsonl(tmp_path, [])
    assert resolve_manifest(tmp_path) == tmp_path / "manifest.jsonl"


def test_resolve_manifest_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist") as exc:
        resolve_manifest(tmp_path / "nope")
    assert_names(exc, tmp_path / "nope", None)
    with pytest.raises(DataError, match="no manifest") as exc:
        resolve_manifest(tmp_path)
    assert_names(exc, tmp_path, None)
    other = tmp_path / "m.txt"
    other.write_text("{}")
    with pytest.raises(DataError, match="unknown manifest format '.txt'") as exc:
        read_manifest(other)
    assert_names(exc, other, None)


# --- bad JSONL records --------------------------------------------------------------------------


BAD_ROWS = [
    ('{"image": "a.png", "texts": ["x"],}', "invalid JSON: .*column"),
    ('["a.png"]', "expected a JSON object, got a list"),
    ({"texts": ["x"]}, "missing the 'image' field"),
    ({"image": 5, "texts": ["x"]}, "'image' must be a string"),
    ({"image": "  ", "texts": ["x"]}, "'image' is empty"),
    ({"image": "a.png", "texts": "x"}, "'texts' must be a list of strings, got a string .*use 'text'"),
    ({"image": "a.png", "texts": ["x", 3]}, r"texts\[1\] must be a string"),
    ({"image": "a.png", "texts": ["x", None]}, r"texts\[1\] is null"),
    ({"image": "a.png", "texts": [""]}, r"texts\[0\] is empty"),
    ({"image": "a.png", "texts": [" \t"]}, r"texts\[0\] is only whitespace"),
    ({"image": "a.png", "texts": []}, "'texts' is an empty list"),
    ({"image": "a.png", "text": "  "}, "'text' is only whitespace"),
    ({"image": "a.png"}, "no description"),
    ({"image": "a.png", "texts": ["x"], "text": "y"}, "either 'texts' or 'text'"),
    ({"image": "a.png", "texts": ["x" * (MAX_TEXT_CHARS + 1)]}, "20,001 characters long.*limit of 20,000"),
    (row(lat="40", lon=3), "'lat' must be a number, got a string"),
    (row(lat=True, lon=3), "'lat' must be a number, got a boolean"),
    (row(lat=91, lon=3), r"'lat' is 91, outside \[-90, 90\]"),
    (row(lat=0, lon=-180.5), r"'lon' is -180.5, outside \[-180, 180\]"),
    ('{"image": "a.png", "texts": ["x"], "lat": NaN, "lon": 0}', "'lat' is not a finite number"),
    (row(lat=1.0), "'lat' is given without 'lon'"),
    (row(lon=1.0), "'lon' is given without 'lat'"),
    (row(split="validation"), "'split' must be one of train, val, test, got 'validation'"),
    (row(group=[1]), "'group' must be a string or a number, got a list"),
    (row("missing.png"), "image file not found"),
    (row("/etc/passwd"), "absolute"),
    (row("../outside.png"), "leads outside the manifest's folder"),
    (row("sub/../../outside.png"), "leads outside the manifest's folder"),
]


@pytest.mark.parametrize(("bad", "reason"), BAD_ROWS)
def test_bad_jsonl_record(tmp_path: Path, bad: Any, reason: str) -> None:
    (tmp_path / "data").mkdir()
    make_images(tmp_path, "outside.png")
    make_images(tmp_path / "data", "a.png", "ok.png")
    path = write_jsonl(tmp_path / "data", [row("ok.png"), bad])
    with pytest.raises(DataError, match=reason) as exc:
        read_manifest(path)
    assert_names(exc, path, "line 2")


def test_non_utf8_line(tmp_path: Path) -> None:
    make_images(tmp_path, "a.png")
    path = tmp_path / "manifest.jsonl"
    path.write_bytes(json.dumps(row()).encode() + b'\n{"image": "b\xff.png", "texts": ["x"]}\n')
    with pytest.raises(DataError, match="not valid UTF-8: byte 0xff") as exc:
        read_manifest(path)
    assert_names(exc, path, "line 2")


def test_duplicate_keys_name_both_lines(tmp_path: Path) -> None:
    make_images(tmp_path, "a.png", "b.png")
    path = write_jsonl(tmp_path, [row(), row("b.png"), row("./a.png", split="test")])
    with pytest.raises(DataError, match=r"listed twice \(line 1 and line 3\)") as exc:
        read_manifest(path)
    assert_names(exc, path, "line 3")


def test_symlink_out_of_folder_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    make_images(tmp_path, "secret.png")
    (data / "a.png").symlink_to(tmp_path / "secret.png")
    path = write_jsonl(data, [row()])
    with pytest.raises(DataError, match="leads outside the manifest's folder") as exc:
        read_manifest(path, check_images=False)
    assert_names(exc, path, "line 1")


# --- bad CSV and Parquet records ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("cells", "reason"),
    [
        (["b.png", "x", "north", "3"], "'lat' is not a number: 'north'"),
        (["b.png", '["x", "y"', "1", "3"], "looks like a JSON list but is not valid JSON"),
        (["b.png", '["x",,]', "1", "3"], "looks like a JSON list but is not valid JSON"),
        (["b.png", '["x", null]', "1", "3"], r"texts\[1\] is null"),
        (["b.png", "x", "1"], "row has 3 cells but the header has 4"),
        (["b.png", "", "", ""], "no description"),
        (["", "x", "", ""], "'image' is null or empty"),
    ],
)
def test_bad_csv_record(tmp_path: Path, cells: list[str], reason: str) -> None:
    make_images(tmp_path, "a.png", "b.png")
    path = write_csv(tmp_path, ["image", "texts", "lat", "lon"], [["a.png", "x", "", ""], cells])
    with pytest.raises(DataError, match=reason) as exc:
        read_manifest(path)
    assert_names(exc, path, "row 3")  # the header is row 1


def test_csv_non_utf8_row(tmp_path: Path) -> None:
    make_images(tmp_path, "a.png")
    path = tmp_path / "manifest.csv"
    path.write_bytes(b"image,texts\na.png,fine\nb.png,caf\xe9\n")
    with pytest.raises(DataError, match="not valid UTF-8: byte 0xe9 in column 'texts'") as exc:
        read_manifest(path)
    assert_names(exc, path, "row 3")


def test_csv_without_image_column(tmp_path: Path) -> None:
    path = write_csv(tmp_path, ["path", "texts"], [["a.png", "x"]])
    with pytest.raises(DataError, match="no 'image' column") as exc:
        read_manifest(path, on_bad_record="skip")
    assert_names(exc, path, None)


def test_bad_parquet_record(tmp_path: Path) -> None:
    make_images(tmp_path, "a.png", "b.png")
    path = tmp_path / "m.parquet"
    pq.write_table(pa.table({"image": ["a.png", "b.png"], "texts": [["x"], ["y"]], "lat": [1.0, 95.0],
                             "lon": [2.0, 2.0]}), path)  # fmt: skip
    with pytest.raises(DataError, match=r"'lat' is 95.0, outside \[-90, 90\]") as exc:
        read_manifest(path)
    assert_names(exc, path, "row 1")  # counted from 0, as df.iloc[1]


def test_unreadable_parquet(tmp_path: Path) -> None:
    path = tmp_path / "m.parquet"
    path.write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="cannot read Parquet file") as exc:
        read_manifest(path, on_bad_record="skip")
    assert_names(exc, path, None)


# --- skipping and empty results -----------------------------------------------------------------


def test_skip_bad_records(tmp_path: Path) -> None:
    make_images(tmp_path, "a.png", "c.png")
    rows = [row(), "not json", row("b.png"), row("c.png", lat=100, lon=0), row("a.png")]
    path = write_jsonl(tmp_path, rows)
    with pytest.raises(DataError):
        read_manifest(path)
    ds = read_manifest(path, on_bad_record="skip")
    assert [r.key for r in ds.records] == ["a.png"]
    assert [record_id for record_id, _ in ds.skipped] == ["line 2", "line 3", "line 4", "line 5"]
    reasons = [reason for _, reason in ds.skipped]
    assert reasons[0].startswith("invalid JSON")
    assert reasons[1].startswith("image file not found")
    assert "outside [-90, 90]" in reasons[2]
    assert "listed twice (line 1 and line 5)" in reasons[3]


def test_all_records_skipped_is_an_error(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path, [row("gone.png"), row("gone2.png")])
    with pytest.raises(DataError, match="no records: .*2 bad record\\(s\\) were skipped") as exc:
        read_manifest(path, on_bad_record="skip")
    assert_names(exc, path, None)


def test_empty_manifest(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path, ["", "  "])
    with pytest.raises(DataError, match="no records: the manifest lists no images") as exc:
        read_manifest(path)
    assert_names(exc, path, None)


def test_unknown_on_bad_record(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="on_bad_record"):
        read_manifest(tmp_path, on_bad_record="ignore")  # ty: ignore[invalid-argument-type]  a wrong value on purpose: its refusal is the test


# --- writing ------------------------------------------------------------------------------------


def test_write_manifest_round_trip(tmp_path: Path) -> None:
    make_images(tmp_path, "a.png", "b.png")
    rows = [row(lat=1.5, lon=2.5, group="g", split="val"), {"image": "b.png", "text": "café ünïcode"}]
    path = tmp_path / "out" / "manifest.jsonl"
    write_manifest(path, rows)
    assert [p.name for p in path.parent.iterdir()] == ["manifest.jsonl"]  # no temporary left behind
    assert [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] == rows
    make_images(path.parent, "a.png", "b.png")
    ds = read_manifest(path)
    assert ds.records[0].lat == 1.5 and ds.records[1].texts == ("café ünïcode",)


def test_write_manifest_refuses_other_formats_and_nan(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"\.jsonl"):
        write_manifest(tmp_path / "m.csv", [row()])
    with pytest.raises(ValueError):
        write_manifest(tmp_path / "m.jsonl", [row(lat=float("nan"), lon=0)])
    assert not (tmp_path / "m.jsonl").exists()
