"""Tests for geoloc.data.geotext: the GeoText-1652 loader, on hand-made sets in the real layout."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from geoloc.data.geotext import geotext_view, load_geotext
from geoloc.errors import DataError


def make_image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (120, 30, 200)).save(path)


def write_split(root: Path, records: list[Any], name: str = "test_951_version.json") -> Path:
    """Write the JSON file and a tiny PNG for every record's image that looks like a path."""
    root.mkdir(parents=True, exist_ok=True)
    for record in records:
        image = record.get("image") if isinstance(record, dict) else None
        if isinstance(image, str) and image and not image.startswith(("/", "..")) and ".." not in image:
            make_image(root / "images" / image)
    path = root / name
    path.write_text(json.dumps(records))
    return path


def make_record(image_id: str, image: str | None = None, captions: Any = None, **extra: Any) -> dict:
    return {
        "image_id": image_id,
        "image": image if image is not None else f"test/{image_id}",
        "caption": captions if captions is not None else [f"{image_id} one", f"{image_id} two"],
        "sentences": ["a sentence", None],
        "bboxes": [[0.5, 0.5, 0.2, 0.1], None],
        **extra,
    }


def assert_names(exc: pytest.ExceptionInfo[DataError], path: Path, record: int | None) -> None:
    message = str(exc.value)
    assert str(path) in message
    assert exc.value.path == str(path)
    if record is not None:
        assert f"record {record}:" in message
        assert exc.value.record == record


# --- good files ----------------------------------------------------------------------------------


def test_test_split_list_captions_out_of_order_and_shared_image(tmp_path):
    records = [
        make_record("0002/image-01.jpeg"),
        make_record("0001/image-01.jpeg"),
        make_record("0002/0002.jpg", sentences=None, bboxes=None),
        # a second record of the first image: merged, texts appended in order
        make_record("0002/image-01.jpeg", captions=["extra text"]),
        make_record("0001/street-1.jpg", sentences=[None, None], bboxes=[None, None]),
    ]
    path = write_split(tmp_path, records)
    dataset = load_geotext(tmp_path)
    assert dataset.source == path
    assert [r.key for r in dataset.records] == [
        "0002/image-01.jpeg",
        "0001/image-01.jpeg",
        "0002/0002.jpg",
        "0001/street-1.jpg",
    ]
    assert dataset.groups == ["0002", "0001", "0002", "0001"]
    first = dataset.records[0]
    assert first.texts == ("0002/image-01.jpeg one", "0002/image-01.jpeg two", "extra text")
    assert first.image == tmp_path / "images" / "test" / "0002" / "image-01.jpeg"
    assert first.lat is None and first.lon is None
    assert first.split == "test"
    texts, index = dataset.texts_with_image_index()
    assert len(texts) == 9 and index[:3] == [0, 0, 0]


def test_train_split_string_captions(tmp_path):
    records = [
        {
            "image_id": "0839/image-43.jpeg",
            "image": "train/0839/image-43.jpeg",
            "caption": "In the center of the image is a large, modern office building.",
            "sentences": ["The object in the center ...", None, "On the middle right side ..."],
            "bboxes": [[0.41, 0.69, 0.39, 0.62], None, [0.74, 0.83, 0.52, 0.33]],
        },
        {"image_id": "0839/image-43.jpeg", "image": "train/0839/image-43.jpeg", "caption": "Second text."},
        {"image_id": "0840/0840.jpg", "image": "train/0840/0840.jpg", "caption": "A satellite view."},
    ]
    write_split(tmp_path, records, "train.json")
    dataset = load_geotext(tmp_path, split="train")
    assert len(dataset) == 2
    assert dataset.records[0].texts == (
        "In the center of the image is a large, modern office building.",
        "Second text.",
    )
    assert dataset.records[0].split == "train"
    assert dataset.groups == ["0839", "0840"]


def test_24g_split_file(tmp_path):
    write_split(tmp_path, [make_record("0005/image-02.jpeg")], "test_24G_version.json")
    dataset = load_geotext(tmp_path, split="test_24G")
    assert dataset.source.name == "test_24G_version.json"
    assert [r.key for r in dataset.records] == ["0005/image-02.jpeg"]


