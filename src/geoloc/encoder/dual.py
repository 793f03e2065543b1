"""DualEncoder: a CLIP / SigLIP two-tower baseline behind the encoder interface (geoloc.encoder.base).

    encoder = load_encoder("tiny-clip")       # or "openai/clip-vit-base-patch16", a saved model, a run
    text_vectors = encoder.encode_text(["a red building by a pond"])
    tile_vectors = encoder.encode_images(["tiles/0001.png"])

The paper's question "MLLM vs dual encoder" is then one config switch (`model.backbone`): the same
trainer, losses, evaluation and saved-model layout serve both. A text goes through the text tower
and a tile through the vision tower; each tower's own pooled, projected output is the embedding
(CLIP: the end-of-text token and the class token; SigLIP: the last position and the attention-
pooling head), L2-normalised. `pooling` is therefore always "eos": the model's own pooling.

The towers keep the input conventions they were pretrained with: CLIP writes a start and an end
token around every text and pads on the right with an attention mask; SigLIP appends an end token,
pads every text to its full length (64) and passes no attention mask, as its processor does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from geoloc.encoder.base import (
    SPEC_FILE,
    Encoder,
    EncoderSpec,
    attach_saved_adapter,
    hub_processing,
    new_spec,
    read_saved_spec,
    resolve_device,
    resolve_dtype,
    saved_backbone_source,
    saved_encoder_dir,
)
from geoloc.encoder.families import BackboneFamily
from geoloc.encoder.inputs import TextInputs, TileProcessor
from geoloc.encoder.presets import DUAL_PRESETS, PRESETS, dual_preset_model, dual_preset_processing
from geoloc.encoder.tuning import TuningConfig, apply_tuning, matching_modules
from geoloc.errors import ConfigError, GeolocError
from geoloc.versions import warn_if_untested


@dataclass(frozen=True)
class DualFamily:
    name: str
    model_type: str  # transformers `config.model_type`
    model_class: str
    starts_with_bos: bool  # a start token before every text
    pad_to_max: bool  # pad every text to the tower's full length (SigLIP was trained so)
    attention_mask: bool  # whether the text tower gets an attention mask

    def embedding_dim(self, config: Any) -> int:
        return int(getattr(config, "projection_dim", None) or config.text_config.projection_size)


CLIP = DualFamily("clip", "clip", "CLIPModel", starts_with_bos=True, pad_to_max=False, attention_mask=True)
SIGLIP = DualFamily(
    "siglip", "siglip", "SiglipModel", starts_with_bos=False, pad_to_max=True, attention_mask=False
)
DUAL_FAMILIES: dict[str, DualFamily] = {f.name: f for f in (CLIP, SIGLIP)}

# Adapter targets by full module path. The MLLM target names map onto the two towers: the text
# tower plays the LLM's part; "paper" matches the released recipe's names (q/k/v/out projections)
# in both towers' encoder layers (neither tower has a `down_proj`).
_ATTENTION = r"encoder\.layers\.\d+\.self_attn\.(q_proj|k_proj|v_proj|out_proj)"
_MLP = r"encoder\.layers\.\d+\.mlp\.(fc1|fc2)"
DUAL_TARGETS: dict[str, list[str]] = {
    "llm-attn": [rf"text_model\.{_ATTENTION}"],
    "llm-attn-mlp": [rf"text_model\.{_ATTENTION}", rf"text_model\.{_MLP}"],
    "vision-attn": [rf"vision_model\.{_ATTENTION}"],
    "paper": [rf"(text_model|vision_model)\.{_ATTENTION}"],
}
# apply_tuning takes an MLLM family only to resolve named target sets; a "re:" target bypasses
# that, so this stand-in is never read for anything but its paths.
_TWO_TOWERS = BackboneFamily(
    name="two-towers",
    model_types=(),
    model_class="",
    llm_path="text_model",
    vision_path="vision_model",
    vision_attention=_ATTENTION,
    image_prefix="",
    image_token="",
    image_suffix="",
    chat_image_mark="",
    visual_tokens=lambda config: 0,
)
# The contrastive scale (and SigLIP's bias) of the pretrained loss: the InfoNCE loss has its own.
_LOSS_PARAMETERS = ("logit_scale", "logit_bias")


def dual_target_regex(targets: str) -> str:
    """A regex fully matching the module paths of the chosen adapter targets in a dual encoder."""
    if targets.startswith("re:"):
        return targets[3:]
    chosen: list[str] = []
    for name in targets.split("+"):
        if name not in DUAL_TARGETS:
            raise ConfigError(
                f"unknown adapter targets {name!r} for a dual encoder; choose from "
                f"{', '.join(DUAL_TARGETS)} (join several with '+'), or 're:<regex>'"
            )
        chosen.extend(DUAL_TARGETS[name])
    return "|".join(f"(?:{p})" for p in chosen)


def apply_dual_tuning(model: nn.Module, tuning: TuningConfig) -> nn.Module:
    """The shared adapter code (apply_tuning) with the dual encoder's target map."""
    regex = dual_target_regex(tuning.targets)
    if tuning.strategy in ("lora", "dora") and not matching_modules(model, regex):
        raise ConfigError(f"adapter targets {tuning.targets!r} match no linear layer of this dual encoder")
    tuned = apply_tuning(model, _TWO_TOWERS, replace(tuning, targets=f"re:{regex}"))
    for name in _LOSS_PARAMETERS:
        parameter = getattr(model, name, None)
        if isinstance(parameter, nn.Parameter):
            parameter.requires_grad_(False)
    return tuned


