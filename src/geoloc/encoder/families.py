"""Backbone families: everything geoloc needs to know about an MLLM architecture, as data.

A family says how a tile is written into the token sequence (its image placeholder), how pixels
are prepared (square resize, no splitting), and where the LLM and the vision tower live in the
module tree, so that adapters can be targeted by module path. Adding a backbone means adding an
entry here, not an `if` elsewhere.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from geoloc.errors import GeolocError


@dataclass(frozen=True)
class BackboneFamily:
    name: str
    model_types: tuple[str, ...]  # transformers `config.model_type` values this family serves
    model_class: str  # transformers class name, loaded with from_pretrained / from_config
    # Module paths inside the loaded `*ForConditionalGeneration` model.
    llm_path: str
    vision_path: str
    # Regex (relative to the vision tower) of the vision attention projections.
    vision_attention: str
    # Tokens written around the repeated image token; the model's processor would write the same.
    image_prefix: str
    image_token: str
    image_suffix: str
    # What the backbone's chat template writes for an image part; its processor expands it to
    # the full placeholder above.
    chat_image_mark: str
    # config -> number of visual tokens one square, unsplit image becomes.
    visual_tokens: Callable[[Any], int]
    # Keyword arguments for the image processor call that switch off splitting / tiling.
    image_processor_kwargs: dict[str, Any] = field(default_factory=dict)
    # Whether pixel_values carry a per-sample image axis: (batch, images, C, H, W).
    pixels_have_image_axis: bool = False
    # Idefics3 drops an image whose normalised pixels are all exactly zero, as padding.
    drops_all_zero_images: bool = False
    # config -> extra keyword arguments of the model's `get_image_features`.
    image_feature_kwargs: Callable[[Any], dict[str, Any]] = lambda config: {}

    def image_size(self, config: Any) -> int:
        size = config.vision_config.image_size
        return int(size[0] if isinstance(size, (list, tuple)) else size)

    def image_seq_len(self, config: Any) -> int:
        """Number of visual tokens one square, unsplit image becomes."""
        return self.visual_tokens(config)

    def placeholder(self, config: Any) -> str:
        return self.image_prefix + self.image_token * self.image_seq_len(config) + self.image_suffix


def _idefics3_seq_len(config: Any) -> int:
    v = config.vision_config
    return (v.image_size // v.patch_size) ** 2 // (config.scale_factor**2)


def _internvl_seq_len(config: Any) -> int:
    v = config.vision_config
    size = v.image_size[0] if isinstance(v.image_size, (list, tuple)) else v.image_size
    patch = v.patch_size[0] if isinstance(v.patch_size, (list, tuple)) else v.patch_size
    return int((size // patch) ** 2 * config.downsample_ratio**2)


_SIGLIP_ATTENTION = r"encoder\.layers\.\d+\.self_attn\.(q_proj|k_proj|v_proj|out_proj)"

SMOLVLM = BackboneFamily(
    name="smolvlm",
    model_types=("idefics3",),
    model_class="Idefics3ForConditionalGeneration",
    llm_path="model.text_model",
    vision_path="model.vision_model",
    vision_attention=_SIGLIP_ATTENTION,
    image_prefix="<fake_token_around_image><global-img>",
    image_token="<image>",
    image_suffix="<fake_token_around_image>",
    chat_image_mark="<image>",
    image_processor_kwargs={"do_image_splitting": False},
    pixels_have_image_axis=True,
    drops_all_zero_images=True,
    visual_tokens=_idefics3_seq_len,
)
# SmolVLM2 keeps SmolVLM v1's layout and token scheme under its own class names.
SMOLVLM2 = replace(
    SMOLVLM, name="smolvlm2", model_types=("smolvlm",), model_class="SmolVLMForConditionalGeneration"
)
INTERNVL = BackboneFamily(
    name="internvl",
    model_types=("internvl",),
    model_class="InternVLForConditionalGeneration",
    llm_path="model.language_model",
    vision_path="model.vision_tower",
    vision_attention=r"encoder\.layer\.\d+\.attention\.(q_proj|k_proj|v_proj|projection_layer)",
    image_prefix="<img>",
    image_token="<IMG_CONTEXT>",
    image_suffix="</img>",
    chat_image_mark="<IMG_CONTEXT>",
    image_processor_kwargs={"crop_to_patches": False},
    visual_tokens=_internvl_seq_len,
    image_feature_kwargs=lambda config: {
        "vision_feature_layer": config.vision_feature_layer,
        "vision_feature_select_strategy": config.vision_feature_select_strategy,
    },
)

FAMILIES: dict[str, BackboneFamily] = {f.name: f for f in (SMOLVLM, SMOLVLM2, INTERNVL)}


def tie_as_written(config: Any, written: dict[str, Any]) -> Any:
    """`config` with the embedding tying its checkpoint really has.

    InternVL's converter writes `tie_word_embeddings: false` inside `text_config` and nothing at
    the top level, where InternVLConfig then defaults to True: built from that config, the model
    would lack the checkpoint's separate lm_head (151,936 x 1,024 parameters in InternVL3.5-1B).
    Where the top level is silent, the text tower's written setting is the checkpoint's.
    """
    text = written.get("text_config") or {}
    if "tie_word_embeddings" not in written and "tie_word_embeddings" in text:
        config.tie_word_embeddings = bool(text["tie_word_embeddings"])
    return config


def family_for_model_type(model_type: str) -> BackboneFamily:
    for family in FAMILIES.values():
        if model_type in family.model_types:
            return family
    known = sorted(t for f in FAMILIES.values() for t in f.model_types)
    raise GeolocError(f"unsupported backbone model_type {model_type!r}; supported: {', '.join(known)}")


def config_from_dict(data: Any, where: str | Path) -> Any:
    """A transformers config from a config.json's contents, with the model_type checked first and
    the embedding tying its checkpoint has (`tie_as_written`)."""
    from transformers import CONFIG_MAPPING

    if not isinstance(data, dict) or not isinstance(data.get("model_type"), str):
        raise GeolocError(f"{where}: not a transformers config.json (no 'model_type' field)")
    family_for_model_type(data["model_type"])  # an unsupported backbone is refused by name
    try:
        # Not `from_dict`: its eager debug log builds a default config, which warns spuriously.
        config = CONFIG_MAPPING[data["model_type"]](**copy.deepcopy(data))  # the caller keeps `data`
    except (KeyError, TypeError, ValueError) as error:
        raise GeolocError(f"{where}: invalid {data['model_type']} config ({error})") from error
    return tie_as_written(config, data)


def config_from_file(path: Path) -> Any:
    """A transformers config from a `config.json` file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise GeolocError(f"{path}: cannot read a model config ({error})") from error
    return config_from_dict(data, path)


def config_from_source(source: str | Path) -> Any:
    """The config of a model folder or Hugging Face id (local cache or hub), read once.

    The file's own contents are read (never code shipped with it); OSError / ValueError when it
    cannot be found, for the caller to say what it was looking for.
    """
    from transformers import PretrainedConfig

    data, _ = PretrainedConfig.get_config_dict(str(source))
    return config_from_dict(data, source)
