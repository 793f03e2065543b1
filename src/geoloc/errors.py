"""User-facing errors.

Every error a user can cause with bad input (a malformed file, a missing image, an unknown
option) is raised as a `GeolocError`. The CLI prints its message and exits non-zero; any other
exception is a bug in geoloc and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path


class GeolocError(Exception):
    """An error caused by the user's input, with a message that says what to fix."""


class DataError(GeolocError):
    """A bad data file or record. The message names the file and, when known, the record."""

    def __init__(self, message: str, path: str | Path | None = None, record: str | int | None = None):
        self.path = str(path) if path is not None else None
        self.record = record
        where = []
        if path is not None:
            where.append(str(path))
        if record is not None:
            where.append(f"record {record}")
        prefix = ": ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)


class ConfigError(GeolocError):
    """A bad configuration file or override."""


class ChoiceError(ConfigError, ValueError):
    """A value outside a choice's options (geoloc/choices.py), from a config or a library call."""
