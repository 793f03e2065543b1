"""Tile vision features, computed once and kept on disk, for set-ups whose vision side is frozen.

A tile reaches the LLM as the projector's output: (visual tokens, hidden) numbers that depend only
on the vision tower, the projector and the pixels. When neither is adapted (e.g. tuning targets
`llm-attn`), they are the same in every epoch and in evaluation, and the vision tower -- most of a
SmolVLM step's FLOPs at 512 px -- need run once per tile. The paper's recipe adapts the vision
tower too; there nothing can be cached and the trainer says so if asked.

Layout: <root>/<model key>/<aa>/<image content hash>.npy, one float32 array per tile, read
memory-mapped. The model key hashes the vision tower's and projector's weights, the family, the
image size and the precision; the file name hashes the image file's bytes. Each file is written
atomically, so an interrupted run leaves only whole files behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from geoloc.cache_dirs import cache_dir
from geoloc.encoder.base import Encoder
from geoloc.fingerprint import tensors_digest


def default_feature_dir() -> Path:
    return cache_dir("tile_features")


def _is_llm(name: str, llm_path: str) -> bool:
    return f".{llm_path}." in f".{name}"


def vision_is_adapted(encoder: Encoder) -> bool:
    """Whether any trainable backbone weight lies outside the LLM (vision tower or projector)."""
    return any(
        p.requires_grad and not _is_llm(name, encoder.text_tower_path)
        for name, p in encoder.backbone.named_parameters()
    )


def features_of(encoder: Encoder, image_inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The projected vision features of prepared tiles (what the cache stores)."""
    return encoder.image_features(image_inputs)


def feature_model_key(encoder: Encoder, precision: str) -> str:
    """A hash of what tile features depend on: the vision tower's and projector's weights, the
    family, the image size and the precision."""
    vision = [
        (name, tensor)
        for name, tensor in encoder.backbone.state_dict().items()
        if not _is_llm(name, encoder.text_tower_path) and "lm_head" not in name
    ]
    return tensors_digest(
        vision, digest_size=16, prefix=f"{encoder.spec.family}|{encoder.image_size}|{precision}".encode()
    )


class TileFeatureStore:
    """Features of tile image files, computed on first use and read from disk after."""

    def __init__(
        self,
        encoder: Encoder,
        root: str | Path | None = None,
        autocast: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
        precision: str = "float32",
        batch_size: int = 16,
        num_workers: int | str = "auto",
    ):
        self.encoder = encoder
        self.autocast = autocast
        self.precision = precision
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.dir = Path(root or default_feature_dir()) / feature_model_key(encoder, precision)
        self._content: dict[Path, str] = {}
        self.computed = 0  # tiles encoded by this store (the rest came from disk)

    def _file(self, image: Path) -> Path:
        if image not in self._content:
            self._content[image] = hashlib.blake2b(image.read_bytes(), digest_size=16).hexdigest()
        name = self._content[image]
        return self.dir / name[:2] / f"{name}.npy"

    def _compute(self, images: list[Path], records: list[str] | None) -> None:
        """Features of tiles not on disk yet, decoded and preprocessed in DataLoader workers."""
        from geoloc.data.pipeline import TileCollator, TileDataset, batches_of, make_loader, resolve_workers

        processor = self.encoder.tile_processor
        workers = (
            resolve_workers(self.num_workers, device=self.encoder.device)
            if len(images) > self.batch_size
            else 0
        )
        loader = make_loader(
            TileDataset(images, processor, records),
            TileCollator(processor),
            workers,
            self.encoder.device,
            batch_size=self.batch_size,
        )
        done = 0
        for pixels in batches_of(loader):
            chunk = images[done : done + self.batch_size]
            with torch.no_grad(), self.autocast():
                features = features_of(self.encoder, pixels).float().cpu().numpy()
            for image, array in zip(chunk, features, strict=True):
                target = self._file(image)
                target.parent.mkdir(parents=True, exist_ok=True)
                partial = target.with_name(f".{target.name}.{os.getpid()}.tmp")
                with open(partial, "wb") as f:
                    np.save(f, array)
                os.replace(partial, target)
            done += len(chunk)
            self.computed += len(chunk)

    def features(self, images: Sequence[str | Path], records: list[str] | None = None) -> torch.Tensor:
        """(tiles, visual tokens, hidden) float32 features of image files, in order."""
        paths = [Path(p) for p in images]
        missing = list(dict.fromkeys(p for p in paths if not self._file(p).is_file()))
        if missing:
            names = None
            if records:
                by_path = dict(zip(paths, records, strict=True))
                names = [by_path[p] for p in missing]
            self._compute(missing, names)
        arrays = [np.load(self._file(p), mmap_mode="r") for p in paths]
        return torch.from_numpy(np.stack(arrays))
