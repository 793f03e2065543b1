import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from geoloc.data.manifest import read_manifest
from geoloc.encoder.mllm import MllmEncoder
from geoloc.errors import GeolocError
from geoloc.index import store
from geoloc.index.ann import AnnSettings
from geoloc.index.build import add_to_index, build_index, remove_from_index
from geoloc.index.search import SearchIndex
from geoloc.index.store import read_index


def test_index_folder_holds_vectors_metadata_and_the_models_identity(
    city_index: Path, lora_model: Path, tiny_city: Path
) -> None:
    manifest = json.loads((city_index / "manifest.json").read_text())
    records = read_manifest(tiny_city).records
    assert manifest["format_version"] == store.FORMAT_VERSION
    assert manifest["count"] == len(records) == 40 and manifest["dimension"] == 128
    model = manifest["model"]
    assert model["id"] == str(lora_model.resolve())
    assert model["tuning"] == "lora" and model["pooling"] == "eos" and model["dtype"] == "float32"
    assert model["text_template"] == "{text}" and model["image_template"] == "{image}"
    assert len(model["fingerprint"]) == 40 and len(model["adapter_hash"]) == 32
    assert manifest["index"]["kind"] == "exact"

    with pa.memory_map(str(city_index / store.METADATA)) as file:
        reader = pa.ipc.open_file(file)
        assert reader.num_record_batches == 1  # each column opens as one memory-mapped array
        table = reader.read_all().to_pydict()
    assert table["key"] == [r.key for r in records]
    assert table["lat"] == [r.lat for r in records] and table["lon"] == [r.lon for r in records]
    assert table["group"] == [r.group for r in records]
    assert table["image"] == [str(r.image) for r in records]

    vectors = np.load(city_index / "vectors.npy")
    encoder = MllmEncoder.load(lora_model)
    assert np.allclose(vectors[:3], encoder.encode_images([r.image for r in records[:3]]), atol=1e-5)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_interrupted_build_never_looks_complete(city_index: Path, tmp_path: Path, monkeypatch) -> None:
    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    stored = read_index(city_index)
    args = (
        stored.vectors,
        stored.tiles,
        stored.manifest["model"],
        AnnSettings(),
        stored.manifest["galleries"],
    )
    monkeypatch.setattr(store, "write_metadata", interrupted)
    with pytest.raises(KeyboardInterrupt):
        store.write_index(tmp_path / "new", *args)
    assert list(tmp_path.iterdir()) == []  # neither the index nor a temporary folder is left

    # Over an existing index, the interrupted rewrite leaves the old one whole.
    shutil.copytree(city_index, tmp_path / "old")
    with pytest.raises(KeyboardInterrupt):
        store.write_index(tmp_path / "old", *args)
    assert read_index(tmp_path / "old").manifest == stored.manifest
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == ["old"]


def test_incomplete_and_damaged_folders_are_refused(city_index: Path, tmp_path: Path) -> None:
    partial = tmp_path / "partial"
    shutil.copytree(city_index, partial)
    (partial / "manifest.json").unlink()
    with pytest.raises(GeolocError, match="not a geoloc index, or an unfinished one"):
        read_index(partial)

    damaged = tmp_path / "damaged"
    shutil.copytree(city_index, damaged)
    np.save(damaged / "vectors.npy", np.zeros((3, 128), np.float32))
    with pytest.raises(GeolocError, match="damaged index: the manifest says 40 vectors"):
        read_index(damaged)
    with pytest.raises(GeolocError, match="no such folder"):
        read_index(tmp_path / "missing")


def test_build_replaces_an_index_but_never_another_folder(
    lora_model: Path, tiny_city: Path, tmp_path: Path
) -> None:
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(GeolocError, match="exists and is not a geoloc index; refusing to replace it"):
        build_index(lora_model, tiny_city, precious)
    assert (precious / "notes.txt").read_text() == "keep me"

    out = tmp_path / "index"
    build_index(lora_model, tiny_city, out, split="test")
    build_index(lora_model, tiny_city, out, split="val")  # an index is rebuilt in place
    assert read_index(out).tiles.key == [r.key for r in read_manifest(tiny_city, split="val").records]


