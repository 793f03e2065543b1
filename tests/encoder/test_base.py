"""Save -> load reproduces embeddings exactly, for adapters, full tuning and learned pooling."""

from __future__ import annotations

import os

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from geoloc.encoder.mllm import MllmEncoder
from geoloc.encoder.saved import SPEC_FILE
from geoloc.encoder.tuning import TuningConfig
from geoloc.errors import GeolocError

TEXTS = ["a red building beside a pond", "road", "two white houses on the north side of the park"]


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(1)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in [(64, 64), (30, 70)]]


def _train(encoder: MllmEncoder, steps: int = 3) -> None:
    params = [p for p in encoder.parameters() if p.requires_grad]
    assert params
    optimizer = torch.optim.Adam(params, lr=1e-2)
    encoder.train()
    images = _images()
    for _ in range(steps):
        text = encoder(encoder.text_inputs(TEXTS[:2]))
        image = encoder(encoder.image_inputs(images))
        loss = -(text * image).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    encoder.eval()


def _embed(encoder: MllmEncoder) -> tuple[np.ndarray, np.ndarray]:
    return encoder.encode_text(TEXTS), encoder.encode_images(_images())


def _round_trip(encoder: MllmEncoder, folder: Path) -> MllmEncoder:
    before = _embed(encoder)
    encoder.save(folder)
    loaded = MllmEncoder.load(folder)
    after = _embed(loaded)
    np.testing.assert_allclose(after[0], before[0], atol=1e-6)
    np.testing.assert_allclose(after[1], before[1], atol=1e-6)
    return loaded


@pytest.mark.parametrize("strategy", ["lora", "dora"])
def test_adapter_round_trip(tmp_path: Path, strategy: str) -> None:
    torch.manual_seed(0)
    tuning = TuningConfig(strategy=strategy, rank=4, targets="llm-attn+vision-attn")
    encoder = MllmEncoder.load("tiny-smolvlm", spec_overrides={"tuning": tuning, "padding_side": "left"})
    untrained = _embed(encoder)
    _train(encoder)
    lora_b = [p for n, p in encoder.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().max() > 0 for p in lora_b), "training moved lora_B off zero"
    assert np.abs(_embed(encoder)[0] - untrained[0]).max() > 1e-4, "training changed the embeddings"

    loaded = _round_trip(encoder, tmp_path / "enc")
    assert (tmp_path / "enc" / "adapter").is_dir()
    assert not (tmp_path / "enc" / "backbone").exists()  # the preset base is re-made, not saved
    assert loaded.spec.padding_side == "left"
    assert loaded.spec.tuning == tuning
    assert loaded.parameter_counts()[1] == 0  # loaded for inference
    trainable = MllmEncoder.load(tmp_path / "enc", trainable=True)
    assert trainable.parameter_counts()[1] == encoder.parameter_counts()[1]


def test_full_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    encoder = MllmEncoder.load("tiny-smolvlm", spec_overrides={"tuning": TuningConfig(strategy="full")})
    untrained = _embed(encoder)
    _train(encoder, steps=2)
    assert np.abs(_embed(encoder)[1] - untrained[1]).max() > 1e-4
    loaded = _round_trip(encoder, tmp_path / "full")
    assert (tmp_path / "full" / "backbone").is_dir()
    assert loaded.spec.backbone == "backbone"
    # A re-save of a loaded full model keeps its own weights.
    _round_trip(loaded, tmp_path / "again")


def test_query_pooling_round_trip_and_overwrite(tmp_path: Path) -> None:
    torch.manual_seed(0)
    tuning = TuningConfig(strategy="lora", rank=2, targets="llm-attn")
    encoder = MllmEncoder.load("tiny-internvl", spec_overrides={"tuning": tuning, "pooling": "query"})
    _train(encoder, steps=2)
    target = tmp_path / "query"
    target.mkdir()
    (target / "stale.txt").write_text("old")  # saving replaces the folder whole
    loaded = _round_trip(encoder, target)
    assert (target / "pooling.safetensors").is_file()
    assert not (target / "stale.txt").exists()
    for (name, a), b in zip(
        encoder.pooler.state_dict().items(), loaded.pooler.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    # The saved queries are the trained ones, not a fresh random init.
    fresh = MllmEncoder.load("tiny-internvl", spec_overrides={"tuning": tuning, "pooling": "query"})
    assert not torch.allclose(fresh.pooler.queries, loaded.pooler.queries)


def test_run_dir_with_best_subfolder_loads(tmp_path: Path) -> None:
    encoder = MllmEncoder.load("tiny-internvl", spec_overrides={"tuning": TuningConfig(strategy="frozen")})
    encoder.save(tmp_path / "run" / "best")
    loaded = MllmEncoder.load(tmp_path / "run")
    np.testing.assert_allclose(loaded.encode_text(TEXTS), encoder.encode_text(TEXTS), atol=1e-6)


def test_future_format_version_is_refused(tmp_path: Path) -> None:
    encoder = MllmEncoder.load("tiny-smolvlm", spec_overrides={"tuning": TuningConfig(strategy="frozen")})
    encoder.save(tmp_path / "enc")
    spec_path = tmp_path / "enc" / SPEC_FILE
    spec = json.loads(spec_path.read_text())
    assert spec["format_version"] == 1
    spec["format_version"] = 999
    spec_path.write_text(json.dumps(spec))
    with pytest.raises(GeolocError, match="999"):
        MllmEncoder.load(tmp_path / "enc")
    spec_path.write_text("{not json")
    with pytest.raises(GeolocError, match="unreadable"):
        MllmEncoder.load(tmp_path / "enc")


def test_unknown_source_raises(tmp_path: Path) -> None:
    with pytest.raises(GeolocError, match="tiny-smolvlm"):
        MllmEncoder.load(str(tmp_path / "no-such-model"))
