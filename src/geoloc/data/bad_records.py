"""Bad records left out with `--on-bad-record skip`: counted, reported, and listed in a file.

Every reader keeps the records it skipped in `Dataset.skipped` as (record, reason); the file is
the data set's `source`. A command that skips writes them, one JSON object a line, to
`skipped_records.jsonl` beside its output::

    {"file": "/data/manifest.jsonl", "record": "line 7", "reason": "'texts' is an empty list ..."}

and prints how many it skipped on stderr. The file is written (possibly empty) whenever a command
runs with skip, so its absence never has to be guessed at. `verify_and_list` is that whole step
for one data set (train, which checks its training and validation records together, calls
`list_skipped` on what `carve_splits` left out).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from geoloc.atomic import write_text
from geoloc.choices import OnBadRecord
from geoloc.data.manifest import Dataset

SKIPPED_FILE = "skipped_records.jsonl"


def skipped_entries(*datasets: Dataset) -> list[dict[str, str]]:
    """{"file", "record", "reason"} for every record the datasets skipped, without repeats."""
    entries: list[dict[str, str]] = []
    seen: set[tuple[str, str]] = set()
    for dataset in datasets:
        for record, reason in dataset.skipped:
            if (str(dataset.source), record) in seen:
                continue
            seen.add((str(dataset.source), record))
            entries.append({"file": str(dataset.source), "record": record, "reason": reason})
    return entries


def write_skipped(folder: str | Path, entries: list[dict[str, str]], name: str = SKIPPED_FILE) -> Path:
    """Write `entries` to `folder`/`name` (skipped_records.jsonl), atomically; return its path."""
    path = Path(folder) / name
    write_text(path, "".join(json.dumps(entry, ensure_ascii=False) + "\n" for entry in entries))
    return path


def report_skipped(entries: list[dict[str, str]], listed_in: Path | None) -> None:
    """One line on stderr per skipped record (at most 10), and the total."""
    if not entries:
        return
    for entry in entries[:10]:
        print(f"geoloc: skipped {entry['file']}: {entry['record']}: {entry['reason']}", file=sys.stderr)
    if len(entries) > 10:
        print(f"geoloc: ... and {len(entries) - 10} more", file=sys.stderr)
    where = f"; all are listed in {listed_in}" if listed_in is not None else ""
    print(f"geoloc: skipped {len(entries)} bad record(s){where}", file=sys.stderr)


def list_skipped(
    entries: list[dict[str, str]],
    on_bad_record: OnBadRecord,
    folder: str | Path | None,
    name: str = SKIPPED_FILE,
) -> Path | None:
    """Tell stderr about the skipped records and, under skip, list them in `folder`/`name`.

    `folder` None reports without writing (a run that already exists keeps its own list).
    Returns the list's path, or None when nothing was written.
    """
    listed = write_skipped(folder, entries, name) if on_bad_record == "skip" and folder is not None else None
    report_skipped(entries, listed)
    return listed


def verify_and_list(
    dataset: Dataset,
    on_bad_record: OnBadRecord,
    folder: str | Path | None,
    name: str = SKIPPED_FILE,
    quiet: bool = False,
) -> tuple[Dataset, list[dict[str, str]]]:
    """Decode every image once (`verify_images`), then `list_skipped` what was left out.

    Under "error" the first bad record stops here, before anything is written. `quiet` neither
    reports nor writes (the other processes of a multi-process command).
    Returns the data set without its bad records, and the skipped entries.
    """
    from geoloc.data.images import verify_images

    checked = verify_images(dataset, on_bad_record)
    entries = skipped_entries(checked)
    if not quiet:
        list_skipped(entries, on_bad_record, folder, name)
    return checked, entries
