"""Evaluation results as flat keys with one named primary metric.

Every protocol returns its own layout (two directions of R@K for a full gallery or GeoText-1652,
query subsets for CVG-Text), which `metrics.json` keeps as it is documented. Beside it, each
result carries the same numbers under flat keys, e.g. `text_to_image_R@1`, `image_to_text_R@5`,
`panorama_L@50`, and `primary_metric`, the name of the key that model selection, sweeps and
reports rank by (as sentence-transformers' evaluators name theirs). It is text -> image R@1 for
every protocol: describing a place and finding its tile is the task.
"""

from __future__ import annotations

from typing import Any

from geoloc.choices import RetrievalDirection, options

PRIMARY_METRIC = "text_to_image_R@1"


def with_flat_keys(metrics: dict[str, Any]) -> dict[str, Any]:
    """`metrics` with its nested numbers also under flat keys, and `primary_metric` naming one."""
    flat: dict[str, Any] = {}
    for direction in options(RetrievalDirection):
        for name, value in (metrics.get(direction) or {}).items():
            flat[f"{direction}_{name}"] = value
    for subset, values in (metrics.get("subsets") or {}).items():
        for name, value in values.items():
            flat[f"{subset}_{name}"] = value
    if "subsets" in metrics:  # CVG-Text scores text -> image only; "all" is every query
        for name, value in metrics["subsets"]["all"].items():
            if name.startswith("R@"):
                flat[f"text_to_image_{name}"] = value
    return {**metrics, **flat, "primary_metric": PRIMARY_METRIC}


def primary_value(metrics: dict[str, Any]) -> float:
    """The value of a result's primary metric (also for results written before it was named)."""
    name = metrics.get("primary_metric", PRIMARY_METRIC)
    if name in metrics:
        return float(metrics[name])
    if "text_to_image" in metrics:  # an older metrics.json / best.json: nested keys only
        return float(metrics["text_to_image"]["R@1"])
    if "subsets" in metrics:
        return float(metrics["subsets"]["all"]["R@1"])
    raise KeyError(f"no primary metric ({name}) in these results")
