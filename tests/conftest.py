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
