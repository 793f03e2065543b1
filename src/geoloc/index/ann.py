"""FAISS structures for a gallery of unit vectors, all by inner product, and searching them.

Embeddings are L2-normalised, so inner product is cosine similarity.

| kind | bytes per tile in RAM (d dimensions) | |
|---|---|---|
| `exact` | 4 d | scans every vector; right up to a few hundred thousand tiles |
| `ivf` | 4 d | scans the `nprobe` nearest of `nlist` clusters |
| `hnsw` | 4 d + links | walks a navigable small-world graph |
| `sq8` | d | every vector as 8-bit codes, scanned; then re-scored |
| `ivf-pq` | `pq_m` (+ an 8-byte id) | clusters of product-quantised codes; then re-scored |

The compressed kinds (`sq8`, `ivf-pq`) are trained on a sample of the gallery. Their top
`rescore` candidates are re-scored with the exact float32 vectors, which stay on disk
(memory-mapped), so recall stays near exact at the compressed size in RAM (see docs/search.md).

A search may be restricted to some rows (a region): FAISS's ID selector skips the others, and a
restriction to at most `EXACT_SUBSET` rows is scored exactly from the vectors instead.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import faiss
import numpy as np

from geoloc.errors import GeolocError
from geoloc.index.limits import KINDS  # one list: the parser offers it without importing faiss

COMPRESSED: tuple[str, ...] = ("ivf-pq", "sq8")
# The default ivf-pq code: at most 48 bytes, so that a tile costs at most 64 B of RAM (the target
# at 10 M tiles): the code, the 8-byte id FAISS keeps beside it, and its share of the cluster
# centres (0.5 to 3 B a tile at 10 M). Measured (docs/search.md): 56.5 B a tile at 10 M; recall@10
# with 1,000 re-scored candidates 1.0 at 1 M for 64, 48 and 32 bytes alike, 0.9995 at 10 M.
DEFAULT_PQ_BYTES = 48
# FAISS trains an IVF cluster on at most 256 vectors (max_points_per_centroid); the default sample
# gives it that many, up to TRAIN_CAP vectors, which keeps the k-means to minutes on one core.
TRAIN_PER_LIST = 256
TRAIN_CAP = 2**19
EXACT_SUBSET = 50_000  # a restriction to at most this many rows is scored exactly, from the vectors
_ADD_CHUNK = 100_000  # vectors added at a time: a memory-mapped gallery is never read whole


@dataclass
class AnnSettings:
    """How the gallery is indexed; saved in the index manifest."""

    kind: str = "exact"
    nlist: int = 0  # ivf, ivf-pq: number of clusters; 0 = about 4 * sqrt(gallery size)
    nprobe: int = 16  # ivf, ivf-pq: clusters scanned per query
    hnsw_m: int = 32  # hnsw: links per node
    ef_construction: int = 80  # hnsw: candidate list size while building
    ef_search: int = 64  # hnsw: candidate list size while searching
    pq_m: int = 0  # ivf-pq: bytes per code (sub-quantisers); 0 = the largest divisor of d up to 48
    train_size: int = 0  # ivf-pq, sq8: vectors sampled for training; 0 = default_train_size
    rescore: int = 1000  # ivf-pq, sq8: candidates re-scored with the exact vectors; 0 = none

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise GeolocError(f"unknown index kind {self.kind!r}; choose one of: {', '.join(KINDS)}")
        for name in ("nprobe", "hnsw_m", "ef_construction", "ef_search"):
            if getattr(self, name) < 1:
                raise GeolocError(f"{name} must be at least 1, not {getattr(self, name)}")
        for name in ("nlist", "pq_m", "train_size", "rescore"):
            if getattr(self, name) < 0:
                raise GeolocError(f"{name} must be 0 (automatic or none) or more, not {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AnnSettings:
        return cls(**data)


def ivf_lists(settings: AnnSettings, count: int) -> int:
    """The number of IVF clusters for `count` vectors: as asked, never more than the vectors."""
    wanted = settings.nlist or round(4 * math.sqrt(count))
    return max(1, min(wanted, count))


def pq_bytes(settings: AnnSettings, dim: int) -> int:
    """Sub-quantisers of an ivf-pq code: as asked (it must divide `dim`), else the largest divisor
    of `dim` up to DEFAULT_PQ_BYTES (48 for SmolVLM-256M's 576 dimensions, 32 for 1024)."""
    if settings.pq_m:
        if dim % settings.pq_m:
            raise GeolocError(f"pq_m {settings.pq_m} must divide the dimension {dim}")
        return settings.pq_m
    return max(m for m in range(1, min(dim, DEFAULT_PQ_BYTES) + 1) if dim % m == 0)


def default_train_size(lists: int) -> int:
    """Vectors to train `lists` IVF clusters (and the codes) on: as many as FAISS uses, 256 a list,
    up to TRAIN_CAP (or 40 a list, FAISS's minimum, if more), and at least 2^16 for the codes.

    40 a list cost recall on clustered galleries: at 10 M tiles in 2,048 lists, recall@10 was
    0.917 with 1,000 re-scored candidates, 0.9995 with 256 a list; on a 1 M gallery of the same
    structure (10,000 data clusters, 2,048 lists), 0.90 and 0.995 (docs/search.md).
    """
    return max(2**16, min(TRAIN_PER_LIST * lists, max(TRAIN_CAP, 40 * lists)))


def training_sample(vectors: np.ndarray, settings: AnnSettings, lists: int) -> np.ndarray:
    """A fixed random sample of the gallery to train on: enough for the clusters and the codes."""
    size = settings.train_size or default_train_size(lists)
    if size >= len(vectors):
        return np.ascontiguousarray(vectors, dtype=np.float32)
    rows = np.sort(np.random.default_rng(0).choice(len(vectors), size, replace=False))
    return np.ascontiguousarray(vectors[rows], dtype=np.float32)


def build_faiss(vectors: np.ndarray, settings: AnnSettings) -> faiss.Index:
    """A FAISS index over `vectors` (float32, n x d, unit rows; may be memory-mapped); row i is id i."""
    count, dim = vectors.shape
    if settings.kind == "exact":
        index: faiss.Index = faiss.IndexFlatIP(dim)
    elif settings.kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, settings.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = settings.ef_construction
    elif settings.kind == "sq8":
        index = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
        index.train(training_sample(vectors, settings, 1))
    else:
        lists = ivf_lists(settings, count)
        quantizer = faiss.IndexFlatIP(dim)
        if settings.kind == "ivf":
            index = faiss.IndexIVFFlat(quantizer, dim, lists, faiss.METRIC_INNER_PRODUCT)
            sample = np.ascontiguousarray(vectors, dtype=np.float32)
        else:
            sample = training_sample(vectors, settings, lists)
            bits = min(8, max(1, int(math.log2(len(sample))) - 1))  # 256 centroids need enough points
            index = faiss.IndexIVFPQ(
                quantizer, dim, lists, pq_bytes(settings, dim), bits, faiss.METRIC_INNER_PRODUCT
            )
            index.pq.cp.min_points_per_centroid = 1
        index.cp.min_points_per_centroid = 1  # small galleries: no warning, clusters may be thin
        index.train(sample)
    for start in range(0, count, _ADD_CHUNK):
        index.add(np.ascontiguousarray(vectors[start : start + _ADD_CHUNK], dtype=np.float32))
    apply_search_settings(index, settings)
    return index


def apply_search_settings(index: faiss.Index, settings: AnnSettings) -> None:
    """Set the query-time knobs (nprobe, efSearch), which FAISS does not save with the index."""
    if settings.kind in ("ivf", "ivf-pq"):
        faiss.extract_index_ivf(index).nprobe = settings.nprobe
    elif settings.kind == "hnsw":
        index.hnsw.efSearch = settings.ef_search


def _restricted(index: faiss.Index, bitmap: np.ndarray, count: int) -> tuple[Any, Any]:
    """(search parameters, selector) that let FAISS consider only the rows set in `bitmap`."""
    selector = faiss.IDSelectorBitmap(count, faiss.swig_ptr(bitmap))
    if isinstance(index, faiss.IndexHNSW):
        return faiss.SearchParametersHNSW(sel=selector, efSearch=index.hnsw.efSearch), selector
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        return faiss.SearchParametersIVF(sel=selector, nprobe=ivf.nprobe), selector
    return faiss.SearchParameters(sel=selector), selector


def search_faiss(
    index: faiss.Index, queries: np.ndarray, k: int, allowed: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(scores, rows), each queries x min(k, gallery size); best first; only `allowed` rows if given.

    IVF and HNSW may find fewer than k vectors; the missing places hold row -1.
    """
    k = min(k, index.ntotal)
    if k == 0:
        empty = np.zeros((len(queries), 0))
        return empty.astype(np.float32), empty.astype(np.int64)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if allowed is None:
        return index.search(queries, k)
    bitmap = np.packbits(allowed, bitorder="little")  # kept alive until the search is done
    params, _selector = _restricted(index, bitmap, len(allowed))
    return index.search(queries, k, params=params)


def exact_top_k(
    vectors: np.ndarray, queries: np.ndarray, candidates: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The top k of each query's `candidates` (rows; -1 ignored), scored with the exact vectors.

    `candidates` is one row list for all queries (1-d) or one per query (2-d). Rows are read in
    order, so a memory-mapped file is read forwards. Returns (scores, rows), padded with -1.
    """
    queries = np.asarray(queries, dtype=np.float32)
    per_query = (
        candidates if candidates.ndim == 2 else np.broadcast_to(candidates, (len(queries), len(candidates)))
    )
    scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    rows = np.full((len(queries), k), -1, dtype=np.int64)
    for i, (query, found) in enumerate(zip(queries, per_query, strict=True)):
        found = np.unique(found[found >= 0])  # sorted, so the file is read forwards
        exact = np.asarray(vectors[found], dtype=np.float32) @ query
        best = np.lexsort((found, -exact))[:k]  # by score, ties by row
        scores[i, : len(best)], rows[i, : len(best)] = exact[best], found[best]
    return scores, rows


def search(
    index: faiss.Index,
    vectors: np.ndarray,
    settings: AnnSettings,
    queries: np.ndarray,
    k: int,
    allowed: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(scores, rows) of the top k tiles per query, within the `allowed` rows if given (a mask).

    A restriction to at most EXACT_SUBSET rows is scored exactly from `vectors`; the compressed
    kinds re-score their top `rescore` candidates with `vectors`.
    """
    if allowed is not None and np.count_nonzero(allowed) <= EXACT_SUBSET:
        return exact_top_k(vectors, queries, np.flatnonzero(allowed), k)
    rescored = settings.kind in COMPRESSED and settings.rescore > 0
    scores, rows = search_faiss(index, queries, max(k, settings.rescore) if rescored else k, allowed)
    if rescored:
        return exact_top_k(vectors, queries, rows, min(k, rows.shape[1]))
    return scores, rows
