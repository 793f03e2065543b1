"""GeoEncoder: one MLLM that turns text queries and satellite tiles into unit vectors.

    encoder = GeoEncoder.load("tiny-smolvlm")            # or an HF id, a model folder, a run dir
    text_vectors = encoder.encode_text(["a red building by a pond"])
    tile_vectors = encoder.encode_images(["tiles/0001.png"])
    scores = text_vectors @ tile_vectors.T

A text goes in as raw tokens (truncated at `max_text_tokens`), a tile as the family's image
placeholder plus pixels (square, no splitting). Both sides pass through the same backbone and the
same pooling; the result is L2-normalised float32.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from geoloc import atomic
from geoloc.encoder.families import FAMILIES, BackboneFamily, family_for_model_type, tie_as_written
from geoloc.encoder.pooling import POOLINGS, build_pooling
from geoloc.encoder.presets import PRESETS, preset_model, preset_processing
from geoloc.encoder.tuning import TuningConfig, apply_tuning, count_parameters
from geoloc.errors import ConfigError, GeolocError
from geoloc.versions import warn_if_untested

SPEC_FILE = "geoloc_encoder.json"
SAVED_BACKBONE = "backbone"  # a spec.backbone of this value means "the folder saved beside me"
FORMAT_VERSION = 1
DTYPES = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
}


@dataclass
class EncoderSpec:
    """How embeddings are made: saved with every model so that loading reproduces them."""

    backbone: str = "tiny-smolvlm"  # preset name, HF id, local folder (relative = inside the save)
    pooling: str = "eos"
    query_tokens: int = 4
    query_heads: int = 4
    text_template: str = "{text}"
    image_template: str = "{image}"
    max_text_tokens: int = 300
    padding_side: str = "right"
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


def _split_template(template: str, slot: str, what: str) -> tuple[str, str]:
    if template.count(slot) != 1:
        raise GeolocError(f"{what} template {template!r} must contain {slot} exactly once")
    prefix, suffix = template.split(slot)
    return prefix, suffix


def resolve_dtype(dtype: str) -> torch.dtype:
    """The torch dtype a dtype name (float32, bfloat16, float16) stands for; an unknown one is refused."""
    if dtype not in DTYPES:
        raise GeolocError(f"unknown dtype {dtype!r}; choose one of: {', '.join(DTYPES)}")
    return DTYPES[dtype]


def resolve_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise GeolocError(f"device {device!r} asked for, but no CUDA device is available")
    return torch.device(device)


class EncoderBase(nn.Module):
    """What every geoloc encoder shares (the MLLM GeoEncoder and the dual-encoder baseline): its
    structure, batched encoding to unit vectors, and the saved-folder layout.

    A subclass provides `text_inputs`, `image_inputs`, `forward` and `embedding_dim`; it may add
    files to a save with `_save_extra`, and change how tile files are prepared with `_prepare_images`.
    """

    backbone: nn.Module
    tokenizer: Any
    image_processor: Any
    spec: EncoderSpec

    # -- structure ---------------------------------------------------------------------------
    @property
    def base_model(self) -> nn.Module:
        """The transformers model, inside any adapter wrapper."""
        from peft import PeftModel

        return self.backbone.get_base_model() if isinstance(self.backbone, PeftModel) else self.backbone

    @property
    def config(self) -> Any:
        return self.base_model.config

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.backbone.parameters()).dtype

    @property
    def embedding_dim(self) -> int:
        raise NotImplementedError

    def parameter_counts(self) -> tuple[int, int]:
        return count_parameters(self)

    def _token_ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    # -- encoding ----------------------------------------------------------------------------
    @torch.inference_mode()
    def _encode(
        self, items: list[Any], prepare: Any, batch_size: int, show_progress: bool | None
    ) -> np.ndarray:
        was_training = self.training
        self.eval()
        batches = range(0, len(items), batch_size)
        if show_progress is None:
            show_progress = len(batches) > 20
        if show_progress:
            from tqdm.auto import tqdm

            batches = tqdm(batches, unit="batch", desc="encoding")
        out: list[np.ndarray] = []
        try:
            for start in batches:
                out.append(self(prepare(items[start : start + batch_size])).cpu().numpy())
        finally:
            self.train(was_training)
        if not out:
            return np.zeros((0, self.embedding_dim), np.float32)
        return np.concatenate(out).astype(np.float32)

    def encode_text(
        self, texts: list[str], batch_size: int = 32, show_progress: bool | None = None
    ) -> np.ndarray:
        if isinstance(texts, str):
            texts = [texts]
        return self._encode(list(texts), self.text_inputs, batch_size, show_progress)

    def _prepare_images(self, chunk: list[Any]) -> dict[str, torch.Tensor]:
        from geoloc.data.images import pil_from_any

        return self.image_inputs([pil_from_any(item) for item in chunk])

    def encode_images(
        self, images: list[str | Path | Image.Image], batch_size: int = 16, show_progress: bool | None = None
    ) -> np.ndarray:
        return self._encode(list(images), self._prepare_images, batch_size, show_progress)

    # -- saving --------------------------------------------------------------------------------
    def _save_extra(self, folder: Path) -> None:
        """Files a subclass adds to a saved folder (GeoEncoder: its pooling head)."""

    def save(self, path: str | Path) -> None:
        """Write a folder `GeoEncoder.load` reads back, atomically (all or nothing)."""
        from peft import PeftModel

        with atomic.atomic_dir(Path(path)) as tmp:
            spec = self.spec.to_dict()
            # A fully tuned backbone cannot be re-made from its source, so its weights are
            # saved; otherwise only adapters are, and the base comes from its source (presets
            # are deterministic, so they are a source too).
            if self.spec.tuning.strategy == "full" or self.spec.backbone == SAVED_BACKBONE:
                self.base_model.save_pretrained(tmp / SAVED_BACKBONE, safe_serialization=True)
                spec["backbone"] = SAVED_BACKBONE
            if isinstance(self.backbone, PeftModel):
                self.backbone.save_pretrained(tmp / "adapter", safe_serialization=True)
            self._save_extra(tmp)
            self.tokenizer.save_pretrained(tmp)
            self.image_processor.save_pretrained(tmp)
            atomic.write_json(tmp / SPEC_FILE, spec)


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


class GeoEncoder(EncoderBase):
    def __init__(self, backbone: nn.Module, tokenizer: Any, image_processor: Any, spec: EncoderSpec):
        super().__init__()
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.spec = spec
        self.family: BackboneFamily = FAMILIES[spec.family]
        # A TileFeatureStore (tile_features.py) that encode_images reads tile files through, when
        # the vision side is frozen and its features are kept on disk; None computes them.
        self.tile_features: Any = None
        if spec.padding_side not in ("left", "right"):
            raise GeolocError(f"padding_side must be 'left' or 'right', not {spec.padding_side!r}")
        hidden = self.config.text_config.hidden_size
        if spec.max_text_tokens < 1:
            raise ConfigError(f"max_text_tokens must be at least 1, not {spec.max_text_tokens}")
        if spec.pooling not in POOLINGS:
            raise ConfigError(f"unknown pooling {spec.pooling!r}; choose one of: {', '.join(POOLINGS)}")
        try:
            self.pooler = build_pooling(spec.pooling, hidden, spec.query_tokens, spec.query_heads)
        except ValueError as error:  # e.g. query_heads not dividing the hidden size
            raise ConfigError(str(error)) from error
        self._text_prefix, self._text_suffix = (
            self._token_ids(part) for part in _split_template(spec.text_template, "{text}", "text")
        )
        image_prefix, image_suffix = _split_template(spec.image_template, "{image}", "image")
        self._image_ids = self._token_ids(image_prefix + self.family.placeholder(self.config) + image_suffix)

    # -- structure ---------------------------------------------------------------------------
    @property
    def embedding_dim(self) -> int:
        return self.config.text_config.hidden_size

    @property
    def image_size(self) -> int:
        return self.family.image_size(self.config)

    # -- inputs ------------------------------------------------------------------------------
    def _pad(self, sequences: list[list[int]]) -> dict[str, torch.Tensor]:
        longest = max(len(s) for s in sequences)
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.full((len(sequences), longest), pad_id, dtype=torch.long)
        mask = torch.zeros((len(sequences), longest), dtype=torch.long)
        for row, seq in enumerate(sequences):
            span = (
                slice(0, len(seq))
                if self.spec.padding_side == "right"
                else slice(longest - len(seq), longest)
            )
            ids[row, span] = torch.tensor(seq, dtype=torch.long)
            mask[row, span] = 1
        return {"input_ids": ids, "attention_mask": mask}

    def text_inputs(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Token ids of raw texts, truncated at max_text_tokens; template parts never cut."""
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise GeolocError(f"text {i} is empty: every query needs some words")
        body = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        limit = self.spec.max_text_tokens
        return self._pad([self._text_prefix + ids[:limit] + self._text_suffix for ids in body])

    def pixel_inputs(self, images: list[Image.Image]) -> dict[str, torch.Tensor]:
        """Pixel tensors for RGB tiles, each resized to a square (no splitting, no tiling)."""
        size = self.image_size
        square = [im if im.size == (size, size) else im.resize((size, size), Image.BICUBIC) for im in images]
        return self.family.pixel_values(self.image_processor, square)

    def image_token_inputs(self, count: int) -> dict[str, torch.Tensor]:
        """Token ids of `count` tiles: every tile is the same placeholder sequence."""
        return self._pad([self._image_ids] * count)

    def image_inputs(self, images: list[Image.Image]) -> dict[str, torch.Tensor]:
        """Placeholder tokens plus pixels for RGB tiles."""
        return self.image_token_inputs(len(images)) | self.pixel_inputs(images)

    # -- forward -----------------------------------------------------------------------------
    def image_features(self, pixel_inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Projected vision features of tiles, (tiles, visual tokens, hidden): what the LLM reads.

        When neither the vision tower nor the projector is adapted these are fixed per tile, and
        the trainer may compute them once (see tile_features.py).
        """
        pixels = {k: v.to(self.device) for k, v in pixel_inputs.items() if k.startswith("pixel")}
        pixels["pixel_values"] = pixels["pixel_values"].to(self.dtype)
        core = self.base_model.model
        out = core.get_image_features(**pixels, **self.family.image_feature_kwargs(self.config))
        tiles = pixels["pixel_values"].shape[0]
        return feature_grid(out, tiles, self.family.image_seq_len(self.config))

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Normalised embeddings of a prepared batch: text inputs, or image tokens plus pixels or
        precomputed `image_features`."""
        ids = inputs["input_ids"].to(self.device)
        mask = inputs["attention_mask"].to(self.device)
        core = self.base_model.model  # the backbone without its language-model head
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

    def _prepare_images(self, chunk: list[Any]) -> dict[str, torch.Tensor]:
        if self.tile_features is not None and all(isinstance(i, (str, Path)) for i in chunk):
            features = self.tile_features.features(chunk)
            return self.image_token_inputs(len(chunk)) | {"image_features": features}
        return super()._prepare_images(chunk)

    # -- saving and loading ------------------------------------------------------------------
    def _save_extra(self, folder: Path) -> None:
        pooler_state = self.pooler.state_dict()
        if pooler_state:
            from safetensors.torch import save_file

            save_file(
                {k: v.contiguous() for k, v in pooler_state.items()}, str(folder / "pooling.safetensors")
            )

    @classmethod
    def load(
        cls,
        source: str | Path,
        device: str | None = "cpu",
        dtype: str = "float32",
        spec_overrides: dict[str, Any] | None = None,
        trainable: bool = False,
    ) -> GeoEncoder:
        """Load from a preset name, an HF id or model folder, a saved encoder, or a run directory.

        `spec_overrides` (pooling, templates, tuning, ...) apply when building a new encoder from
        a backbone; a saved encoder keeps the spec it was saved with.
        """
        warn_if_untested()
        torch_dtype = resolve_dtype(dtype)
        from geoloc.encoder.dual import DualEncoder, dual_family  # imported here: dual imports this module

        if dual_family(source) is not None:  # a CLIP / SigLIP backbone: the two-tower baseline
            return DualEncoder.load(source, device, dtype, spec_overrides, trainable)  # type: ignore[return-value]
        saved = saved_encoder_dir(source)
        if saved is not None:
            encoder = _load_saved(saved, torch_dtype, trainable)
        else:
            spec = new_spec(source, spec_overrides)
            backbone = _load_model(str(source), torch_dtype)
            tokenizer, image_processor = _load_processing(str(source))
            spec.family = family_for_model_type(backbone.config.model_type).name
            backbone = apply_tuning(backbone, FAMILIES[spec.family], spec.tuning)
            encoder = cls(backbone, tokenizer, image_processor, spec)
        encoder.pooler.to(torch_dtype if torch_dtype != torch.float16 else torch.float32)
        return encoder.to(resolve_device(device))


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


def saved_encoder_dir(source: str | Path) -> Path | None:
    """The saved encoder that `source` names: itself, or a run directory's best/ or final/."""
    path = Path(source)
    for candidate in (path, path / "best", path / "final"):
        if (candidate / SPEC_FILE).is_file():
            return candidate
    return None


def _load_model(source: str, torch_dtype: torch.dtype) -> nn.Module:
    """The transformers model from a preset name, an HF id or a model folder."""
    if source in PRESETS:
        return preset_model(source).to(torch_dtype)
    import transformers
    from transformers import AutoConfig, PretrainedConfig

    try:
        # Never run code shipped with a model (auto_map): refused without asking, not prompted.
        config = AutoConfig.from_pretrained(source, trust_remote_code=False)
    except (OSError, ValueError) as error:
        raise GeolocError(
            f"cannot load model {source!r}: not a preset ({', '.join(PRESETS)}), a saved geoloc model, "
            f"a model folder or a reachable Hugging Face id ({error})"
        ) from error
    family = family_for_model_type(config.model_type)
    config = tie_as_written(config, PretrainedConfig.get_config_dict(source)[0])
    model_class = getattr(transformers, family.model_class)
    try:  # safetensors only: a pickled pytorch_model.bin is never read
        return model_class.from_pretrained(
            source, config=config, dtype=torch_dtype, use_safetensors=True, trust_remote_code=False
        )
    except OSError as error:
        raise GeolocError(f"cannot load model {source!r}: {str(error).splitlines()[0]}") from error


def hub_processing(source: str | Path) -> tuple[Any, Any]:
    """(tokenizer, image processor) of an HF id or a folder; never code shipped with them."""
    from transformers import AutoImageProcessor, AutoTokenizer

    return (
        AutoTokenizer.from_pretrained(source, trust_remote_code=False),
        AutoImageProcessor.from_pretrained(source, trust_remote_code=False),
    )


def _load_processing(source: str | Path) -> tuple[Any, Any]:
    """(tokenizer, image processor) from a preset name, an HF id or a folder."""
    if str(source) in PRESETS:
        return preset_processing(str(source))
    return hub_processing(source)


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


def _load_saved(path: Path, torch_dtype: torch.dtype, trainable: bool) -> GeoEncoder:
    spec = read_saved_spec(path)
    model = _load_model(saved_backbone_source(path, spec), torch_dtype)
    tokenizer, image_processor = _load_processing(path)
    model = attach_saved_adapter(model, path, spec, trainable)
    encoder = GeoEncoder(model, tokenizer, image_processor, spec)
    pooling_file = path / "pooling.safetensors"
    if pooling_file.is_file():
        from safetensors.torch import load_file

        encoder.pooler.load_state_dict(load_file(str(pooling_file)))
    encoder.pooler.requires_grad_(trainable)
    return encoder