@pytest.mark.parametrize("kind", ["exact", "ivf"])
def test_add_and_remove_change_the_index_in_place(
    kind: str, lora_model: Path, tiny_city: Path, city_index: Path, tmp_path: Path
) -> None:
    out = tmp_path / "index"
    settings = AnnSettings(kind=kind, nlist=4, nprobe=4)
    build_index(lora_model, tiny_city, out, settings=settings, split="train")
    train_count = read_index(out).manifest["count"]
    test_records = read_manifest(tiny_city, split="test").records

    assert add_to_index(out, tiny_city, split="test") == len(test_records)
    grown = read_index(out)
    assert grown.manifest["count"] == train_count + len(test_records)
    assert grown.manifest["index"]["kind"] == kind and grown.faiss.ntotal == grown.manifest["count"]
    full = read_index(city_index)
    # Added vectors are those a whole-gallery build gives the same tiles.
    for key, vector in zip(grown.tiles.key, grown.vectors, strict=True):
        assert np.allclose(vector, full.vectors[full.tiles.key.index(key)], atol=1e-5)

    with pytest.raises(GeolocError, match="already in the index"):
        add_to_index(out, tiny_city, split="test")
    assert read_index(out).manifest["count"] == grown.manifest["count"]

    gone = [r.key for r in test_records[:2]]
    assert remove_from_index(out, gone) == 2
    shrunk = read_index(out)
    assert shrunk.manifest["count"] == grown.manifest["count"] - 2
    assert not set(gone) & set(shrunk.tiles.key)
    assert shrunk.faiss.ntotal == len(shrunk.vectors) == len(shrunk.tiles)

    with pytest.raises(GeolocError, match="no tile with key 'nope.png'"):
        remove_from_index(out, [shrunk.tiles.key[0], "nope.png"])
    assert read_index(out).manifest["count"] == shrunk.manifest["count"]
    with pytest.raises(GeolocError, match="empty index"):
        remove_from_index(out, shrunk.tiles.key)


def test_a_second_build_reads_the_embedding_cache(
    lora_model: Path, tiny_city: Path, tmp_path: Path, monkeypatch
) -> None:
    from geoloc.index import build

    encoder = MllmEncoder.load(lora_model)
    build_index(lora_model, tiny_city, tmp_path / "a", encoder=encoder, cache_dir=tmp_path / "cache")

    def no_encoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("the cache should have answered")

    monkeypatch.setattr(encoder, "encode_images", no_encoding)
    monkeypatch.setattr(encoder, "encode_text", no_encoding)
    build.build_index(lora_model, tiny_city, tmp_path / "b", encoder=encoder, cache_dir=tmp_path / "cache")
    assert np.array_equal(read_index(tmp_path / "a").vectors, read_index(tmp_path / "b").vectors)


def test_an_index_of_format_version_1_still_opens(city_index: Path, tmp_path: Path) -> None:
    """Version 2 only added settings (pq_m, train_size, rescore); a version-1 folder, written
    without them and with its metadata in Parquet, opens with their defaults and searches as before."""
    old = tmp_path / "v1"
    shutil.copytree(city_index, old)
    with pa.memory_map(str(old / store.METADATA)) as file:
        table = pa.ipc.open_file(file).read_all()
    strings = [f.with_type(pa.string()) if f.type == pa.large_string() else f for f in table.schema]
    old_schema = pa.schema(strings)
    pq.write_table(table.cast(old_schema), old / store.PARQUET_METADATA)
    (old / store.METADATA).unlink()
    manifest = json.loads((old / "manifest.json").read_text())
    for name in ("pq_m", "train_size", "rescore"):
        del manifest["index"][name]
    (old / "manifest.json").write_text(json.dumps({**manifest, "format_version": 1}))
    before, after = read_index(city_index), read_index(old)
    assert after.settings == AnnSettings(kind="exact") and after.manifest["format_version"] == 1
    query = np.asarray(before.vectors[:3])
    found = [
        [(hit.key, hit.score) for hit in hits]
        for index in (before, after)
        for hits in SearchIndex(index, encoder=None).search_vectors(query, 5)
    ]
    assert found[:3] == found[3:] and [hits[0][0] for hits in found[:3]] == before.tiles.key[:3]
    assert after.tiles == before.tiles
