"""Exact GeoText-1652-sized evaluation on a small machine: time and memory against the bare matmul.

    .venv/bin/python benchmarks/eval_scale.py            # the full test shape (about 4 min on 2 quiet cores)
    .venv/bin/python benchmarks/eval_scale.py --scale 0.1   # a tenth of the images, for a quick look

Random L2-normalised embeddings in the shape of the full GeoText-1652 test set (55,227 images in
951 buildings, 3 texts per image, dimension 1024) are scored exactly in both directions by
`geoloc.eval.metrics.retrieval_metrics`, the code `geoloc eval` runs. In the same process the
script times the bare matrix product that any exact evaluation must compute (every text against
every image, once, in the same float32 blocks, with nothing else done), and reports:

- `scoring_s`: wall time of the whole scoring (both directions, all recalls);
- `matmul_s`: wall time of the bare product, and `ratio` = scoring_s / matmul_s (target <= 2);
- `peak_rss_gb`: the process's peak resident memory (VmHWM), embeddings included
  (target <= 4 GB).

Images are given to buildings at random (every building has at least one), so the groups are
not contiguous, as in the real files.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch

from geoloc.eval import metrics

N_IMAGES = 55_227
N_BUILDINGS = 951
TEXTS_PER_IMAGE = 3
DIM = 1024


def peak_rss_gb() -> float:
    from throughput import peak_rss_bytes

    return peak_rss_bytes() / 1e9


def random_unit_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    """n random unit vectors, made a block at a time so no float64 copy of the whole set exists."""
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 8192):
        block = rng.standard_normal((min(8192, n - start), dim), dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[start : start + len(block)] = block
    return out


def bare_matmul_seconds(texts: np.ndarray, images: np.ndarray, chunk_size: int) -> float:
    """Time of texts @ images.T in the scorer's own row blocks, into one reused buffer."""
    rows = max(1, min(chunk_size, metrics._MAX_CHUNK_ELEMENTS // len(images)))
    t, i = torch.from_numpy(texts), torch.from_numpy(images)
    buffer = torch.empty((rows, len(images)), dtype=torch.float32)
    started = time.perf_counter()
    for start in range(0, len(texts), rows):
        end = min(len(texts), start + rows)
        torch.matmul(t[start:end], i.T, out=buffer[: end - start])
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="share of the 55,227 images (default 1)")
    parser.add_argument("--dim", type=int, default=DIM)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chunk-size", type=int, default=1024, help="rows per block (capped by memory)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON only")
    args = parser.parse_args(argv)

    n_images = max(N_BUILDINGS, round(N_IMAGES * args.scale))
    n_texts = n_images * TEXTS_PER_IMAGE
    rng = np.random.default_rng(args.seed)
    buildings = np.concatenate([np.arange(N_BUILDINGS), rng.integers(0, N_BUILDINGS, n_images - N_BUILDINGS)])
    rng.shuffle(buildings)
    image_groups = buildings.tolist()
    text_groups = np.repeat(buildings, TEXTS_PER_IMAGE).tolist()
    images = random_unit_rows(rng, n_images, args.dim)
    texts = random_unit_rows(rng, n_texts, args.dim)
    rss_data = peak_rss_gb()

    started = time.perf_counter()
    result = metrics.retrieval_metrics(texts, images, text_groups, image_groups, chunk_size=args.chunk_size)
    scoring_s = time.perf_counter() - started
    matmul_s = bare_matmul_seconds(texts, images, args.chunk_size)

    figures = {
        "n_images": n_images,
        "n_texts": n_texts,
        "n_buildings": N_BUILDINGS,
        "dim": args.dim,
        "threads": torch.get_num_threads(),
        "embeddings_gb": (images.nbytes + texts.nbytes) / 1e9,
        "rss_after_data_gb": round(rss_data, 3),
        "scoring_s": round(scoring_s, 1),
        "matmul_s": round(matmul_s, 1),
        "ratio": round(scoring_s / matmul_s, 3),
        "peak_rss_gb": round(peak_rss_gb(), 3),
        "mean_recall": round(result["mean"], 4),
    }
    if args.json:
        print(json.dumps(figures))
        return 0
    print(f"{n_texts:,} texts x {n_images:,} images ({N_BUILDINGS} buildings), dim {args.dim}, exact")
    print(f"  scoring, both directions: {scoring_s:8.1f} s")
    print(f"  bare matrix product:      {matmul_s:8.1f} s   ratio {scoring_s / matmul_s:.2f} (target <= 2)")
    print(
        f"  peak RSS:                 {peak_rss_gb():8.2f} GB  (target <= 4; embeddings alone "
        f"{figures['embeddings_gb']:.2f} GB)"
    )
    print(f"  mean recall (random embeddings, so near chance): {result['mean']:.3f} %")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
