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

from typing import Any, ClassVar

import torch
from torch import nn

from geoloc.encoder.base import FeatureSource
from geoloc.encoder.families import DualFamily, EncoderKind, family_named
from geoloc.encoder.inputs import TextInputs, TileProcessor
from geoloc.encoder.sources import LoadableEncoder, Parts
from geoloc.encoder.spec import EncoderSpec, split_template
from geoloc.errors import ConfigError, GeolocError

# The contrastive scale (and SigLIP's bias) of the pretrained loss: the InfoNCE loss has its own,
# so these stay frozen whatever the tuning.
_LOSS_PARAMETERS = ("logit_scale", "logit_bias")


class DualEncoder(LoadableEncoder):
    kind: ClassVar[EncoderKind] = "dual"

    def __init__(self, backbone: nn.Module, tokenizer: Any, image_processor: Any, spec: EncoderSpec):
        super().__init__(backbone, tokenizer, image_processor, spec)
        self._family = family_named(spec.family, DualFamily)
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
        prefix, suffix = split_template(spec.text_template, "{text}", "text")
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

    def rebuilt(
        self, spec: EncoderSpec | None = None, tile_features: FeatureSource | None = None
    ) -> DualEncoder:
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
    def family(self) -> DualFamily:
        return self._family

    @property
    def embedding_dim(self) -> int:
        return self.family.embedding_dim(self.config)

    @property
    def text_tower_path(self) -> str:
        return self.family.text_path

    # -- forward -----------------------------------------------------------------------------
    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Normalised embeddings of a batch: pixels go to the vision tower, tokens to the text one."""
        inputs = {k: v.to(self.device, non_blocking=True) for k, v in inputs.items()}
        # Adapters are injected into its layers, so they run here too. The tower methods are the
        # family's class's own (CLIPModel, SiglipModel), not PreTrainedModel's.
        model: Any = self.base_model
        if "pixel_values" in inputs:
            pixels = self.tile_processor.model_pixels(inputs["pixel_values"])  # uint8 -> normalised
            out = model.get_image_features(pixel_values=pixels.to(self.dtype))
        else:
            out = model.get_text_features(**inputs)
        return nn.functional.normalize(out.pooler_output.float(), dim=-1)

    # -- loading -----------------------------------------------------------------------------
    @classmethod
    def from_parts(cls, parts: Parts, trainable: bool) -> DualEncoder:
        for name in _LOSS_PARAMETERS:
            parameter = getattr(parts.backbone, name, None)
            if isinstance(parameter, nn.Parameter):
                parameter.requires_grad_(False)
        return cls(parts.backbone, parts.tokenizer, parts.image_processor, parts.spec)
