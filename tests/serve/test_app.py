import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from geoloc.index.search import MAX_K, MAX_QUERY_CHARS
from geoloc.serve.app import MAX_BODY_BYTES

QUERY = "a red square building with a pond on its left"


def test_search_returns_the_index_ranking(client, served_index) -> None:
    response = client.post("/search", json={"text": QUERY, "k": 5})
    assert response.status_code == 200
    body = response.json()
    assert body["query"] == QUERY and body["k"] == 5 and body["rerank"] is False
    results = body["results"]
    expected = served_index.search(QUERY, k=5)
    assert [r["key"] for r in results] == [h.key for h in expected]
    assert [r["rank"] for r in results] == [1, 2, 3, 4, 5]
    assert all({"score", "key", "lat", "lon", "group", "tile_url"} <= set(r) for r in results)
    assert results[0]["tile_url"] == "/tiles/" + results[0]["key"]
    assert client.post("/search", json={"text": QUERY}).json()["k"] == 10  # k defaults to 10


def test_health_and_docs(client, served_index) -> None:
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["tiles"] == 40 and health["model"] == "tiny-smolvlm"
    assert health["fingerprint"] == served_index.manifest["model"]["fingerprint"]
    before = health["searches"]
    client.post("/search", json={"text": QUERY, "k": 1})
    assert client.get("/health").json()["searches"] == before + 1
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/search", "/explain", "/health", "/tiles/{key}"} <= set(paths)


@pytest.mark.parametrize(
    "payload, reason",
    [
        ({"text": "x" * (MAX_QUERY_CHARS + 1), "k": 5}, "at most 2000 characters"),
        ({"text": "", "k": 5}, "at least 1 character"),
        ({"text": "   ", "k": 5}, "blank"),
        ({"text": QUERY, "k": 0}, "greater than or equal to 1"),
        ({"text": QUERY, "k": MAX_K + 1}, "less than or equal to 1000"),
        ({"text": QUERY, "k": "many"}, "valid integer"),
        ({"text": QUERY, "k": 2.5}, "valid integer"),
        ({"text": 42, "k": 5}, "valid string"),
        ({"k": 5}, "Field required"),
        ({"text": QUERY, "k": 5, "extra": 1}, "Extra inputs are not permitted"),
        ({"text": QUERY, "k": 101, "rerank": True}, "with rerank, k is at most 100"),
        ([QUERY], "valid dictionary"),
    ],
)
def test_bad_search_requests_get_422_with_the_reason(client, payload, reason) -> None:
    response = client.post("/search", json=payload)
    assert response.status_code == 422
    assert reason in json.dumps(response.json())


@pytest.mark.parametrize(
    "raw", ['{"text": "a pond", "k": ', "{'text': 'a pond'}", "not json", '{"text": "\\ud8"}']
)
def test_malformed_json_gets_422_with_the_reason(client, raw: str) -> None:
    response = client.post("/search", content=raw, headers={"Content-Type": "application/json"})
    assert response.status_code == 422
    detail = response.json()["detail"][0]
    assert detail["type"] == "json_invalid" and detail["ctx"]["error"]


def test_request_bodies_are_limited(client) -> None:
    big = json.dumps({"text": "a" * MAX_BODY_BYTES, "k": 5})
    response = client.post("/search", content=big, headers={"Content-Type": "application/json"})
    assert response.status_code == 413

    def chunks():  # no Content-Length: the limit must hold while the body streams in
        for _ in range(64):
            yield b" " * 1024

    response = client.post("/search", content=chunks(), headers={"Content-Type": "application/json"})
    assert response.status_code == 413


def test_tiles_are_served_and_nothing_else(client, served_index, tiny_city: Path) -> None:
    key = served_index.stored.tiles.key[0]
    response = client.get(f"/tiles/{key}")
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert response.content == (tiny_city.parent / key).read_bytes()
    attempts = [
        "/tiles/manifest.jsonl",
        "/tiles/../manifest.jsonl",
        "/tiles/..%2Fmanifest.jsonl",
        "/tiles/tiles%2F..%2Fmanifest.jsonl",
        "/tiles/tiles/..%2F..%2F..%2F..%2F..%2Fetc%2Fpasswd",
        "/tiles/%2Fetc%2Fpasswd",
        "/tiles//etc/passwd",
        "/tiles/%2e%2e/%2e%2e/etc/passwd",
        "/tiles/" + key.replace("/", "%5C"),
        "/tiles/" + key + "%00.png",
        "/tiles/",
    ]
    for path in attempts:
        response = client.get(path)
        assert response.status_code == 404, path
        assert b"root:" not in response.content and b'"texts"' not in response.content


def test_a_tile_turned_into_a_symlink_out_of_the_gallery_is_refused(tmp_path: Path) -> None:
    from geoloc.data.synth import generate_city
    from geoloc.index.build import build_index
    from geoloc.index.search import SearchIndex

    city = generate_city(tmp_path / "city", tiles=4, seed=5).parent
    build_index("tiny-smolvlm", city, tmp_path / "index", use_cache=False)
    index = SearchIndex.open(tmp_path / "index")
    key = index.stored.tiles.key[0]
    shutil.copy(city / key, tmp_path / "private.png")
    os.remove(city / key)
    os.symlink(tmp_path / "private.png", city / key)

    from fastapi.testclient import TestClient

    from geoloc.serve.app import create_app

    with TestClient(create_app(index)) as own_client:
        assert own_client.get(f"/tiles/{key}").status_code == 404
        assert own_client.get(f"/tiles/{index.stored.tiles.key[1]}").status_code == 200


