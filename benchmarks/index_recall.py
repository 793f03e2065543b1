"""What IVF and HNSW cost in recall and gain in speed against exact search, on a random gallery.

    .venv/bin/python benchmarks/index_recall.py --count 100000 --dim 256

The gallery is `count` random unit vectors. Each query is a gallery vector plus noise,
normalised (as a description is near, not on, its tile), so every query has a true answer and
the neighbourhood structure is that of a hard, structureless space: ANN recall on real
embeddings, which cluster, is usually higher. For each index kind and setting the script
reports build time, mean query latency (one query at a time), recall@10 against the exact
top 10, and how often the planted tile comes first.
"""

from __future__ import annotations

import argparse
import json
import time

import faiss
import numpy as np

from geoloc.index.ann import AnnSettings, build_faiss, ivf_lists, search_faiss


def random_gallery(count: int, dim: int, queries: int, noise: float, seed: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    gallery = rng.standard_normal((count, dim), dtype=np.float32)
    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
    planted = rng.choice(count, size=queries, replace=False)
    query = gallery[planted] + noise * rng.standard_normal((queries, dim), dtype=np.float32) / np.sqrt(dim)
    query /= np.linalg.norm(query, axis=1, keepdims=True)
    return gallery, query, planted


def measure(index: faiss.Index, queries: np.ndarray, exact: np.ndarray, planted: np.ndarray, k: int) -> dict:
    start = time.perf_counter()
    rows = np.concatenate([search_faiss(index, q[None], k)[1] for q in queries])
    latency_ms = 1000 * (time.perf_counter() - start) / len(queries)
    recall = np.mean([len(set(found) & set(truth)) / k for found, truth in zip(rows, exact, strict=True)])
    return {
        "latency_ms": round(latency_ms, 3),
        f"recall@{k}": round(float(recall), 4),
        "planted_first": round(float(np.mean(rows[:, 0] == planted)), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--noise", type=float, default=1.0, help="query noise, relative to a unit vector")
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="FAISS threads (1: a fair per-query latency)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    faiss.omp_set_num_threads(args.threads)

    gallery, queries, planted = random_gallery(args.count, args.dim, args.queries, args.noise, args.seed)
    settings_list = [AnnSettings()]
    settings_list += [AnnSettings(kind="ivf", nprobe=p) for p in (1, 8, 32, 128)]
    settings_list += [AnnSettings(kind="hnsw", ef_search=e) for e in (16, 64, 256)]
    rows = []
    exact_top = None
    built: dict[tuple, tuple[faiss.Index, float]] = {}
    for settings in settings_list:
        # One structure per kind (and build parameters); the search knobs are set on it.
        key = (settings.kind, settings.hnsw_m, settings.ef_construction)
        if key not in built:
            start = time.perf_counter()
            built[key] = (build_faiss(gallery, settings), time.perf_counter() - start)
        index, build_s = built[key]
        if settings.kind == "ivf":
            faiss.extract_index_ivf(index).nprobe = settings.nprobe
        elif settings.kind == "hnsw":
            index.hnsw.efSearch = settings.ef_search
        if exact_top is None:
            exact_top = np.concatenate([search_faiss(index, q[None], args.k)[1] for q in queries])
        knob = {
            "exact": "",
            "ivf": f"nlist={ivf_lists(settings, args.count)} nprobe={settings.nprobe}",
            "hnsw": f"M={settings.hnsw_m} efSearch={settings.ef_search}",
        }[settings.kind]
        row = {"kind": settings.kind, "setting": knob, "build_s": round(build_s, 1)}
        row |= measure(index, queries, exact_top, planted, args.k)
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"\ngallery {args.count:,} x {args.dim}, {args.queries} queries, {args.threads} FAISS thread(s)")
    print(f"| kind | setting | build s | ms / query | recall@{args.k} | planted tile first |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['kind']} | {r['setting']} | {r['build_s']} | {r['latency_ms']} | "
            f"{r[f'recall@{args.k}']} | {r['planted_first']} |"
        )


if __name__ == "__main__":
    main()
