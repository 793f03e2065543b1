"""One tiny LoRA model and one index of the 40-tile city, built once per test session.

Torch runs on one thread here: on this shared 2-core machine, two threads spin against the other
engineers' processes and a tiny forward pass takes ten times longer.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch_threads import one_thread, one_torch_thread  # noqa: F401  (autouse fixture)


def save_lora_model(out: Path, seed: int) -> Path:
    """A tiny-smolvlm with a LoRA adapter of random weights (both factors), so the adapter matters."""
    from geoloc.encoder.mllm import MllmEncoder
    from geoloc.encoder.tuning import TuningConfig

    torch.manual_seed(seed)
    encoder = MllmEncoder.load(
        "tiny-smolvlm", spec_overrides={"tuning": TuningConfig(strategy="lora", rank=4)}
    )
    with torch.no_grad():
        for name, parameter in encoder.backbone.named_parameters():
            if "lora_B" in name:  # peft starts B at zero: the adapter would change nothing
                parameter.normal_(std=0.05)
    encoder.save(out)
    return out


@pytest.fixture(scope="session")
def make_lora_model():
    return save_lora_model


@pytest.fixture(scope="session")
def lora_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    with one_thread():
        return save_lora_model(tmp_path_factory.mktemp("model") / "lora", seed=0)


@pytest.fixture(scope="session")
def city_index(lora_model: Path, tiny_city: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from geoloc.index.build import build_index

    out = tmp_path_factory.mktemp("index") / "city_index"
    with one_thread():
        build_index(lora_model, tiny_city, out)
    return out


@pytest.fixture(scope="session")
def search_index(city_index: Path):
    from geoloc.index.search import SearchIndex

    with one_thread():
        return SearchIndex.open(city_index)
