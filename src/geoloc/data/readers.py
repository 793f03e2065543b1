"""One way in to the data readers: a benchmark's name and settings pick its reader.

Training (`config.data`), evaluation (`geoloc eval`) and sweeps all read data through
`read_benchmark`, so a benchmark is chosen, checked and refused the same way everywhere. The
settings they share are `BenchmarkData`'s fields, stated once: a training config's `data`
section extends it, and so does an evaluation's request.

A missing setting is named as the user gave it: `data.root` when a config (or a sweep's YAML)
chose the benchmark, `--root` on the command line (`named`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from geoloc.choices import (
    BenchmarkName,
    CvgTextSplit,
    CvgTextTarget,
    CvgTextVersion,
    GeoTextSplit,
    GeoTextView,
    OnBadRecord,
    check_choice,
)
from geoloc.data.manifest import Dataset
from geoloc.errors import ConfigError


@dataclass
class BenchmarkData:
    """Which benchmark's files are read, and how (see docs/benchmarks.md)."""

    benchmark: BenchmarkName = "manifest"
    root: str = ""  # geotext1652 / cvgtext: the benchmark's root folder
    city: str = ""  # cvgtext: NewYork, Brisbane, Tokyo
    version: CvgTextVersion = "mixed"  # cvgtext: the queries
    target: CvgTextTarget = "satellite"  # cvgtext: the tiles
    view: GeoTextView = "all"  # geotext1652: the images kept
    on_bad_record: OnBadRecord = "error"  # error: stop on the first bad record; skip: leave it out, list it

    def subset(self) -> dict[str, str | None]:
        """Which part of the benchmark is read (a CVG-Text city, queries and tiles; a GeoText-1652
        view): with the benchmark, what names the data set in a model card."""
        return {"city": self.city or None, "version": self.version, "target": self.target, "view": self.view}


def config_key(setting: str) -> str:
    """A setting as a config spells it: `root` is `data.root`, the manifest `data.train`."""
    return "data.train" if setting == "manifest" else f"data.{setting}"


def read_benchmark(
    data: BenchmarkData,
    manifest: str,
    split: str | None,
    check_images: bool = True,
    named: Callable[[str], str] = config_key,
) -> Dataset:
    """The records of `split` (None: every row) of the data `data` names.

    `manifest` is the manifest file or folder when the benchmark is `manifest`. GeoText-1652 and
    CVG-Text read their own split files (test unless `split` says otherwise). With
    `check_images`, every kept image must exist; nothing is decoded here (`verify_images`).
    """
    check_choice(data.benchmark, BenchmarkName, named("benchmark"))
    on_bad = data.on_bad_record
    if data.benchmark == "manifest":
        if not manifest:
            raise ConfigError(
                f"no data: set {named('manifest')} to a manifest file or a folder holding manifest.jsonl"
            )
        from geoloc.data.manifest import read_manifest

        return read_manifest(manifest, split=split, on_bad_record=on_bad, check_images=check_images)
    if not data.root:
        raise ConfigError(
            f"{named('root')} is required with benchmark {data.benchmark}: the benchmark's folder"
        )
    # A split is free text on the command line; each reader refuses one it lacks, by name.
    split = split or "test"
    if data.benchmark == "geotext1652":
        from geoloc.data.geotext import load_geotext

        return load_geotext(
            data.root,
            split=cast(GeoTextSplit, split),
            view=data.view,
            on_bad_record=on_bad,
            check_images=check_images,
        )
    if not data.city:
        raise ConfigError(f"{named('city')} is required with benchmark cvgtext (NewYork, Brisbane or Tokyo)")
    from geoloc.data.cvgtext import load_cvgtext

    return load_cvgtext(
        data.root,
        data.city,
        version=data.version,
        target=data.target,
        split=cast(CvgTextSplit, split),
        on_bad_record=on_bad,
        check_images=check_images,
    )
