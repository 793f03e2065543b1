"""Backbone families: everything geoloc needs to know about a backbone architecture, as data.

One registry serves both encoder kinds. Every family says which transformers class it is, which
`config.model_type` values it serves, where its text and vision sides live in the module tree
(adapters are targeted by module path), and its named adapter target sets. An MLLM family
(`MllmFamily`, the `MllmEncoder`) adds how a tile is written into the token sequence (its image
placeholder) and how pixels are prepared (square resize, no splitting); a two-tower family
(`DualFamily`, the CLIP / SigLIP `DualEncoder`) adds the text conventions its tower was trained
with. Adding a backbone means adding an entry here, not an `if` elsewhere.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from geoloc.errors import GeolocError

EncoderKind = Literal["mllm", "dual"]
# How an error names each kind.
KIND_NAMES: dict[EncoderKind, str] = {"mllm": "an MLLM", "dual": "a CLIP / SigLIP dual encoder"}

# The released recipe matches these names anywhere in an MLLM: both towers' attention and the
# LLM's down_proj (InternVL's vision output projection is `projection_layer`, so it is not hit).
PAPER_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "out_proj", "down_proj")


def _escape_path(path: str) -> str:
    return path.replace(".", r"\.")


@dataclass(frozen=True)
class BackboneFamily:
    """What every family states, whichever encoder it serves."""

    kind: ClassVar[EncoderKind]
    name: str
    model_types: tuple[str, ...]  # transformers `config.model_type` values this family serves
    model_class: str  # transformers class name, loaded with from_pretrained / from_config
    # Module path of the vision tower inside the loaded model.
    vision_path: str

    def transformers_class(self) -> Any:
        """The transformers model class this family loads and builds."""
        import transformers

        return getattr(transformers, self.model_class)

    def image_size(self, config: Any) -> int:
        """The side of the square a tile is resized to."""
        size = config.vision_config.image_size
        return int(size[0] if isinstance(size, (list, tuple)) else size)

    def adapter_targets(self) -> dict[str, list[str]]:
        """Named adapter target sets (tuning.TARGET_SETS): full-path regexes of the linears each
        set adapts in this family's module tree."""
        raise NotImplementedError


@dataclass(frozen=True)
class MllmFamily(BackboneFamily):
    kind: ClassVar[EncoderKind] = "mllm"
    # Module path of the language model inside the loaded `*ForConditionalGeneration` model.
    llm_path: str
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

    @property
    def decoder_layers_path(self) -> str:
        """The module path of the language model's decoder layers (a ModuleList)."""
        return f"{self.llm_path}.layers"

    def image_seq_len(self, config: Any) -> int:
        """Number of visual tokens one square, unsplit image becomes."""
        return self.visual_tokens(config)

    def placeholder(self, config: Any) -> str:
        return self.image_prefix + self.image_token * self.image_seq_len(config) + self.image_suffix

    def adapter_targets(self) -> dict[str, list[str]]:
        layers = _escape_path(self.decoder_layers_path)
        llm_attn = rf"{layers}\.\d+\.self_attn\.(q_proj|k_proj|v_proj|o_proj)"
        llm_mlp = rf"{layers}\.\d+\.mlp\.(gate_proj|up_proj|down_proj)"
        return {
            "llm-attn": [llm_attn],
            "llm-attn-mlp": [llm_attn, llm_mlp],
            "vision-attn": [rf"{_escape_path(self.vision_path)}\.{self.vision_attention}"],
            "paper": [rf".*\.({'|'.join(PAPER_NAMES)})"],
        }


@dataclass(frozen=True)
class DualFamily(BackboneFamily):
    kind: ClassVar[EncoderKind] = "dual"
    # Module path of the text tower: it plays the LLM's part in the adapter target sets.
    text_path: str
    starts_with_bos: bool  # a start token before every text
    pad_to_max: bool  # pad every text to the tower's full length (SigLIP was trained so)
    attention_mask: bool  # whether the text tower gets an attention mask

    def embedding_dim(self, config: Any) -> int:
        return int(getattr(config, "projection_dim", None) or config.text_config.projection_size)

    def adapter_targets(self) -> dict[str, list[str]]:
        # "paper" matches the released recipe's names (q/k/v/out projections) in both towers'
        # encoder layers (neither tower has a `down_proj`).
        attention = r"encoder\.layers\.\d+\.self_attn\.(q_proj|k_proj|v_proj|out_proj)"
        mlp = r"encoder\.layers\.\d+\.mlp\.(fc1|fc2)"
        text, vision = _escape_path(self.text_path), _escape_path(self.vision_path)
        return {
            "llm-attn": [rf"{text}\.{attention}"],
            "llm-attn-mlp": [rf"{text}\.{attention}", rf"{text}\.{mlp}"],
            "vision-attn": [rf"{vision}\.{attention}"],
            "paper": [rf"({text}|{vision})\.{attention}"],
        }


