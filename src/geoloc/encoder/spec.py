"""The encoder's settings besides its weights (EncoderSpec), saved with every model so that
loading reproduces its embeddings; the config's `model` section shares their statement
(EmbeddingSettings)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from geoloc.choices import PaddingSide, Pooling, Preprocessing
from geoloc.encoder.tuning import TuningConfig
from geoloc.errors import ConfigError, GeolocError

FORMAT_VERSION = 1  # of a saved folder's spec: a reader refuses another version by name


@dataclass
class EmbeddingSettings:
    """How inputs become vectors, besides the weights: the one statement of these fields, for
    the saved spec (EncoderSpec) and the config's `model` section (config.ModelConfig)."""

    pooling: Pooling = "eos"
    query_tokens: int = 4  # pooling "query": learned queries
    query_heads: int = 4
    text_template: str = "{text}"
    image_template: str = "{image}"
    max_text_tokens: int = 300
    padding_side: PaddingSide = "right"
    # How a tile becomes pixels: "one-resize" (one resize to the model's square, then the image
    # processor's own rescale and normalise) or "released" (the image processor as the released
    # code calls it; for SmolVLM a 512-px tile goes up to 2048 px and back). docs/preprocessing.md.
    preprocessing: Preprocessing = "one-resize"

    def embedding_settings(self) -> dict[str, Any]:
        """These fields and their values, e.g. as `spec_overrides` of a new encoder."""
        return {f.name: getattr(self, f.name) for f in fields(EmbeddingSettings)}


@dataclass
class EncoderSpec(EmbeddingSettings):
    """How embeddings are made: saved with every model so that loading reproduces them."""

    backbone: str = "tiny-smolvlm"  # preset name, HF id, local folder (relative = inside the save)
    tuning: TuningConfig = field(default_factory=TuningConfig)
    family: str = ""
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EncoderSpec:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["tuning"] = TuningConfig(**data.get("tuning", {}))
        return cls(**values)


def split_template(template: str, slot: str, what: str) -> tuple[str, str]:
    if template.count(slot) != 1:
        raise GeolocError(f"{what} template {template!r} must contain {slot} exactly once")
    prefix, suffix = template.split(slot)
    return prefix, suffix


def new_spec(source: str | Path, overrides: dict[str, Any] | None) -> EncoderSpec:
    """The spec of an encoder built fresh from a backbone: frozen (zero-shot) unless the overrides
    (pooling, templates, tuning, ...) say otherwise; unknown settings are refused."""
    spec = EncoderSpec(backbone=str(source), tuning=TuningConfig(strategy="frozen"))
    known = {f.name for f in fields(EncoderSpec)} - {"backbone", "family", "format_version"}
    for key, value in (overrides or {}).items():
        if key not in known:
            raise ConfigError(f"unknown encoder setting {key!r}; known: {', '.join(sorted(known))}")
        setattr(spec, key, value)
    return spec
