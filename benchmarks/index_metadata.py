"""Memory of an opened index's tile metadata, three ways:

- `mapped`: what `read_index` does now (index format 3): the Arrow IPC file `metadata.arrow`
  memory-mapped, its columns views of the file (`store.Column`);
- `parquet`: what it did for format 2: `metadata.parquet` decoded into Arrow memory, the
  decoding's buffers given back;
- `lists`: what it did before that: the decoded columns turned into Python lists.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/index_metadata.py --tiles 1000000

Writes `--tiles` rows of metadata as an index holds it (keys, image paths, groups, coordinates
and, with `--footprints`, a 5-point ring a tile) in both files, then reads it in a fresh process
each way and prints the growth of that process's resident memory in bytes a tile: the heap
(anonymous memory, which stays) and file pages (the mapped file's pages read so far, which the
kernel may drop and read again), with the time the read took. All ways run in the same
invocation, so their ratios hold on a busy machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _resident_bytes() -> dict[str, int]:
    """This process's resident memory: the heap (anonymous) and file pages, in bytes."""
    fields = {"RssAnon:": "heap", "RssFile:": "file"}
    found = {
        fields[line.split()[0]]: int(line.split()[1]) * 1024
        for line in Path("/proc/self/status").read_text().splitlines()
        if line.split() and line.split()[0] in fields
    }
    if len(found) != len(fields):
        raise RuntimeError("no RssAnon / RssFile in /proc/self/status")
    return found


def write_metadata(folder: Path, tiles: int, footprints: bool) -> None:
    """Rows shaped as a city gallery's: z17 tile keys and paths, a group a tile, coordinates."""
    import numpy as np

    from geoloc.index.store import Tiles

    rng = np.random.default_rng(0)
    lat = rng.uniform(40.0, 50.0, tiles).tolist()
    lon = rng.uniform(-5.0, 10.0, tiles).tolist()
    keys = [f"z17/{66000 + i // 1000}/{44000 + i % 1000}" for i in range(tiles)]
    rings = None
    if footprints:
        step = 0.001
        rings = [
            [[x, y], [x + step, y], [x + step, y + step], [x, y + step], [x, y]]
            for x, y in zip(lon, lat, strict=True)
        ]
    table = Tiles(keys, [f"tiles/{k}.png" for k in keys], lat, lon, keys, rings)
    import pyarrow.parquet as pq

    from geoloc.index import store

    store.write_metadata(table, folder / store.METADATA)
    pq.write_table(table.to_arrow(), folder / store.PARQUET_METADATA)


def measure(folder: Path, way: str) -> dict[str, float]:
    """In this (fresh) process: read the metadata `way` and report the memory it holds."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from geoloc.index import store

    # pyarrow's first conversion to numpy loads about 30 MB of code, whatever the table's size.
    np.asarray(store.Column(pa.array([0.0])), dtype=np.float64)
    before = _resident_bytes()
    started = time.perf_counter()
    if way == "mapped":
        tiles = store.read_metadata(folder)
    else:
        table = pq.read_table(folder / store.PARQUET_METADATA)
        if way == "lists":  # the columns as Python objects, as read_index kept them first
            tiles = store.Tiles(*(table.column(name).to_pylist() for name in table.column_names))
        else:  # as read_index kept them for format 2
            tiles = store.Tiles.from_arrow(table)
            pa.default_memory_pool().release_unused()
        del table
    # What a server does next: the centres as arrays, for region filters (search.SearchIndex).
    centres = np.asarray(tiles.lat, dtype=np.float64), np.asarray(tiles.lon, dtype=np.float64)
    seconds = time.perf_counter() - started
    rows = len(tiles)
    after = _resident_bytes()
    assert len(centres[0]) == rows
    return {
        "heap_bytes_per_tile": round((after["heap"] - before["heap"]) / rows, 1),
        "file_bytes_per_tile": round((after["file"] - before["file"]) / rows, 1),
        "read_s": round(seconds, 3),
        "tiles": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tiles", type=int, default=1_000_000)
    parser.add_argument("--footprints", action="store_true", help="a 5-point ring a tile")
    parser.add_argument("--measure", nargs=2, help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(Path(args.measure[0]), args.measure[1])))
        return
    with tempfile.TemporaryDirectory() as folder:
        write_metadata(Path(folder), args.tiles, args.footprints)
        for way in ("mapped", "parquet", "lists"):
            child = [sys.executable, __file__, "--measure", folder, way]
            result = json.loads(subprocess.run(child, check=True, capture_output=True, text=True).stdout)
            print(json.dumps({"way": way, "footprints": args.footprints, **result}), flush=True)


if __name__ == "__main__":
    main()
