"""Fixtures: benchmark trees in the real layouts of GeoText-1652 and CVG-Text (benchmark_trees.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from benchmark_trees import write_cvgtext_tree, write_geotext_tree


@pytest.fixture
def geotext_root(tmp_path: Path) -> Path:
    return write_geotext_tree(tmp_path / "GeoText_1652")


@pytest.fixture
def cvgtext_root(tmp_path: Path) -> Path:
    return write_cvgtext_tree(tmp_path / "cvg_text")


@pytest.fixture
def cvgtext_writer():
    """`write_cvgtext_tree`, for tests that need another city or arrangement."""
    return write_cvgtext_tree


@pytest.fixture
def geotext_writer():
    """`write_geotext_tree`, for tests that need other sizes or seeds."""
    return write_geotext_tree
