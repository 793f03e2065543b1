"""Training and validation records of a run: validation is carved from the training data, never test.

Where the records come from (`config.data.benchmark`):

- manifest: the manifest's `train_split` rows and rows without a split train; its `val_split` rows
  validate when there are any. Rows of any other split (test) are never read past validation of
  their fields, and their images are never opened;
- geotext1652: `<root>/train.json` (the test files are not opened);
- cvgtext: `<root>`'s `train.json` of `city` / `version`, with `target` tiles (test.json is not
  opened; the CVG-Text authors selected their checkpoint on test, this project never does).

Without a validation split, a seeded `val_fraction` of the training GROUPS validates: GeoText-1652
buildings, CVG-Text locations, manifest groups, so no place is both trained on and validated on.
With `val_fraction: 0` nothing is carved: every training record trains, as in the released code,
and without a val split the run has no validation at all (its model is the final checkpoint).
Every kept image is then decoded once (`verify_images`), so a broken tile stops the run before
its first step, or is skipped and listed with `data.on_bad_record: skip`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from geoloc.config import Config, DataConfig
from geoloc.data.bad_records import skipped_entries
from geoloc.data.images import verify_images
from geoloc.data.manifest import Dataset, Record
from geoloc.data.readers import read_benchmark
from geoloc.errors import DataError


@dataclass
class Splits:
    train: Dataset
    val: Dataset
    """Empty when nothing validates (`data.val_fraction: 0` and no val split)."""
    skipped: list[dict[str, str]] = field(default_factory=list)
    """{"file", "record", "reason"} of every bad record left out (data.on_bad_record: skip)."""


def carve_splits(config: Config) -> Splits:
    """Training and validation records: the data's own val split, else a seeded share of groups."""
    data = config.data
    source_data = _read_training_data(data)
    train, val = _train_and_val(source_data, data, config.train.seed)
    if not train:
        raise DataError(
            f"no training records (split {data.train_split!r} or unlabelled)", path=source_data.source
        )
    if not val and data.val_fraction > 0:
        raise DataError(
            "cannot carve a validation split: the training records hold a single group",
            path=source_data.source,
        )
    val = val[: data.max_val_images]
    train_set = verify_images(Dataset(train, source_data.source), data.on_bad_record)
    val_set = verify_images(Dataset(val, source_data.source), data.on_bad_record)
    return Splits(train_set, val_set, skipped_entries(source_data, train_set, val_set))


def _read_training_data(data: DataConfig) -> Dataset:
    """Every record that may train or validate, fields checked; images are checked later.

    A manifest's every row is read (its splits are sorted out by `_train_and_val`); a
    benchmark's train split."""
    split = None if data.benchmark == "manifest" else "train"
    return read_benchmark(data, data.train, split, check_images=False)


def _train_and_val(dataset: Dataset, data: DataConfig, seed: int) -> tuple[list[Record], list[Record]]:
    if data.benchmark == "manifest":
        train = [r for r in dataset.records if r.split in (data.train_split, None)]
        val = [r for r in dataset.records if r.split == data.val_split and data.val_split != data.train_split]
    else:
        train, val = list(dataset.records), []
    if not val and data.val_fraction > 0:
        train, val = _carve_by_group(train, data.val_fraction, seed)
    return train, val


def _carve_by_group(records: list[Record], fraction: float, seed: int) -> tuple[list[Record], list[Record]]:
    """(train, val): a seeded `fraction` of the groups (at least one) goes to validation."""
    groups = sorted({r.group for r in records})
    if len(groups) < 2:
        return records, []
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(groups), generator=generator).tolist()
    n_val = min(len(groups) - 1, max(1, round(len(groups) * fraction)))
    val_groups = {groups[i] for i in order[:n_val]}
    return [r for r in records if r.group not in val_groups], [r for r in records if r.group in val_groups]
