"""The model check's cached fingerprint: a server start does not hash every weight again, and a
changed model is never let through by the cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from geoloc.errors import GeolocError
from geoloc.index import identity


def _save_full_model(out: Path, seed: int) -> Path:
    """A tiny-smolvlm saved whole (backbone and all), so its weights are files alone."""
    from geoloc.encoder.mllm import MllmEncoder
    from geoloc.encoder.tuning import TuningConfig

    torch.manual_seed(seed)
    encoder = MllmEncoder.load("tiny-smolvlm", spec_overrides={"tuning": TuningConfig(strategy="full")})
    with torch.no_grad():
        for parameter in encoder.backbone.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    encoder.save(out)
    return out


@pytest.fixture
def hashes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[str]:
    """A fresh fingerprint cache; records every time the weights are hashed."""
    monkeypatch.setenv("GEOLOC_CACHE", str(tmp_path / "cache"))
    seen: list[str] = []
    real = identity.model_fingerprint

    def counting(encoder):
        seen.append(real(encoder))
        return seen[-1]

    monkeypatch.setattr(identity, "model_fingerprint", counting)
    return seen


def test_the_fingerprint_is_cached_by_the_model_files(hashes: list[str], tmp_path: Path) -> None:
    from geoloc.encoder.loading import load_encoder

    folder = _save_full_model(tmp_path / "model", seed=0)
    record = identity.model_record(load_encoder(folder), str(folder), "float32")
    assert len(hashes) == 1
    assert identity.weights_key(str(folder), "float32") == identity.weights_key(str(folder), "float32")
    assert identity.weights_key(str(folder), "float32") != identity.weights_key(str(folder), "bfloat16")

    identity.load_index_model(record, "idx")  # hashed once, and remembered
    assert len(hashes) == 2 and hashes[-1] == record["fingerprint"]
    identity.load_index_model(record, "idx")  # not hashed again
    assert len(hashes) == 2

    weights = folder / "backbone" / "model.safetensors"
    os.utime(weights, ns=(0, weights.stat().st_mtime_ns + 10**9))  # touched: hashed again, same model
    identity.load_index_model(record, "idx")
    assert len(hashes) == 3 and hashes[-1] == record["fingerprint"]

    _save_full_model(folder, seed=1)  # other weights in the same place: refused, never the cache's word
    with pytest.raises(GeolocError, match="different one"):
        identity.load_index_model(record, "idx")
    assert len(hashes) == 4 and hashes[-1] != record["fingerprint"]


def test_files_changed_during_the_load_are_hashed_and_not_remembered(
    hashes: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from geoloc.encoder import loading

    folder = _save_full_model(tmp_path / "model", seed=0)
    record = identity.model_record(loading.load_encoder(folder), str(folder), "float32")
    real = loading.load_encoder

    def load_then_touch(*args, **kwargs):
        encoder = real(*args, **kwargs)
        (folder / "model_card.json").touch()  # the folder changed while it was read
        return encoder

    monkeypatch.setattr(loading, "load_encoder", load_then_touch)
    identity.load_index_model(record, "idx")
    identity.load_index_model(record, "idx")
    assert len(hashes) == 3  # the model_record, then both loads
    assert not list((tmp_path / "cache" / "fingerprints").glob("*.txt"))


def test_a_preset_is_always_hashed(hashes: list[str]) -> None:
    assert identity.weights_key("tiny-smolvlm", "float32") is None
