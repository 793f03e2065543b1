"""Tests for geoloc.data.cvgtext: the CVG-Text loader, on hand-made sets in both arrangements."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from geoloc.data.cvgtext import is_panorama, load_cvgtext, parse_coordinates
from geoloc.errors import DataError

PANO_A = "40.75290377,-73.97958215_2022-08_mpyEVlsley4foc-t1ndVpA_d62_z3.jpg"
PANO_B = "40.70000000,-74.01000000_2021-05_abcDEF_d10_z2.jpg"
PHOTO_A = "40.71000000,-74.00000000_12.jpg"
PHOTO_B = "40.72,-73.99.jpg"


def make_image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (20, 160, 60)).save(path)


def write_version(
    root: Path,
    folder: str,
    entries: dict[str, Any] | str,
    split: str = "test",
    official: bool = True,
    tiles: tuple[str, ...] = ("satellite", "OSM"),
) -> Path:
    """Write one version's JSON and its tiles in the official or the other arrangement."""
    if official:
        annotation = root / "CVG-text" / folder / f"{split}.json"
        tile_root = root
    else:
        annotation = root / "annotation" / folder / f"{split}.json"
        tile_root = root / "reference"
    annotation.parent.mkdir(parents=True, exist_ok=True)
    annotation.write_text(entries if isinstance(entries, str) else json.dumps(entries))
    for kind in tiles:
        (tile_root / f"{folder}-{kind}").mkdir(parents=True, exist_ok=True)
        if isinstance(entries, dict):
            for name in entries:
                if "/" not in name and name.strip():
                    make_image(tile_root / f"{folder}-{kind}" / name)
    return annotation


def assert_names(exc: pytest.ExceptionInfo[DataError], path: Path, record: str | None) -> None:
    message = str(exc.value)
    assert str(path) in message
    if record is not None:
        assert f"record {record}:" in message
        assert exc.value.record == record


# --- file names ----------------------------------------------------------------------------------


def test_is_panorama_uses_the_basename():
    assert is_panorama(PANO_A)
    assert not is_panorama(PHOTO_A)
    assert not is_panorama(PHOTO_B)
    # An underscore in a folder name does not make a photo a panorama.
    assert not is_panorama(f"/data/my_city_photos/{PHOTO_A}")
    assert is_panorama(f"some/folder/{PANO_A}")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (PANO_A, (40.75290377, -73.97958215)),
        (PHOTO_A, (40.71, -74.0)),
        (PHOTO_B, (40.72, -73.99)),
        ("-27.4698,153.0251_x.png", (-27.4698, 153.0251)),
        ("+35.68,139.76.jpg", (35.68, 139.76)),
        ("35,139_a_b_c.jpg", (35.0, 139.0)),
        (f"folder_with_underscores/{PHOTO_A}", (40.71, -74.0)),
    ],
)
def test_parse_coordinates(name, expected):
    assert parse_coordinates(name) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("abc.jpg", "does not start with"),
        ("40.7_-73.9_x.jpg", "does not start with"),
        ("40.7,-73.9x_2.jpg", "does not start with"),
        ("40.7,.jpg", "does not start with"),
        ("91.0,10.0_x.jpg", "outside \\[-90, 90\\]"),
        ("10.0,-180.5_x.jpg", "outside \\[-180, 180\\]"),
    ],
)
def test_parse_coordinates_rejects(name, message):
    with pytest.raises(ValueError, match=message):
        parse_coordinates(name)


# --- the official arrangement --------------------------------------------------------------------


def test_mixed_version_official_layout(tmp_path):
    pano = write_version(tmp_path, "NewYork", {PANO_A: "A panorama with a tall tower."})
    write_version(tmp_path, "NewYork-photos", {PHOTO_A: "A photo of a red shop front."})
    dataset = load_cvgtext(tmp_path, "NewYork")
    assert dataset.source == pano
    assert [r.key for r in dataset.records] == [PANO_A, PHOTO_A]
    first = dataset.records[0]
    assert first.image == tmp_path / "NewYork-satellite" / PANO_A
    assert first.texts == ("A panorama with a tall tower.",)
    assert first.group == PANO_A
    assert first.lat == pytest.approx(40.75290377) and first.lon == pytest.approx(-73.97958215)
    assert first.split == "test"
    osm = load_cvgtext(tmp_path, "NewYork", target="osm")
    assert osm.records[1].image == tmp_path / "NewYork-photos-OSM" / PHOTO_A
    assert [is_panorama(r.key) for r in dataset.records] == [True, False]


