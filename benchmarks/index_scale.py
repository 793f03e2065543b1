"""Galleries at scale: what each index kind costs in memory and time, and what it finds.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/index_scale.py --n 1000000 --dim 576

The gallery is `n` synthetic clustered unit vectors (as embeddings cluster), written to disk in
chunks and never held in RAM whole, with tile centres spread over the globe. Each query is a
gallery vector plus noise. For each kind (`--kinds`) the script builds a real index folder with
`geoloc.index.store.write_index`, then, in a fresh process (as a server would be):
opens it (seconds), runs the queries one at a time and reports p50 / p99 latency, recall@10
against the exact top 10, the process's resident memory, and the same with a region filter
(a box holding about 1 % of the tiles, scored exactly; one holding about 13 %, searched through
FAISS's ID selector; recall against the exact top 10 of the tiles inside).
Bytes per tile: in RAM, the FAISS structure (`index.faiss`, memory-mapped; the float32 vectors
stay on disk); on disk, the whole folder. Prints one JSON line per kind.

`--keep DIR` keeps the gallery, its queries and their exact answers in DIR and reuses them when
the same `--n`, `--dim`, `--queries` and `--seed` are asked again (at 10 M: 23 GB and minutes
of writing and brute force), so that settings can be compared on one gallery; each index is
still built in a temporary folder beside them and removed, unless `--keep-index` keeps it there
as `index-KIND-PQM` (for `benchmarks/serve_start.py --from-index`).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

CHUNK = 100_000


def write_gallery(folder: Path, n: int, dim: int, seed: int) -> np.memmap:
    """n clustered unit vectors in vectors.npy (written by chunks), and their lat / lon."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(16, n // 1000), dim)).astype(np.float32)
    vectors = np.lib.format.open_memmap(folder / "gallery.npy", "w+", np.float32, (n, dim))
    for start in range(0, n, CHUNK):
        size = min(CHUNK, n - start)
        chunk = centres[rng.integers(0, len(centres), size)] + rng.standard_normal((size, dim), np.float32)
        vectors[start : start + size] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
    vectors.flush()
    np.save(folder / "lat.npy", rng.uniform(-60, 70, n))
    np.save(folder / "lon.npy", rng.uniform(-180, 180, n))
    return np.load(folder / "gallery.npy", mmap_mode="r")


def exact_tops(
    vectors: np.ndarray, queries: np.ndarray, k: int, subsets: dict[str, np.ndarray | None]
) -> dict[str, np.ndarray]:
    """The exact top k rows per query within each subset (a boolean mask over the rows, or None
    for all), in one pass over the vectors read from disk by contiguous chunks."""
    best = {
        name: (np.full((len(queries), 0), -np.inf, np.float32), np.zeros((len(queries), 0), np.int64))
        for name in subsets
    }
    for start in range(0, len(vectors), CHUNK):
        stop = min(start + CHUNK, len(vectors))
        scores = queries @ np.asarray(vectors[start:stop]).T
        for name, mask in subsets.items():
            part = np.arange(start, stop) if mask is None else start + np.flatnonzero(mask[start:stop])
            chunk_scores = scores if mask is None else scores[:, part - start]
            all_scores = np.concatenate([best[name][0], chunk_scores], axis=1)
            all_rows = np.concatenate([best[name][1], np.broadcast_to(part, chunk_scores.shape)], axis=1)
            if all_scores.shape[1] > k:
                keep = np.argpartition(-all_scores, k - 1, axis=1)[:, :k]
                all_scores = np.take_along_axis(all_scores, keep, axis=1)
                all_rows = np.take_along_axis(all_rows, keep, axis=1)
            best[name] = (all_scores, all_rows)
    return {name: rows for name, (_, rows) in best.items()}


def _log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


def recall(found: list[list[int]], truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(f) & set(t)) / k for f, t in zip(found, truth, strict=True)]))


def build(
    folder: Path,
    kind: str,
    vectors: np.ndarray,
    lat: np.ndarray,
    lon: np.ndarray,
    pq_m: int,
    nlist: int,
    train_size: int = 0,
) -> dict:
    from geoloc.index.ann import AnnSettings
    from geoloc.index.store import Tiles, write_index

    keys = [str(i) for i in range(len(vectors))]
    tiles = Tiles(keys, keys, lat.tolist(), lon.tolist(), [""] * len(keys))
    settings = AnnSettings(kind=kind, pq_m=pq_m, nlist=nlist, train_size=train_size)
    start = time.perf_counter()
    write_index(folder, vectors, tiles, {"id": "synthetic", "fingerprint": "-"}, settings, [])
    return {"build_s": round(time.perf_counter() - start, 1)}


