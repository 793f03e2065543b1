"""The encoder interface: what every geoloc encoder shares.

Two encoders implement it: the MLLM `MllmEncoder` (geoloc.encoder.mllm, the paper's method) and
the CLIP / SigLIP `DualEncoder` baseline (geoloc.encoder.dual). `geoloc.load_encoder`
(geoloc.encoder.loading) resolves a source once and returns the right one, typed as `Encoder`.

    encoder = load_encoder("tiny-smolvlm")              # or an HF id, a model folder, a run dir
    text_vectors = encoder.encode_text(["a red building by a pond"])
    tile_vectors = encoder.encode_images(["tiles/0001.png"])
    scores = text_vectors @ tile_vectors.T             # both L2-normalised float32

Beside it: its settings (spec.py), the saved folder's layout (saved.py), and device and dtype
names (devices.py).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, cast

import numpy as np
import torch
from PIL import Image
from torch import nn

from geoloc import atomic
from geoloc.encoder import card
from geoloc.encoder.families import BackboneFamily, EncoderKind
from geoloc.encoder.inputs import Inputs, TextInputs, TileProcessor
from geoloc.encoder.saved import SAVED_BACKBONE, SPEC_FILE
from geoloc.encoder.spec import EncoderSpec
from geoloc.encoder.tuning import count_parameters

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel


class FeatureSource(Protocol):
    """Where an encoder with tile features reads them (tile_features.TileFeatureStore)."""

    def features(self, images: Sequence[str | Path], records: list[str] | None = None) -> torch.Tensor: ...


class Encoder(nn.Module):
    """What every geoloc encoder is: its structure, batched encoding to unit vectors, and the
    saved-folder layout.

    An encoder provides `forward`, `family`, `embedding_dim`, `text_tower_path`, `rebuilt`, and
    two picklable input builders, `text_builder` (texts -> token inputs) and `tile_processor`
    (a decoded tile -> pixels), which DataLoader workers run (data/pipeline.py). Callers build
    inputs through `text_inputs`, `pixel_inputs` and `image_token_inputs`, reach adapters
    through `adapter` and the trained weights through `trained_state`, and never ask which
    encoder they hold. It may add files to a save with `_save_extra`, and weights of its own to
    `trained_state`; one with `has_tile_features` provides `image_features`.
    """

    kind: ClassVar[EncoderKind]  # the kind of family (families.py) this encoder serves
    backbone: nn.Module
    tokenizer: Any
    image_processor: Any
    spec: EncoderSpec
    text_builder: TextInputs
    tile_processor: TileProcessor
    # Whether tile features can be computed once and read from disk (tile_features.py): only an
    # encoder that feeds projected vision features into a language model has them.
    has_tile_features: bool = False
    # The saved folder this encoder was loaded from, if any: a save elsewhere (an export) carries
    # that folder's base model, recipe and trained parameter counts into its card.
    saved_folder: Path | None = None

    # -- structure ---------------------------------------------------------------------------
    @property
    def family(self) -> BackboneFamily:
        """The backbone's family record (families.py); each encoder kind narrows it to its own."""
        raise NotImplementedError

    @property
    def adapter(self) -> PeftModel | None:
        """The peft wrapper around the backbone when adapters (LoRA / DoRA) are attached, else None."""
        from peft import PeftModel

        return self.backbone if isinstance(self.backbone, PeftModel) else None

    @property
    def base_model(self) -> PreTrainedModel:
        """The transformers model, inside any adapter wrapper: the family's model class."""
        adapter = self.adapter
        return cast("PreTrainedModel", adapter.get_base_model() if adapter is not None else self.backbone)

    def trained_state(self) -> dict[str, torch.Tensor]:
        """The weights training adds to the backbone: the adapters' (peft's state-dict keys),
        and any head of the encoder's own (the MLLM's pooling head, as `pooler.*`); empty for
        a bare backbone."""
        from peft import get_peft_model_state_dict

        adapter = self.adapter
        return dict(get_peft_model_state_dict(adapter)) if adapter is not None else {}

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
        """The width of the unit vectors the encoder returns."""
        raise NotImplementedError

    @property
    def image_size(self) -> int:
        """The side of the square a tile is resized to."""
        return self.family.image_size(self.config)

    @property
    def text_tower_path(self) -> str:
        """Where `text_tower` lies inside `base_model` (the family registry says)."""
        raise NotImplementedError

    @property
    def text_tower(self) -> nn.Module:
        """The module that encodes a query's tokens (the LLM, or the text tower): what int8
        serving quantises."""
        return self.base_model.get_submodule(self.text_tower_path)

    def rebuilt(self, spec: EncoderSpec | None = None, tile_features: FeatureSource | None = None) -> Encoder:
        """An encoder on these same weights with another spec's input settings (or, for an
        encoder with tile features, reading them from `tile_features`)."""
        raise NotImplementedError

    def text_inputs(self, texts: list[str]) -> Inputs:
        """Token ids (and attention mask) of raw query texts."""
        return self.text_builder(list(texts))

    def pixel_inputs(self, images: list[Image.Image]) -> Inputs:
        """Pixel tensors of decoded RGB tiles."""
        return self.tile_processor(images)

    def image_features(self, pixel_inputs: Inputs) -> torch.Tensor:
        """Projected vision features of tiles, (tiles, visual tokens, hidden), for an encoder
        with `has_tile_features` (tile_features.py)."""
        raise NotImplementedError(f"{type(self).__name__} has no tile features")

    def image_token_inputs(self, count: int) -> Inputs:
        """The token inputs that go with `count` tiles' pixels (none for a dual encoder)."""
        return {}

    def image_inputs(self, images: list[Image.Image]) -> Inputs:
        """Everything `forward` needs for RGB tiles."""
        return self.image_token_inputs(len(images)) | self.pixel_inputs(images)

    def parameter_counts(self) -> tuple[int, int]:
        return count_parameters(self)

    def _token_ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    # -- encoding ----------------------------------------------------------------------------
    @torch.inference_mode()
    def _encode_batches(self, batches: Iterator[Inputs], progress: Any = None) -> np.ndarray:
        """Vectors of prepared batches; `batches` is closed at the end, which stops any
        DataLoader workers behind it even when encoding fails."""
        was_training = self.training
        self.eval()
        out: list[np.ndarray] = []
        try:
            for inputs in batches:
                out.append(self(inputs).cpu().numpy())
                if progress is not None:
                    progress.update(out[-1].shape[0])
        finally:
            self.train(was_training)
            close = getattr(batches, "close", None)
            if close is not None:
                close()
            if progress is not None:
                progress.close()
        if not out:
            return np.zeros((0, self.embedding_dim), np.float32)
        return np.concatenate(out).astype(np.float32)

    @staticmethod
    def _progress(total: int, unit: str, show: bool | None, batch_size: int) -> Any:
        if show is None:
            show = total > 20 * batch_size
        if not show:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=total, unit=unit, unit_scale=False, desc="encoding")  # shows tiles/s

    def encode_text(
        self, texts: list[str], batch_size: int = 32, show_progress: bool | None = None
    ) -> np.ndarray:
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        batches = (self.text_inputs(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size))
        return self._encode_batches(batches, self._progress(len(texts), "text", show_progress, batch_size))

    def tile_batches(
        self,
        tiles: Sequence[str | Path | Image.Image],
        batch_size: int = 16,
        num_workers: int | str = "auto",
        records: Sequence[str] | None = None,
    ) -> Iterator[Inputs]:
        """Model inputs of tiles (files or PIL images), in order, `batch_size` at a time, decoded
        and preprocessed in DataLoader workers (none for a single batch: not worth a process)."""
        from geoloc.data.pipeline import TileCollator, TileDataset, batches_of, make_loader, resolve_workers

        workers = resolve_workers(num_workers, device=self.device) if len(tiles) > batch_size else 0
        loader = make_loader(
            TileDataset(tiles, self.tile_processor, records),
            TileCollator(self.tile_processor),
            workers,
            self.device,
            batch_size=batch_size,
        )
        for pixels in batches_of(loader):
            yield self.image_token_inputs(pixels["pixel_values"].shape[0]) | pixels

    def encode_images(
        self,
        images: Sequence[str | Path | Image.Image],
        batch_size: int = 16,
        show_progress: bool | None = None,
        num_workers: int | str = "auto",
    ) -> np.ndarray:
        """Unit vectors of tiles (files or PIL images), in order."""
        images = list(images)
        progress = self._progress(len(images), "tile", show_progress, batch_size)
        return self._encode_batches(self.tile_batches(images, batch_size, num_workers), progress)

    # -- saving --------------------------------------------------------------------------------
    def _save_extra(self, folder: Path) -> None:
        """Files a subclass adds to a saved folder (MllmEncoder: its pooling head)."""

    def save(self, path: str | Path) -> None:
        """Write a folder `load_encoder` reads back, with its model card, atomically (all or nothing).

        The card's recipe is the run's config.yaml when `path` is a run's best/ or final/; its
        parameter counts are this encoder's now (trainable: what requires a gradient).
        """
        path = Path(path)
        source = self.saved_folder
        derived_from = source if source is not None and source.resolve() != path.resolve() else None
        facts = card.new_facts(
            # The source it was built from, not SAVED_BACKBONE: the card names the base model.
            self.spec.to_dict(),
            self.parameter_counts(),
            self.embedding_dim,
            folder=path,
            derived_from=derived_from,
        )
        with atomic.atomic_dir(path) as tmp:
            spec = self.spec.to_dict()
            # A fully tuned backbone cannot be re-made from its source, so its weights are
            # saved; otherwise only adapters are, and the base comes from its source (presets
            # are deterministic, so they are a source too).
            if self.spec.tuning.strategy == "full" or self.spec.backbone == SAVED_BACKBONE:
                self.base_model.save_pretrained(tmp / SAVED_BACKBONE, safe_serialization=True)
                spec["backbone"] = SAVED_BACKBONE
            adapter = self.adapter
            if adapter is not None:
                adapter.save_pretrained(str(tmp / "adapter"), safe_serialization=True)
            self._save_extra(tmp)
            self.tokenizer.save_pretrained(tmp)
            self.image_processor.save_pretrained(tmp)
            atomic.write_json(tmp / SPEC_FILE, spec)
            card.write_card(tmp, facts, name=path.name)