def test_mixed_never_reads_a_mixed_folder(tmp_path):
    """The official loader always reads <City> and <City>-photos for the mixed version: a
    <City>-mixed folder beside them is ignored, and alone it is not enough."""
    write_version(tmp_path, "NewYork-mixed", {PANO_B: "only in the mixed folder"})
    with pytest.raises(DataError, match="needs both NewYork and NewYork-photos") as exc:
        load_cvgtext(tmp_path, "NewYork")
    assert "NewYork-mixed/test.json is not read" in str(exc.value)
    write_version(tmp_path, "NewYork", {PANO_A: "pano"})
    write_version(tmp_path, "NewYork-photos", {PHOTO_A: "photo"})
    dataset = load_cvgtext(tmp_path, "NewYork")
    assert [r.key for r in dataset.records] == [PANO_A, PHOTO_A]
    assert dataset.records[0].image == tmp_path / "NewYork-satellite" / PANO_A


def test_panorama_and_photos_versions_and_train_split(tmp_path):
    write_version(tmp_path, "Tokyo", {PANO_A: "pano test"})
    write_version(tmp_path, "Tokyo", {PANO_B: "pano train"}, split="train")
    write_version(tmp_path, "Tokyo-photos", {PHOTO_A: "photo test"})
    assert [r.key for r in load_cvgtext(tmp_path, "Tokyo", version="panorama").records] == [PANO_A]
    train = load_cvgtext(tmp_path, "Tokyo", version="panorama", split="train")
    assert [r.key for r in train.records] == [PANO_B]
    assert train.records[0].split == "train"
    photos = load_cvgtext(tmp_path, "Tokyo", version="photos")
    assert photos.records[0].image == tmp_path / "Tokyo-photos-satellite" / PHOTO_A


def test_mixed_combines_panorama_and_photos(tmp_path):
    pano = write_version(tmp_path, "Brisbane", {PANO_A: "pano a", PANO_B: "pano b"})
    write_version(tmp_path, "Brisbane-photos", {PHOTO_A: "photo a", PHOTO_B: "photo b"})
    dataset = load_cvgtext(tmp_path, "Brisbane", target="osm")
    assert dataset.source == pano
    assert [r.key for r in dataset.records] == [PANO_A, PANO_B, PHOTO_A, PHOTO_B]
    assert dataset.records[0].image == tmp_path / "Brisbane-OSM" / PANO_A
    assert dataset.records[2].image == tmp_path / "Brisbane-photos-OSM" / PHOTO_A


# --- the other arrangement -----------------------------------------------------------------------


def test_reference_annotation_layout_combined_mixed(tmp_path):
    write_version(tmp_path, "NewYork", {PANO_A: "pano"}, official=False)
    write_version(tmp_path, "NewYork-photos", {PHOTO_A: "photo"}, official=False)
    dataset = load_cvgtext(tmp_path, "NewYork")
    assert [r.key for r in dataset.records] == [PANO_A, PHOTO_A]
    assert dataset.records[0].image == tmp_path / "reference" / "NewYork-satellite" / PANO_A
    assert dataset.records[1].image == tmp_path / "reference" / "NewYork-photos-satellite" / PHOTO_A
    osm = load_cvgtext(tmp_path, "NewYork", version="photos", target="osm")
    assert osm.records[0].image == tmp_path / "reference" / "NewYork-photos-OSM" / PHOTO_A
    assert osm.source == tmp_path / "annotation" / "NewYork-photos" / "test.json"


def test_mixed_halves_from_different_arrangements(tmp_path):
    write_version(tmp_path, "Tokyo", {PANO_A: "pano"})
    write_version(tmp_path, "Tokyo-photos", {PHOTO_A: "photo"}, official=False)
    assert [r.key for r in load_cvgtext(tmp_path, "Tokyo").records] == [PANO_A, PHOTO_A]


# --- bad input -----------------------------------------------------------------------------------


def test_version_not_found_lists_what_is_there(tmp_path):
    write_version(tmp_path, "Tokyo", {PANO_A: "pano"})
    with pytest.raises(DataError, match="CVG-Text NewYork panorama test not found") as exc:
        load_cvgtext(tmp_path, "NewYork", version="panorama")
    assert "versions present: Tokyo" in str(exc.value)
    with pytest.raises(DataError, match="needs both Tokyo and Tokyo-photos"):
        load_cvgtext(tmp_path, "Tokyo")


def test_tile_folder_missing(tmp_path):
    annotation = write_version(tmp_path, "Tokyo", {PANO_A: "pano"}, tiles=("satellite",))
    with pytest.raises(DataError, match="tile folder not found") as exc:
        load_cvgtext(tmp_path, "Tokyo", version="panorama", target="osm")
    assert_names(exc, annotation, None)


