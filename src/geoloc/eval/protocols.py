"""The benchmarks' own scoring protocols: GeoText-1652 and CVG-Text (see docs/benchmarks.md).

GeoText-1652 (`geotext_metrics`): one joint pool of every test image and every test caption; a hit
is any item of the query's building; R@1/5/10 both ways and their mean, as in `metrics.py`
(exact, chunked, ties in the query's favour). Two more protocols reproduce other scorers exactly:
the official code's (`official-quirks`: a gallery image per record, off-by-one labels) and the
paper's own (`paper`: a gallery row per caption).

CVG-Text (`cvgtext_metrics`), text -> image only: each text's gallery is the `nearest` (100) test
images closest to its true location (the true image always included), ranked by similarity;
R@K, and localisation accuracy L@50/100/150 from the distance between the true location and the
top-1 image's location; reported overall and for panorama / single-view queries.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np

from geoloc.choices import GeoTextProtocol, check_choice
from geoloc.data.cvgtext import is_panorama, parse_coordinates
from geoloc.distance import haversine_km
from geoloc.eval.metrics import embedding_pair, retrieval_metrics
from geoloc.eval.results import with_flat_keys

CVGTEXT_KS = (1, 5, 10)
CVGTEXT_RADII_M = (50, 100, 150)
CVGTEXT_FIELDS = ("R@1", "R@5", "R@10", "L@50", "L@100", "L@150", "mean_error_km", "n")

# A block of queries holds at most this many (query, gallery image) elements: scores (float32),
# distances (float64) and the sort order (int64) cost ~20 bytes each, so ~80 MB a block.
_MAX_CHUNK_ELEMENTS = 4 * 1024 * 1024


# --- GeoText-1652 ----------------------------------------------------------------------------------


def official_building_labels(image_groups: Sequence[Hashable]) -> list[int]:
    """The building labels the official GeoText-1652 code gives images taken in record order.

    Its loop reads each image's building and assigns the CURRENT counter before it notices that
    the building changed; only then does it bump the counter. So the counter counts runs of equal
    consecutive buildings, and the first image of every run after the first gets the previous
    run's label. A building whose images are not contiguous gets a new label for each run.
    Example: buildings A A B B A -> labels 0 0 0 1 1.
    """
    labels: list[int] = []
    label = 0
    current: Hashable | None = None
    for i, group in enumerate(image_groups):
        if i == 0:
            current = group
        labels.append(label)
        if group != current:
            current = group
            label += 1
    return labels


_GEOTEXT_LABELS = {
    "benchmark": "geotext1652",
    "official-quirks": "geotext1652-official-quirks",
    "paper": "geotext1652-paper",
}


def geotext_metrics(
    text_emb: np.ndarray,
    image_emb: np.ndarray,
    text_groups: Sequence[Hashable],
    image_groups: Sequence[Hashable],
    protocol: GeoTextProtocol = "benchmark",
    text_image_index: Sequence[int] | None = None,
    record_images: Sequence[int] | None = None,
    text_records: Sequence[int] | None = None,
    chunk_size: int = 1024,
) -> dict[str, Any]:
    """GeoText-1652 retrieval in both directions over the joint pool, groups being buildings.

    Returns ``{"protocol": ..., "text_to_image": {"R@1":..,"R@5":..,"R@10":..},
    "image_to_text": {...}, "mean": .., "n_texts": .., "n_images": ..}`` (percentages), and the
    same numbers under flat keys with `primary_metric` (results.py). Every
    protocol ranks exactly, ties in the query's favour; they differ in the gallery and labels:

    - "benchmark" (protocol "geotext1652"): one row per image, a hit is any item of the query's
      building;
    - "official-quirks" ("geotext1652-official-quirks"): the official `itm_eval` exactly. Its
      gallery holds one image per annotation RECORD in file order, so an image that several
      records share is there several times; the records get `official_building_labels` (off by one
      at each building change) and each text its record's label. `record_images` is the image of
      each record and `text_records` the record of each text (`geotext_record_layout` reads them
      from the file); without them each image is one record, which is the same when no image id
      repeats. `text_image_index` (each text's image) is required either way;
    - "paper" ("geotext1652-paper"): the paper's own eva_compute.py: one gallery row per CAPTION
      (each text's image, so an image with three captions is there three times), buildings as
      labels. Its text -> image R@1 equals the benchmark's; R@5 / R@10 do not, since copies of one
      wrong image fill several of the first K places. Image -> text queries are the gallery rows,
      so each image counts once per caption. Needs `text_image_index`.

    Each text's group must equal its image's group.
    """
    check_choice(protocol, GeoTextProtocol, "GeoText-1652 protocol")
    if len(text_groups) != len(text_emb):
        raise ValueError(f"{len(text_groups)} text groups for {len(text_emb)} text embeddings")
    if len(image_groups) != len(image_emb):
        raise ValueError(f"{len(image_groups)} image groups for {len(image_emb)} image embeddings")
    if protocol == "benchmark":
        metrics = retrieval_metrics(text_emb, image_emb, text_groups, image_groups, chunk_size=chunk_size)
    else:
        index = _text_images(protocol, text_image_index, text_groups, image_groups)
        if protocol == "paper":
            # Row t of the gallery is text t's image: duplicated images, true building labels.
            rows = np.asarray(image_emb)[index]
            metrics = retrieval_metrics(text_emb, rows, text_groups, list(text_groups), chunk_size=chunk_size)
        else:
            metrics = _official_quirks_metrics(
                text_emb, image_emb, image_groups, index, record_images, text_records, chunk_size
            )
    return with_flat_keys({"protocol": _GEOTEXT_LABELS[protocol], **metrics})


def _text_images(
    protocol: str,
    text_image_index: Sequence[int] | None,
    text_groups: Sequence[Hashable],
    image_groups: Sequence[Hashable],
) -> np.ndarray:
    """Each text's image, as an index array, checked: in range, and of the text's own building.

    The protocols that build their gallery from the texts' images need it; a text whose image is
    of another building would be scored against the wrong labels, so it is refused.
    """
    if text_image_index is None:
        raise ValueError(f"protocol {protocol} needs text_image_index: each text's labels follow its image's")
    index = _index_array(text_image_index, len(text_groups), len(image_groups), "text_image_index", "images")
    for t, i in enumerate(index):
        if text_groups[t] != image_groups[i]:
            raise ValueError(
                f"text {t} has group {text_groups[t]!r} but its image {int(i)} has group {image_groups[i]!r}"
            )
    return index


def _official_quirks_metrics(
    text_emb: np.ndarray,
    image_emb: np.ndarray,
    image_groups: Sequence[Hashable],
    index: np.ndarray,
    record_images: Sequence[int] | None,
    text_records: Sequence[int] | None,
    chunk_size: int,
) -> dict[str, Any]:
    """The official `itm_eval`'s numbers: a gallery row per record, with its off-by-one labels."""
    records, of_text = _official_records(index, len(image_groups), record_images, text_records)
    record_labels = official_building_labels([image_groups[i] for i in records])
    text_labels = [record_labels[r] for r in of_text]
    gallery = np.asarray(image_emb)[records]
    return retrieval_metrics(text_emb, gallery, text_labels, record_labels, chunk_size=chunk_size)


def _official_records(
    index: np.ndarray, n_images: int, record_images: Sequence[int] | None, text_records: Sequence[int] | None
) -> tuple[np.ndarray, np.ndarray]:
    """(each record's image, each text's record), checked against each text's own image `index`.

    Without the file's record layout every image is one record and each text's record is its
    image, which is what the official code does when no image id repeats.
    """
    if (record_images is None) != (text_records is None):
        raise ValueError("record_images and text_records go together: give both or neither")
    if record_images is None or text_records is None:  # neither (both or neither, checked above)
        return np.arange(n_images), index
    records = np.asarray(record_images, dtype=np.int64)
    if records.ndim != 1 or (records.size and (records.min() < 0 or records.max() >= n_images)):
        raise ValueError("record_images holds an index outside the images")
    of_text = _index_array(text_records, len(index), len(records), "text_records", "records")
    if not np.array_equal(records[of_text], index):
        bad = int(np.flatnonzero(records[of_text] != index)[0])
        raise ValueError(
            f"text {bad}'s record holds image {int(records[of_text[bad]])}, "
            f"not its own image {int(index[bad])}"
        )
    return records, of_text


def _index_array(values: Sequence[int], expected: int, bound: int, name: str, what: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.int64)
    if array.shape != (expected,):
        raise ValueError(f"{name} has {array.size} entries for {expected} texts")
    if array.size and (array.min() < 0 or array.max() >= bound):
        raise ValueError(f"{name} holds an index outside the {what}")
    return array


# --- CVG-Text --------------------------------------------------------------------------------------


def cvgtext_metrics(
    text_emb: np.ndarray,
    image_emb: np.ndarray,
    text_keys: Sequence[str],
    image_keys: Sequence[str],
    nearest: int = 100,
    full_city: bool = False,
    chunk_size: int = 256,
) -> dict[str, Any]:
    """CVG-Text text -> image scoring, overall and for panorama / single-view queries.

    Text t's true image is the image whose key equals `text_keys[t]`; coordinates come from the
    keys (file names). For each text:

    1. its gallery is the `nearest` images closest to its true location by haversine distance
       (all images if there are fewer), the true image always included; ties in distance go to
       the image listed first, as in the official code's stable sort. With `full_city`, the
       gallery is every image (protocol "cvgtext-full-city"; no location prior), in the same
       order;
    2. rank = number of gallery images scoring strictly higher than the true one (ties in the
       query's favour, as in `metrics.py`); R@K = share of texts with rank < K, in percent;
    3. error = 0 if rank is 0, else the distance from the true location to the top-1 image (the
       highest score; among equal scores the gallery's first, i.e. the nearest); L@X = share of
       texts with error <= X metres (compared in km, as the official code does), in percent;
       mean_error_km = the mean error in km.

    Returns ``{"protocol": "cvgtext" | "cvgtext-full-city", "subsets": {"all": {...},
    "panorama": {...}, "single_view": {...}}}``, each subset with exactly the keys
    R@1 R@5 R@10 L@50 L@100 L@150 mean_error_km n; an empty subset has n = 0 and None elsewhere.
    Flat keys repeat them (`all_R@1`, `panorama_L@50`, ...; `text_to_image_R@K` is the "all"
    subset's R@K) beside `primary_metric` (results.py).
    Queries go a block at a time: no full text x image matrix is ever held.
    """
    if nearest < 1:
        raise ValueError(f"nearest must be >= 1, got {nearest}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    t_emb, i_emb = embedding_pair(text_emb, image_emb, text_keys, image_keys, ("text", "image"), "keys")

    position: dict[str, int] = {}
    for i, key in enumerate(image_keys):
        if key in position:
            raise ValueError(f"image key {key!r} is listed twice (images {position[key]} and {i})")
        position[key] = i
    missing = [key for key in text_keys if key not in position]
    if missing:
        raise ValueError(f"{len(missing)} text key(s) have no image, first {missing[0]!r}")
    true_index = np.fromiter((position[k] for k in text_keys), dtype=np.int64, count=len(text_keys))
    coords = np.array([parse_coordinates(k) for k in image_keys], dtype=np.float64).reshape(-1, 2)
    image_lat, image_lon = coords[:, 0], coords[:, 1]

    n_texts, n_images = len(t_emb), len(i_emb)
    ranks = np.empty(n_texts, dtype=np.int64)
    errors_km = np.empty(n_texts, dtype=np.float64)
    gallery_size = n_images if full_city else min(nearest, n_images)
    rows_per_chunk = max(1, min(chunk_size, _MAX_CHUNK_ELEMENTS // max(n_images, 1)))

    for start in range(0, n_texts, rows_per_chunk):
        end = min(n_texts, start + rows_per_chunk)
        rows = np.arange(end - start)
        true = true_index[start:end]
        scores = t_emb[start:end] @ i_emb.T  # float32, as in metrics.py
        true_scores = scores[rows, true]
        q_lat, q_lon = image_lat[true], image_lon[true]
        distances = haversine_km(q_lat[:, None], q_lon[:, None], image_lat[None, :], image_lon[None, :])
        distances[rows, true] = -1.0  # the true image is always in the gallery, and first
        # Nearest first; among equal distances the image listed first (the official stable sort).
        gallery = np.argsort(distances, axis=1, kind="stable")[:, :gallery_size]
        gallery_scores = np.take_along_axis(scores, gallery, axis=1)
        # Only wrong items can score strictly higher than the true one.
        ranks[start:end] = (gallery_scores > true_scores[:, None]).sum(axis=1)
        top1 = gallery[rows, np.argmax(gallery_scores, axis=1)]
        err = haversine_km(q_lat, q_lon, image_lat[top1], image_lon[top1])
        errors_km[start:end] = np.where(ranks[start:end] == 0, 0.0, err)

    panorama = np.fromiter((is_panorama(k) for k in text_keys), dtype=bool, count=n_texts)
    subsets = {
        "all": np.ones(n_texts, dtype=bool),
        "panorama": panorama,
        "single_view": ~panorama,
    }
    summaries = {name: _cvgtext_summary(ranks[mask], errors_km[mask]) for name, mask in subsets.items()}
    return with_flat_keys({"protocol": "cvgtext-full-city" if full_city else "cvgtext", "subsets": summaries})


def _cvgtext_summary(ranks: np.ndarray, errors_km: np.ndarray) -> dict[str, Any]:
    n = int(ranks.size)
    if n == 0:
        return {**dict.fromkeys(CVGTEXT_FIELDS[:-1]), "n": 0}
    out: dict[str, Any] = {}
    for k in CVGTEXT_KS:
        out[f"R@{k}"] = float(100.0 * np.count_nonzero(ranks < k) / n)
    for radius in CVGTEXT_RADII_M:
        out[f"L@{radius}"] = float(100.0 * np.count_nonzero(errors_km <= radius / 1000) / n)
    out["mean_error_km"] = float(errors_km.mean())
    out["n"] = n
    return out


def format_cvgtext_table(metrics: dict[str, Any], title: str | None = None) -> str:
    """The CVG-Text metrics as a Markdown table, one row per query subset, as in the paper."""
    columns = CVGTEXT_FIELDS
    header = (
        "| queries | " + " | ".join(c if c != "mean_error_km" else "mean error (km)" for c in columns) + " |"
    )
    rule = "|" + "---|" * (len(columns) + 1)
    lines = [title] if title else []
    lines += [f"protocol: {metrics['protocol']}", header, rule]
    for name, subset in metrics["subsets"].items():
        cells = [_cell(c, subset.get(c)) for c in columns]
        lines.append(f"| {name.replace('_', '-')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(column: str, value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if column == "n":
        return str(int(value))
    if column == "mean_error_km":
        return f"{value:.3f}"
    return f"{value:.2f}"
