"""CVG-Text: street-level scene descriptions to retrieve satellite or OSM tiles, in three cities.

Versions (see docs/benchmarks.md): `<City>` holds panoramas, `<City>-photos` single-view photos, and
"mixed" is both, read from those two folders. Two arrangements of the same files are accepted:

- the official configuration's::

      <root>/<version>-satellite/<file>      <root>/<version>-OSM/<file>
      <root>/CVG-text/<version>/{train,test}.json

- the other download's::

      <root>/reference/<version>-satellite/<file>      <root>/reference/<version>-OSM/<file>
      <root>/annotation/<version>/{train,test}.json

Each JSON file is ONE object `{file_name: description}`. The same file name names the location's
satellite and OSM tiles, and holds its coordinates: `<lat>,<lon>_...` (panorama,
`<lat>,<lon>_<YYYY-MM>_<pano id>_d<yaw>_z<zoom>.<ext>`) or `<lat>,<lon>[_<part>].<ext>` (photo).

Rules of this loader:

- For a version, the official arrangement is looked for first, then the other one; a version is
  found when its JSON file exists. The tiles are read from the same arrangement's folder.
- version="mixed" combines the panorama and the photo versions (panorama records first), which
  must both exist. Like the official loader, it never reads a `<City>-mixed` folder, even where a
  download has one.
- A record: key = file name, image = its tile in the target folder, texts = (description,),
  group = file name, lat / lon from the file name, split = `split`.
- Errors name the JSON file and the record by its key (`record <file name>`). A name whose
  coordinates do not parse or are out of range, a description that is not a non-empty string, a
  file name listed twice (in one file, or in both halves of a combined mixed set), a file name that
  leads outside its tile folder, or a missing tile (with `check_images`) is a bad record.
- `is_panorama(file_name)` tells panorama from single-view names by the BASENAME having more than
  two `_`-separated parts (the official code tests the full path: an underscore in a folder name
  breaks it there, not here).
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

from geoloc.choices import CvgTextSplit, CvgTextTarget, CvgTextVersion, OnBadRecord, check_choice, options
from geoloc.data.manifest import Dataset, Record
from geoloc.data.records import BadRecord, json_kind, read_json_file, text_problem
from geoloc.errors import DataError

VERSIONS = options(CvgTextVersion)
TARGETS = options(CvgTextTarget)
SPLITS = options(CvgTextSplit)
_TARGET_SUFFIX = {"satellite": "satellite", "osm": "OSM"}

_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)"
# The coordinates end at the first '_', at the extension's dot, or at the end of the name.
_COORDINATES = re.compile(rf"^({_NUMBER}),({_NUMBER})(?=_|\.[^._]*$|$)", re.ASCII)


def is_panorama(file_name: str) -> bool:
    """True for a panorama's file name: its basename has more than two `_`-separated parts."""
    return len(_basename(file_name).split("_")) > 2


def parse_coordinates(file_name: str) -> tuple[float, float]:
    """(lat, lon) in degrees from a CVG-Text file name `<lat>,<lon>_...`; ValueError if it has none.

    Only the basename is read. lat must lie in [-90, 90] and lon in [-180, 180].
    """
    base = _basename(file_name)
    match = _COORDINATES.match(base)
    if match is None:
        raise ValueError(f"file name {file_name!r} does not start with '<lat>,<lon>'")
    lat, lon = float(match.group(1)), float(match.group(2))
    if not (math.isfinite(lat) and -90.0 <= lat <= 90.0):
        raise ValueError(f"latitude {match.group(1)} in file name {file_name!r} is outside [-90, 90]")
    if not (math.isfinite(lon) and -180.0 <= lon <= 180.0):
        raise ValueError(f"longitude {match.group(2)} in file name {file_name!r} is outside [-180, 180]")
    return lat, lon


def _basename(file_name: str) -> str:
    return file_name.replace("\\", "/").rsplit("/", 1)[-1]


