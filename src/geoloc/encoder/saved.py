"""Folders on disk: the layout of a saved encoder, and the processing files of a model folder.

A saved encoder is a folder: `geoloc_encoder.json` (the EncoderSpec), the tokenizer and image
processor, `adapter/` (LoRA / DoRA weights) or `backbone/` (fully tuned weights), any files
the encoder adds (the MLLM's pooling head), and its model card: `README.md` in Hugging Face's
form, drawn from `model_card.json` (geoloc.encoder.card). `Encoder.save` writes it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from geoloc.encoder.spec import FORMAT_VERSION, EncoderSpec
from geoloc.errors import GeolocError

SPEC_FILE = "geoloc_encoder.json"
SAVED_BACKBONE = "backbone"  # a spec.backbone of this value means "the folder saved beside me"


def saved_encoder_dir(source: str | Path) -> Path | None:
    """The saved encoder that `source` names: itself, or a run directory's best/ or final/."""
    path = Path(source)
    for candidate in (path, path / "best", path / "final"):
        if (candidate / SPEC_FILE).is_file():
            return candidate
    return None


def hub_processing(source: str | Path) -> tuple[Any, Any]:
    """(tokenizer, image processor) of an HF id or a folder; never code shipped with them."""
    from transformers import AutoImageProcessor, AutoTokenizer

    return (
        AutoTokenizer.from_pretrained(source, trust_remote_code=False),
        AutoImageProcessor.from_pretrained(source, trust_remote_code=False),
    )


def read_saved_spec(path: Path) -> EncoderSpec:
    """The spec of a saved encoder folder, refused unless its format version is this geoloc's."""
    try:
        spec_data = json.loads((path / SPEC_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise GeolocError(f"{path / SPEC_FILE}: unreadable encoder description ({error})") from error
    version = spec_data.get("format_version")
    if version != FORMAT_VERSION:
        raise GeolocError(
            f"{path}: saved with encoder format version {version}, this geoloc reads version {FORMAT_VERSION}"
        )
    return EncoderSpec.from_dict(spec_data)


def saved_backbone_source(path: Path, spec: EncoderSpec) -> str:
    """Where a saved encoder's backbone comes from: the folder saved beside it, or its source."""
    return str(path / spec.backbone) if spec.backbone == SAVED_BACKBONE else spec.backbone


def attach_saved_adapter(model: nn.Module, path: Path, spec: EncoderSpec, trainable: bool) -> nn.Module:
    """A saved encoder's adapters on its backbone (safetensors only), and which weights train."""
    if spec.tuning.strategy in ("lora", "dora"):
        from peft import PeftModel

        adapter = path / "adapter"
        if not (adapter / "adapter_model.safetensors").is_file():  # else peft falls back to a pickled .bin
            raise GeolocError(f"{adapter}: no adapter_model.safetensors (only safetensors are loaded)")
        model.requires_grad_(False)
        return PeftModel.from_pretrained(model, adapter, is_trainable=trainable)
    model.requires_grad_(trainable and spec.tuning.strategy == "full")
    return model
