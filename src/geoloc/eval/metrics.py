"""Exact retrieval recall (R@K) for grouped text<->image retrieval, computed in chunks.

A query is answered correctly by any gallery item of its own group. Its rank is the number of
WRONG gallery items that score strictly higher than its best-scoring correct item, so rank 0
is a hit at R@1 and a wrong item that merely ties the best correct item does not push it down.
Similarity is the dot product (cosine for L2-normalised embeddings), computed in float32.

The full similarity matrix can be far too large to hold (166k x 55k floats is ~36 GB), so
queries are scored a block of rows at a time and only one rank per query is kept.
`retrieval_metrics` gets both directions from one pass over the blocks (`joint_ranks`), so the
matrix product is computed once; `benchmarks/eval_scale.py` measures it at GeoText-1652 size.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np
import torch

# One block of scores costs ~5 bytes per element (float32 scores plus a bool comparison), so
# this caps a block at ~80 MB whatever the gallery size.
_MAX_CHUNK_ELEMENTS = 16 * 1024 * 1024
# The (query, correct item) index pairs of a block cost ~40 bytes each; this only binds when
# groups are very large (e.g. one group holding most of the gallery).
_MAX_CHUNK_PAIRS = 4 * 1024 * 1024

Groups = Sequence[Hashable] | np.ndarray


def _group_ids(query_groups: Groups, gallery_groups: Groups) -> tuple[np.ndarray, np.ndarray, int]:
    # A dict rather than np.unique: np.unique on a mixed list would coerce 1 and "1" to the same
    # string, and it cannot handle arbitrary hashables such as tuples.
    table: dict[Hashable, int] = {}
    q = np.fromiter((table.setdefault(g, len(table)) for g in query_groups), dtype=np.int64)
    g = np.fromiter((table.setdefault(x, len(table)) for x in gallery_groups), dtype=np.int64)
    return q, g, len(table)


def _correct_counts(
    q_ids: np.ndarray, g_ids: np.ndarray, n_groups: int, query_groups: Groups, nouns: str, needs: str
) -> tuple[np.ndarray, np.ndarray]:
    """(gallery items per group, correct gallery items per query); a query with none is refused,
    since its rank would be undefined. `nouns` ("query/queries") and `needs` word the message."""
    counts = np.bincount(g_ids, minlength=n_groups)
    n_correct = counts[q_ids]
    missing = np.flatnonzero(n_correct == 0)
    if missing.size:
        first = int(missing[0])
        noun, plural = nouns.split("/")
        raise ValueError(
            f"{missing.size} of {len(q_ids)} {plural} have no {needs} "
            f"(first: {noun} {first}, group {query_groups[first]!r})"
        )
    return counts, n_correct


def as_embeddings(x: np.ndarray, name: str) -> np.ndarray:
    arr = np.ascontiguousarray(x, dtype=np.float32)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (n, dim), got shape {arr.shape}")
    if not np.isfinite(arr).all():
        # NaN compares false with everything, which would silently turn misses into hits.
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def embedding_pair(
    query_emb: np.ndarray,
    gallery_emb: np.ndarray,
    query_labels: Groups,
    gallery_labels: Groups,
    sides: tuple[str, str],
    labels: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Both sides checked (`as_embeddings`), of one dimension, with one label per row."""
    q_emb = as_embeddings(query_emb, f"{sides[0]}_emb")
    g_emb = as_embeddings(gallery_emb, f"{sides[1]}_emb")
    if q_emb.shape[1] != g_emb.shape[1]:
        raise ValueError(
            f"{sides[0]} and {sides[1]} embeddings differ in dimension: {q_emb.shape[1]} vs {g_emb.shape[1]}"
        )
    for side, emb, row_labels in ((sides[0], q_emb, query_labels), (sides[1], g_emb, gallery_labels)):
        if len(row_labels) != len(emb):
            raise ValueError(f"{len(row_labels)} {side} {labels} for {len(emb)} {side} embeddings")
    return q_emb, g_emb


