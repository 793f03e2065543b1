"""Embeddings cached on disk, keyed by what made them: the model's weights and the data's content.

A second evaluation of the same model on the same data reads the vectors back instead of
encoding tens of thousands of images again. The key hashes every weight and the spec of the
encoder, and every record's key, texts and image bytes, so a changed adapter, prompt, caption
or tile never reuses stale vectors. Paths play no part: moving the data keeps the cache valid.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from geoloc import cache_dirs
from geoloc.data.manifest import Dataset
from geoloc.eval.evaluate import Embeddings, embed_dataset
from geoloc.fingerprint import tensors_digest

if TYPE_CHECKING:
    from geoloc.encoder.base import Encoder

CACHE_VERSION = 1


def default_cache_dir() -> Path:
    return cache_dirs.cache_dir("embeddings")


def model_fingerprint(encoder: Encoder) -> str:
    """A hash of what makes the vectors: every weight and the embedding settings of the spec.

    The spec's `backbone` is left out: it says where the weights were read from, spelled as the
    user typed it ("S", "./S", an absolute path, or "backbone" once saved), and the weights
    themselves are hashed.
    """
    settings = {k: v for k, v in encoder.spec.to_dict().items() if k != "backbone"}
    return tensors_digest(encoder.state_dict().items(), prefix=json.dumps(settings, sort_keys=True).encode())


def data_fingerprint(dataset: Dataset) -> str:
    digest = hashlib.blake2b(digest_size=20)
    for record in dataset.records:
        digest.update(json.dumps([record.key, list(record.texts), record.group]).encode())
        with open(record.image, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def cached_embeddings(
    encoder: Encoder,
    dataset: Dataset,
    cache_dir: str | Path | None = None,
    batch_size: int = 32,
    show_progress: bool | None = None,
) -> tuple[Embeddings, bool]:
    """(embeddings, whether they came from the cache); computed and stored when missing."""
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = hashlib.blake2b(
        f"v{CACHE_VERSION}:{model_fingerprint(encoder)}:{data_fingerprint(dataset)}".encode(), digest_size=20
    ).hexdigest()
    path = folder / f"{key}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as stored:
                return (
                    Embeddings(
                        image_emb=stored["image_emb"],
                        text_emb=stored["text_emb"],
                        image_keys=stored["image_keys"].tolist(),
                        text_image_keys=stored["text_image_keys"].tolist(),
                        texts=stored["texts"].tolist(),
                    ),
                    True,
                )
        except (OSError, ValueError, KeyError):
            pass  # an unreadable cache entry is recomputed and replaced
    embeddings = embed_dataset(encoder, dataset, batch_size, show_progress)
    embeddings.save(path)
    return embeddings, False
