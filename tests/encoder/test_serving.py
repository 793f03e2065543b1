"""Serving speed-ups keep the embeddings: merged adapters, bf16, int8, the query wrapper."""

from __future__ import annotations

import os

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from geoloc.encoder.mllm import MllmEncoder
from geoloc.encoder.serving import (
    QueryEncoder,
    load_for_serving,
    merge_adapters,
    quantize_llm_int8,
    to_precision,
)
from geoloc.encoder.tuning import TuningConfig
from geoloc.errors import GeolocError

TEXTS = [
    "a red building beside a pond",
    "two white houses on the north side of the park",
    "a long grey warehouse with a parking lot",
    "trees along a river",
    "a round church at a corner of the square",
    "a road crosses the fields",
]


def _images(count: int = 4) -> list[Image.Image]:
    rng = np.random.default_rng(3)
    return [Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)) for _ in range(count)]


def _train(strategy: str, steps: int = 3) -> MllmEncoder:
    """A tiny encoder whose adapters moved off their zero start under a few Adam steps."""
    torch.manual_seed(0)
    tuning = TuningConfig(strategy=strategy, rank=4, targets="paper")
    encoder = MllmEncoder.load("tiny-smolvlm", spec_overrides={"tuning": tuning})
    params = [p for p in encoder.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=1e-2)
    encoder.train()
    images = _images(2)
    for _ in range(steps):
        loss = -(encoder(encoder.text_inputs(TEXTS[:2])) * encoder(encoder.image_inputs(images))).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    encoder.eval()
    lora_b = [p for n, p in encoder.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.abs().max() > 0 for p in lora_b), "adapters are still zero"
    return encoder


