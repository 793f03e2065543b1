"""MllmEncoder: one MLLM that turns text queries and satellite tiles into unit vectors.

    encoder = MllmEncoder.load("tiny-smolvlm")            # or an HF id, a model folder, a run dir
    text_vectors = encoder.encode_text(["a red building by a pond"])
    tile_vectors = encoder.encode_images(["tiles/0001.png"])
    scores = text_vectors @ tile_vectors.T

A text goes in as raw tokens (truncated at `max_text_tokens`), a tile as the family's image
placeholder plus pixels (square, no splitting). Both sides pass through the same backbone and the
same pooling; the result is L2-normalised float32. `MllmEncoder.load` loads MLLMs only; a source
that may be either kind goes through `geoloc.load_encoder`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from PIL import Image
from torch import nn

from geoloc.choices import Pooling, check_choice
from geoloc.encoder.base import FeatureSource
from geoloc.encoder.families import EncoderKind, MllmFamily, family_named
from geoloc.encoder.inputs import TextInputs, TileProcessor
from geoloc.encoder.pooling import build_pooling
from geoloc.encoder.sources import LoadableEncoder, Parts
from geoloc.encoder.spec import EncoderSpec, split_template
from geoloc.errors import ConfigError, GeolocError


class MllmEncoder(LoadableEncoder):
    kind: ClassVar[EncoderKind] = "mllm"

    def __init__(
        self,
        backbone: nn.Module,
        tokenizer: Any,
        image_processor: Any,
        spec: EncoderSpec,
        tile_features: FeatureSource | None = None,
    ):
        """`tile_features`: a TileFeatureStore (tile_features.py) that encode_images reads tile
        files through, when the vision side is frozen and its features are kept on disk; None
        computes them."""
        super().__init__(backbone, tokenizer, image_processor, spec)
        self._family = family_named(spec.family, MllmFamily)
        self.tile_features = tile_features
        if spec.padding_side not in ("left", "right"):
            raise GeolocError(f"padding_side must be 'left' or 'right', not {spec.padding_side!r}")
        hidden = self.config.text_config.hidden_size
        if spec.max_text_tokens < 1:
            raise ConfigError(f"max_text_tokens must be at least 1, not {spec.max_text_tokens}")
        check_choice(spec.pooling, Pooling, "pooling")
        try:
            self.pooler = build_pooling(spec.pooling, hidden, spec.query_tokens, spec.query_heads)
        except ValueError as error:  # e.g. query_heads not dividing the hidden size
            raise ConfigError(str(error)) from error
        text_prefix, text_suffix = split_template(spec.text_template, "{text}", "text")
        self.text_builder = TextInputs(
            tokenizer,
            self._token_ids(text_prefix),
            self._token_ids(text_suffix),
            limit=spec.max_text_tokens,
            padding_side=spec.padding_side,
        )
        self.tile_processor = TileProcessor.for_processor(
            image_processor,
            self.image_size,
            spec.preprocessing,
            image_axis=self.family.pixels_have_image_axis,
            nudge_all_zero=self.family.drops_all_zero_images,
            released_kwargs=self.family.image_processor_kwargs,
        )
        image_prefix, image_suffix = split_template(spec.image_template, "{image}", "image")
        self._image_ids = self._token_ids(image_prefix + self.family.placeholder(self.config) + image_suffix)

    def rebuilt(
        self, spec: EncoderSpec | None = None, tile_features: FeatureSource | None = None
    ) -> MllmEncoder:
        """An encoder on these same weights (backbone and pooling head, shared, not copied) with
        another spec's input templates, or reading tile features from `tile_features`; this one
        is left as it is."""
        spec = spec or self.spec
        pooling = ("pooling", "query_tokens", "query_heads", "family", "tuning")
        if any(getattr(spec, name) != getattr(self.spec, name) for name in pooling):
            raise GeolocError("a rebuilt encoder keeps its weights: only input settings may change")
        other = MllmEncoder(
            self.backbone,
            self.tokenizer,
            self.image_processor,
            spec,
            tile_features=self.tile_features if tile_features is None else tile_features,
        )
        other.pooler = self.pooler
        return other.train(self.training)

    # -- structure ---------------------------------------------------------------------------
    @property
    def family(self) -> MllmFamily:
        return self._family

    @property
    def embedding_dim(self) -> int:
        return self.config.text_config.hidden_size

    @property
    def text_tower_path(self) -> str:
        """The language model, where the family registry says it is."""
        return self.family.llm_path

    def trained_state(self) -> dict[str, torch.Tensor]:
        return super().trained_state() | {f"pooler.{k}": v for k, v in self.pooler.state_dict().items()}

    # -- inputs ------------------------------------------------------------------------------
    has_tile_features = True

    def image_token_inputs(self, count: int) -> dict[str, torch.Tensor]:
        """Token ids of `count` tiles: every tile is the same placeholder sequence."""
        ids = torch.tensor([self._image_ids] * count, dtype=torch.long).reshape(count, len(self._image_ids))
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    # -- forward -----------------------------------------------------------------------------
    def image_features(self, pixel_inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Projected vision features of tiles, (tiles, visual tokens, hidden): what the LLM reads.

        When neither the vision tower nor the projector is adapted these are fixed per tile, and
        the trainer may compute them once (see tile_features.py).
        """
        pixels = {
            k: v.to(self.device, non_blocking=True) for k, v in pixel_inputs.items() if k.startswith("pixel")
        }
        # uint8 pixels from the input pipeline are normalised here, on the model's device.
        pixels["pixel_values"] = self.tile_processor.model_pixels(pixels["pixel_values"]).to(self.dtype)
        core: Any = self.base_model.base_model  # the family's model class: get_image_features is its own
        out = core.get_image_features(**pixels, **self.family.image_feature_kwargs(self.config))
        tiles = pixels["pixel_values"].shape[0]
        return feature_grid(out, tiles, self.family.image_seq_len(self.config))

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Normalised embeddings of a prepared batch: text inputs, or image tokens plus pixels or
        precomputed `image_features`."""
        ids = inputs["input_ids"].to(self.device, non_blocking=True)
        mask = inputs["attention_mask"].to(self.device, non_blocking=True)
        core: Any = self.base_model.base_model  # the model without its language-model head
        if "pixel_values" in inputs:
            features = self.image_features(inputs)
        else:
            features = inputs.get("image_features")
        # Positions count real tokens only, so a left-padded row sees the same positions as the
        # right-padded one (without them, left padding shifts every rotary position).
        positions = (mask.cumsum(dim=-1) - 1).clamp(min=0)
        if features is None:
            hidden = core(
                input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False
            ).last_hidden_state
        else:
            # The image placeholder tokens' embeddings are replaced by the tiles' features, as the
            # model itself does; both paths (pixels, cached features) go through this one line.
            embeds = core.get_input_embeddings()(ids)
            slots = (ids == self.config.image_token_id).unsqueeze(-1)
            embeds = embeds.masked_scatter(slots, features.to(embeds.device, embeds.dtype))
            hidden = core(
                inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=False
            ).last_hidden_state
        pooled = self.pooler(hidden, mask)
        return nn.functional.normalize(pooled.float(), dim=-1)

    def tile_batches(
        self,
        tiles: Sequence[str | Path | Image.Image],
        batch_size: int = 16,
        num_workers: int | str = "auto",
        records: Sequence[str] | None = None,
    ) -> Iterator[dict[str, torch.Tensor]]:
        """As Encoder.tile_batches; tile files come as their stored features when this encoder
        reads them from a TileFeatureStore."""
        paths = [Path(t) for t in tiles if isinstance(t, (str, Path))]
        if self.tile_features is None or len(paths) != len(tiles):
            yield from super().tile_batches(tiles, batch_size, num_workers, records)
            return
        for start in range(0, len(paths), batch_size):
            chunk = paths[start : start + batch_size]
            features = self.tile_features.features(chunk)
            yield self.image_token_inputs(len(chunk)) | {"image_features": features}

    # -- saving and loading ------------------------------------------------------------------
    def _save_extra(self, folder: Path) -> None:
        pooler_state = self.pooler.state_dict()
        if pooler_state:
            from safetensors.torch import save_file

            save_file(
                {k: v.contiguous() for k, v in pooler_state.items()}, str(folder / "pooling.safetensors")
            )

    @classmethod
    def from_parts(cls, parts: Parts, trainable: bool) -> MllmEncoder:
        encoder = cls(parts.backbone, parts.tokenizer, parts.image_processor, parts.spec)
        if parts.saved is not None:
            pooling_file = parts.saved / "pooling.safetensors"
            if pooling_file.is_file():
                from safetensors.torch import load_file

                encoder.pooler.load_state_dict(load_file(str(pooling_file)))
            encoder.pooler.requires_grad_(trainable)
        encoder.pooler.to(torch.float32 if parts.torch_dtype == torch.float16 else parts.torch_dtype)
        return encoder


def feature_grid(output: Any, tiles: int, tokens_per_tile: int) -> torch.Tensor:
    """The projected features that `get_image_features` returned, as (tiles, tokens, hidden).

    transformers releases return them in different shapes: a tensor of (tiles, tokens, hidden)
    or (tiles * tokens, hidden), inside a ModelOutput or not, or (Idefics3 and SmolVLM from 5.24
    on) a list of one (tokens, hidden) tensor per sample. Every form holds the same rows in the
    same order, so they are flattened to rows and regrouped per tile.
    """
    features = getattr(output, "pooler_output", output)
    if isinstance(features, torch.Tensor):
        parts = [features]
    elif isinstance(features, (list, tuple)) and all(isinstance(f, torch.Tensor) for f in features):
        parts = list(features)
    else:
        raise GeolocError(f"unexpected image features from the backbone: {type(features).__name__}")
    rows = torch.cat([part.reshape(-1, part.shape[-1]) for part in parts])
    if rows.shape[0] != tiles * tokens_per_tile:
        raise GeolocError(
            f"the backbone gave {rows.shape[0]} image feature rows for {tiles} tiles; expected "
            f"{tokens_per_tile} per tile"
        )
    return rows.reshape(tiles, tokens_per_tile, rows.shape[-1])


# The class's name before the dual encoder joined it: both are geo encoders, this one is the MLLM's.
# Kept so that code written against the older name runs.
GeoEncoder = MllmEncoder
