"""Cached tile features: identical embeddings and gradients, computed once, keyed by the vision weights."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import torch

from geoloc.data.manifest import read_manifest
from geoloc.encoder.mllm import MllmEncoder
from geoloc.encoder.tile_features import TileFeatureStore, vision_is_adapted
from geoloc.encoder.tuning import TuningConfig
from geoloc.train.loss import InfoNCE
from geoloc.train.step import ContrastiveStep, PairEncoder

LLM_ONLY = TuningConfig(strategy="lora", rank=4, alpha=8.0, dropout=0.0, targets="llm-attn")


def _encoder(preset: str, tuning: TuningConfig = LLM_ONLY) -> MllmEncoder:
    torch.manual_seed(0)
    encoder = MllmEncoder.load(preset, spec_overrides={"tuning": tuning})
    with torch.no_grad():  # non-zero adapters, so the LLM side differs from the bare preset
        for name, parameter in encoder.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(name)))
    return encoder


@pytest.mark.parametrize("preset", ["tiny-smolvlm", "tiny-internvl"])
def test_cached_features_give_identical_embeddings(preset: str, tiny_city: Path, tmp_path: Path) -> None:
    tiles = [r.image for r in read_manifest(tiny_city).records[:6]]
    encoder = _encoder(preset)
    computed = encoder.encode_images(tiles, batch_size=4)
    store = TileFeatureStore(encoder, tmp_path)
    reading = encoder.rebuilt(tile_features=store)  # the same weights, features read from disk
    assert reading.pooler is encoder.pooler and reading.backbone is encoder.backbone
    assert encoder.tile_features is None  # the original is left as it is
    first = reading.encode_images(tiles, batch_size=4)
    assert store.computed == 6
    again = reading.encode_images(tiles, batch_size=4)
    assert store.computed == 6  # read from disk, not encoded again
    assert torch.equal(torch.from_numpy(first), torch.from_numpy(computed))
    assert torch.equal(torch.from_numpy(again), torch.from_numpy(computed))
    assert len(list(store.dir.rglob("*.npy"))) == 6


def test_cached_features_give_identical_gradients(tiny_city: Path, tmp_path: Path) -> None:
    records = read_manifest(tiny_city).records[:6]
    texts = [r.texts[0] for r in records]
    grads = []
    for cached in (False, True):
        encoder = _encoder("tiny-smolvlm")
        encoder.train()
        step = ContrastiveStep(
            PairEncoder(encoder), InfoNCE(0.05), contextlib.nullcontext, torch.device("cpu")
        )
        tokens = encoder.image_token_inputs(len(records))
        if cached:
            features = TileFeatureStore(encoder, tmp_path).features([r.image for r in records])
            image_inputs = tokens | {"image_features": features}
        else:
            from geoloc.data.images import load_image

            image_inputs = tokens | encoder.pixel_inputs([load_image(r.image) for r in records])
        step(encoder.text_inputs(texts), image_inputs)
        grads.append({n: p.grad.clone() for n, p in encoder.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 0
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-6, rtol=1e-5, msg=name)


def test_feature_key_follows_the_vision_weights_not_the_llm(tmp_path: Path) -> None:
    encoder = _encoder("tiny-smolvlm")
    key = TileFeatureStore(encoder, tmp_path).dir.name
    with torch.no_grad():
        next(p for n, p in encoder.named_parameters() if "text_model" in n and "lora_B" in n).add_(1.0)
    assert TileFeatureStore(encoder, tmp_path).dir.name == key  # LLM adapters do not change features
    with torch.no_grad():
        next(p for n, p in encoder.named_parameters() if "vision_model" in n).add_(1.0)
    assert TileFeatureStore(encoder, tmp_path).dir.name != key
    assert TileFeatureStore(encoder, tmp_path, precision="bfloat16").dir.name != key


def test_only_a_frozen_vision_side_counts_as_cacheable() -> None:
    assert not vision_is_adapted(_encoder("tiny-smolvlm", LLM_ONLY))
    paper = TuningConfig(strategy="lora", rank=4, alpha=8.0, targets="paper")
    assert vision_is_adapted(_encoder("tiny-smolvlm", paper))
    assert vision_is_adapted(_encoder("tiny-internvl", TuningConfig(strategy="full")))
