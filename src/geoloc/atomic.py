"""Crash-safe file writes: write to a temporary name in the same folder, then rename.

A reader never sees a half-written file: either the old content or the complete new one. The
temporary file or folder is created with the mode an ordinary write would give (0666 or 0777
less the umask), so that what is renamed into place is as readable as `open(path, "w")` makes it.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

from geoloc import faults


def _new_beside(target: Path, create: Callable[[Path], None]) -> Path:
    """A new, uniquely named `.NAME.XXXX.tmp` beside `target`, made by `create` (which must refuse
    an existing path with FileExistsError). Unlike tempfile's 0600 / 0700, the umask applies."""
    while True:
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
        try:
            create(tmp)
            return tmp
        except FileExistsError:
            continue


def _create_file(path: Path) -> None:
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Generator[Path]:
    """Yield a temporary path beside `target`; on success it is renamed onto `target`."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = _new_beside(target, _create_file)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(target: str | Path, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(target: str | Path, obj: Any) -> None:
    write_text(target, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def recover_dir(target: str | Path) -> None:
    """Undo a replacement that a crash cut between its two renames: the old folder comes back.

    Replacing a folder takes two renames (target -> .target.old, new -> target); a process killed
    between them leaves no `target` but a complete `.target.old`. Readers call this first.
    """
    target = Path(target)
    old = target.with_name(f".{target.name}.old")
    if old.is_dir() and not target.exists():
        os.replace(old, target)


@contextlib.contextmanager
def atomic_dir(target: str | Path) -> Generator[Path]:
    """Yield a temporary folder beside `target`; on success it replaces `target` whole."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(target)
    tmp = _new_beside(target, lambda path: path.mkdir(0o777))
    try:
        yield tmp
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(target, old)
            faults.point(f"atomic_dir.swap.{target.name}")
            os.replace(tmp, target)
            shutil.rmtree(old)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
