"""One loader for every encoder: resolve a source once, return the interface type.

    from geoloc import load_encoder
    encoder = load_encoder("runs/internvl", device="cuda", dtype="bfloat16")

A source is a preset name, a Hugging Face id, a model folder, a saved encoder or a training run
directory. Its kind is read once -- a saved encoder's spec names its family; a preset or model
folder says what it is -- and the MLLM (`MllmEncoder`) or dual (`DualEncoder`) loader takes it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from geoloc.encoder.base import Encoder
from geoloc.encoder.dual import DualEncoder
from geoloc.encoder.families import EncoderKind
from geoloc.encoder.mllm import MllmEncoder
from geoloc.encoder.sources import LoadableEncoder, load_as, resolve

# The encoder class of each kind of family (families.py).
ENCODERS: dict[EncoderKind, type[LoadableEncoder]] = {"mllm": MllmEncoder, "dual": DualEncoder}


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
    resolved = resolve(source)
    # A source whose kind is unknown without the network (an HF id not in the local cache) goes
    # to the MLLM loader, which fetches its config once: a dual encoder by HF id needs its files
    # on disk.
    kind = resolved.family.kind if resolved.family is not None else "mllm"
    return load_as(ENCODERS[kind], resolved, device, dtype, spec_overrides, trainable)
