"""Where an encoder's parts come from, for both encoder kinds: a preset, a model folder or Hugging
Face id, a saved encoder or a training run directory.

A source is resolved once (`resolve`): a saved encoder's spec is read once and names its family;
a preset names its own; a model folder, or an HF id in the local cache, says what it is in its
config.json. The network is never asked here: asking the hub to classify an id would double the
wait before an unreachable id's error, since loading asks again. `load_as` then loads the parts
(backbone, tokenizer, image processor, spec) and the encoder class assembles them
(`Encoder.from_parts`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self, TypeVar

import torch
from torch import nn

from geoloc.encoder.base import Encoder
from geoloc.encoder.devices import resolve_device, resolve_dtype
from geoloc.encoder.families import (
    FAMILIES,
    KIND_NAMES,
    BackboneFamily,
    EncoderKind,
    backbone_family_for_model_type,
    config_from_source,
    family_of_model_type,
)
from geoloc.encoder.presets import PRESET_FAMILIES, preset_model, preset_processing
from geoloc.encoder.saved import (
    attach_saved_adapter,
    hub_processing,
    read_saved_spec,
    saved_backbone_source,
    saved_encoder_dir,
)
from geoloc.encoder.spec import EncoderSpec, new_spec
from geoloc.encoder.tuning import apply_tuning
from geoloc.errors import GeolocError
from geoloc.versions import warn_if_untested

E = TypeVar("E", bound="LoadableEncoder")


@dataclass(frozen=True)
class Resolved:
    """A source, looked at once."""

    source: str | Path
    saved: Path | None  # the saved encoder folder it names, if any
    spec: EncoderSpec | None  # that folder's spec
    family: BackboneFamily | None  # what it is, where that is known without the network


@dataclass
class Parts:
    """What an encoder is assembled from (`LoadableEncoder.from_parts`)."""

    backbone: nn.Module  # adapters attached or injected, as the spec's tuning says
    tokenizer: Any
    image_processor: Any
    spec: EncoderSpec
    torch_dtype: torch.dtype
    saved: Path | None  # the saved folder it came from, if any


def resolve(source: str | Path) -> Resolved:
    """What `source` is, read once; the saved spec is checked (its format version) here."""
    saved = saved_encoder_dir(source)
    if saved is not None:
        spec = read_saved_spec(saved)
        return Resolved(source, saved, spec, FAMILIES.get(spec.family))
    text = str(source)
    if text in PRESET_FAMILIES:
        return Resolved(source, None, None, FAMILIES[PRESET_FAMILIES[text]])
    config_file = _config_on_disk(text)
    if config_file is None:
        return Resolved(source, None, None, None)  # loading fetches it if it can, or says why not
    try:
        model_type = json.loads(config_file.read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError):
        model_type = None  # loading reports the unreadable file
    return Resolved(source, None, None, family_of_model_type(model_type))


def _config_on_disk(source: str) -> Path | None:
    """A model folder's config.json, or an HF id's from the local cache: never the network."""
    folder = Path(source)
    if folder.is_dir():
        return folder / "config.json" if (folder / "config.json").is_file() else None
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(source, "config.json")
    except ValueError:  # not a valid repository id
        return None
    return Path(cached) if isinstance(cached, str) else None


def _check_kind(source: str | Path, family: BackboneFamily, kind: EncoderKind) -> None:
    if family.kind != kind:
        raise GeolocError(
            f"{str(source)!r} is {KIND_NAMES[family.kind]}, not {KIND_NAMES[kind]}: "
            "load it with geoloc.load_encoder"
        )


def load_backbone(
    source: str, torch_dtype: torch.dtype, kind: EncoderKind, tokenizer: Any = None
) -> tuple[nn.Module, BackboneFamily]:
    """The transformers model of a preset (built with `tokenizer`'s ids, when given), an HF id or
    a model folder (safetensors only; code shipped with a model never runs), and its family."""
    if source in PRESET_FAMILIES:
        family = FAMILIES[PRESET_FAMILIES[source]]
        _check_kind(source, family, kind)
        return preset_model(source, tokenizer=tokenizer).to(torch_dtype), family
    try:
        # The config file's contents only: code shipped with a model (auto_map) never runs.
        config = config_from_source(source)
    except (OSError, ValueError) as error:
        raise GeolocError(
            f"cannot load model {source!r}: not a preset ({', '.join(PRESET_FAMILIES)}), a saved geoloc "
            f"model, a model folder or a reachable Hugging Face id ({error})"
        ) from error
    except GeolocError as error:  # a config of an unsupported or malformed model
        raise GeolocError(f"cannot load model {source!r}: {error}") from error
    family = backbone_family_for_model_type(config.model_type)
    _check_kind(source, family, kind)
    try:  # safetensors only: a pickled pytorch_model.bin is never read
        model = family.transformers_class().from_pretrained(
            source, config=config, dtype=torch_dtype, use_safetensors=True, trust_remote_code=False
        )
    except OSError as error:
        raise GeolocError(f"cannot load model {source!r}: {str(error).splitlines()[0]}") from error
    return model, family


def load_parts(
    resolved: Resolved,
    kind: EncoderKind,
    torch_dtype: torch.dtype,
    spec_overrides: dict[str, Any] | None,
    trainable: bool,
) -> Parts:
    """The parts of a saved encoder (its spec, its backbone's source, its adapters, its
    tokenizer), or of a new one built from a backbone (`spec_overrides` and tuning applied)."""
    if resolved.saved is not None and resolved.spec is not None:
        path, spec = resolved.saved, resolved.spec
        model, _ = load_backbone(saved_backbone_source(path, spec), torch_dtype, kind)
        tokenizer, image_processor = hub_processing(path)
        model = attach_saved_adapter(model, path, spec, trainable)
        return Parts(model, tokenizer, image_processor, spec, torch_dtype, path)
    source = str(resolved.source)
    spec = new_spec(resolved.source, spec_overrides)
    if source in PRESET_FAMILIES:
        # A tiny preset's tokenizer is trained once and serves both the model's config and the
        # encoder.
        tokenizer, image_processor = preset_processing(source)
        model, family = load_backbone(source, torch_dtype, kind, tokenizer)
    else:
        model, family = load_backbone(source, torch_dtype, kind)
        tokenizer, image_processor = hub_processing(source)
    spec.family = family.name
    return Parts(
        apply_tuning(model, family, spec.tuning), tokenizer, image_processor, spec, torch_dtype, None
    )


def load_as(
    cls: type[E],
    source: str | Path | Resolved,
    device: str | None,
    dtype: str,
    spec_overrides: dict[str, Any] | None,
    trainable: bool,
) -> E:
    """An encoder of class `cls` from `source` (resolved once), on `device`."""
    warn_if_untested()
    torch_dtype = resolve_dtype(dtype)
    resolved = source if isinstance(source, Resolved) else resolve(source)
    if resolved.family is not None:
        _check_kind(resolved.source, resolved.family, cls.kind)
    parts = load_parts(resolved, cls.kind, torch_dtype, spec_overrides, trainable)
    encoder = cls.from_parts(parts, trainable)
    encoder.saved_folder = parts.saved
    return encoder.to(resolve_device(device))


class LoadableEncoder(Encoder):
    """An encoder that `load` builds from a source: the one loading path of both kinds. A
    subclass states its `kind` and assembles itself from the loaded parts (`from_parts`)."""

    def __init__(self, backbone: nn.Module, tokenizer: Any, image_processor: Any, spec: EncoderSpec):
        super().__init__()
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.spec = spec

    @classmethod
    def load(
        cls,
        source: str | Path,
        device: str | None = "cpu",
        dtype: str = "float32",
        spec_overrides: dict[str, Any] | None = None,
        trainable: bool = False,
    ) -> Self:
        """Load this kind of encoder from a preset name, an HF id or model folder, a saved encoder,
        or a run directory; a source of the other kind is refused by name (`geoloc.load_encoder`
        loads either kind).

        `spec_overrides` (pooling, templates, tuning, ...) apply when building a new encoder from
        a backbone; a saved encoder keeps the spec it was saved with.
        """
        return load_as(cls, source, device, dtype, spec_overrides, trainable)

    @classmethod
    def from_parts(cls, parts: Parts, trainable: bool) -> Self:
        """The encoder made of loaded parts (`load_parts`)."""
        raise NotImplementedError