def version_folder(city: str, version: str) -> str:
    """The folder name of a city's panorama or photo version: `<City>` or `<City>-photos`."""
    return {"panorama": city, "photos": f"{city}-photos"}[version]


def load_cvgtext(
    root: str | Path,
    city: str,
    version: CvgTextVersion = "mixed",
    target: CvgTextTarget = "satellite",
    split: CvgTextSplit = "test",
    on_bad_record: OnBadRecord = "error",
    check_images: bool = True,
) -> Dataset:
    """Read one CVG-Text city version as a `Dataset`: one `Record` per location.

    `target` picks the tiles (satellite or OSM) that the records' images point at. With
    on_bad_record="skip", bad records are left out and listed in `Dataset.skipped` as
    (file name, reason); problems with a file as a whole, or an empty result, still raise
    `DataError`. `Dataset.source` is the (first) JSON file read.
    """
    check_choice(on_bad_record, OnBadRecord, "on_bad_record")
    root = Path(root).absolute()
    _check_arguments(city, version, target, split)
    parts = _find_parts(root, city, version, target, split)
    source = parts[0][0]
    records, skipped = _read_parts(parts, split, on_bad_record, check_images)
    if not records:
        extra = f" ({len(skipped)} bad record(s) skipped)" if skipped else ""
        raise DataError(f"no records in CVG-Text {city} {version} {split}{extra}", path=source)
    return Dataset(records=records, source=source, skipped=skipped)


def _check_arguments(city: str, version: str, target: str, split: str) -> None:
    """Refuse an unknown version, target or split, or a city name that is not one plain folder name.

    Checked before any file is looked for, so a typo is named as such rather than as a missing file.
    """
    for name, value, choices in (("version", version, VERSIONS), ("target", target, TARGETS)):
        if value not in choices:
            raise DataError(f"unknown CVG-Text {name} {value!r}: expected one of {', '.join(choices)}")
    if split not in SPLITS:
        raise DataError(f"unknown CVG-Text split {split!r}: expected one of {', '.join(SPLITS)}")
    if not isinstance(city, str) or not city or "/" in city or "\\" in city or city in (".", ".."):
        raise DataError(f"invalid CVG-Text city name {city!r}")


def _read_parts(
    parts: list[tuple[Path, Path]], split: str, on_bad_record: OnBadRecord, check_images: bool
) -> tuple[list[Record], list[tuple[str, str]]]:
    """The records of every (annotation file, tile folder) part, in order, and the skipped ones.

    A file name is one location, so it may appear once across all the parts (the two halves of a
    mixed set included). A bad record raises `DataError` naming its file, or with
    on_bad_record="skip" is listed as (file name, reason).
    """
    source = parts[0][0]
    records: list[Record] = []
    skipped: list[tuple[str, str]] = []
    seen: dict[str, Path] = {}
    for annotation, tiles in parts:
        for key, description in _read_object(annotation):
            try:
                _claim_key(key, annotation, seen)
                records.append(_record(key, description, tiles, split, check_images))
            except BadRecord as exc:
                if on_bad_record == "error":
                    raise DataError(str(exc), path=annotation, record=key) from None
                # Skipped entries are listed against `source`; name the other half's file.
                skipped.append((key, str(exc) if annotation == source else f"{exc} (in {annotation})"))
    return records, skipped


def _claim_key(key: str, annotation: Path, seen: dict[str, Path]) -> None:
    """Record that `annotation` lists `key`; a `BadRecord` if a file (this or another) listed it already."""
    if key in seen:
        where = "earlier in this file" if seen[key] == annotation else f"also in {seen[key]}"
        raise BadRecord(f"file name listed twice ({where})")
    seen[key] = annotation


