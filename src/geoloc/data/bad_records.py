"""Bad records left out with `--on-bad-record skip`: counted, reported, and listed in a file.

Every reader keeps the records it skipped in `Dataset.skipped` as (record, reason); the file is
the data set's `source`. A command that skips writes them, one JSON object a line, to
`skipped_records.jsonl` beside its output::

    {"file": "/data/manifest.jsonl", "record": "line 7", "reason": "'texts' is an empty list ..."}

and prints how many it skipped on stderr. The file is written (possibly empty) whenever a command
runs with skip, so its absence never has to be guessed at.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from geoloc.atomic import write_text
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