BOXES = {"small_region": [-10.0, 0.0, 26.0, 26.0], "large_region": [-180.0, 0.0, -60.0, 50.0]}


def serve_like(folder: str, queries_file: str, k: int, nprobe: int, rescore: int) -> dict:
    """In a fresh process: open the index, answer each query alone, with and without the region."""
    import faiss

    from geoloc.index.region import Region
    from geoloc.index.search import SearchIndex
    from geoloc.index.store import read_index

    before = _rss_mb()["rss"]  # Python, numpy, FAISS and torch (imported by geoloc.index), no index yet
    start = time.perf_counter()
    index = SearchIndex(read_index(folder), encoder=None)
    opened = time.perf_counter() - start
    ivf = faiss.try_extract_index_ivf(index.stored.faiss)
    if ivf is not None and nprobe:
        ivf.nprobe = nprobe
    if rescore:
        index.stored.manifest["index"]["rescore"] = rescore
    queries = np.load(queries_file)
    out: dict = {"open_s": round(opened, 2)}
    regions = [("", None)] + [(f"{name}_", Region.bbox(*box)) for name, box in BOXES.items()]
    for name, where in regions:
        times, found = [], []
        for query in queries:
            start = time.perf_counter()
            hits = index.search_vectors(query[None], k, where)[0]
            times.append(1000 * (time.perf_counter() - start))
            found.append([int(hit.key) for hit in hits])
        out[f"{name}p50_ms"] = round(float(np.percentile(times, 50)), 2)
        out[f"{name}p99_ms"] = round(float(np.percentile(times, 99)), 2)
        out[f"{name}found"] = found
    out["rss_before_open_mb"] = before
    out["rss_mb"] = _rss_mb()
    return out


def _rss_mb() -> dict[str, int]:
    """Resident memory of this process, MB: all, anonymous (the heap), file pages (memory-mapped
    index files: clean, dropped by the kernel under pressure), and the peak."""
    status = dict(
        line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line
    )
    names = {"rss": "VmRSS", "anon": "RssAnon", "file": "RssFile", "peak": "VmHWM"}
    return {name: round(int(status[field].split()[0]) / 1024) for name, field in names.items()}


def region_mask(lat: np.ndarray, lon: np.ndarray, box: list[float]) -> np.ndarray:
    west, south, east, north = box
    return (lat >= south) & (lat <= north) & (lon >= west) & (lon <= east)