# --- views -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("image", "building", "view"),
    [
        ("test/0839/image-43.jpeg", "0839", "drone"),
        ("test/0839/image-1.jpeg", "0839", "drone"),
        ("test/0839/0839.jpg", "0839", "satellite"),
        ("test/0839/0839.png", "0839", "satellite"),
        ("test/0839/0840.jpg", "0839", "ground"),
        ("test/0839/123abc.jpg", "0839", "ground"),
        ("test/query/0839/street_view.jpg", "0839", "ground"),
        ("test/query/0839/satellite_view.jpg", "0839", "satellite"),
        ("test/query/0839/drone_view.jpg", "0839", "drone"),
        ("train/satellite/0839/0839.jpg", "0839", "satellite"),
        ("train/drone/0839/image-01.jpeg", "0839", "drone"),
        ("train/street/0839/image-01.jpeg", "0839", "ground"),  # the folder wins over the name
        ("train/google/0839/0.jpg", "0839", "ground"),
        ("train/ground/0839/x.jpg", "0839", "ground"),
    ],
)
def test_geotext_view_rules(image, building, view):
    assert geotext_view(image, building) == view


def test_view_filter(tmp_path):
    records = [
        make_record("0001/image-01.jpeg"),
        make_record("0001/0001.jpg"),
        make_record("0001/ab12.jpg"),
        make_record("0002/image-07.jpeg"),
        make_record("0002/0002.png"),
    ]
    write_split(tmp_path, records)
    keys = {
        view: [r.key for r in load_geotext(tmp_path, view=view).records]
        for view in ("all", "satellite", "drone", "ground")
    }
    assert keys["satellite"] == ["0001/0001.jpg", "0002/0002.png"]
    assert keys["drone"] == ["0001/image-01.jpeg", "0002/image-07.jpeg"]
    assert keys["ground"] == ["0001/ab12.jpg"]
    assert len(keys["all"]) == 5


def test_view_without_images_raises(tmp_path):
    path = write_split(tmp_path, [make_record("0001/image-01.jpeg")])
    with pytest.raises(DataError, match="no ground images") as exc:
        load_geotext(tmp_path, view="ground")
    assert_names(exc, path, None)


def test_unknown_split_and_view(tmp_path):
    write_split(tmp_path, [make_record("0001/image-01.jpeg")])
    with pytest.raises(DataError, match="unknown GeoText-1652 split 'val'"):
        load_geotext(tmp_path, split="val")  # ty: ignore[invalid-argument-type]  a wrong value on purpose: its refusal is the test
    with pytest.raises(DataError, match="unknown GeoText-1652 view 'aerial'"):
        load_geotext(tmp_path, view="aerial")  # ty: ignore[invalid-argument-type]  a wrong value on purpose: its refusal is the test
    with pytest.raises(ValueError, match="on_bad_record"):
        load_geotext(tmp_path, on_bad_record="ignore")  # ty: ignore[invalid-argument-type]  a wrong value on purpose: its refusal is the test


# --- bad files and records -----------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="annotation file not found") as exc:
        load_geotext(tmp_path)
    assert_names(exc, tmp_path / "test_951_version.json", None)


def test_invalid_json(tmp_path):
    path = tmp_path / "test_951_version.json"
    path.write_text('[{"image_id": ')
    with pytest.raises(DataError, match="invalid JSON") as exc:
        load_geotext(tmp_path)
    assert_names(exc, path, None)


def test_not_a_list(tmp_path):
    path = tmp_path / "test_951_version.json"
    path.write_text(json.dumps({"0001/a.jpg": "text"}))
    with pytest.raises(DataError, match="expected a JSON list of records, got an object") as exc:
        load_geotext(tmp_path)
    assert_names(exc, path, None)


GOOD = make_record("0001/image-01.jpeg")


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("not an object", "expected a JSON object, got a string"),
        ({k: v for k, v in GOOD.items() if k != "image_id"}, "missing the 'image_id' field"),
        ({**GOOD, "image_id": None}, "'image_id' is null"),
        ({**GOOD, "image_id": 17}, "'image_id' must be a string"),
        ({**GOOD, "image_id": "839/image-1.jpeg"}, "is not '<4-digit building>/<file name>'"),
        ({**GOOD, "image_id": "0839"}, "is not '<4-digit building>/<file name>'"),
        ({**GOOD, "image_id": "0839/"}, "is not '<4-digit building>/<file name>'"),
        ({k: v for k, v in GOOD.items() if k != "caption"}, "missing the 'caption' field"),
        ({**GOOD, "caption": None}, "'caption' is null"),
        ({**GOOD, "caption": 3}, "'caption' must be a string or a list of strings, got a number"),
        (
            {**GOOD, "caption": {"text": "a"}},
            "'caption' must be a string or a list of strings, got an object",
        ),
        ({**GOOD, "caption": []}, "'caption' is an empty list"),
        ({**GOOD, "caption": ["fine", None]}, r"caption\[1\] is null"),
        ({**GOOD, "caption": ["fine", ""]}, r"caption\[1\] is empty"),
        ({**GOOD, "caption": ["  "]}, r"caption\[0\] is only whitespace"),
        ({**GOOD, "caption": ["fine", 5]}, r"caption\[1\] must be a string"),
        ({**GOOD, "caption": ""}, "'caption' is empty"),
        ({**GOOD, "sentences": "one"}, "'sentences' must be a list"),
        ({**GOOD, "sentences": ["a", 3]}, r"sentences\[1\] must be a string or null"),
        ({**GOOD, "bboxes": [[0.1, "x"]]}, r"bboxes\[0\] must hold numbers only"),
        ({**GOOD, "bboxes": [0.1]}, r"bboxes\[0\] must be a list of numbers or null"),
        ({**GOOD, "image": None}, "'image' is null"),
        ({**GOOD, "image": ""}, "'image' is empty"),
        ({**GOOD, "image": 4}, "'image' must be a string"),
    ],
)
def test_bad_record_names_file_and_index(tmp_path, bad, message):
    path = write_split(tmp_path, [GOOD, make_record("0001/image-02.jpeg"), bad])
    with pytest.raises(DataError, match=message) as exc:
        load_geotext(tmp_path)
    assert_names(exc, path, 2)


