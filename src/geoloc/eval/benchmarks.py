"""One entry point per evaluation protocol: which data to read and how to score it.

- `manifest`: any data set in the generic manifest format, scored over the full gallery;
- `geotext1652`: the GeoText-1652 joint pool with building-level hits (`protocol` "benchmark"),
  or exactly as the official code scores it ("official-quirks": a gallery image per record,
  off-by-one labels), or as the paper's own script did ("paper": a gallery row per caption);
- `cvgtext`: per-query galleries of the 100 geographically nearest tiles, R@K and L@50/100/150,
  split panorama / single-view (or the full city gallery, labelled as such).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from geoloc.choices import GeoTextProtocol, check_choice
from geoloc.config import DataConfig
from geoloc.data.manifest import Dataset
from geoloc.data.readers import BenchmarkData, config_key, read_benchmark
from geoloc.errors import ConfigError
from geoloc.eval.evaluate import Embeddings, format_table, score
from geoloc.eval.protocols import cvgtext_metrics, format_cvgtext_table, geotext_metrics


@dataclass
class BenchmarkRequest(BenchmarkData):
    """The data to score (the benchmark's fields, as training reads them) and how to score it."""

    data: str = ""  # manifest: a manifest file or folder
    split: str | None = "test"  # None: every row
    protocol: GeoTextProtocol = "benchmark"  # geotext1652 only
    full_city: bool = False  # cvgtext: the whole city as every query's gallery


def request_for(data: DataConfig, split: str | None) -> BenchmarkRequest:
    """The request that reads `split` of the data a training config names, with its benchmark's
    reader and protocol (a sweep or a report scores a run on the data it trained on)."""
    shared = {f.name: getattr(data, f.name) for f in fields(BenchmarkData)}
    return BenchmarkRequest(**shared, data=data.train, split=split)


def load_benchmark(request: BenchmarkRequest, named: Callable[[str], str] = config_key) -> Dataset:
    """The records the request names. A missing or contradictory setting is named as `named`
    spells it: a config's key (a sweep, a report) or the command line's flag (`geoloc eval`)."""
    check_choice(request.protocol, GeoTextProtocol, named("protocol"))
    if request.protocol != "benchmark" and request.benchmark != "geotext1652":
        raise ConfigError(
            f"{named('protocol')} {request.protocol} is a GeoText-1652 protocol "
            f"({named('benchmark')} geotext1652)"
        )
    return read_benchmark(request, request.data, request.split, named=named)


def score_benchmark(request: BenchmarkRequest, embeddings: Embeddings, dataset: Dataset) -> dict[str, Any]:
    if request.benchmark == "geotext1652":
        groups = dataset.groups
        _, image_index = dataset.texts_with_image_index()
        record_images = text_records = None
        if request.protocol == "official-quirks":  # the official gallery: one image per record
            from geoloc.data.geotext import geotext_record_layout

            record_images, text_records = geotext_record_layout(dataset)
        return geotext_metrics(
            embeddings.text_emb,
            embeddings.image_emb,
            [groups[i] for i in image_index],
            groups,
            protocol=request.protocol,
            text_image_index=image_index,
            record_images=record_images,
            text_records=text_records,
        )
    if request.benchmark == "cvgtext":
        return cvgtext_metrics(
            embeddings.text_emb,
            embeddings.image_emb,
            embeddings.text_image_keys,
            embeddings.image_keys,
            full_city=request.full_city,
        )
    return score(embeddings, dataset)


def format_metrics(metrics: dict[str, Any], title: str | None = None) -> str:
    if "subsets" in metrics:
        return format_cvgtext_table(metrics, title=title)
    return format_table(metrics, title=title)