def test_rerank_and_explain_in_the_api(client) -> None:
    body = client.post("/search", json={"text": QUERY, "k": 6, "rerank": True}).json()
    judgements = [r["judgement"] for r in body["results"]]
    assert body["rerank"] is True and len(judgements) == 6
    assert judgements == sorted(judgements, reverse=True)
    assert sorted(r["retrieval_rank"] for r in body["results"]) == list(range(1, 7))

    response = client.post("/explain", json={"text": QUERY, "top": 3, "max_new_tokens": 3})
    assert response.status_code == 200
    results = response.json()["results"]
    assert len(results) == 3 and all(isinstance(r["explanation"], str) for r in results)
    assert [r["retrieval_rank"] for r in results] == [1, 2, 3]
    assert client.post("/explain", json={"text": QUERY, "top": 21}).status_code == 422


def test_concurrent_searches_each_get_their_own_answer(client, served_index) -> None:
    texts = [
        f"a {colour} building near {thing}"
        for colour in ("red", "blue", "white")
        for thing in ("a pond", "trees")
    ]

    def ask(text: str) -> list[str]:
        response = client.post("/search", json={"text": text, "k": 3})
        assert response.status_code == 200
        return [r["key"] for r in response.json()["results"]]

    with ThreadPoolExecutor(max_workers=6) as pool:
        answers = list(pool.map(ask, texts * 3))
    for text, keys in zip(texts * 3, answers, strict=True):
        assert keys == [h.key for h in served_index.search(text, k=3)]


def test_the_page_and_its_vendored_map_library(client) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "/static/vendor/leaflet/leaflet.js" in page.text and 'id="map"' in page.text
    for asset in (
        "/static/app.js",
        "/static/style.css",
        "/static/vendor/leaflet/leaflet.js",
        "/static/vendor/leaflet/leaflet.css",
        "/static/vendor/leaflet/LICENSE",
    ):
        assert client.get(asset).status_code == 200, asset
    assert client.get("/static/../app.py").status_code == 404


def test_search_within_an_area_or_near_a_point(client, served_index) -> None:
    from geoloc.index.region import Region

    tiles = served_index.stored.tiles
    lat, lon = np.array(tiles.lat, dtype=np.float64), np.array(tiles.lon, dtype=np.float64)
    west, south, east, north = (
        float(lon.min()),
        float(lat.min()),
        float(np.median(lon)),
        float(np.median(lat)),
    )
    ring = [[west, south], [east, south], [east, north], [west, north], [west, south]]
    expected = [h.key for h in served_index.search(QUERY, 40, Region.bbox(west, south, east, north))]
    assert 3 < len(expected) < 40
    for within in (
        {"type": "Polygon", "coordinates": [ring]},
        {"type": "MultiPolygon", "coordinates": [[ring]]},
    ):
        body = client.post("/search", json={"text": QUERY, "k": 40, "within": within}).json()
        assert [r["key"] for r in body["results"]] == expected
    near = {"lat": float(lat[0]), "lon": float(lon[0]), "radius_km": 0.2}
    expected = [h.key for h in served_index.search(QUERY, 40, Region.near(near["lat"], near["lon"], 0.2))]
    body = client.post("/search", json={"text": QUERY, "k": 40, "near": near, "rerank": False}).json()
    assert [r["key"] for r in body["results"]] == expected and 0 < len(expected) < 40
    both = client.post(
        "/search",
        json={"text": QUERY, "k": 40, "near": near, "within": {"type": "Polygon", "coordinates": [ring]}},
    )
    assert {r["key"] for r in both.json()["results"]} <= set(expected)
    for bad, reason in [
        ({"type": "Point", "coordinates": [1, 2]}, "does not match any of the expected tags"),
        ({"type": "Polygon", "coordinates": [[[0, 0], [1, 95], [1, 0], [0, 0]]]}, "less than or equal to 90"),
        ({"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [0, 0]]]}, "at least 4 items"),
    ]:
        response = client.post("/search", json={"text": QUERY, "within": bad})
        assert response.status_code == 422 and reason in response.text, bad
    response = client.post("/search", json={"text": QUERY, "near": {"lat": 0, "lon": 0, "radius_km": 0}})
    assert response.status_code == 422 and "greater than 0" in response.text


def test_a_request_whose_client_left_before_its_turn_is_not_judged(
    served_index, serve_app, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The generator judges one request at a time; requests whose clients timed out while they
    waited are dropped at their turn, so they hold up no request behind them."""
    import threading

    import httpx

    from geoloc.serve import app as app_module

    judged: list[str] = []
    release = threading.Event()

    def slow_judge(index, text: str, *args, **kwargs) -> list:
        judged.append(text)
        release.wait(30)
        return []

    monkeypatch.setattr(app_module, "search_and_judge", slow_judge)
    with serve_app(app_module.create_app(served_index)) as url:
        first = ThreadPoolExecutor(1).submit(httpx.post, f"{url}/explain", json={"text": "first"}, timeout=60)
        while not judged:
            threading.Event().wait(0.01)
        for text in ("gone 1", "gone 2"):  # wait behind the first, and give up
            with pytest.raises(httpx.ReadTimeout):
                httpx.post(f"{url}/explain", json={"text": text}, timeout=0.5)
        threading.Event().wait(0.3)  # the server sees the connections close
        release.set()
        assert first.result().status_code == 200
        last = httpx.post(f"{url}/search", json={"text": "last", "rerank": True}, timeout=60)
    assert last.status_code == 200
    assert judged == ["first", "last"]
