"""GeoParquet out and in: an index's tiles and embeddings as GeoParquet 1.1 (validated by the
independent geoparquet-validator and read by GeoPandas), a STAC Collection beside it, and an index
built back from the file without encoding, after checking the model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from geoloc.cli import main
from geoloc.index.geoparquet import EMB_EXTENSION
from geoloc.index.store import read_index


@pytest.fixture(scope="module")
def exported(city_index: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("export") / "city.parquet"
    assert main(["index", "export", str(city_index), "--out", str(out)]) == 0
    return out


def test_the_export_is_valid_geoparquet_1_1_with_a_bbox_covering(exported: Path, city_index: Path) -> None:
    import geoparquet_validator

    report = geoparquet_validator.check(str(exported))
    assert report["outcomes"] and geoparquet_validator.failed(report) == []
    passed = {o["id"] for o in report["outcomes"] if o["status"] == "pass"}
    assert {"/conf/core/geo-metadata", "/conf/core/wkb", "/conf/covering/bbox-column-structure"} <= passed

    stored = read_index(city_index)
    geo = json.loads(pq.read_schema(exported).metadata[b"geo"])
    assert geo["version"] == "1.1.0" and geo["columns"]["geometry"]["geometry_types"] == ["Polygon"]
    assert geo["columns"]["geometry"]["covering"]["bbox"]["xmin"] == ["bbox", "xmin"]
    table = pq.read_table(exported)
    embedding = table.schema.field("embedding").type
    assert embedding.list_size == stored.manifest["dimension"] and str(embedding.value_type) == "float"
    assert set(table.column("model").to_pylist()) == {stored.manifest["model"]["fingerprint"]}


def test_geopandas_reads_the_footprints_and_the_vectors(exported: Path, city_index: Path) -> None:
    import geopandas

    stored = read_index(city_index)
    frame = geopandas.read_parquet(exported)
    assert frame.crs.to_string() == "OGC:CRS84" and list(frame["key"]) == stored.tiles.key
    first = frame.geometry.iloc[0]
    assert [list(p) for p in first.exterior.coords] == stored.tiles.footprint[0]
    boxes = pq.read_table(exported, columns=["bbox"]).column("bbox").to_pylist()
    assert [tuple(box.values()) for box in boxes] == [g.bounds for g in frame.geometry]
    assert np.array_equal(np.stack(frame["embedding"].to_numpy()), stored.vectors)


def test_the_stac_collection_describes_the_embeddings_and_the_model(exported: Path, city_index: Path) -> None:
    manifest = read_index(city_index).manifest
    collection = json.loads(exported.with_name("city.collection.json").read_text())
    assert collection["type"] == "Collection" and collection["stac_version"] == "1.1.0"
    assert collection["assets"]["embeddings"]["href"] == "./city.parquet"
    assert any("/mlm/" in url for url in collection["stac_extensions"]) and collection["mlm:tasks"]
    # The embeddings extension v0.0.1 on a Collection: its schema URL; emb:type, emb:dimensions and
    # data_type required; links of rel emb:model and emb:source-data required; no other emb: field.
    assert EMB_EXTENSION in collection["stac_extensions"] and EMB_EXTENSION.endswith("/v0.0.1/schema.json")
    assert collection["emb:type"] == "chip" and collection["data_type"] == "float32"
    assert collection["emb:dimensions"] == manifest["dimension"]
    extension_fields = {
        "emb:type",
        "emb:dimensions",
        "emb:chip_layout",
        "emb:temporal_resolution",
        "emb:fit_for_use",
        "emb:uncertainty",
    }
    assert {key for key in collection if key.startswith("emb:")} <= extension_fields
    links = {link["rel"]: link for link in collection["links"]}
    assert {"emb:model", "emb:source-data"} <= set(links)
    assert links["emb:model"]["href"] == Path(manifest["model"]["id"]).as_uri()
    assert links["emb:source-data"]["href"] == Path(manifest["galleries"][0]).resolve().as_uri()
    assert collection["geoloc:column"] == "embedding" and collection["geoloc:metric"] == "cosine"
    assert collection["geoloc:model"]["fingerprint"] == manifest["model"]["fingerprint"]
    west, south, east, north = collection["extent"]["spatial"]["bbox"][0]
    lat, lon = np.array(read_index(city_index).tiles.lat), np.array(read_index(city_index).tiles.lon)
    assert west < lon.min() and east > lon.max() and south < lat.min() and north > lat.max()


def test_an_index_built_from_the_file_is_the_same_index(
    exported: Path, city_index: Path, lora_model: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "again"
    args = ["index", "build", str(lora_model), "--from", str(exported), "--out", str(out), "--device", "cpu"]
    assert main(args) == 0 and "indexed 40 tiles" in capsys.readouterr().out
    before, after = read_index(city_index), read_index(out)
    assert np.array_equal(before.vectors, after.vectors) and before.tiles == after.tiles
    assert after.manifest["model"]["fingerprint"] == before.manifest["model"]["fingerprint"]

    # Another model cannot adopt the vectors: its queries would land in another space.
    assert main([*args[:2], "tiny-smolvlm", *args[3:-4], "--out", str(tmp_path / "other")]) == 2
    err = capsys.readouterr().err
    assert "city.parquet" in err and "the query model is a different one" in err
    assert not (tmp_path / "other").exists()
    (tmp_path / "plain.parquet").write_bytes(b"PAR1 not really")
    assert main([*args[:4], str(tmp_path / "plain.parquet"), "--out", str(tmp_path / "x")]) == 2
    assert "plain.parquet: not a readable GeoParquet file" in capsys.readouterr().err


def test_a_footprint_across_the_antimeridian_goes_out_split_and_comes_back_whole(tmp_path: Path) -> None:
    """RFC 7946: out as a MultiPolygon cut at 180 (longitudes in range, so the file stays valid
    GeoParquet); back as the one ring geoloc keeps."""
    import geoparquet_validator

    from geoloc.geodata.footprint import box_ring
    from geoloc.index.ann import AnnSettings
    from geoloc.index.geoparquet import export_geoparquet, read_geoparquet
    from geoloc.index.store import Tiles, write_index

    rings = [box_ring(179.99, 10.0, 180.01, 10.02), box_ring(5.0, 45.0, 5.01, 45.01)]
    tiles = Tiles(["a", "b", "c"], ["a", "b", "c"], [10.01, 45.005, None], [-179.99, 5.005, None],
                  ["g"] * 3, [*rings, None])  # fmt: skip
    vectors = np.eye(3, 4, dtype=np.float32)
    model = {"id": "m", "fingerprint": "f" * 64, "dtype": "float32"}
    write_index(tmp_path / "i", vectors, tiles, model, AnnSettings(), [])
    export_geoparquet(tmp_path / "i", tmp_path / "t.parquet")
    assert geoparquet_validator.failed(geoparquet_validator.check(str(tmp_path / "t.parquet"))) == []
    geo = json.loads(pq.read_schema(tmp_path / "t.parquet").metadata[b"geo"])
    assert geo["columns"]["geometry"]["geometry_types"] == ["MultiPolygon", "Polygon"]
    back_vectors, back_tiles, info = read_geoparquet(tmp_path / "t.parquet")
    assert np.array_equal(back_vectors, vectors) and back_tiles == tiles and info["model"] == model
