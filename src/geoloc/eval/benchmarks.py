"""One entry point per evaluation protocol: which data to read and how to score it.

- `manifest`: any data set in the generic manifest format, scored over the full gallery;
- `geotext1652`: the GeoText-1652 joint pool with building-level hits (`protocol` "benchmark"),
  or exactly as the official code scores it ("official-quirks": a gallery image per record,
  off-by-one labels), or as the paper's own script did ("paper": a gallery row per caption);
- `cvgtext`: per-query galleries of the 100 geographically nearest tiles, R@K and L@50/100/150,
  split panorama / single-view (or the full city gallery, labelled as such).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from geoloc.config import CvgTextTarget, CvgTextVersion, DataConfig, GeoTextView, OnBadRecord
from geoloc.data.manifest import Dataset
from geoloc.errors import GeolocError
from geoloc.eval.evaluate import Embeddings, format_table, score
from geoloc.eval.protocols import (
    GEOTEXT_PROTOCOLS,
    cvgtext_metrics,
    format_cvgtext_table,
    geotext_metrics,
)

BENCHMARKS = ("manifest", "geotext1652", "cvgtext")


@dataclass
class BenchmarkRequest:
    benchmark: str = "manifest"
    data: str | None = None  # manifest file or folder
    root: str | None = None  # benchmark root folder
    split: str | None = "test"
    city: str | None = None
    version: CvgTextVersion = "mixed"
    target: CvgTextTarget = "satellite"
    view: GeoTextView = "all"
    protocol: str = "benchmark"  # geotext1652: benchmark | official-quirks | paper
    full_city: bool = False
    on_bad_record: OnBadRecord = "error"  # error | skip: bad records are left out, in Dataset.skipped

    def subset(self) -> dict[str, str | None]:
        """Which part of the benchmark is read (a CVG-Text city, queries and tiles; a GeoText-1652
        view): with the benchmark, what names the data set in a model card."""
        return {"city": self.city, "version": self.version, "target": self.target, "view": self.view}


def request_for(data: DataConfig, split: str | None) -> BenchmarkRequest:
    """The request that reads `split` of the data a training config names, with its benchmark's
    reader and protocol (a sweep or a report scores a run on the data it trained on)."""
    return BenchmarkRequest(
        benchmark=data.benchmark,
        data=data.train or None,
        root=data.root or None,
        split=split,
        city=data.city or None,
        version=data.version,
        target=data.target,
        view=data.view,
        on_bad_record=data.on_bad_record,
    )


def load_benchmark(request: BenchmarkRequest) -> Dataset:
    if request.benchmark not in BENCHMARKS:
        raise GeolocError(f"unknown benchmark {request.benchmark!r}; choose one of: {', '.join(BENCHMARKS)}")
    if request.protocol not in GEOTEXT_PROTOCOLS:
        raise GeolocError(
            f"unknown protocol {request.protocol!r}; choose one of: {', '.join(GEOTEXT_PROTOCOLS)}"
        )
    if request.protocol != "benchmark" and request.benchmark != "geotext1652":
        raise GeolocError(f"protocol {request.protocol} is a GeoText-1652 protocol (--benchmark geotext1652)")
    on_bad = request.on_bad_record
    if request.benchmark == "manifest":
        if not request.data:
            raise GeolocError("--data is required (a manifest file or a folder holding manifest.jsonl)")
        from geoloc.data.manifest import read_manifest

        return read_manifest(request.data, split=request.split, on_bad_record=on_bad)
    if not request.root:
        raise GeolocError(f"--root is required with --benchmark {request.benchmark}")
    if request.benchmark == "geotext1652":
        from geoloc.data.geotext import load_geotext

        return load_geotext(
            request.root,
            # --split is free text, checked by the reader: load_geotext refuses another split by name.
            split=request.split or "test",  # ty: ignore[invalid-argument-type]
            view=request.view,
            on_bad_record=on_bad,
        )
    if not request.city:
        raise GeolocError("--city is required with --benchmark cvgtext (e.g. NewYork, Brisbane, Tokyo)")
    from geoloc.data.cvgtext import load_cvgtext

    return load_cvgtext(
        request.root,
        request.city,
        version=request.version,
        target=request.target,
        # --split is free text, checked by the reader: load_cvgtext refuses another split by name.
        split=request.split or "test",  # ty: ignore[invalid-argument-type]
        on_bad_record=on_bad,
    )


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