def gallery_and_answers(folder: Path, args: argparse.Namespace) -> tuple[Any, ...]:
    """(vectors, lat, lon, exact top k, exact top k within each region) of the asked gallery:
    read from `folder` when it holds that gallery, else made there."""
    asked = {"n": args.n, "dim": args.dim, "queries": args.queries, "seed": args.seed, "k": args.k}
    made = folder / "gallery.json"
    if made.is_file() and json.loads(made.read_text()) == asked:
        answers = np.load(folder / "answers.npz")
        vectors = np.load(folder / "gallery.npy", mmap_mode="r")
        region_truth = {name: answers[name] for name in BOXES}
        _log(f"gallery reused from {folder}")
        return vectors, np.load(folder / "lat.npy"), np.load(folder / "lon.npy"), answers["all"], region_truth
    made.unlink(missing_ok=True)
    vectors = write_gallery(folder, args.n, args.dim, args.seed)
    lat, lon = np.load(folder / "lat.npy"), np.load(folder / "lon.npy")
    rng = np.random.default_rng(args.seed + 1)
    queries = np.asarray(vectors[np.sort(rng.choice(args.n, args.queries, replace=False))])
    queries = queries + 0.5 * rng.standard_normal(queries.shape, np.float32) / np.sqrt(args.dim)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    np.save(folder / "queries.npy", queries)
    _log(f"gallery written: {args.n} x {args.dim}")
    masks: dict[str, np.ndarray | None] = {"": None}
    masks |= {name: region_mask(lat, lon, box) for name, box in BOXES.items()}
    region_truth = exact_tops(vectors, queries, args.k, masks)
    truth = region_truth.pop("")
    np.savez(folder / "answers.npz", all=truth, **region_truth)
    made.write_text(json.dumps(asked))
    _log("exact top k computed")
    return vectors, lat, lon, truth, region_truth


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=100_000, help="gallery size")
    parser.add_argument("--dim", type=int, default=576, help="dimension (SmolVLM-256M: 576)")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--kinds", default="sq8,ivf-pq", help="comma-separated index kinds")
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--dir", help="work folder (default: a temporary one, removed after)")
    parser.add_argument("--keep", help="folder that keeps the gallery and its exact answers for reuse")
    parser.add_argument(
        "--keep-index", action="store_true", help="with --keep: keep each index built there too"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--nprobe", default="16", help="ivf, ivf-pq: comma-separated nprobe values to measure"
    )
    parser.add_argument(
        "--rescore", default="200", help="sq8, ivf-pq: comma-separated candidate counts to re-score"
    )
    parser.add_argument(
        "--pq-m", default="0", help="ivf-pq: comma-separated code sizes (bytes), one build each; 0 automatic"
    )
    parser.add_argument("--nlist", type=int, default=0, help="ivf, ivf-pq: clusters (0: about 4 sqrt(n))")
    parser.add_argument(
        "--train-size",
        type=int,
        default=0,
        help="ivf-pq, sq8: vectors to train on (0: the default, ann.default_train_size)",
    )
    parser.add_argument("--serve", nargs=5, help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    if args.serve:
        folder, queries_file, k, nprobe, rescore = args.serve
        print(json.dumps(serve_like(folder, queries_file, int(k), int(nprobe), int(rescore))))
        return

    with tempfile.TemporaryDirectory(dir=args.keep or args.dir) as tmp:
        work = Path(tmp)
        kept = Path(args.keep or tmp)
        vectors, lat, lon, truth, region_truth = gallery_and_answers(kept, args)
        masks = {name: region_mask(lat, lon, box) for name, box in BOXES.items()}
        inside = {name: np.flatnonzero(mask) for name, mask in masks.items()}
        builds = [
            (kind, int(pq_m))
            for kind in args.kinds.split(",")
            for pq_m in (args.pq_m.split(",") if kind == "ivf-pq" else ["0"])
        ]
        for kind, pq_m in builds:
            folder = work / kind
            _log(f"building {kind} pq_m={pq_m}")
            built = build(folder, kind, vectors, lat, lon, pq_m, args.nlist, args.train_size)
            nprobes = args.nprobe.split(",") if "ivf" in kind else ["0"]
            rescores = args.rescore.split(",") if kind in ("sq8", "ivf-pq") else ["0"]
            for nprobe, rescore in itertools.product(nprobes, rescores):
                row = {"n": args.n, "dim": args.dim, "kind": kind} | built
                row |= {"pq_m": pq_m or "auto", "nlist": args.nlist or "auto"} if kind == "ivf-pq" else {}
                row |= {"train_size": args.train_size} if args.train_size else {}
                row |= {"nprobe": int(nprobe)} if "ivf" in kind else {}
                row |= {"rescore": int(rescore)} if kind in ("sq8", "ivf-pq") else {}
                queries_file = str(kept / "queries.npy")
                child = [
                    sys.executable,
                    __file__,
                    "--serve",
                    str(folder),
                    queries_file,
                    str(args.k),
                    nprobe,
                    rescore,
                ]
                _log(f"serving nprobe={nprobe} rescore={rescore}")
                served = json.loads(subprocess.run(child, check=True, capture_output=True, text=True).stdout)
                faiss_file = folder / "index.faiss"  # an exact index is the vectors, copied into RAM on open
                ram = faiss_file.stat().st_size if faiss_file.exists() else 4 * args.dim * args.n
                disk = sum(f.stat().st_size for f in folder.iterdir())
                row |= {
                    "ram_bytes_per_tile": round(ram / args.n, 1),
                    "disk_bytes_per_tile": round(disk / args.n, 1),
                    "open_s": served["open_s"],
                    "p50_ms": served["p50_ms"],
                    "p99_ms": served["p99_ms"],
                    f"recall@{args.k}": round(recall(served["found"], truth), 4),
                    "server_rss_before_open_mb": served["rss_before_open_mb"],
                    "server_rss_mb": served["rss_mb"],
                }
                for name in BOXES:
                    row |= {
                        f"{name}_tiles": len(inside[name]),
                        f"{name}_p50_ms": served[f"{name}_p50_ms"],
                        f"{name}_p99_ms": served[f"{name}_p99_ms"],
                        f"{name}_recall@{args.k}": round(
                            recall(served[f"{name}_found"], region_truth[name]), 4
                        ),
                    }
                print(json.dumps(row), flush=True)
            if args.keep_index:  # e.g. for benchmarks/serve_start.py --from-index
                kept_index = kept / f"index-{kind}-{pq_m}"
                shutil.rmtree(kept_index, ignore_errors=True)
                folder.rename(kept_index)
                _log(f"index kept in {kept_index}")
                continue
            for file in folder.iterdir():  # free the disk before the next kind
                file.unlink()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
