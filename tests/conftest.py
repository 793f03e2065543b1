"""Shared fixtures: a small synthetic city, written once per test session."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Keep the embedding cache of test runs (and of the commands they start) out of the home folder.
os.environ["GEOLOC_CACHE"] = tempfile.mkdtemp(prefix="geoloc-test-cache-")


@pytest.fixture(scope="session")
def small_city(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """200 tiles, 4 descriptions each, split train / val / test (160 / 20 / 20)."""
    from geoloc.data.synth import generate_city

    return generate_city(tmp_path_factory.mktemp("city") / "city", tiles=200, seed=1)


@pytest.fixture(scope="session")
def tiny_city(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 tiles: enough for a few training steps."""
    from geoloc.data.synth import generate_city

    return generate_city(tmp_path_factory.mktemp("tiny") / "city", tiles=40, seed=2)


@pytest.fixture(scope="session")
def real_model(tmp_path_factory: pytest.TempPathFactory):
    """`real_model(name)`: a model folder as a download looks (the real config, tokenizer and
    processor files, shrunk to 2 layers per tower, random weights), built once per session."""
    from geoloc.encoder.model_files import build_random_checkpoint

    built: dict[str, Path] = {}
    root = tmp_path_factory.mktemp("real-models")

    def folder(name: str) -> Path:
        if name not in built:
            built[name] = build_random_checkpoint(name, root / name, layers=2)
        return built[name]

    return folder
