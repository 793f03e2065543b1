"""Search within a region: the same top k as an exact search over only the tiles inside it, for
every index kind, for boxes, polygons and circles, and for a region across the antimeridian."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from geoloc.distance import haversine_km
from geoloc.errors import GeolocError
from geoloc.index import ann
from geoloc.index.ann import AnnSettings
from geoloc.index.region import Region, parse_near, parse_within
from geoloc.index.search import SearchIndex
from geoloc.index.store import Tiles, read_index, write_index

COUNT, DIM = 2000, 16


def gallery(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit vectors in clusters, and tile centres over the whole globe (many near the antimeridian)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((30, DIM))
    vectors = centres[rng.integers(0, 30, COUNT)] + 0.4 * rng.standard_normal((COUNT, DIM))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    lat = rng.uniform(-80, 80, COUNT)
    lon = np.where(rng.random(COUNT) < 0.3, rng.uniform(165, 195, COUNT), rng.uniform(-180, 180, COUNT))
    return vectors, lat, (lon + 180) % 360 - 180


def open_index(path: Path, settings: AnnSettings, seed: int = 0) -> SearchIndex:
    vectors, lat, lon = gallery(seed)
    keys = [f"t{i:05d}" for i in range(COUNT)]
    tiles = Tiles(keys, keys, list(lat), list(lon), ["g"] * COUNT)
    write_index(path, vectors, tiles, {"id": "random", "fingerprint": "0"}, settings, galleries=[])
    return SearchIndex(read_index(path), encoder=None)


def brute_force(index: SearchIndex, queries: np.ndarray, inside: np.ndarray, k: int) -> list[list[str]]:
    vectors = np.asarray(index.stored.vectors)
    rows = np.flatnonzero(inside)
    scores = queries @ vectors[rows].T
    return [[index.stored.tiles.key[rows[j]] for j in np.argsort(-s, kind="stable")[:k]] for s in scores]


def queries(count: int = 6) -> np.ndarray:
    vectors = gallery(seed=0)[0][:count] + 0.05
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


REGIONS = {
    "box": Region.bbox(-30, -20, 60, 45),
    "across the antimeridian": Region.bbox(170, -40, -172, 50),
    "circle": Region.near(10.0, 179.0, 2500),
    "polygon split at the antimeridian": Region.from_geojson(
        {
            "type": "MultiPolygon",
            "coordinates": [
                [[[175, -30], [180, -30], [180, 30], [175, 30], [175, -30]]],
                [[[-180, -30], [-175, -30], [-175, 30], [-180, 30], [-180, -30]]],
            ],
        }  # fmt: skip
    ),
}


@pytest.mark.parametrize("kind", ["exact", "hnsw", "ivf-pq"])
@pytest.mark.parametrize("through_faiss", [False, True])
def test_region_search_is_exact_over_the_tiles_inside(
    kind: str, through_faiss: bool, tmp_path: Path, monkeypatch
) -> None:
    """Small regions are scored exactly; through FAISS's ID selector (forced here), exact, and the
    approximate kinds set to scan everything, give the brute-force answer over the tiles inside."""
    settings = AnnSettings(kind=kind, nlist=8, nprobe=8, ef_search=400, pq_m=4, rescore=COUNT)
    index = open_index(tmp_path / "index", settings)
    if through_faiss:
        monkeypatch.setattr(ann, "EXACT_SUBSET", 0)
    for name, region in REGIONS.items():
        inside = index.inside(region)
        assert 20 < inside.sum() < COUNT / 2, name
        expected = brute_force(index, queries(), inside, 10)
        found = index.search_vectors(queries(), 10, region)
        assert [[hit.key for hit in hits] for hits in found] == expected, (name, kind)
        for hits in found:
            assert all(inside[int(hit.key[1:])] for hit in hits)


def test_antimeridian_box_holds_both_sides_and_nothing_between(tmp_path: Path) -> None:
    index = open_index(tmp_path / "index", AnnSettings())
    # checked against the region's own definition
    lat, lon = (
        np.array(index.stored.tiles.lat, dtype=np.float64),
        np.array(index.stored.tiles.lon, dtype=np.float64),
    )
    inside = index.inside(Region.bbox(170, -40, -172, 50))
    expected = (lat >= -40) & (lat <= 50) & ((lon >= 170) | (lon <= -172))
    assert np.array_equal(inside, expected) and lon[inside].min() < -172 and lon[inside].max() > 170
    circle = index.inside(Region.near(10.0, 179.0, 2500))
    assert np.array_equal(circle, haversine_km(10.0, 179.0, lat, lon) <= 2500)
    assert (lon[circle] < 0).any() and (lon[circle] > 0).any()  # the circle crosses it too


def test_a_region_with_fewer_tiles_than_k_and_an_empty_one(tmp_path: Path) -> None:
    index = open_index(tmp_path / "index", AnnSettings())
    region = Region.near(float(index.stored.tiles.lat[0]), float(index.stored.tiles.lon[0]), 1.0)
    hits = index.search_vectors(queries(1), 10, region)[0]
    assert [hit.key for hit in hits] == ["t00000"] and hits[0].rank == 1
    assert index.search_vectors(queries(1), 10, Region.bbox(0, 89.5, 1, 90))[0] == []


def test_geojson_regions_and_their_errors(tmp_path: Path) -> None:
    square = {"type": "Polygon", "coordinates": [[[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]]]}
    feature = {"type": "Feature", "properties": {}, "geometry": square}
    other = {"type": "Polygon", "coordinates": [[[20, 20], [30, 20], [30, 30], [20, 20]]]}
    collection = {"type": "FeatureCollection", "features": [feature, {"type": "Feature", "geometry": other}]}
    lat, lon = np.array([5.0, 25.0, 29.0, 50.0]), np.array([5.0, 26.0, 21.0, 5.0])
    assert Region.from_geojson(square).contains(lat, lon).tolist() == [True, False, False, False]
    assert Region.from_geojson(collection).contains(lat, lon).tolist() == [True, True, False, False]
    unclosed = {"type": "Polygon", "coordinates": [[[0, 0], [10, 0], [10, 10], [0, 10]]]}
    assert Region.from_geojson(unclosed).contains(lat, lon).tolist() == [True, False, False, False]
    file = tmp_path / "area.geojson"
    file.write_text(json.dumps(collection))
    assert parse_within(str(file)).contains(lat, lon).tolist() == [True, True, False, False]
    assert parse_within("0,0,10,10").contains(lat, lon).tolist() == [True, False, False, False]
    assert parse_near("5,5", 100).contains(lat, lon).tolist() == [True, False, False, False]
    bad = {
        "a Point encloses no area": {"type": "Point", "coordinates": [1, 2]},
        "latitude 95": {"type": "Polygon", "coordinates": [[[0, 0], [1, 95], [1, 0]]]},
        "a position must be [lon, lat]": {"type": "Polygon", "coordinates": [[[0, 0], [1], [1, 0]]]},
        "without features": {"type": "FeatureCollection", "features": []},
    }
    for message, obj in bad.items():
        with pytest.raises(GeolocError, match=re.escape(message)):
            Region.from_geojson(obj)
    for value, message in [("1,2,3", "neither W,S,E,N"), ("0,10,10,0", "is north of north"),
                           (str(tmp_path), "neither W,S,E,N")]:  # fmt: skip
        with pytest.raises(GeolocError, match=message):
            parse_within(value)
    (tmp_path / "broken.geojson").write_text("{")
    with pytest.raises(GeolocError, match="broken.geojson: not readable as GeoJSON"):
        parse_within(str(tmp_path / "broken.geojson"))
    with pytest.raises(GeolocError, match="needs --radius-km"):
        parse_near("5,5", None)
    with pytest.raises(GeolocError, match="radius must be above 0"):
        Region.near(5, 5, 0)
