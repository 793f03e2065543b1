"""Model inputs built outside the model: the one-resize tile path against the backbones' own
image processors, and text length buckets."""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from geoloc.data.manifest import read_manifest
from geoloc.encoder.inputs import TileProcessor, bucket_lengths
from geoloc.encoder.loading import load_encoder
from geoloc.encoder.presets import preset_processing
from geoloc.errors import GeolocError


def _tile(size: int, seed: int = 0) -> Image.Image:
    """A tile with smooth structure and noise, like a photograph (pure noise would exaggerate
    how much two resampling filters differ)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    base = np.stack([128 + 100 * np.sin(6 * x + c) * np.cos(4 * y - c) for c in range(3)], axis=-1)
    return Image.fromarray(np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8))


# (preset, its size, the processor call that keeps a tile of that size as it is)
NATIVE = [
    ("random-smolvlm-256m", 512, {"do_image_splitting": False, "size": {"longest_edge": 512}}),
    ("random-internvl3_5-1b", 448, {"crop_to_patches": False}),
    ("random-clip-b16", 224, {}),
    ("tiny-siglip", 64, {}),
]


@pytest.mark.parametrize(("preset", "size", "call"), NATIVE)
def test_one_resize_equals_the_backbones_processor_exactly_at_the_models_size(
    preset: str, size: int, call: dict
) -> None:
    _, processor = preset_processing(preset)
    tile = _tile(size)
    expected = processor([[tile]] if "smolvlm" in preset else [tile], return_tensors="pt", **call)
    ours = TileProcessor.for_processor(processor, size).tensor(tile)
    assert ours.dtype == torch.float32 and torch.equal(ours, expected["pixel_values"].reshape(3, size, size))


def test_released_preprocessing_is_the_processor_as_released_and_one_resize_is_within_the_bound(
    tiny_city: Path,
) -> None:
    """SmolVLM's processor as released takes a 512-px tile up to 2048 px and back. The one-resize
    path skips that round trip; docs/preprocessing.md has the measured difference on the
    synthetic city's tiles (mean 0.00012, largest 0.024 in normalised units), which this bound
    holds with some room."""
    _, processor = preset_processing("random-smolvlm-256m")
    scene = read_manifest(tiny_city).records[0].image
    tile = Image.open(scene).convert("RGB").resize((512, 512), Image.Resampling.BICUBIC)
    released = TileProcessor.for_processor(
        processor, 512, "released", image_axis=True, released_kwargs={"do_image_splitting": False}
    )
    as_released = processor([[tile]], return_tensors="pt", do_image_splitting=False)["pixel_values"]
    assert torch.equal(released.tensor(tile), as_released.reshape(3, 512, 512))
    fast = TileProcessor.for_processor(processor, 512, image_axis=True).tensor(tile)
    difference = (fast - released.tensor(tile)).abs()
    assert 0 < float(difference.mean()) < 0.001 and float(difference.max()) < 0.05


def test_a_tile_of_another_size_is_resized_once_with_the_processors_own_filter() -> None:
    _, processor = preset_processing("random-internvl3_5-1b")  # bicubic, 448 px
    tile = _tile(512)
    ours = TileProcessor.for_processor(processor, 448).tensor(tile)
    resized = tile.resize((448, 448), Image.Resampling.BICUBIC)
    expected = processor([resized], return_tensors="pt", crop_to_patches=False)["pixel_values"][0]
    assert torch.equal(ours, expected)


def test_processors_pickle_for_workers_and_unknown_preprocessing_is_refused() -> None:
    encoder = load_encoder("tiny-smolvlm")
    copied = pickle.loads(pickle.dumps(encoder.tile_processor))
    tile = _tile(100)
    assert torch.equal(copied.tensor(tile), encoder.tile_processor.tensor(tile))
    texts = ["a red roof by the river", "a pond"]
    text_copy = pickle.loads(pickle.dumps(encoder.text_builder))
    assert all(torch.equal(text_copy(texts)[k], v) for k, v in encoder.text_inputs(texts).items())
    with pytest.raises(GeolocError, match="unknown preprocessing 'fast'"):
        encoder.rebuilt(spec=dataclasses.replace(encoder.spec, preprocessing="fast"))


def test_length_buckets_bound_the_text_shapes_and_leave_vectors_unchanged() -> None:
    assert bucket_lengths(300) == (16, 32, 64, 128, 256, 512)
    encoder = load_encoder("tiny-smolvlm")
    texts = ["a red roof", "a long grey warehouse beside a railway yard and a car park"]
    plain = encoder.encode_text(texts)
    encoder.text_builder.length_buckets = bucket_lengths(64)
    inputs = encoder.text_inputs(texts)
    assert inputs["input_ids"].shape[1] in (16, 32, 64)
    np.testing.assert_allclose(encoder.encode_text(texts), plain, atol=1e-5)
