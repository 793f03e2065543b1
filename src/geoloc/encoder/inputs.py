"""Model inputs built without the model: token ids of texts, pixel tensors of tiles.

Both builders are small picklable objects, so that DataLoader workers (data/pipeline.py) can build
a batch's inputs in parallel while the accelerator runs the previous one; the encoders call the
same builders, so a batch built in a worker equals one built in the main process.

Tiles: `TileProcessor` takes a decoded RGB tile to the model's pixel tensor with ONE resize, at
the model's own square size, with the backbone's own resampling filter, then rescales and
normalises through a lookup table computed by the backbone's image processor itself: rescale and
normalise act on each 8-bit value alone, so a 256-entry table per channel gives the processor's
numbers exactly, for a fraction of the work. A tile already at the model's size is not resized.

`preprocessing: released` keeps the backbone's image processor as the released code calls it
instead: for SmolVLM that resizes a 512-px tile up to the processor's shipped 2048 px and back
down to 512 (139 ms a tile on one core, against about 4 ms here; docs/preprocessing.md has the
measured differences).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from geoloc.choices import PaddingSide, Preprocessing
from geoloc.errors import GeolocError

Inputs = dict[str, torch.Tensor]
PREPROCESSINGS: tuple[str, ...] = ("one-resize", "released")


@dataclass
class TextInputs:
    """Token ids and attention mask of raw query texts, framed by the template's fixed tokens.

    The text itself is cut to `limit` tokens so that the template's prefix and suffix are never
    cut. `length_buckets` (ascending) pads every batch up to the smallest bucket that holds its
    longest row, so a compiled model meets a bounded number of shapes; `fixed_length` pads to
    exactly that length (CLIP's text tower); neither: to the longest row.
    """

    tokenizer: Any
    prefix: list[int]
    suffix: list[int]
    limit: int
    padding_side: PaddingSide = "right"
    fixed_length: int | None = None
    with_attention_mask: bool = True
    length_buckets: tuple[int, ...] = ()

    def padded_length(self, longest: int) -> int:
        if self.fixed_length is not None:
            return self.fixed_length
        for bucket in self.length_buckets:
            if bucket >= longest:
                return bucket
        return longest

    def pad(self, sequences: list[list[int]]) -> Inputs:
        length = self.padded_length(max(len(s) for s in sequences))
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
        mask = torch.zeros((len(sequences), length), dtype=torch.long)
        for row, seq in enumerate(sequences):
            span = slice(0, len(seq)) if self.padding_side == "right" else slice(length - len(seq), length)
            ids[row, span] = torch.tensor(seq, dtype=torch.long)
            mask[row, span] = 1
        return {"input_ids": ids, "attention_mask": mask} if self.with_attention_mask else {"input_ids": ids}

    def __call__(self, texts: list[str]) -> Inputs:
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise GeolocError(f"text {i} is empty: every query needs some words")
        body = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        return self.pad([self.prefix + ids[: self.limit] + self.suffix for ids in body])


def bucket_lengths(longest: int, smallest: int = 16) -> tuple[int, ...]:
    """Powers of two from `smallest` up to the first that holds `longest`: at most a handful of
    text shapes for a compiled model, and at most twice the padding of the longest row."""
    buckets = [smallest]
    while buckets[-1] < longest:
        buckets.append(buckets[-1] * 2)
    return tuple(buckets)


def _normalisation_table(image_processor: Any) -> torch.Tensor:
    """(3, 256) float32: what the image processor's own rescale and normalise make of each 8-bit
    value in each channel. Computed by the processor, so the table is its arithmetic exactly."""
    values = np.tile(np.arange(256, dtype=np.uint8), (3, 1))[:, None, :]  # channels first, (3, 1, 256)
    out: Any = values
    if getattr(image_processor, "do_rescale", True):
        out = image_processor.rescale(out, image_processor.rescale_factor)
    if getattr(image_processor, "do_normalize", True):
        out = image_processor.normalize(out, image_processor.image_mean, image_processor.image_std)
    return torch.from_numpy(np.ascontiguousarray(np.asarray(out, dtype=np.float32)[:, 0, :]))


@dataclass
class TileProcessor:
    """A decoded RGB tile -> the model's pixel tensor, (3, size, size) float32.

    `image_axis`: the model reads (batch, images, 3, H, W) (Idefics3 / SmolVLM).
    `nudge_all_zero`: Idefics3 treats an image whose normalised pixels are all exactly zero as
    padding and drops it; a uniform mid-grey tile is one, so one value is nudged off zero.
    `released`: the backbone's image processor and the keyword arguments the released code calls
    it with; when set, tiles go through it (preprocessing: released) instead of the fast path.
    """

    size: int
    resample: int
    table: torch.Tensor  # (3, 256) float32
    image_axis: bool = False
    nudge_all_zero: bool = False
    released: Any = None
    released_kwargs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def for_processor(
        cls,
        image_processor: Any,
        size: int,
        preprocessing: Preprocessing = "one-resize",
        image_axis: bool = False,
        nudge_all_zero: bool = False,
        released_kwargs: dict[str, Any] | None = None,
    ) -> TileProcessor:
        if preprocessing not in PREPROCESSINGS:
            raise GeolocError(
                f"unknown preprocessing {preprocessing!r}; choose one of: {', '.join(PREPROCESSINGS)}"
            )
        resample = getattr(image_processor, "resample", None)
        return cls(
            size=size,
            resample=int(Image.Resampling.BICUBIC if resample is None else resample),
            table=_normalisation_table(image_processor),
            image_axis=image_axis,
            nudge_all_zero=nudge_all_zero,
            released=image_processor if preprocessing == "released" else None,
            released_kwargs=dict(released_kwargs or {}),
        )

    def square(self, image: Image.Image) -> Image.Image:
        """The tile at the model's square size: one resize, none if it is there already."""
        if image.size == (self.size, self.size):
            return image
        return image.resize((self.size, self.size), Image.Resampling(self.resample))

    def raw(self, image: Image.Image) -> torch.Tensor:
        """What a worker ships for one RGB tile: (3, size, size) uint8 pixels after the one
        resize (a quarter of float32's bytes to copy between processes and to the accelerator),
        or, under `released`, the processor's float32 pixels."""
        if self.released is not None:
            return self._released_tensor(image)
        pixels = np.asarray(self.square(image).convert("RGB"), dtype=np.uint8)  # (H, W, 3)
        return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))

    def tensor(self, image: Image.Image) -> torch.Tensor:
        """(3, size, size) float32 pixels of one RGB tile, as the model reads them."""
        return self.normalise(self.raw(image).unsqueeze(0))[0]

    def _released_tensor(self, image: Image.Image) -> torch.Tensor:
        # The released path: a bicubic square first (geoloc's own step before the processor), then
        # the backbone's processor with its shipped sizes (SmolVLM: up to 2048 px and back to 512).
        square = image if image.size == (self.size, self.size) else image.resize((self.size, self.size), 3)
        batch: list[Any] = [[square]] if self.image_axis else [square]
        pixels = self.released(batch, return_tensors="pt", **self.released_kwargs)["pixel_values"]
        return pixels.reshape(3, self.size, self.size)

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """(tiles, 3, H, W) uint8 -> float32 through the table, on the tensor's own device (the
        accelerator, when the encoder calls it): a lookup, so every device gives the same
        numbers. Float pixels (the released path's) are already normalised."""
        if pixels.dtype != torch.uint8:
            return pixels
        table = self.table.to(pixels.device)
        channels = [table[c][pixels[:, c].long()] for c in range(3)]
        return torch.stack(channels, dim=1)

    def model_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """A collated batch (uint8 or float, (tiles, 3, H, W) or with the image axis) -> the
        float pixels the vision tower reads, in the layout it reads them."""
        if self.image_axis and pixels.dim() == 5:
            pixels = pixels[:, 0]
        pixels = self.normalise(pixels)
        if self.nudge_all_zero:
            all_zero = (pixels.flatten(start_dim=1) == 0).all(dim=1)
            if all_zero.any():
                pixels = pixels.clone()
                pixels[all_zero, 0, 0, 0] = 1e-6
        if self.image_axis:
            pixels = pixels.unsqueeze(1)  # one image per sample; every pixel real, so no mask
        return pixels

    def collate(self, tensors: list[torch.Tensor]) -> Inputs:
        """The pixel inputs of a batch of `raw()` outputs, as they travel: uint8 (normalised by
        `model_pixels` where the model runs) or the released path's float32."""
        return {"pixel_values": torch.stack(tensors)}

    def __call__(self, images: list[Image.Image]) -> Inputs:
        """Float pixel inputs of RGB tiles, in the model's layout (what `generate` reads too)."""
        return {"pixel_values": self.model_pixels(torch.stack([self.raw(image) for image in images]))}