def test_unknown_options(tmp_path):
    with pytest.raises(DataError, match="unknown CVG-Text version 'single'"):
        load_cvgtext(tmp_path, "Tokyo", version="single")  # ty: ignore[invalid-argument-type]  a wrong value on purpose: its refusal is the test
    with pytest.raises(DataError, match="unknown CVG-Text target 'map'"):
        load_cvgtext(tmp_path, "Tokyo", target="map")  # ty: ignore[invalid-argument-type]  a wrong value on purpose: its refusal is the test
    with pytest.raises(DataError, match="unknown CVG-Text split 'val'"):
        load_cvgtext(tmp_path, "Tokyo", split="val")  # ty: ignore[invalid-argument-type]  a wrong value on purpose: its refusal is the test
    with pytest.raises(DataError, match="invalid CVG-Text city name"):
        load_cvgtext(tmp_path, "../Tokyo")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "invalid JSON"),
        (json.dumps([PANO_A, "text"]), "expected one JSON object"),
        (json.dumps("text"), "expected one JSON object"),
    ],
)
def test_bad_json_file(tmp_path, content, message):
    annotation = write_version(tmp_path, "Tokyo", content)
    with pytest.raises(DataError, match=message) as exc:
        load_cvgtext(tmp_path, "Tokyo", version="panorama")
    assert_names(exc, annotation, None)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("no_coordinates_here_at_all.jpg", "text", "does not start with '<lat>,<lon>'"),
        ("95.0,10.0_2022-08_x_d1_z1.jpg", "text", "outside \\[-90, 90\\]"),
        ("45.0,200.0_x.jpg", "text", "outside \\[-180, 180\\]"),
        (PHOTO_B, None, "the description is null"),
        (PHOTO_B, 12, "the description must be a string, got a number"),
        (PHOTO_B, ["a"], "the description must be a string, got a list"),
        (PHOTO_B, {"a": 1}, "the description must be a string, got an object"),
        (PHOTO_B, "", "the description is empty"),
        (PHOTO_B, "   ", "the description is only whitespace"),
        ("../40.1,10.1_x.jpg", "text", "leads outside the tile folder"),
    ],
)
def test_bad_record_names_file_and_key(tmp_path, key, value, message):
    annotation = write_version(tmp_path, "Tokyo", {PANO_A: "good", key: value})
    with pytest.raises(DataError, match=message) as exc:
        load_cvgtext(tmp_path, "Tokyo", version="panorama")
    assert_names(exc, annotation, key)


def test_missing_tile(tmp_path):
    annotation = write_version(tmp_path, "Tokyo", {PANO_A: "good", PANO_B: "also good"})
    (tmp_path / "Tokyo-OSM" / PANO_B).unlink()
    assert len(load_cvgtext(tmp_path, "Tokyo", version="panorama")) == 2  # satellite tiles are all there
    with pytest.raises(DataError, match="tile not found") as exc:
        load_cvgtext(tmp_path, "Tokyo", version="panorama", target="osm")
    assert_names(exc, annotation, PANO_B)
    assert len(load_cvgtext(tmp_path, "Tokyo", version="panorama", target="osm", check_images=False)) == 2


def test_duplicate_key_in_one_file(tmp_path):
    content = "{" + f'"{PANO_A}": "first", "{PANO_A}": "second"' + "}"
    annotation = write_version(tmp_path, "Tokyo", content)
    make_image(tmp_path / "Tokyo-satellite" / PANO_A)
    with pytest.raises(DataError, match="listed twice \\(earlier in this file\\)") as exc:
        load_cvgtext(tmp_path, "Tokyo", version="panorama")
    assert_names(exc, annotation, PANO_A)


def test_duplicate_key_across_combined_halves(tmp_path):
    pano = write_version(tmp_path, "Tokyo", {PANO_A: "pano", PHOTO_A: "oops"})
    photos = write_version(tmp_path, "Tokyo-photos", {PHOTO_A: "photo"})
    with pytest.raises(DataError, match=f"listed twice \\(also in {pano}\\)") as exc:
        load_cvgtext(tmp_path, "Tokyo")
    assert_names(exc, photos, PHOTO_A)


def test_skip_bad_records(tmp_path):
    write_version(tmp_path, "Tokyo", {PANO_A: "good", "bad.jpg": "text", PANO_B: ""})
    dataset = load_cvgtext(tmp_path, "Tokyo", version="panorama", on_bad_record="skip")
    assert [r.key for r in dataset.records] == [PANO_A]
    assert [key for key, _ in dataset.skipped] == ["bad.jpg", PANO_B]


def test_empty_object(tmp_path):
    annotation = write_version(tmp_path, "Tokyo", {})
    with pytest.raises(DataError, match="no records") as exc:
        load_cvgtext(tmp_path, "Tokyo", version="panorama")
    assert_names(exc, annotation, None)
