"""Input templates set at evaluation (`with_templates`, `geoloc eval --text-template`): the
released code's evaluation prefixes `<|endoftext|>` to both inputs, its training does not."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from geoloc.encoder.loading import load_encoder
from geoloc.encoder.mllm import MllmEncoder
from geoloc.errors import GeolocError
from geoloc.eval.cache import model_fingerprint
from geoloc.eval.evaluate import (
    RELEASED_EVAL_IMAGE_TEMPLATE,
    RELEASED_EVAL_TEXT_TEMPLATE,
    with_templates,
)

TEXTS = ["a red roof beside a car park", "a round pond with trees on its left"]


@pytest.fixture(scope="module")
def encoder() -> MllmEncoder:
    return MllmEncoder.load("tiny-smolvlm")


def tiles() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in range(2)]


def test_evaluation_templates_equal_a_model_built_with_them(encoder: MllmEncoder) -> None:
    prefixed = with_templates(encoder, RELEASED_EVAL_TEXT_TEMPLATE, RELEASED_EVAL_IMAGE_TEMPLATE)
    built = MllmEncoder.load(
        "tiny-smolvlm",
        spec_overrides={
            "text_template": RELEASED_EVAL_TEXT_TEMPLATE,
            "image_template": RELEASED_EVAL_IMAGE_TEMPLATE,
        },
    )
    eos = encoder.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    ids = prefixed.text_inputs(TEXTS)["input_ids"]
    assert ids[:, 0].tolist() == [eos, eos]  # one token, the end-of-text token, first
    assert prefixed.image_token_inputs(1)["input_ids"][0, 0] == eos
    np.testing.assert_array_equal(prefixed.encode_text(TEXTS), built.encode_text(TEXTS))
    np.testing.assert_array_equal(prefixed.encode_images(tiles()), built.encode_images(tiles()))
    # Without the prefix the embeddings differ, and the original encoder is untouched.
    assert not np.allclose(prefixed.encode_text(TEXTS), encoder.encode_text(TEXTS))
    assert encoder.spec.text_template == "{text}" and encoder.spec.image_template == "{image}"
    # The same weights, other inputs: the embedding cache must not mix them up.
    assert model_fingerprint(prefixed) != model_fingerprint(encoder)
    assert prefixed.backbone is encoder.backbone


def test_no_templates_keep_the_encoder(encoder: MllmEncoder) -> None:
    assert with_templates(encoder) is encoder
    assert with_templates(encoder, "{text}", "{image}") is encoder
    only_text = with_templates(encoder, text_template="query: {text}")
    assert (only_text.spec.text_template, only_text.spec.image_template) == ("query: {text}", "{image}")


def test_bad_templates_and_dual_encoders_are_refused(encoder: MllmEncoder) -> None:
    with pytest.raises(GeolocError, match="must contain {text} exactly once"):
        with_templates(encoder, "no slot")
    dual = load_encoder("tiny-clip")
    with pytest.raises(GeolocError, match="a dual encoder has no image prompt"):
        with_templates(dual, None, "a satellite view: {image}")
    # A dual encoder's text template may change: the same weights, other token ids.
    prompted = with_templates(dual, RELEASED_EVAL_TEXT_TEMPLATE)
    assert prompted.spec.text_template == RELEASED_EVAL_TEXT_TEMPLATE and prompted.backbone is dual.backbone
    assert not np.allclose(prompted.encode_text(["a red roof"]), dual.encode_text(["a red roof"]))
