"""MllmEncoder on the tiny presets: batching, padding side, images, truncation, input errors."""

from __future__ import annotations

import os

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import copy

import numpy as np
import pytest
from PIL import Image

from geoloc.encoder.inputs import TileProcessor
from geoloc.encoder.mllm import MllmEncoder
from geoloc.errors import GeolocError

PRESETS = ["tiny-smolvlm", "tiny-internvl"]
SIDES = ["left", "right"]
TEXTS = [
    "a red building with a flat roof beside a long road near the river",
    "pond",
    "two white houses on the north side of the park",
    "a narrow lane crosses the fields",
]


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    sizes = [(64, 64), (40, 90), (120, 33), (17, 17), (56, 56)]  # square, tall, wide, tiny, exact
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]


@pytest.fixture(scope="module")
def encoders() -> dict[tuple[str, str], MllmEncoder]:
    return {
        (preset, side): MllmEncoder.load(preset, spec_overrides={"padding_side": side})
        for preset in PRESETS
        for side in SIDES
    }


def _check_unit_float32(vectors: np.ndarray, rows: int, dim: int) -> None:
    assert vectors.dtype == np.float32
    assert vectors.shape == (rows, dim)
    assert np.isfinite(vectors).all()
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("preset", PRESETS)
def test_text_batch_equals_one_by_one(encoders: dict, preset: str, side: str) -> None:
    encoder = encoders[preset, side]
    # The batch really is padded on the asked side.
    mask = encoder.text_inputs(TEXTS)["attention_mask"]
    assert (mask == 0).any()
    short_row = mask[1]
    assert short_row[0 if side == "left" else -1] == 0
    dim = encoder.config.text_config.hidden_size

    batch = encoder.encode_text(TEXTS)
    _check_unit_float32(batch, len(TEXTS), dim)
    alone = np.concatenate([encoder.encode_text([t]) for t in TEXTS])
    np.testing.assert_allclose(batch, alone, atol=1e-5)
    # Several small batches give the same as one large one.
    np.testing.assert_allclose(encoder.encode_text(TEXTS, batch_size=3), batch, atol=1e-5)
    # Different texts, different vectors (the encoder is not constant).
    assert np.abs(batch[0] - batch[1]).max() > 1e-3


@pytest.mark.parametrize("preset", PRESETS)
def test_eos_left_and_right_padding_agree(encoders: dict, preset: str) -> None:
    left = encoders[preset, "left"].encode_text(TEXTS)
    right = encoders[preset, "right"].encode_text(TEXTS)
    np.testing.assert_allclose(left, right, atol=1e-4)


@pytest.mark.parametrize("preset", PRESETS)
def test_mean_pooling_left_and_right_padding_agree(preset: str) -> None:
    left = MllmEncoder.load(preset, spec_overrides={"padding_side": "left", "pooling": "mean"})
    right = MllmEncoder.load(preset, spec_overrides={"padding_side": "right", "pooling": "mean"})
    vectors = left.encode_text(TEXTS)
    np.testing.assert_allclose(vectors, right.encode_text(TEXTS), atol=1e-4)
    np.testing.assert_allclose(vectors, np.concatenate([left.encode_text([t]) for t in TEXTS]), atol=1e-5)


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("preset", PRESETS)
def test_image_batch_equals_one_by_one(encoders: dict, preset: str, side: str) -> None:
    encoder = encoders[preset, side]
    images = _images()
    batch = encoder.encode_images(images)
    _check_unit_float32(batch, len(images), encoder.config.text_config.hidden_size)
    alone = np.concatenate([encoder.encode_images([im]) for im in images])
    np.testing.assert_allclose(batch, alone, atol=1e-5)
    np.testing.assert_allclose(encoder.encode_images(images, batch_size=2), batch, atol=1e-5)
    assert np.abs(batch[0] - batch[1]).max() > 1e-3
    # Text and image share the embedding space (same width) but are different inputs.
    assert batch.shape[1] == encoder.encode_text(["road"]).shape[1]


