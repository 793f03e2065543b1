"""The real non-weight files of the backbones geoloc names, shipped with geoloc, and model folders
built from them with random weights.

`model_files/` holds, for each backbone, what a downloaded checkpoint holds besides its weights:
config.json, the tokenizer, the processor settings and the chat template (see its README.md for
where each file came from and how exact it is). The three SmolVLM folders share one SmolLM2
tokenizer, and SmolVLM-500M shares everything but its config with SmolVLM-256M, so each file
is stored once and `write_model_files` assembles the full folder.

    write_model_files("SmolVLM-256M-Instruct", "models/smolvlm")          # the files, no weights
    build_random_checkpoint("SmolVLM-256M-Instruct", "models/smolvlm")    # + random weights, 2 layers

A folder built this way is what a user's download looks like, so `MllmEncoder.load(folder)` takes
exactly the path it takes on real weights. Only the weights are random; the random-size presets
(`random-smolvlm-256m`, ...) read the same files.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from geoloc.encoder.devices import resolve_dtype
from geoloc.encoder.families import config_from_dict, config_from_file, family_for_model_type
from geoloc.encoder.saved import hub_processing
from geoloc.errors import GeolocError

MODEL_FILES_DIR = Path(__file__).parent / "model_files"


@dataclass(frozen=True)
class RealBackbone:
    """A published backbone whose non-weight files geoloc ships: the one list of them."""

    name: str  # short name (`geoloc params`); `random-<name>` is the preset of its shapes, if any
    folder: str  # model_files/<folder>
    hub_id: str
    family: str
    # Where its files that are not stored in its folder come from, nearest first (deduplication).
    bases: tuple[str, ...]
    random_preset: bool = True


REAL_BACKBONES: tuple[RealBackbone, ...] = (
    RealBackbone(
        "smolvlm-256m",
        "SmolVLM-256M-Instruct",
        "HuggingFaceTB/SmolVLM-256M-Instruct",
        "smolvlm",
        ("smollm2-tokenizer",),
    ),
    RealBackbone(
        "smolvlm-500m",
        "SmolVLM-500M-Instruct",
        "HuggingFaceTB/SmolVLM-500M-Instruct",
        "smolvlm",
        ("SmolVLM-256M-Instruct", "smollm2-tokenizer"),
    ),
    RealBackbone(
        "smolvlm2-256m",
        "SmolVLM2-256M-Video-Instruct",
        "HuggingFaceTB/SmolVLM2-256M-Video-Instruct",
        "smolvlm2",
        ("smollm2-tokenizer",),
        random_preset=False,
    ),
    RealBackbone("internvl3_5-1b", "InternVL3_5-1B-HF", "OpenGVLab/InternVL3_5-1B-HF", "internvl", ()),
)
# Folder name -> the Hugging Face id whose files it holds.
REAL_MODELS: dict[str, str] = {b.folder: b.hub_id for b in REAL_BACKBONES}
_BASES: dict[str, tuple[str, ...]] = {b.folder: b.bases for b in REAL_BACKBONES}


def real_model_name(name_or_id: str) -> str:
    """The folder name of a real backbone, given it or its Hugging Face id; refused if unknown."""
    for name, hub_id in REAL_MODELS.items():
        if name_or_id in (name, hub_id):
            return name
    raise GeolocError(f"no shipped model files for {name_or_id!r}; known: {', '.join(REAL_MODELS)}")


def write_model_files(name: str, folder: str | Path) -> Path:
    """Write a real backbone's non-weight files (config, tokenizer, processor) into `folder`."""
    name = real_model_name(name)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for source in (name, *_BASES[name]):
        for path in sorted((MODEL_FILES_DIR / source).iterdir()):
            if path.name != "PROVENANCE.md" and not (folder / path.name).exists():
                shutil.copyfile(path, folder / path.name)
    shutil.copyfile(MODEL_FILES_DIR / name / "PROVENANCE.md", folder / "PROVENANCE.md")
    return folder


def real_config(name: str) -> Any:
    """The transformers config of a real backbone, read from its shipped config.json."""
    return config_from_file(MODEL_FILES_DIR / real_model_name(name) / "config.json")


def real_processing(name: str) -> tuple[Any, Any]:
    """(tokenizer, image processor) of a real backbone, from its shipped files."""

    with tempfile.TemporaryDirectory(prefix="geoloc-model-files-") as tmp:
        return hub_processing(write_model_files(name, tmp))


def shrink(data: dict[str, Any], layers: int) -> dict[str, Any]:
    """A config.json's contents with `layers` layers in each tower (every width, vocabulary and
    image size kept)."""
    text = data["text_config"]
    text["num_hidden_layers"] = layers
    if text.get("layer_types"):
        text["layer_types"] = text["layer_types"][:layers]
    if "max_window_layers" in text:
        text["max_window_layers"] = min(text["max_window_layers"], layers)
    data.setdefault("vision_config", {})["num_hidden_layers"] = layers
    return data


def build_random_checkpoint(
    name: str, folder: str | Path, layers: int | None = 2, dtype: str = "float32", seed: int = 0
) -> Path:
    """A model folder as a download looks: the real files plus seeded random weights (safetensors).

    `layers` shrinks both towers to that many layers for speed (None keeps the full depth); the
    written config.json says so, and everything else in it is the real one.
    """
    folder = write_model_files(name, folder)
    # The real config.json, in its own layout (and so with its quirks, such as InternVL's missing
    # top-level tie_word_embeddings), only its depth changed.
    data = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    if layers is not None:
        data = shrink(data, layers)
    config = config_from_dict(data, folder / "config.json")
    model_class = family_for_model_type(config.model_type).transformers_class()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_class(config).to(resolve_dtype(dtype))
    model.save_pretrained(folder, safe_serialization=True)
    # save_pretrained rewrote config.json in this transformers' layout: put the real one back.
    (folder / "config.json").write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return folder
