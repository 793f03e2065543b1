import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from geoloc.data.synth import generate_city
from geoloc.encoder.mllm import MllmEncoder
from geoloc.errors import GeolocError
from geoloc.index import store
from geoloc.index.build import build_index
from geoloc.index.search import MAX_K, MAX_QUERY_CHARS, SearchIndex, check_query


def test_search_ranks_tiles_by_cosine_with_the_index_model(
    search_index: SearchIndex, lora_model: Path
) -> None:
    query = "a red square building with a pond on its left"
    hits = search_index.search(query, k=5)
    encoder = MllmEncoder.load(lora_model)
    similarity = (encoder.encode_text([query]) @ search_index.stored.vectors.T)[0]
    expected = np.argsort(-similarity)[:5]
    assert [h.key for h in hits] == [search_index.stored.tiles.key[i] for i in expected]
    assert np.allclose([h.score for h in hits], similarity[expected], atol=1e-5)
    assert [h.rank for h in hits] == [1, 2, 3, 4, 5]
    first = hits[0].to_dict()
    assert set(first) == {"rank", "score", "key", "lat", "lon", "group", "footprint"}
    assert first["lat"] is not None and first["lon"] is not None
    # The gallery's footprint comes through the index: a closed ring around the tile's centre.
    ring = first["footprint"]
    assert ring[0] == ring[-1] and len(ring) == 5
    lons, lats = [p[0] for p in ring], [p[1] for p in ring]
    assert min(lons) < first["lon"] < max(lons) and min(lats) < first["lat"] < max(lats)


def test_several_queries_at_once_answer_as_one_at_a_time(search_index: SearchIndex) -> None:
    texts = ["a blue building", "some trees beside a long white block in the north", "a parking lot"]
    together = search_index.search_many(texts, k=4)
    for text, hits in zip(texts, together, strict=True):
        alone = search_index.search(text, k=4)
        assert [h.key for h in hits] == [h.key for h in alone]
        assert np.allclose([h.score for h in hits], [h.score for h in alone], atol=1e-4)


def test_a_different_model_is_refused(city_index: Path, tmp_path: Path, make_lora_model) -> None:
    with pytest.raises(GeolocError, match="built by model .* the query model is a different one .*adapter"):
        SearchIndex.open(city_index, encoder=MllmEncoder.load("tiny-smolvlm"))
    other = make_lora_model(tmp_path / "other", seed=1)  # same architecture, other adapter weights
    with pytest.raises(GeolocError, match="different one \\(differs in: adapter_hash\\)"):
        SearchIndex.open(city_index, model=str(other))


def test_a_moved_model_is_found_with_model(city_index: Path, lora_model: Path, tmp_path: Path) -> None:
    moved_model, moved_index = tmp_path / "moved_model", tmp_path / "moved_index"
    shutil.copytree(lora_model, moved_model)
    shutil.copytree(city_index, moved_index)
    manifest = (moved_index / "manifest.json").read_text()
    (moved_index / "manifest.json").write_text(
        manifest.replace(str(lora_model.resolve()), str(tmp_path / "gone"))
    )
    with pytest.raises(GeolocError, match="cannot load the index's model .* name it with --model"):
        SearchIndex.open(moved_index)
    assert len(SearchIndex.open(moved_index, model=str(moved_model)).search("a pond", k=3)) == 3


def test_a_damaged_index_is_reported_before_its_model(city_index: Path, tmp_path: Path) -> None:
    """The index opens while its model loads: when both fail, the index's own error is the one."""
    damaged = tmp_path / "damaged"
    shutil.copytree(city_index, damaged)
    (damaged / store.METADATA).unlink()
    manifest = (damaged / "manifest.json").read_text()
    record = json.loads(manifest)["model"]["id"]
    (damaged / "manifest.json").write_text(manifest.replace(record, str(tmp_path / "gone")))
    with pytest.raises(GeolocError, match="damaged index"):
        SearchIndex.open(damaged)


def test_query_rules() -> None:
    check_query("a red building", 1)
    check_query("x" * MAX_QUERY_CHARS, MAX_K)
    for text, k, message in [
        ("", 5, "empty"),
        ("   \n", 5, "empty"),
        ("x" * (MAX_QUERY_CHARS + 1), 5, "the limit is"),
        ("a pond", 0, "k must be between 1 and 1000"),
        ("a pond", MAX_K + 1, "k must be between 1 and 1000"),
    ]:
        with pytest.raises(GeolocError, match=message):
            check_query(text, k)


def test_image_path_serves_only_the_index_tiles(lora_model: Path, tmp_path: Path) -> None:
    city = generate_city(tmp_path / "city", tiles=6, seed=3).parent
    build_index(lora_model, city, tmp_path / "index", use_cache=False)
    index = SearchIndex.open(tmp_path / "index")
    key = index.stored.tiles.key[0]
    assert index.image_path(key) == (city / key).resolve()
    for bad in ["../city/manifest.jsonl", "manifest.jsonl", "/etc/passwd", "tiles/../manifest.jsonl", ""]:
        assert index.image_path(bad) is None

    # A tile replaced by a symlink leading out of the gallery is no longer served.
    secret = tmp_path / "secret.png"
    shutil.copy(city / key, secret)
    os.remove(city / key)
    os.symlink(secret, city / key)
    assert index.image_path(key) is None
    os.remove(city / key)
    assert index.image_path(key) is None  # a deleted tile: nothing to serve
