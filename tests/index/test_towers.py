"""A served index's queries encoded by its model's exported query side (index/towers.py): exported
at the first start, used at the next, only ever for the same model files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from geoloc.encoder.query_tower import GRAPH, SETTINGS
from geoloc.index import towers
from geoloc.index.build import build_index
from geoloc.index.explain import search_and_judge
from geoloc.index.search import SearchIndex
from geoloc.index.store import read_manifest_json


@pytest.fixture(scope="module")
def files_model(make_lora_model, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model whose weights are files alone (a merged LoRA model, saved whole): it has a tower key."""
    from geoloc.encoder.mllm import MllmEncoder
    from geoloc.encoder.serving import merge_adapters

    lora = make_lora_model(tmp_path_factory.mktemp("lora") / "lora", seed=1)
    out = tmp_path_factory.mktemp("merged") / "merged"
    merge_adapters(MllmEncoder.load(lora)).save(out)
    return out


@pytest.fixture()
def index(files_model: Path, tiny_city: Path, tmp_path: Path) -> Path:
    out = tmp_path / "index"
    build_index(files_model, tiny_city, out)
    return out


def _tower_folder(index: Path) -> Path:
    key = towers.tower_key(read_manifest_json(index)["model"], None, "cpu")
    assert key is not None
    return towers.tower_folder(key)


def _found(index: SearchIndex) -> list[list[tuple[str, float]]]:
    return [[(hit.key, hit.score) for hit in index.search(text, k=5)] for text in ("a pond", "red roofs")]


def test_the_first_server_start_exports_the_tower_and_the_next_uses_it(index: Path) -> None:
    first = SearchIndex.open(index, export_tower=True)
    assert first.tower is None and first.tower_problem is None and _tower_folder(index).is_dir()
    second = SearchIndex.open(index)
    assert second.tower is not None and second._encoder is None  # the model is not loaded
    before, after = _found(first), _found(second)
    assert [[key for key, _ in hits] for hits in before] == [[key for key, _ in hits] for hits in after]
    scores = [[score for hits in found for _, score in hits] for found in (before, after)]
    np.testing.assert_allclose(scores[0], scores[1], atol=1e-5)
    # The model loads, checked against the index, when something else needs it: the generator.
    judged = search_and_judge(second, "a pond", k=2, max_new_tokens=2)
    assert [item.hit.key for item in judged] == [key for key, _ in after[0][:2]]
    assert second._encoder is not None


def test_a_process_serving_from_the_tower_never_imports_transformers(index: Path) -> None:
    SearchIndex.open(index, export_tower=True)
    script = (
        "import sys; from geoloc.index.search import SearchIndex; "
        f"index = SearchIndex.open({str(index)!r}); hits = index.search('a pond', k=3); "
        "print(index.tower is not None, len(hits), 'transformers' in sys.modules)"
    )
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == ["True", "3", "False"]


def test_a_changed_model_file_or_another_models_tower_is_not_used(index: Path, files_model: Path) -> None:
    SearchIndex.open(index, export_tower=True)
    folder = _tower_folder(index)
    settings = json.loads((folder / SETTINGS).read_text())
    (folder / SETTINGS).write_text(json.dumps(settings | {"fingerprint": "another model"}))
    assert SearchIndex.open(index).tower is None
    (folder / SETTINGS).write_text(json.dumps(settings))
    assert SearchIndex.open(index).tower is not None
    weights = next(files_model.rglob("*.safetensors"))
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 1))  # touched
    assert SearchIndex.open(index).tower is None


def test_a_damaged_tower_is_ignored_and_exported_again(index: Path) -> None:
    SearchIndex.open(index, export_tower=True)
    (_tower_folder(index) / GRAPH).write_bytes(b"damaged")
    reopened = SearchIndex.open(index, export_tower=True)
    assert reopened.tower is None and reopened.tower_problem is None  # served by the model, exported again
    assert SearchIndex.open(index).tower is not None


def test_a_model_that_is_not_files_alone_has_no_tower(city_index: Path) -> None:
    """The session's index names a preset-based model: its weights are made by code."""
    assert towers.tower_key(read_manifest_json(city_index)["model"], None, "cpu") is None
    opened = SearchIndex.open(city_index, export_tower=True)
    assert opened.tower is None and opened.tower_problem is None