@pytest.fixture(scope="module")
def adapter_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Saved tiny encoders with trained LoRA and DoRA adapters, trained once for this module."""
    folders = {}
    for strategy in ("lora", "dora"):
        folders[strategy] = tmp_path_factory.mktemp("serving") / strategy
        _train(strategy).save(folders[strategy])
    return folders


@pytest.mark.parametrize("strategy", ["lora", "dora"])
def test_merged_adapters_give_the_same_embeddings(
    adapter_models: dict[str, Path], tmp_path: Path, strategy: str
) -> None:
    from peft import PeftModel

    encoder = MllmEncoder.load(adapter_models[strategy])
    assert isinstance(encoder.backbone, PeftModel)
    text_before, image_before = encoder.encode_text(TEXTS), encoder.encode_images(_images())
    # The adapters matter: without them the embeddings differ.
    base = MllmEncoder.load("tiny-smolvlm")
    assert np.abs(base.encode_text(TEXTS) - text_before).max() > 1e-3

    merge_adapters(encoder)
    assert not isinstance(encoder.backbone, PeftModel)
    assert not any("lora" in name for name, _ in encoder.named_parameters())
    np.testing.assert_allclose(encoder.encode_text(TEXTS), text_before, atol=1e-5)
    np.testing.assert_allclose(encoder.encode_images(_images()), image_before, atol=1e-5)

    # A merged encoder saves as a full model and loads back identical.
    encoder.save(tmp_path / "merged")
    assert (tmp_path / "merged" / "backbone").is_dir()
    loaded = MllmEncoder.load(tmp_path / "merged")
    np.testing.assert_allclose(loaded.encode_text(TEXTS), text_before, atol=1e-5)


def test_load_for_serving_merges_a_saved_adapter_model(adapter_models: dict[str, Path]) -> None:
    unmerged = load_for_serving(adapter_models["lora"], merge=False)
    merged = load_for_serving(adapter_models["lora"])
    expected = unmerged.encode_text(TEXTS)
    assert merged.parameter_counts()[1] == 0
    assert merged.parameter_counts()[0] < unmerged.parameter_counts()[0]  # no adapter tensors left
    np.testing.assert_allclose(merged.encode_text(TEXTS), expected, atol=1e-5)


def _top_ranks(queries: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    return np.argsort(-(queries @ gallery.T), axis=1)


def test_int8_quantises_the_llm_and_keeps_rankings() -> None:
    encoder = MllmEncoder.load("tiny-smolvlm")
    images = _images(8)
    gallery = encoder.encode_images(images)
    reference = encoder.encode_text(TEXTS)

    quantize_llm_int8(encoder)
    from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear

    llm_layers = list(encoder.text_tower.modules())
    assert any(isinstance(m, DynamicInt8Linear) for m in llm_layers)
    assert not any(isinstance(m, torch.nn.Linear) for m in llm_layers)
    vision_layers = list(encoder.base_model.model.vision_model.modules())
    assert any(isinstance(m, torch.nn.Linear) for m in vision_layers)  # the vision tower stays float

    quantised = encoder.encode_text(TEXTS)
    assert quantised.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(quantised, axis=1), 1.0, atol=1e-5)
    assert not np.array_equal(quantised, reference)  # int8 really ran
    cosine = (quantised * reference).sum(axis=1)
    assert cosine.min() > 0.98, cosine
    # Close rankings: each query's best tile is unchanged.
    ranks_int8, ranks_float = _top_ranks(quantised, gallery), _top_ranks(reference, gallery)
    assert (ranks_int8[:, 0] == ranks_float[:, 0]).mean() >= 5 / 6
    # Tiles through the int8 LLM still embed.
    assert encoder.encode_images(images[:2]).shape == gallery[:2].shape


def test_int8_needs_merged_float32_weights(adapter_models: dict[str, Path]) -> None:
    with pytest.raises(GeolocError, match="merge"):
        quantize_llm_int8(MllmEncoder.load(adapter_models["lora"]))
    with pytest.raises(GeolocError, match="float32"):
        quantize_llm_int8(MllmEncoder.load("tiny-smolvlm", dtype="bfloat16"))
    with pytest.raises(GeolocError, match="merge=True"):
        load_for_serving("tiny-smolvlm", precision="int8", merge=False)
    with pytest.raises(GeolocError, match="precision"):
        to_precision(MllmEncoder.load("tiny-smolvlm"), "int4")


def test_bf16_runs_and_stays_close() -> None:
    reference = MllmEncoder.load("tiny-smolvlm")
    encoder = load_for_serving("tiny-smolvlm", precision="bfloat16")
    assert encoder.dtype == torch.bfloat16
    text, image = encoder.encode_text(TEXTS), encoder.encode_images(_images())
    assert text.dtype == np.float32 and image.dtype == np.float32
    assert (text * reference.encode_text(TEXTS)).sum(axis=1).min() > 0.95
    assert (image * reference.encode_images(_images())).sum(axis=1).min() > 0.95


def test_query_encoder_matches_encode_text() -> None:
    encoder = load_for_serving("tiny-smolvlm")
    expected = encoder.encode_text(TEXTS)
    queries = QueryEncoder(encoder)
    assert not encoder.training
    single = queries.encode(TEXTS[1])
    assert single.shape == (expected.shape[1],)
    np.testing.assert_allclose(single, expected[1], atol=1e-5)
    np.testing.assert_allclose(queries.encode_batch(TEXTS), expected, atol=1e-5)
    assert queries.encode_batch([]).shape == (0, expected.shape[1])
    with pytest.raises(GeolocError, match="empty"):
        queries("   ")


def test_a_dual_encoder_serves_through_the_same_path() -> None:
    from geoloc.encoder.dual import DualEncoder

    float32 = load_for_serving("tiny-clip")
    int8 = load_for_serving("tiny-clip", precision="int8")  # was: AttributeError (no llm_path)
    assert isinstance(int8, DualEncoder)
    quantized = [m for m in int8.text_tower.modules() if type(m).__module__.startswith("torch.ao")]
    assert quantized, "the text tower's linear layers are int8"
    queries = QueryEncoder(int8)
    assert queries.dim == int8.embedding_dim == 64  # was 128: the text tower's hidden width
    vector = queries.encode("a red building by a pond")
    assert vector.shape == (64,)
    reference = QueryEncoder(float32).encode("a red building by a pond")
    assert float(vector @ reference) > 0.99
