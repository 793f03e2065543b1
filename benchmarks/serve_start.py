"""How long `geoloc serve` takes to start, model load included: from launching the process to its
first answer on /health.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/serve_start.py --prepare /tmp/serve_start --tiles 1000000

`--prepare DIR` writes, once, what the server opens: `DIR/model`, a SmolVLM-256M-Instruct folder
as a download looks (the real config, tokenizer and processor files, full depth, seeded random
weights: 256 M parameters in float32 safetensors), and `DIR/index-N`, an index of N synthetic
unit vectors of its width (576) whose manifest records that model, so the server loads it and
checks its fingerprint as it would a trained one. Then the server is started `--runs` times on
loopback (`--device cpu`), and each start is timed. The first start of a model loads it through
transformers and exports its query side to ONNX (index/towers.py); the later ones encode queries
with that and never load the model itself. A fresh process also times the parts alone: the
imports, opening the index (`read_index`), opening the exported query side and its first query,
loading the model, hashing its weights (the fingerprint, as the first start computes it) and the
check from the fingerprint cached by the model's files. `--trees OLD,NEW` compares two versions
of geoloc (source trees, e.g. a `git worktree` of an older commit), started in turn so that both
see the same machine load. Prints one JSON line per start (with the load average before it) and
one for the parts.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from serve_load import free_port, serve_command  # this folder is the script's sys.path[0]

MODEL = "SmolVLM-256M-Instruct"
CHUNK = 100_000


def model_and_record(folder: Path) -> tuple[dict, int]:
    """The manifest record of the model in `folder`/model (made once) and its embedding width."""
    from geoloc.encoder.loading import load_encoder
    from geoloc.encoder.model_files import build_random_checkpoint
    from geoloc.index.identity import model_record

    model = folder / "model"
    if not (model / "config.json").is_file():
        build_random_checkpoint(MODEL, model, layers=None)
    encoder = load_encoder(model, device="cpu", dtype="float32")
    return model_record(encoder, str(model.resolve()), "float32"), encoder.embedding_dim


def prepare(folder: Path, tiles: int, kind: str, nlist: int) -> Path:
    """The model folder and an index of `tiles` vectors that names it (each made once)."""
    from geoloc.index.ann import AnnSettings
    from geoloc.index.store import Tiles, write_index

    index = folder / f"index-{kind}-{tiles}"
    if (index / "manifest.json").is_file():
        return index
    record, dim = model_and_record(folder)
    rng = np.random.default_rng(0)
    vectors = np.lib.format.open_memmap(folder / "vectors.npy", "w+", np.float32, (tiles, dim))
    for start in range(0, tiles, CHUNK):
        chunk = rng.standard_normal((min(CHUNK, tiles - start), dim), np.float32)
        vectors[start : start + len(chunk)] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
    vectors.flush()
    keys = [f"tile-{i}" for i in range(tiles)]
    metadata = Tiles(
        keys, keys, rng.uniform(-60, 70, tiles).tolist(), rng.uniform(-180, 180, tiles).tolist(), [""] * tiles
    )
    write_index(
        index,
        np.load(folder / "vectors.npy", mmap_mode="r"),
        metadata,
        record,
        AnnSettings(kind=kind, nlist=nlist),
        [],
    )
    (folder / "vectors.npy").unlink()
    return index


def link_index(folder: Path, source: Path) -> Path:
    """An index of `source`'s files (hard links: no copy) whose manifest names this folder's model,
    e.g. a 10 M-tile index kept by `benchmarks/index_scale.py --keep DIR --keep-index`."""
    from geoloc.atomic import write_json
    from geoloc.index.store import MANIFEST, read_manifest_json

    index = folder / f"linked-{source.resolve().name}"
    if (index / MANIFEST).is_file():
        return index
    record, dim = model_and_record(folder)
    manifest = read_manifest_json(source) | {"model": record}
    if manifest["dimension"] != dim:
        raise SystemExit(f"{source} holds {manifest['dimension']}-d vectors, the model makes {dim}")
    index.mkdir()
    for file in source.iterdir():
        if file.name != MANIFEST:
            os.link(file, index / file.name)
    write_json(index / MANIFEST, manifest)
    return index


def rss_mb(pid: int) -> dict[str, int]:
    fields = {"rss": "VmRSS", "anon": "RssAnon", "file": "RssFile"}
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
    )
    return {name: round(int(status[field].split()[0]) / 1024) for name, field in fields.items()}


def time_start(index: Path, limit_s: float, tree: str | None = None) -> dict:
    """Seconds from launching `geoloc serve` to its first 200 on /health, its memory then, and
    the seconds its first search takes; the geoloc of source tree `tree` (its src/), if given."""
    import httpx

    port = free_port()
    command = serve_command(index, port)
    env = os.environ | ({"PYTHONPATH": str(Path(tree, "src").resolve())} if tree else {})
    started = time.perf_counter()
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    try:
        while time.perf_counter() - started < limit_s:
            if server.poll() is not None:
                raise SystemExit(
                    f"geoloc serve exited with status {server.returncode}: {server.stderr.read()}"
                )
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
                if response.status_code == 200:
                    up = {"start_s": round(time.perf_counter() - started, 2), "rss_mb": rss_mb(server.pid)}
                    # The first search: the model's weights are read from their file as it runs.
                    asked = time.perf_counter()
                    search = httpx.post(
                        f"http://127.0.0.1:{port}/search",
                        json={"text": "a red building", "k": 10},
                        timeout=120,
                    )
                    search.raise_for_status()
                    return up | {"first_search_s": round(time.perf_counter() - asked, 2)}
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise SystemExit(f"geoloc serve did not answer in {limit_s} s")
    finally:
        server.terminate()
        server.wait(timeout=30)


def time_parts(index: str) -> dict:
    """In this (fresh) process: the server's imports, opening the index, opening the model's
    exported query side (when cached: what a server then uses) and its first query, loading its model,
    hashing every weight (the fingerprint, as a first start does), and the check as a later
    start makes it (the fingerprint cached by the model's files: the files looked at twice)."""
    start = time.perf_counter()
    import geoloc.serve.app  # noqa: F401  (what the server imports before it opens anything)
    from geoloc.encoder.loading import load_encoder
    from geoloc.eval.cache import model_fingerprint
    from geoloc.index import identity
    from geoloc.index.store import read_index
    from geoloc.index.towers import cached_tower, tower_key

    imported = time.perf_counter()
    stored = read_index(index)
    opened = time.perf_counter()
    record = stored.manifest["model"]
    tower = cached_tower(tower_key(record, None, "cpu"), record)  # what a server opens, when cached
    towered = time.perf_counter()
    if tower is not None:
        tower.encode_text(["a red building"])
    first_query = time.perf_counter()
    encoder = load_encoder(record["id"], device="cpu", dtype=record["dtype"])
    loaded = time.perf_counter()
    model_fingerprint(encoder)
    hashed = time.perf_counter()
    key = identity.weights_key(record["id"], record["dtype"])
    cached = key is not None and identity.weights_key(record["id"], record["dtype"]) == key
    cached = cached and key is not None and identity._cached_fingerprint(key) == record["fingerprint"]
    checked = time.perf_counter()
    return {
        "imports_s": round(imported - start, 2),
        "open_index_s": round(opened - imported, 2),
        "open_query_tower_s": round(towered - opened, 2) if tower is not None else None,
        "tower_first_query_s": round(first_query - towered, 2) if tower is not None else None,
        "load_model_s": round(loaded - first_query, 2),
        "hash_weights_s": round(hashed - loaded, 2),
        "check_cached_s": round(checked - hashed, 2) if cached else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--prepare", required=True, metavar="DIR", help="work folder (model and index made once)"
    )
    parser.add_argument("--tiles", type=int, default=10_000)
    parser.add_argument("--kind", default="ivf-pq", help="the index kind")
    parser.add_argument("--nlist", type=int, default=1000, help="ivf-pq clusters (fewer: a quicker build)")
    parser.add_argument(
        "--from-index",
        metavar="INDEX",
        help="serve this index's files (hard-linked, its manifest naming the model) instead of making one",
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--limit-s", type=float, default=300)
    parser.add_argument(
        "--trees",
        help="comma-separated source trees (e.g. a `git worktree` of an older commit, and .): each "
        "run starts the server of each in turn, so that all see the same machine load",
    )
    parser.add_argument("--parts", help=argparse.SUPPRESS)  # the child process that times the parts
    args = parser.parse_args()
    if args.parts:
        print(json.dumps(time_parts(args.parts)))
        return
    folder = Path(args.prepare)
    folder.mkdir(parents=True, exist_ok=True)
    if args.from_index:
        from geoloc.index.store import read_manifest_json

        index = link_index(folder, Path(args.from_index))
        manifest = read_manifest_json(index)
        args.tiles, args.kind = manifest["count"], manifest["index"]["kind"]
    else:
        index = prepare(folder, args.tiles, args.kind, args.nlist)
    trees: list[str | None] = list(args.trees.split(",")) if args.trees else [None]
    for run in range(1, args.runs + 1):
        for tree in trees:
            row = {"run": run, "tiles": args.tiles, "kind": args.kind, "load": round(os.getloadavg()[0], 2)}
            row |= {"tree": tree} if tree else {}
            print(json.dumps(row | time_start(index, args.limit_s, tree)), flush=True)
    child = [sys.executable, __file__, "--prepare", str(folder), "--parts", str(index)]
    parts = json.loads(subprocess.run(child, check=True, capture_output=True, text=True).stdout)
    print(json.dumps({"parts": True, "tiles": args.tiles, "kind": args.kind} | parts))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