def _record(key: str, description: Any, tiles: Path, split: str, check_images: bool) -> Record:
    if not key.strip():
        raise BadRecord("the file name is empty")
    try:
        lat, lon = parse_coordinates(key)
    except ValueError as exc:
        raise BadRecord(str(exc)) from None
    if description is None:
        raise BadRecord("the description is null")
    if not isinstance(description, str):
        raise BadRecord(f"the description must be a string, got {_json_kind(description)}")
    problem = text_problem(description, "the description")
    if problem:
        raise BadRecord(problem)
    if "\x00" in key or os.path.isabs(key) or key.startswith(("/", "\\")):
        raise BadRecord("the file name must be a plain name relative to the tile folder")
    image = tiles / key
    try:
        inside = image.resolve().is_relative_to(tiles.resolve())
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop on Python < 3.13
        raise BadRecord(f"cannot resolve the tile path: {exc}") from None
    if not inside:
        raise BadRecord(f"the file name leads outside the tile folder {tiles}")
    if check_images and not image.is_file():
        raise BadRecord(
            f"tile not found: {image}" if not image.exists() else f"tile path is not a file: {image}"
        )
    return Record(key=key, image=image, texts=(description,), group=key, lat=lat, lon=lon, split=split)


def _arrangements(root: Path, folder: str, target: str, split: str) -> list[tuple[Path, Path]]:
    """(annotation file, tile folder) of a version folder, in each accepted arrangement."""
    tiles = f"{folder}-{_TARGET_SUFFIX[target]}"
    return [
        (root / "CVG-text" / folder / f"{split}.json", root / tiles),
        (root / "annotation" / folder / f"{split}.json", root / "reference" / tiles),
    ]


def _find_version(root: Path, folder: str, target: str, split: str) -> tuple[Path, Path] | None:
    for annotation, tiles in _arrangements(root, folder, target, split):
        if annotation.is_file():
            return annotation, tiles
    return None


def _find_parts(root: Path, city: str, version: str, target: str, split: str) -> list[tuple[Path, Path]]:
    """The (annotation file, tile folder) pairs that make up the asked version.

    The mixed version is always the panorama and the photo versions together, as the official
    loader reads it: a `<City>-mixed` folder, where a download has one, is not read.
    """
    halves = ("panorama", "photos") if version == "mixed" else (version,)
    found = [_find_version(root, version_folder(city, v), target, split) for v in halves]
    if any(part is None for part in found):
        looked = [
            str(a) for v in halves for a, _ in _arrangements(root, version_folder(city, v), target, split)
        ]
        what = f"both {city} and {city}-photos" if version == "mixed" else version_folder(city, version)
        mixed_folder = _find_version(root, f"{city}-mixed", target, split)
        note = (
            f"; {mixed_folder[0]} is not read: the mixed version is {city} + {city}-photos, as in "
            "the official loader"
            if version == "mixed" and mixed_folder is not None
            else ""
        )
        raise DataError(
            f"CVG-Text {city} {version} {split} not found: needs {what} (looked for {', '.join(looked)})"
            f"{note}{_known_cities(root)}",
            path=root,
        )
    parts = [part for part in found if part is not None]
    for annotation, tiles in parts:
        if not tiles.is_dir():
            raise DataError(f"tile folder not found: {tiles}", path=annotation)
    return parts


def _known_cities(root: Path) -> str:
    names: set[str] = set()
    for folder in (root / "CVG-text", root / "annotation"):
        if folder.is_dir():
            names.update(p.name for p in folder.iterdir() if p.is_dir())
    return f"; versions present: {', '.join(sorted(names))}" if names else ""


def _json_kind(value: Any) -> str:
    # A JSON object read with pairs kept (to catch duplicate keys) is a list, but still an object.
    return "an object" if isinstance(value, _Pairs) else json_kind(value)


class _Pairs(list):
    """A JSON object's (key, value) pairs in file order, so duplicated keys are not lost."""


def _read_object(path: Path) -> list[tuple[str, Any]]:
    data = read_json_file(path, "annotation file not found", object_pairs_hook=_Pairs)
    if not isinstance(data, _Pairs):
        raise DataError(
            f"expected one JSON object {{file_name: description}}, got {_json_kind(data)}", path=path
        )
    return list(data)
