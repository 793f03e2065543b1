"""Record-level validation shared by every reader (manifest, GeoText-1652, CVG-Text).

A reader raises `BadRecord` for a problem with one record; it then turns it into a `DataError`
naming the file and the record, or skips the record when asked to.
"""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath
from typing import Any

from geoloc.errors import DataError

MAX_TEXT_CHARS = 20_000
"""Longest description accepted, in characters; anything longer is almost surely a broken row."""


class BadRecord(Exception):
    """A record-level problem; the reader turns it into a DataError or a skipped entry."""


def json_kind(value: Any) -> str:
    """Name a value's type in JSON terms, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return f"a number ({value!r})"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def text_problem(text: str, name: str) -> str | None:
    """What is wrong with a description (empty, blank, far too long), or None."""
    if not text.strip():
        return f"{name} is empty" if not text else f"{name} is only whitespace"
    if len(text) > MAX_TEXT_CHARS:
        return f"{name} is {len(text):,} characters long, more than the limit of {MAX_TEXT_CHARS:,}"
    return None


def check_text(text: str, name: str) -> None:
    problem = text_problem(text, name)
    if problem:
        raise BadRecord(problem)


def check_text_items(items: list[Any], name: str) -> tuple[str, ...]:
    """The strings of a JSON list of descriptions, each checked: no nulls, no non-strings."""
    for i, item in enumerate(items):
        if item is None:
            raise BadRecord(f"{name}[{i}] is null")
        if not isinstance(item, str):
            raise BadRecord(f"{name}[{i}] must be a string, got {json_kind(item)}")
        check_text(item, f"{name}[{i}]")
    return tuple(items)


def image_field(row: dict[str, Any]) -> str:
    """A record's 'image' value: present, a string, not blank."""
    key = row.get("image")
    if key is None:
        raise BadRecord("missing the 'image' field" if "image" not in row else "'image' is null or empty")
    if not isinstance(key, str):
        raise BadRecord(f"'image' must be a string (a path), got {json_kind(key)}")
    if not key.strip():
        raise BadRecord("'image' is empty")
    return key


def relative_image_path(key: str, folder: Path, real_folder: Path, folder_name: str) -> Path:
    """`folder / key`, refused when `key` is absolute or leads (by `..` or a symlink) outside.

    `real_folder` is `folder` resolved once by the caller; `folder_name` names it in messages.
    """
    if "\x00" in key:
        raise BadRecord("'image' contains a NUL character")
    if Path(key).is_absolute() or PurePosixPath(key.replace("\\", "/")).is_absolute():
        raise BadRecord(f"image path {key!r} is absolute; give it relative to {folder_name}")
    image = folder / key
    try:
        real = image.resolve()
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop on Python < 3.13
        raise BadRecord(f"cannot resolve image path {key!r}: {exc}") from None
    if not real.is_relative_to(real_folder):
        raise BadRecord(f"image path {key!r} leads outside {folder_name} (to {real})")
    return image


class JsonObject(dict):
    """A JSON object that remembers the field names it was given more than once.

    Python's json keeps the last of duplicated names silently; a record that names its image or
    caption twice is ambiguous, so the readers refuse it (`check_unique_fields`).
    """

    duplicated: tuple[str, ...] = ()


def json_object(pairs: list[tuple[str, Any]]) -> JsonObject:
    """`object_pairs_hook` for json.load(s): a JsonObject noting duplicated field names."""
    obj = JsonObject(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        repeated: list[str] = []
        for k, _ in pairs:
            if k in seen:
                repeated.append(k)
            seen.add(k)
        obj.duplicated = tuple(dict.fromkeys(repeated))
    return obj


def check_unique_fields(row: Any) -> None:
    """BadRecord when the JSON object `row` gives a field name twice."""
    duplicated = getattr(row, "duplicated", ())
    if duplicated:
        names = ", ".join(repr(name) for name in duplicated)
        raise BadRecord(f"field {names} is given more than once (which one is meant is ambiguous)")


def read_json_file(path: Path, missing: str, object_pairs_hook: Any = None) -> Any:
    """A whole JSON file, or a DataError naming it: `missing` when absent, else the reason."""
    try:
        with open(path, "rb") as f:
            return json.load(f, object_pairs_hook=object_pairs_hook)
    except FileNotFoundError:
        raise DataError(missing, path=path) from None
    except OSError as exc:
        raise DataError(f"cannot read file: {exc.strerror or exc}", path=path) from exc
    except UnicodeDecodeError as exc:
        raise DataError(f"not valid UTF-8 text: {exc.reason}", path=path) from None
    except json.JSONDecodeError as exc:
        raise DataError(
            f"invalid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})", path=path
        ) from None