def test_image_paths_and_pil_give_the_same(encoders: dict, tmp_path) -> None:
    encoder = encoders["tiny-internvl", "right"]
    images = _images()[:2]
    paths = []
    for i, im in enumerate(images):
        paths.append(tmp_path / f"{i}.png")
        im.save(paths[-1])
    np.testing.assert_allclose(encoder.encode_images(paths), encoder.encode_images(images), atol=1e-6)


@pytest.mark.parametrize("side", SIDES)
def test_mid_grey_image_smolvlm(encoders: dict, side: str) -> None:
    encoder = encoders["tiny-smolvlm", side]
    grey = Image.new("RGB", (64, 64), (128, 128, 128))
    other = _images()[0]
    vectors = encoder.encode_images([grey, other, grey])
    assert vectors.shape[0] == 3 and np.isfinite(vectors).all()
    np.testing.assert_allclose(vectors[0], vectors[2], atol=1e-6)
    np.testing.assert_allclose(vectors[0], encoder.encode_images([grey])[0], atol=1e-5)


def test_image_normalising_to_all_zeros_is_not_dropped(encoders: dict) -> None:
    """Idefics3 drops an image whose normalised pixels are all exactly 0 (it takes it for padding).

    With the preset's 0.5 mean no uint8 grey hits exactly 0, so use a processor whose mean is
    128/255: mid-grey then normalises to exact zeros, which the family must nudge.
    """
    encoder = copy.copy(encoders["tiny-smolvlm", "right"])  # shallow: shares the backbone
    processor = copy.deepcopy(encoder.image_processor)
    processor.image_mean = [128 / 255] * 3
    encoder.image_processor = processor
    encoder.tile_processor = TileProcessor.for_processor(
        processor, encoder.image_size, image_axis=True, nudge_all_zero=encoder.family.drops_all_zero_images
    )
    grey = Image.new("RGB", (64, 64), (128, 128, 128))
    raw = processor([[grey]], return_tensors="pt", do_image_splitting=False)["pixel_values"]
    assert (raw == 0).all(), "precondition: this grey normalises to all zeros"
    pixels = encoder.pixel_inputs([grey])["pixel_values"]
    assert not (pixels == 0).all()
    assert pixels.abs().max() < 1e-4  # only nudged, not changed

    vectors = encoder.encode_images([grey, _images()[0], grey])
    assert np.isfinite(vectors).all()
    np.testing.assert_allclose(vectors[0], vectors[2], atol=1e-6)
    np.testing.assert_allclose(vectors[:1], encoder.encode_images([grey]), atol=1e-5)


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("preset", PRESETS)
def test_truncation_keeps_template_suffix(preset: str, side: str) -> None:
    template = "query: {text} ."
    encoder = MllmEncoder.load(
        preset, spec_overrides={"padding_side": side, "max_text_tokens": 5, "text_template": template}
    )
    tok = encoder.tokenizer

    def ids(text: str) -> list[int]:
        return tok(text, add_special_tokens=False)["input_ids"]

    prefix, suffix = ids("query: "), ids(" .")
    assert suffix and prefix
    long_text, short_text = TEXTS[0], "pond"
    long_body, short_body = ids(long_text), ids(short_text)
    assert len(long_body) > 5 and len(short_body) < 5

    inputs = encoder.text_inputs([long_text, short_text])
    rows = []
    for row in range(2):
        real = inputs["attention_mask"][row].bool()
        rows.append(inputs["input_ids"][row][real].tolist())
    assert rows[0] == prefix + long_body[:5] + suffix
    assert rows[1] == prefix + short_body + suffix
    assert rows[0][-len(suffix) :] == suffix
    width = inputs["input_ids"].shape[1]
    assert width == len(prefix) + 5 + len(suffix)
    if side == "left":
        assert inputs["input_ids"][1, -len(suffix) :].tolist() == suffix
    else:
        assert inputs["input_ids"][0, -len(suffix) :].tolist() == suffix

    # A truncated text encodes like its first 5 tokens written out.
    first_five = tok.decode(long_body[:5])
    assert ids(first_five) == long_body[:5]
    np.testing.assert_allclose(encoder.encode_text([long_text]), encoder.encode_text([first_five]), atol=1e-6)