def _idefics3_seq_len(config: Any) -> int:
    v = config.vision_config
    return (v.image_size // v.patch_size) ** 2 // (config.scale_factor**2)


def _internvl_seq_len(config: Any) -> int:
    v = config.vision_config
    size = v.image_size[0] if isinstance(v.image_size, (list, tuple)) else v.image_size
    patch = v.patch_size[0] if isinstance(v.patch_size, (list, tuple)) else v.patch_size
    return int((size // patch) ** 2 * config.downsample_ratio**2)


SMOLVLM = MllmFamily(
    name="smolvlm",
    model_types=("idefics3",),
    model_class="Idefics3ForConditionalGeneration",
    llm_path="model.text_model",
    vision_path="model.vision_model",
    vision_attention=r"encoder\.layers\.\d+\.self_attn\.(q_proj|k_proj|v_proj|out_proj)",
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
INTERNVL = MllmFamily(
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
CLIP = DualFamily(
    name="clip",
    model_types=("clip",),
    model_class="CLIPModel",
    text_path="text_model",
    vision_path="vision_model",
    starts_with_bos=True,
    pad_to_max=False,
    attention_mask=True,
)
SIGLIP = DualFamily(
    name="siglip",
    model_types=("siglip",),
    model_class="SiglipModel",
    text_path="text_model",
    vision_path="vision_model",
    starts_with_bos=False,
    pad_to_max=True,
    attention_mask=False,
)

FAMILIES: dict[str, BackboneFamily] = {f.name: f for f in (SMOLVLM, SMOLVLM2, INTERNVL, CLIP, SIGLIP)}


def family_of_model_type(model_type: Any) -> BackboneFamily | None:
    """The family, of either kind, that serves a transformers `model_type`, or None."""
    return next((f for f in FAMILIES.values() if model_type in f.model_types), None)


F = TypeVar("F", bound=BackboneFamily)


def _family_for(model_type: str, kind: type[F]) -> F:
    family = family_of_model_type(model_type)
    if isinstance(family, kind):
        return family
    known = sorted(t for f in FAMILIES.values() if isinstance(f, kind) for t in f.model_types)
    raise GeolocError(f"unsupported backbone model_type {model_type!r}; supported: {', '.join(known)}")


def family_named(name: str, kind: type[F]) -> F:
    """The family of this name and kind (a saved spec's `family`); KeyError if there is none."""
    family = FAMILIES[name]
    if not isinstance(family, kind):
        raise KeyError(name)
    return family


def family_for_model_type(model_type: str) -> MllmFamily:
    """The MLLM family that serves a transformers `model_type`; any other is refused by name."""
    return _family_for(model_type, MllmFamily)


def backbone_family_for_model_type(model_type: str) -> BackboneFamily:
    """The family, of either kind, that serves a transformers `model_type`; refused if none."""
    return _family_for(model_type, BackboneFamily)


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


def config_from_dict(data: Any, where: str | Path) -> Any:
    """A transformers config from a config.json's contents, with the model_type checked first (a
    family of either kind) and the embedding tying its checkpoint has (`tie_as_written`)."""
    from transformers import AutoConfig

    if not isinstance(data, dict) or not isinstance(data.get("model_type"), str):
        raise GeolocError(f"{where}: not a transformers config.json (no 'model_type' field)")
    backbone_family_for_model_type(data["model_type"])  # an unsupported backbone is refused by name
    values = copy.deepcopy(data)  # the caller keeps `data`
    try:
        # Not `from_dict`: its eager debug log builds a default config, which warns spuriously.
        config = AutoConfig.for_model(values.pop("model_type"), **values)
    except (TypeError, ValueError) as error:
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