def test_missing_image_file(tmp_path):
    path = write_split(tmp_path, [GOOD, make_record("0001/image-02.jpeg")])
    (tmp_path / "images" / "test" / "0001" / "image-02.jpeg").unlink()
    with pytest.raises(DataError, match="image file not found") as exc:
        load_geotext(tmp_path)
    assert_names(exc, path, 1)
    # Only existence is checked, and only when asked.
    assert len(load_geotext(tmp_path, check_images=False)) == 2


def test_image_file_of_another_view_is_not_checked(tmp_path):
    write_split(tmp_path, [GOOD, make_record("0001/0001.jpg")])
    (tmp_path / "images" / "test" / "0001" / "0001.jpg").unlink()
    assert [r.key for r in load_geotext(tmp_path, view="drone").records] == ["0001/image-01.jpeg"]


@pytest.mark.parametrize("image", ["../outside.jpg", "test/../../outside.jpg"])
def test_image_path_escaping_the_images_root(tmp_path, image):
    make_image(tmp_path / "outside.jpg")
    path = write_split(tmp_path, [GOOD, {**GOOD, "image_id": "0001/x.jpg", "image": image}])
    with pytest.raises(DataError, match="leads outside the images folder") as exc:
        load_geotext(tmp_path)
    assert_names(exc, path, 1)


def test_absolute_image_path(tmp_path):
    make_image(tmp_path / "images" / "abs.jpg")
    absolute = str(tmp_path / "images" / "abs.jpg")
    path = write_split(tmp_path, [{**GOOD, "image": absolute}])
    with pytest.raises(DataError, match="is absolute") as exc:
        load_geotext(tmp_path)
    assert_names(exc, path, 0)


def test_symlink_out_of_the_images_root(tmp_path):
    make_image(tmp_path / "elsewhere" / "x.jpg")
    (tmp_path / "images" / "test").mkdir(parents=True)
    (tmp_path / "images" / "test" / "link").symlink_to(tmp_path / "elsewhere")
    path = write_split(tmp_path, [{**GOOD, "image": "test/link/x.jpg"}])
    with pytest.raises(DataError, match="leads outside") as exc:
        load_geotext(tmp_path)
    assert_names(exc, path, 0)


def test_same_image_id_with_two_image_paths(tmp_path):
    other = {**GOOD, "image": "test/0001/copy.jpeg"}
    path = write_split(tmp_path, [GOOD, other])
    with pytest.raises(DataError, match="in record 0") as exc:
        load_geotext(tmp_path)
    assert_names(exc, path, 1)


def test_skip_bad_records(tmp_path):
    records = [GOOD, {**GOOD, "caption": None}, "junk", make_record("0002/image-01.jpeg")]
    write_split(tmp_path, records)
    (tmp_path / "images" / "test" / "0002" / "image-01.jpeg").unlink()
    dataset = load_geotext(tmp_path, on_bad_record="skip")
    assert [r.key for r in dataset.records] == ["0001/image-01.jpeg"]
    assert [name for name, _ in dataset.skipped] == ["record 1", "record 2", "record 3"]
    assert "image file not found" in dataset.skipped[2][1]


def test_all_records_bad_raises_even_when_skipping(tmp_path):
    path = write_split(tmp_path, [{**GOOD, "caption": None}])
    with pytest.raises(DataError, match="1 bad record") as exc:
        load_geotext(tmp_path, on_bad_record="skip")
    assert_names(exc, path, None)


def test_empty_list(tmp_path):
    path = write_split(tmp_path, [])
    with pytest.raises(DataError, match="no records") as exc:
        load_geotext(tmp_path)
    assert_names(exc, path, None)