def recall_at_k(ranks: np.ndarray, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Percentage of queries whose rank is below K, as {"R@K": percent} for each K in `ks`."""
    ranks = np.asarray(ranks)
    if ranks.ndim != 1 or ranks.size == 0:
        raise ValueError(f"ranks must be a non-empty 1-D array, got shape {ranks.shape}")
    out: dict[str, float] = {}
    for k in ks:
        if int(k) != k or k < 1:
            raise ValueError(f"K must be a positive integer, got {k!r}")
        out[f"R@{int(k)}"] = float(100.0 * np.count_nonzero(ranks < k) / ranks.size)
    return out


def joint_ranks(
    text_emb: np.ndarray,
    image_emb: np.ndarray,
    text_groups: Groups,
    image_groups: Groups,
    max_rank: int = 10,
    chunk_size: int = 1024,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Both directions' ranks from ONE pass over the text x image scores.

    Returns (text ranks, image ranks, image is a query). A rank is the number of wrong items
    scoring strictly higher than the query's best correct one (ties in the query's favour). Text
    ranks are exact; image ranks are exact up to `max_rank` and capped at it
    (a rank >= max_rank reads max_rank), which is all R@K for K <= max_rank needs; they are only
    meaningful where "image is a query" (its group has at least one text).

    Why one pass: an image's rank needs its best correct text score before wrong texts can be
    counted, and reading it from a separate computation would round differently from the score
    blocks and break exact ties. So each block of scores is read twice while it is in memory: its
    rows give the texts' ranks, and its columns update, per image, the best correct score and the
    `max_rank` highest wrong scores; at the end an image's rank is how many of those beat its best
    correct score. The matrix product, the part that cannot be avoided, is done once.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if max_rank < 1:
        raise ValueError(f"max_rank must be >= 1, got {max_rank}")
    t_emb, i_emb = embedding_pair(text_emb, image_emb, text_groups, image_groups, ("text", "image"), "groups")
    n_t, n_i = len(t_emb), len(i_emb)
    t_ids, i_ids, n_groups = _group_ids(text_groups, image_groups)
    counts, n_correct = _correct_counts(
        t_ids, i_ids, n_groups, text_groups, "text/texts", "image of their group"
    )
    image_is_query = np.bincount(t_ids, minlength=n_groups)[i_ids] > 0
    if n_t == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(n_i, dtype=np.int64), image_is_query

    by_group = np.argsort(i_ids, kind="stable")
    group_start = np.concatenate(([0], np.cumsum(counts)[:-1]))
    pairs_cum = np.cumsum(n_correct)
    rows_per_chunk = max(1, min(chunk_size, _MAX_CHUNK_ELEMENTS // max(n_i, 1)))

    t_t, i_t = torch.from_numpy(t_emb), torch.from_numpy(i_emb)
    # One score buffer reused by every block: no fresh allocation (and page faults) per block.
    buffer = torch.empty((min(rows_per_chunk, n_t), n_i), dtype=torch.float32)
    text_ranks = np.empty(n_t, dtype=np.int64)
    best_image = torch.full((n_i,), -torch.inf)
    top_wrong = torch.full((max_rank, n_i), -torch.inf)

    start = 0
    while start < n_t:
        end = min(n_t, start + rows_per_chunk)
        done_pairs = pairs_cum[start - 1] if start else 0
        end = min(end, int(np.searchsorted(pairs_cum, done_pairs + _MAX_CHUNK_PAIRS, side="right")))
        end = max(end, start + 1)
        scores = torch.matmul(t_t[start:end], i_t.T, out=buffer[: end - start])
        block = scores.numpy()

        sizes = n_correct[start:end]
        seg_start = np.cumsum(sizes) - sizes
        within = np.arange(int(sizes.sum())) - np.repeat(seg_start, sizes)
        cols = by_group[np.repeat(group_start[t_ids[start:end]], sizes) + within]
        rows = np.repeat(np.arange(end - start), sizes)
        correct_scores = block[rows, cols]

        # Texts: wrong images strictly above the best correct one (all above it are wrong).
        best_text = np.maximum.reduceat(correct_scores, seg_start)
        text_ranks[start:end] = np.count_nonzero(block > best_text[:, None], axis=1)

        # Images: best correct score so far, then the highest wrong scores so far.
        cols_t = torch.from_numpy(cols)
        best_image.scatter_reduce_(0, cols_t, torch.from_numpy(correct_scores), reduce="amax")
        block[rows, cols] = -np.inf
        # Only columns where some wrong score beats the current max_rank-th highest can change;
        # after the first blocks these are few, so the top-k runs on a small slice.
        kth_highest = top_wrong.min(dim=0).values.numpy()
        changed = np.flatnonzero((block > kth_highest).any(axis=0))
        if changed.size:
            changed_t = torch.from_numpy(changed)
            candidates = torch.cat([top_wrong[:, changed_t], scores[:, changed_t]])
            top_wrong[:, changed_t] = torch.topk(candidates, max_rank, dim=0, sorted=False).values
        start = end

    image_ranks = (top_wrong > best_image).sum(dim=0).numpy().astype(np.int64)
    return text_ranks, image_ranks, image_is_query


def retrieval_metrics(
    text_emb: np.ndarray,
    image_emb: np.ndarray,
    text_groups: Groups,
    image_groups: Groups,
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int = 1024,
) -> dict:
    """Recall in both directions, as percentages, from one pass over the scores (`joint_ranks`).

    Returns ``{"text_to_image": {"R@1": .., ...}, "image_to_text": {...}, "mean": ..,
    "n_texts": N_t, "n_images": N_i}`` where "mean" averages all recalls of both directions.

    Every text's group must have at least one image (else ValueError). An image whose group has
    no text is a valid distractor for text-to-image, but it has no correct answer as a query,
    so it is skipped for image-to-text; "n_images" still counts all images.
    """
    for k in ks:
        if int(k) != k or k < 1:
            raise ValueError(f"K must be a positive integer, got {k!r}")
    text_ranks, image_ranks, image_is_query = joint_ranks(
        text_emb, image_emb, text_groups, image_groups, max_rank=int(max(ks)), chunk_size=chunk_size
    )
    t2i = recall_at_k(text_ranks, ks)
    i2t = recall_at_k(image_ranks[image_is_query], ks)
    recalls = list(t2i.values()) + list(i2t.values())
    return {
        "text_to_image": t2i,
        "image_to_text": i2t,
        "mean": float(np.mean(recalls)),
        "n_texts": len(text_emb),
        "n_images": len(image_emb),
    }
