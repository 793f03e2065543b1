"""Backbone families: model-type lookup, and image token counts that match the models."""

from __future__ import annotations

import os

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np
import pytest
import torch
from PIL import Image

from geoloc.encoder.families import FAMILIES, family_for_model_type
from geoloc.encoder.mllm import MllmEncoder
from geoloc.errors import GeolocError


@pytest.mark.parametrize(
    ("model_type", "family"), [("idefics3", "smolvlm"), ("smolvlm", "smolvlm2"), ("internvl", "internvl")]
)
def test_family_for_model_type(model_type: str, family: str) -> None:
    found = family_for_model_type(model_type)
    assert found is FAMILIES[family]
    assert model_type in found.model_types


def test_unknown_model_type_lists_supported() -> None:
    with pytest.raises(GeolocError, match="llava") as info:
        family_for_model_type("llava")
    assert "idefics3, internvl, smolvlm" in str(info.value)


def test_every_family_names_a_transformers_class() -> None:
    import transformers

    for family in FAMILIES.values():
        assert hasattr(transformers, family.model_class), family.model_class


@pytest.fixture(scope="module", params=["tiny-smolvlm", "tiny-internvl"])
def encoder(request: pytest.FixtureRequest) -> MllmEncoder:
    return MllmEncoder.load(request.param)


def _image() -> Image.Image:
    rng = np.random.default_rng(3)
    return Image.fromarray(rng.integers(0, 256, (50, 50, 3), dtype=np.uint8))


def test_preset_family_matches_model_type(encoder: MllmEncoder) -> None:
    assert family_for_model_type(encoder.config.model_type) is encoder.family
    assert encoder.spec.family == encoder.family.name
    assert encoder.image_size == {"tiny-smolvlm": 64, "tiny-internvl": 56}[encoder.spec.backbone]


def test_image_seq_len_matches_the_model(encoder: MllmEncoder) -> None:
    family, config = encoder.family, encoder.config
    seq_len = family.image_seq_len(config)
    assert isinstance(seq_len, int) and seq_len == 16  # (64/8)^2/2^2 and (56/7)^2*0.5^2

    image_token_id = config.image_token_id
    ids = encoder.image_token_inputs(1)["input_ids"][0].tolist()
    assert ids.count(image_token_id) == seq_len
    assert encoder.tokenizer.convert_tokens_to_ids(family.image_token) == image_token_id

    pixels = encoder.pixel_inputs([_image()])
    with torch.no_grad():
        # The model's own output, whatever shape this transformers release gives it, holds seq_len
        # rows of features per image.
        raw = encoder.base_model.model.get_image_features(pixels["pixel_values"]).pooler_output
        parts = raw if isinstance(raw, (list, tuple)) else [raw]
        assert sum(part.numel() for part in parts) == seq_len * config.text_config.hidden_size
        features = encoder.image_features(pixels)
        assert features.shape == (1, seq_len, config.text_config.hidden_size)
        # A forward pass with the placeholder works ...
        out = encoder(encoder.image_inputs([_image()]))
        assert out.shape == (1, config.text_config.hidden_size) and torch.isfinite(out).all()
        # ... and one image token more does not: the model has exactly seq_len features to place.
        inputs = encoder.image_inputs([_image()])
        row, mask = inputs["input_ids"][0], inputs["attention_mask"][0]
        at = int((row == image_token_id).nonzero()[0])
        longer = {
            "input_ids": torch.cat([row[:at], row[at : at + 1], row[at:]])[None],
            "attention_mask": torch.cat([mask[:at], mask[at : at + 1], mask[at:]])[None],
        } | {k: v for k, v in inputs.items() if k.startswith("pixel")}
        with pytest.raises((ValueError, RuntimeError)):
            encoder(longer)


def test_internvl_config_image_seq_length_agrees() -> None:
    from geoloc.encoder.presets import PRESETS, preset_processing

    tokenizer, _ = preset_processing("tiny-internvl")
    config = PRESETS["tiny-internvl"].config(tokenizer)
    assert FAMILIES["internvl"].image_seq_len(config) == config.image_seq_length
