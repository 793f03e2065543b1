"""Memory of an opened index's tile metadata: its columns in Arrow memory (`store.Column`, what
`read_index` keeps, the decoding's buffers given back) against the same columns as Python lists
(what it kept before this change).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/index_metadata.py --tiles 1000000

Writes `--tiles` rows of metadata as an index holds it (metadata.parquet: keys, image paths,
groups, coordinates and, with `--footprints`, a 5-point ring a tile), then reads it in a fresh
process each way and prints the growth of that process's resident memory, in bytes a tile, with
the time the read took. Both ways run in the same invocation, so their ratio holds on a busy
machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _resident_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def write_metadata(path: Path, tiles: int, footprints: bool) -> None:
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

    pq.write_table(table.to_arrow(), path)


def measure(path: Path, way: str) -> dict[str, float]:
    """In this (fresh) process: read the metadata `way` and report the memory it holds."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from geoloc.index.store import Tiles

    before = _resident_bytes()
    started = time.perf_counter()
    table = pq.read_table(path)
    if way == "lists":  # the columns as Python objects, as read_index kept them before
        tiles = Tiles(*(table.column(name).to_pylist() for name in table.column_names))
    else:  # as read_index keeps them now
        tiles = Tiles.from_arrow(table)
    del table
    if way == "arrow":
        pa.default_memory_pool().release_unused()  # as read_index does
    seconds = time.perf_counter() - started
    rows = len(tiles)
    return {
        "bytes_per_tile": (_resident_bytes() - before) / rows,
        "arrow_bytes_per_tile": pa.total_allocated_bytes() / rows,
        "read_s": seconds,
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
        path = Path(folder) / "metadata.parquet"
        write_metadata(path, args.tiles, args.footprints)
        for way in ("arrow", "lists"):
            child = [sys.executable, __file__, "--measure", str(path), way]
            result = json.loads(subprocess.run(child, check=True, capture_output=True, text=True).stdout)
            print(json.dumps({"way": way, "footprints": args.footprints, **result}), flush=True)


if __name__ == "__main__":
    main()
