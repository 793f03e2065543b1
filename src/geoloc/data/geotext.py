"""GeoText-1652: University-1652 buildings seen by drone, satellite and ground cameras, with texts.

Files (see docs/benchmarks.md)::

    <root>/train.json                  split "train"
    <root>/test_951_version.json       split "test" (the full test set)
    <root>/test_24G_version.json       split "test_24G" (a ~1/5 subset of the test set)
    <root>/images/...                  a record's "image" is relative to this folder

Each JSON file is a list of records::

    {"image_id": "0839/image-43.jpeg", "image": "train/0839/image-43.jpeg",
     "caption": "In the center ...", "sentences": [...], "bboxes": [...]}

Rules of this loader:

- `image_id` is `<4 digits>/<file>`; the building (the record's group) is its first 4 characters.
- `caption` is one string (train) or a list of strings (test); either form is accepted in any file.
  Every text must be a non-empty string of at most `MAX_TEXT_CHARS` characters.
- `sentences` and `bboxes` are not used for retrieval; they are checked loosely: absent, null, or a
  list whose entries are null or a string (sentences) / null or a list of numbers (bboxes).
- Several records with the same `image_id` are merged into one `Record` (key = image_id), their
  texts concatenated in file order; they must name the same `image` path. Records keep the order
  in which their image first appears; buildings need not be contiguous. (The official evaluation
  keeps one gallery image per record instead: `geotext_record_layout` gives that view.)
- Records are named `record N` in errors, N being the index in the JSON list (from 0).
- An `image` path must be relative and stay under `<root>/images` once `..` and symlinks are
  resolved; the file must exist (it is not decoded here).
- There are no coordinates: `lat` / `lon` are None. `split` is "train", or "test" for both tests.

Views (`geotext_view`): the JSON has no view field, so the view is read from the image path, in
this order (all comparisons lower-case):

1. the innermost folder of the path whose name contains `satellite` -> satellite, `drone` ->
   drone, `street`, `ground` or `google` -> ground (University-1652's own folder names);
2. else the file's stem containing one of those words (e.g. `satellite_view.jpg`);
3. else University-1652's file naming inside a building folder: the stem equal to the building
   id (`0839/0839.jpg`, any extension) -> satellite; a stem `image-<digits>` (`image-43.jpeg`) ->
   drone;
4. anything else -> ground.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath
from typing import Any

from geoloc.choices import GeoTextCamera, GeoTextSplit, GeoTextView, OnBadRecord, check_choice, options
from geoloc.data.manifest import Dataset, Record
from geoloc.data.records import (
    BadRecord,
    check_text,
    check_text_items,
    check_unique_fields,
    image_field,
    json_kind,
    json_object,
    read_json_file,
    relative_image_path,
)
from geoloc.errors import DataError

SPLIT_FILES = {
    "train": "train.json",
    "test": "test_951_version.json",
    "test_24G": "test_24G_version.json",
}
VIEWS = options(GeoTextView)

_IMAGE_ID = re.compile(r"(\d{4})/(\S.*)", re.ASCII)
_DRONE_STEM = re.compile(r"^image-\d+$", re.ASCII)
# Checked in this order, so a name holding two words (unlikely) gets the first.
_VIEW_WORDS = (
    ("satellite", "satellite"),
    ("drone", "drone"),
    ("street", "ground"),
    ("ground", "ground"),
    ("google", "ground"),
)


def geotext_view(image: str, building: str) -> GeoTextCamera:
    """The camera of a GeoText-1652 image, from its path (relative to `<root>/images`).

    `building` is the record's 4-digit building id. See the module docstring for the rules.
    """
    path = PurePosixPath(image.replace("\\", "/"))
    for folder in reversed(path.parts[:-1]):
        view = _view_word(folder)
        if view is not None:
            return view
    stem = PurePosixPath(path.name).stem.lower()
    view = _view_word(stem)
    if view is not None:
        return view
    if stem == building.lower():
        return "satellite"
    if _DRONE_STEM.match(stem):
        return "drone"
    return "ground"


def _view_word(name: str) -> GeoTextCamera | None:
    lowered = name.lower()
    for word, view in _VIEW_WORDS:
        if word in lowered:
            return view
    return None


def load_geotext(
    root: str | Path,
    split: GeoTextSplit = "test",
    view: GeoTextView = "all",
    on_bad_record: OnBadRecord = "error",
    check_images: bool = True,
) -> Dataset:
    """Read one GeoText-1652 split as a `Dataset`: one `Record` per image, grouped by building.

    `view` keeps only the images of one camera (see `geotext_view`); every record of the file is
    validated whatever the view, but only the kept images are checked to exist (and only with
    `check_images`). With on_bad_record="skip", bad records are left out and listed in
    `Dataset.skipped` as ("record N", reason); problems with the file as a whole, or an empty
    result, still raise `DataError`.
    """
    check_choice(on_bad_record, OnBadRecord, "on_bad_record")
    root = Path(root).absolute()
    if split not in SPLIT_FILES:
        raise DataError(f"unknown GeoText-1652 split {split!r}: expected one of {', '.join(SPLIT_FILES)}")
    if view not in VIEWS:
        raise DataError(f"unknown GeoText-1652 view {view!r}: expected one of {', '.join(VIEWS)}")
    source = root / SPLIT_FILES[split]
    images_root = root / "images"
    merged, skipped, _ = _merge_records(_read_list(source), source, on_bad_record)

    out_split = "train" if split == "train" else "test"
    records: list[Record] = []
    for image_id, (image, building, texts, index) in merged.items():
        if view != "all" and geotext_view(_relative(image, images_root), building) != view:
            continue
        if check_images and not image.is_file():
            reason = "image file not found" if not image.exists() else "image path is not a file"
            if on_bad_record == "error":
                raise DataError(f"{reason}: {image}", path=source, record=index)
            skipped.append((f"record {index}", f"{reason}: {image}"))
            continue
        records.append(Record(key=image_id, image=image, texts=tuple(texts), group=building, split=out_split))

    if not records:
        what = "no records" if view == "all" else f"no {view} images"
        extra = f" ({len(skipped)} bad record(s) skipped)" if skipped else ""
        raise DataError(f"{what} in GeoText-1652 split {split!r}{extra}", path=source)
    return Dataset(records=records, source=source, skipped=skipped)


def _merge_records(
    rows: list[Any], source: Path, on_bad_record: str
) -> tuple[dict[str, list[Any]], list[tuple[str, str]], list[tuple[str, int]]]:
    """(merged, skipped, layout) of a split's records.

    merged: image_id -> [image path, building, texts, index of its first record], in the order of
    first appearance; skipped: ("record N", reason) of bad records (on_bad_record="skip"); layout:
    (image_id, number of captions) of every good record, in file order.
    """
    images_root = source.parent / "images"
    real_images_root = images_root.resolve()
    merged: dict[str, list[Any]] = {}
    skipped: list[tuple[str, str]] = []
    layout: list[tuple[str, int]] = []
    for index, row in enumerate(rows):
        try:
            image_id, building, image, texts = _parse_record(row, images_root, real_images_root)
            entry = merged.get(image_id)
            if entry is None:
                merged[image_id] = [image, building, list(texts), index]
            elif entry[0] != image:
                raise BadRecord(
                    f"image_id {image_id!r} is given image {row['image']!r} here but "
                    f"{_relative(entry[0], images_root)!r} in record {entry[3]}"
                )
            else:
                entry[2].extend(texts)
            layout.append((image_id, len(texts)))
        except BadRecord as exc:
            if on_bad_record == "error":
                raise DataError(str(exc), path=source, record=index) from None
            skipped.append((f"record {index}", str(exc)))
    return merged, skipped, layout


def geotext_record_layout(dataset: Dataset) -> tuple[list[int], list[int]]:
    """The official code's view of a loaded GeoText-1652 split: one gallery image per RECORD.

    `load_geotext` merges the records that share an image; the official evaluation keeps one
    gallery row per record instead. This reads the split's file again (`dataset.source`) and
    returns (record_images, text_records): for every good record whose image is in `dataset`, in
    file order, the index of its image in `dataset.records`; and for every text, in the order of
    `dataset.texts_with_image_index()`, the index of its record. A merged image's texts are its
    records' captions in file order, so each record's captions are a run of them.
    """
    _, _, layout = _merge_records(_read_list(dataset.source), dataset.source, "skip")
    position = {record.key: i for i, record in enumerate(dataset.records)}
    record_images: list[int] = []
    runs: dict[str, list[tuple[int, int]]] = {}  # image_id -> (record, captions) of its records
    for image_id, count in layout:
        if image_id in position:  # else left out of the dataset (another view, an unreadable image)
            runs.setdefault(image_id, []).append((len(record_images), count))
            record_images.append(position[image_id])
    text_records: list[int] = []
    for record in dataset.records:
        own = runs.get(record.key, [])
        if sum(count for _, count in own) != len(record.texts):
            raise DataError(
                f"image {record.key!r} has {len(record.texts)} texts in the data set but "
                f"{sum(count for _, count in own)} captions in the file: it changed since it was read",
                path=dataset.source,
            )
        for r, count in own:
            text_records.extend([r] * count)
    return record_images, text_records


def _relative(image: Path, images_root: Path) -> str:
    return image.relative_to(images_root).as_posix()


def _read_list(source: Path) -> list[Any]:
    data = read_json_file(source, "GeoText-1652 annotation file not found", object_pairs_hook=json_object)
    if not isinstance(data, list):
        raise DataError(f"expected a JSON list of records, got {json_kind(data)}", path=source)
    return data


def _parse_record(
    row: Any, images_root: Path, real_images_root: Path
) -> tuple[str, str, Path, tuple[str, ...]]:
    if not isinstance(row, dict):
        raise BadRecord(f"expected a JSON object, got {json_kind(row)}")
    check_unique_fields(row)
    image_id = row.get("image_id")
    if image_id is None:
        raise BadRecord("missing the 'image_id' field" if "image_id" not in row else "'image_id' is null")
    if not isinstance(image_id, str):
        raise BadRecord(f"'image_id' must be a string, got {json_kind(image_id)}")
    match = _IMAGE_ID.fullmatch(image_id)
    if match is None:
        raise BadRecord(f"'image_id' {image_id!r} is not '<4-digit building>/<file name>'")
    building = match.group(1)
    image = _image_path(row, images_root, real_images_root)
    texts = _captions(row)
    _check_sentences(row.get("sentences"))
    _check_bboxes(row.get("bboxes"))
    return image_id, building, image, texts


def _image_path(row: dict[str, Any], images_root: Path, real_images_root: Path) -> Path:
    return relative_image_path(
        image_field(row), images_root, real_images_root, f"the images folder {images_root}"
    )


def _captions(row: dict[str, Any]) -> tuple[str, ...]:
    if "caption" not in row:
        raise BadRecord("missing the 'caption' field")
    caption = row["caption"]
    if caption is None:
        raise BadRecord("'caption' is null")
    if isinstance(caption, str):
        check_text(caption, "'caption'")
        return (caption,)
    if not isinstance(caption, list):
        raise BadRecord(f"'caption' must be a string or a list of strings, got {json_kind(caption)}")
    if not caption:
        raise BadRecord("'caption' is an empty list")
    return check_text_items(caption, "caption")


def _check_sentences(sentences: Any) -> None:
    if sentences is None:
        return
    if not isinstance(sentences, list):
        raise BadRecord(f"'sentences' must be a list, got {json_kind(sentences)}")
    for i, sentence in enumerate(sentences):
        if sentence is not None and not isinstance(sentence, str):
            raise BadRecord(f"sentences[{i}] must be a string or null, got {json_kind(sentence)}")


def _check_bboxes(bboxes: Any) -> None:
    if bboxes is None:
        return
    if not isinstance(bboxes, list):
        raise BadRecord(f"'bboxes' must be a list, got {json_kind(bboxes)}")
    for i, box in enumerate(bboxes):
        if box is None:
            continue
        if not isinstance(box, list):
            raise BadRecord(f"bboxes[{i}] must be a list of numbers or null, got {json_kind(box)}")
        for value in box:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise BadRecord(f"bboxes[{i}] must hold numbers only, found {json_kind(value)}")
