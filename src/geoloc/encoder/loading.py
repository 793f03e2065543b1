"""One loader for every encoder: resolve a source once, return the interface type.

    from geoloc import load_encoder
    encoder = load_encoder("runs/internvl", device="cuda", dtype="bfloat16")

A source is a preset name, a Hugging Face id, a model folder, a saved encoder or a training run
directory. Its kind is read once -- a saved encoder's spec names its family; a preset or model
folder says what it is -- and the MLLM (`GeoEncoder`) or dual (`DualEncoder`) loader takes it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from geoloc.encoder.base import Encoder
from geoloc.encoder.dual import DualEncoder, dual_family
from geoloc.encoder.mllm import GeoEncoder


def load_encoder(
    source: str | Path,
    device: str | None = "cpu",
    dtype: str = "float32",
    spec_overrides: dict[str, Any] | None = None,
    trainable: bool = False,
) -> Encoder:
    """The encoder `source` names, ready to encode (or to train, with trainable=True).

    `spec_overrides` (pooling, templates, tuning, ...) apply when building a new encoder from a
    backbone; a saved encoder keeps the spec it was saved with.
    """
    loader = DualEncoder if dual_family(source) is not None else GeoEncoder
    return loader.load(source, device=device, dtype=dtype, spec_overrides=spec_overrides, trainable=trainable)
