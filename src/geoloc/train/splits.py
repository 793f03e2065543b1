"""Training and validation records of a run: validation is carved from the training data, never test."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from geoloc.config import Config
from geoloc.data.manifest import Dataset, read_manifest
from geoloc.errors import GeolocError


@dataclass
class Splits:
    train: Dataset
    val: Dataset


def carve_splits(config: Config) -> Splits:
    """Training and validation records: the data's own val split, else a seeded share of groups."""
    data = config.data
    if not data.train:
        raise GeolocError("no training data: set data.train to a manifest file or folder")
    everything = read_manifest(data.train, split=None)
    by_split: dict[str | None, list] = {}
    for record in everything.records:
        by_split.setdefault(record.split, []).append(record)
    train = by_split.get(data.train_split, []) + by_split.get(None, [])
    val = by_split.get(data.val_split, [])
    if not val:
        groups = sorted({r.group for r in train})
        generator = torch.Generator().manual_seed(config.train.seed)
        order = torch.randperm(len(groups), generator=generator).tolist()
        n_val = max(1, round(len(groups) * data.val_fraction))
        val_groups = {groups[i] for i in order[:n_val]}
        val = [r for r in train if r.group in val_groups]
        train = [r for r in train if r.group not in val_groups]
    if not train:
        raise GeolocError(
            f"{everything.source}: no training records (split {data.train_split!r} or unlabelled)"
        )
    val = val[: data.max_val_images]
    return Splits(Dataset(train, everything.source), Dataset(val, everything.source))