def dual_family(source: str | Path) -> DualFamily | None:
    """The dual family `source` is (a preset, a saved encoder or run, a model folder / HF id), or None."""
    saved = saved_encoder_dir(source)
    if saved is not None:
        try:
            family = json.loads((saved / SPEC_FILE).read_text(encoding="utf-8")).get("family")
        except (OSError, ValueError, AttributeError):
            return None  # loading it reports the unreadable file
        return DUAL_FAMILIES.get(family)
    text = str(source)
    if text in DUAL_PRESETS:
        return DUAL_FAMILIES[DUAL_PRESETS[text].family]
    if text in PRESETS:
        return None
    config_file = _config_on_disk(text)
    if config_file is None:
        return None  # the MLLM loader fetches it if it can, or says why not
    try:
        model_type = json.loads(config_file.read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None
    return next((f for f in DUAL_FAMILIES.values() if f.model_type == model_type), None)


def _config_on_disk(source: str) -> Path | None:
    """A model folder's config.json, or an HF id's from the local cache: never the network.

    Asking the hub here would double the wait before an unreachable id's error, since
    the MLLM loader asks again; so a dual encoder by HF id needs its files on disk.
    """
    folder = Path(source)
    if folder.is_dir():
        return folder / "config.json" if (folder / "config.json").is_file() else None
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(source, "config.json")
    except ValueError:  # not a valid repository id
        return None
    return Path(cached) if isinstance(cached, str) else None


class DualEncoder(Encoder):
    def __init__(self, backbone: nn.Module, tokenizer: Any, image_processor: Any, spec: EncoderSpec):
        super().__init__()
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.spec = spec
        self.family = DUAL_FAMILIES[spec.family]
        if spec.pooling != "eos":
            raise ConfigError(
                f"pooling {spec.pooling!r} is for MLLMs; a dual encoder ({spec.family}) uses its own "
                "pooled output: set model.pooling to 'eos'"
            )
        if spec.padding_side != "right":
            raise ConfigError("a dual encoder pads texts on the right: set model.padding_side to 'right'")
        if spec.image_template != "{image}":
            raise ConfigError("a dual encoder has no image prompt: leave model.image_template as '{image}'")
        if spec.max_text_tokens < 1:
            raise ConfigError(f"max_text_tokens must be at least 1, not {spec.max_text_tokens}")
        prefix, suffix = _split_text_template(spec.text_template)
        start = [tokenizer.bos_token_id] if self.family.starts_with_bos else []
        text_prefix = start + self._token_ids(prefix)
        text_suffix = self._token_ids(suffix) + [tokenizer.eos_token_id]
        max_length = int(self.config.text_config.max_position_embeddings)
        room = max_length - len(text_prefix) - len(text_suffix)
        if room < 1:
            raise ConfigError(f"text template {spec.text_template!r} leaves no room for the text")
        self.text_builder = TextInputs(
            tokenizer,
            text_prefix,
            text_suffix,
            limit=min(room, spec.max_text_tokens),
            fixed_length=max_length if self.family.pad_to_max else None,
            with_attention_mask=self.family.attention_mask,
        )
        self.tile_processor = TileProcessor.for_processor(
            image_processor, self.image_size, spec.preprocessing
        )

    def rebuilt(self, spec: EncoderSpec | None = None, tile_features: Any = None) -> DualEncoder:
        """An encoder on these same weights with another spec's text template; a dual encoder
        has no tile features to read."""
        spec = spec or self.spec
        if tile_features is not None:
            raise GeolocError("a dual encoder has no tile features to read from a store")
        if spec.family != self.spec.family or spec.tuning != self.spec.tuning:
            raise GeolocError("a rebuilt encoder keeps its weights: only input settings may change")
        return DualEncoder(self.backbone, self.tokenizer, self.image_processor, spec).train(self.training)

    # -- structure ---------------------------------------------------------------------------
    @property
    def image_size(self) -> int:
        size = self.config.vision_config.image_size
        return int(size[0] if isinstance(size, (list, tuple)) else size)

    @property
    def embedding_dim(self) -> int:
        return self.family.embedding_dim(self.config)

    @property
    def text_tower(self) -> nn.Module:
        return self.base_model.text_model

    # -- forward -----------------------------------------------------------------------------
    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Normalised embeddings of a batch: pixels go to the vision tower, tokens to the text one."""
        inputs = {k: v.to(self.device, non_blocking=True) for k, v in inputs.items()}
        model = self.base_model  # adapters are injected into its layers, so they run here too
        if "pixel_values" in inputs:
            pixels = self.tile_processor.model_pixels(inputs["pixel_values"])  # uint8 -> normalised
            out = model.get_image_features(pixel_values=pixels.to(self.dtype))
        else:
            out = model.get_text_features(**inputs)
        return nn.functional.normalize(out.pooler_output.float(), dim=-1)

    # -- loading -----------------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        source: str | Path,
        device: str | None = "cpu",
        dtype: str = "float32",
        spec_overrides: dict[str, Any] | None = None,
        trainable: bool = False,
    ) -> DualEncoder:
        """Load from a dual preset, an HF id or model folder, a saved dual encoder, or a run directory."""
        warn_if_untested()
        torch_dtype = resolve_dtype(dtype)
        saved = saved_encoder_dir(source)
        if saved is not None:
            encoder = _load_saved(saved, torch_dtype, trainable)
        else:
            spec = new_spec(source, spec_overrides)
            model, family = _load_model(str(source), torch_dtype)
            spec.family = family.name
            tokenizer, image_processor = _load_processing(str(source))
            encoder = cls(apply_dual_tuning(model, spec.tuning), tokenizer, image_processor, spec)
        return encoder.to(resolve_device(device))


def _split_text_template(template: str) -> tuple[str, str]:
    if template.count("{text}") != 1:
        raise GeolocError(f"text template {template!r} must contain {{text}} exactly once")
    prefix, suffix = template.split("{text}")
    return prefix, suffix


def _load_model(source: str, torch_dtype: torch.dtype) -> tuple[nn.Module, DualFamily]:
    if source in DUAL_PRESETS:
        return dual_preset_model(source).to(torch_dtype), DUAL_FAMILIES[DUAL_PRESETS[source].family]
    import transformers
    from transformers import AutoConfig

    try:
        model_type = AutoConfig.from_pretrained(source, trust_remote_code=False).model_type
    except (OSError, ValueError) as error:
        raise GeolocError(f"cannot load dual encoder {source!r} ({error})") from error
    family = next((f for f in DUAL_FAMILIES.values() if f.model_type == model_type), None)
    if family is None:
        raise GeolocError(f"{source!r} is a {model_type!r} model, not a CLIP or SigLIP dual encoder")
    model_class = getattr(transformers, family.model_class)
    return model_class.from_pretrained(source, dtype=torch_dtype, use_safetensors=True), family


def _load_processing(source: str | Path) -> tuple[Any, Any]:
    if str(source) in DUAL_PRESETS:
        return dual_preset_processing(str(source))
    return hub_processing(source)


def _load_saved(path: Path, torch_dtype: torch.dtype, trainable: bool) -> DualEncoder:
    spec = read_saved_spec(path)
    model, _ = _load_model(saved_backbone_source(path, spec), torch_dtype)
    tokenizer, image_processor = _load_processing(path)
    model = attach_saved_adapter(model, path, spec, trainable)
    if spec.tuning.strategy not in ("lora", "dora"):
        for name in _LOSS_PARAMETERS:  # the model's own logit scale stays frozen
            parameter = getattr(model, name, None)
            if isinstance(parameter, nn.Parameter):
                parameter.requires_grad_(False)
    encoder = DualEncoder(model, tokenizer, image_processor, spec)
    encoder.saved_folder = path
    return encoder
