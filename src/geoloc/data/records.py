"""Record-level validation shared by every reader (manifest, GeoText-1652, CVG-Text).

A reader raises `BadRecord` for a problem with one record; it then turns it into a `DataError`
naming the file and the record, or skips the record when asked to.
"""

from __future__ import annotations

from typing import Any

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