def test_image_template_is_applied() -> None:
    plain = MllmEncoder.load("tiny-internvl")
    templated = MllmEncoder.load("tiny-internvl", spec_overrides={"image_template": "tile: {image}"})
    plain_ids = plain.image_token_inputs(1)["input_ids"][0].tolist()
    templated_ids = templated.image_token_inputs(1)["input_ids"][0].tolist()
    prefix = templated.tokenizer("tile: ", add_special_tokens=False)["input_ids"]
    assert templated_ids == prefix + plain_ids


@pytest.mark.parametrize("bad", ["", "   ", "\n\t"])
def test_empty_text_raises(encoders: dict, bad: str) -> None:
    encoder = encoders["tiny-smolvlm", "right"]
    with pytest.raises(GeolocError, match="text 1 is empty"):
        encoder.encode_text(["a road", bad])
    with pytest.raises(GeolocError):
        encoder.text_inputs([bad])


def test_bad_spec_values_raise_geoloc_errors() -> None:
    with pytest.raises(GeolocError, match="padding_side"):
        MllmEncoder.load("tiny-smolvlm", spec_overrides={"padding_side": "middle"})
    with pytest.raises(GeolocError, match="exactly once"):
        MllmEncoder.load("tiny-smolvlm", spec_overrides={"text_template": "no slot here"})
    with pytest.raises(GeolocError, match="exactly once"):
        MllmEncoder.load("tiny-smolvlm", spec_overrides={"image_template": "{image}{image}"})
    with pytest.raises(GeolocError, match="dtype"):
        MllmEncoder.load("tiny-smolvlm", dtype="float64")
    with pytest.raises(GeolocError, match="eos, mean, query"):
        MllmEncoder.load("tiny-smolvlm", spec_overrides={"pooling": "max"})
    with pytest.raises(GeolocError, match="divisible"):
        MllmEncoder.load("tiny-smolvlm", spec_overrides={"pooling": "query", "query_heads": 3})
    with pytest.raises(GeolocError, match="poolng"):
        MllmEncoder.load("tiny-smolvlm", spec_overrides={"poolng": "mean"})


def test_encode_empty_list(encoders: dict) -> None:
    encoder = encoders["tiny-internvl", "left"]
    out = encoder.encode_text([])
    assert out.shape == (0, encoder.config.text_config.hidden_size) and out.dtype == np.float32
    assert encoder.encode_images([]).shape == (0, encoder.config.text_config.hidden_size)


def test_the_config_and_the_saved_spec_state_the_embedding_settings_once(tmp_path) -> None:
    from dataclasses import fields

    from geoloc.config import ModelConfig, load_config
    from geoloc.encoder.spec import EmbeddingSettings, EncoderSpec
    from geoloc.errors import ConfigError

    shared = {f.name for f in fields(EmbeddingSettings)}
    assert shared <= {f.name for f in fields(ModelConfig)} and shared <= {f.name for f in fields(EncoderSpec)}
    assert issubclass(ModelConfig, EmbeddingSettings) and issubclass(EncoderSpec, EmbeddingSettings)
    config = tmp_path / "c.yaml"
    config.write_text("model: {backbone: tiny-smolvlm}\n")
    with pytest.raises(ConfigError, match="padding_side.*left.*right"):
        load_config(config, overrides=["model.padding_side=middle"])
    loaded = load_config(config, overrides=["model.pooling=mean", "model.max_text_tokens=12"])
    encoder = MllmEncoder.load("tiny-smolvlm", spec_overrides=loaded.model.embedding_settings())
    assert (encoder.spec.pooling, encoder.spec.max_text_tokens) == ("mean", 12)


def test_the_older_class_name_still_imports() -> None:
    from geoloc.encoder.mllm import GeoEncoder

    assert GeoEncoder is MllmEncoder
