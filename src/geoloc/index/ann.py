"""FAISS structures for a gallery of unit vectors: exact, IVF or HNSW, all by inner product.

Embeddings are L2-normalised, so inner product is cosine similarity. `exact` scans every vector
and is right for galleries up to a few hundred thousand tiles; `ivf` (inverted lists: scan only
the `nprobe` nearest of `nlist` clusters) and `hnsw` (a navigable small-world graph) answer in
sub-linear time on millions of tiles, at the price of some recall (see docs/search.md).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import faiss
import numpy as np

from geoloc.errors import GeolocError

KINDS: tuple[str, ...] = ("exact", "ivf", "hnsw")


@dataclass
class AnnSettings:
    """How the gallery is indexed; saved in the index manifest."""

    kind: str = "exact"
    nlist: int = 0  # ivf: number of clusters; 0 = about 4 * sqrt(gallery size)
    nprobe: int = 16  # ivf: clusters scanned per query
    hnsw_m: int = 32  # hnsw: links per node
    ef_construction: int = 80  # hnsw: candidate list size while building
    ef_search: int = 64  # hnsw: candidate list size while searching

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise GeolocError(f"unknown index kind {self.kind!r}; choose one of: {', '.join(KINDS)}")
        for name in ("nprobe", "hnsw_m", "ef_construction", "ef_search"):
            if getattr(self, name) < 1:
                raise GeolocError(f"{name} must be at least 1, not {getattr(self, name)}")
        if self.nlist < 0:
            raise GeolocError(f"nlist must be 0 (automatic) or more, not {self.nlist}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AnnSettings:
        return cls(**data)


def ivf_lists(settings: AnnSettings, count: int) -> int:
    """The number of IVF clusters for `count` vectors: as asked, never more than the vectors."""
    wanted = settings.nlist or round(4 * math.sqrt(count))
    return max(1, min(wanted, count))


def build_faiss(vectors: np.ndarray, settings: AnnSettings) -> faiss.Index:
    """A FAISS index over `vectors` (float32, n x d, unit rows); row i answers as id i."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    dim = vectors.shape[1]
    if settings.kind == "exact":
        index: faiss.Index = faiss.IndexFlatIP(dim)
    elif settings.kind == "ivf":
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(
            quantizer, dim, ivf_lists(settings, len(vectors)), faiss.METRIC_INNER_PRODUCT
        )
        index.cp.min_points_per_centroid = 1  # small galleries: no warning, clusters may be thin
        index.train(vectors)
    else:
        index = faiss.IndexHNSWFlat(dim, settings.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = settings.ef_construction
    if len(vectors):
        index.add(vectors)
    apply_search_settings(index, settings)
    return index


def apply_search_settings(index: faiss.Index, settings: AnnSettings) -> None:
    """Set the query-time knobs (nprobe, efSearch), which FAISS does not save with the index."""
    if settings.kind == "ivf":
        faiss.extract_index_ivf(index).nprobe = settings.nprobe
    elif settings.kind == "hnsw":
        index.hnsw.efSearch = settings.ef_search


def search_faiss(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, rows), each queries x min(k, gallery size); best first.

    IVF and HNSW may find fewer than k vectors; the missing places hold row -1.
    """
    k = min(k, index.ntotal)
    if k == 0:
        empty = np.zeros((len(queries), 0))
        return empty.astype(np.float32), empty.astype(np.int64)
    scores, rows = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    return scores, rows
