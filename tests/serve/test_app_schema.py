"""The API's OpenAPI schema is its contract: strict types, every status code, the rerank rule,
GeoJSON answers; a bounded schemathesis run (all checks) against the live server finds nothing."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

QUERY = "a red square building with a pond on its left"


# The run's work is bounded by its examples: --max-examples 12 for each operation and phase is
# about 410 requests (73 of them /explain, the costly ones: 8 to 12 s of the server's 11 to 15 s,
# beside 5 s of CPU in schemathesis itself). On this 2-core machine shared with other work (load
# 4 to 5) it takes 17 to 27 s. Its time limits only catch a hang: a request may take
# REQUEST_LIMIT_S (the slowest, a top-17, 208-token /explain, takes about 2 s), and the whole run
# RUN_LIMIT_S. Response time is not the contract: schemathesis' own 10 s limit (ST112, on with
# --checks all) would fail a run only because the machine is shared, so it is raised to the
# request limit. --max-failures 1 ends a failing run at once: the server judges one /explain at
# a time, so a request the client gave up on would hold up every later one.
MAX_REQUESTS = 600
REQUEST_LIMIT_S = 60
RUN_LIMIT_S = 600


def test_schemathesis_finds_no_failures(live_server: str, tmp_path: Path) -> None:
    """schemathesis --checks all on loopback: positive and negative cases for every operation,
    including the geojson format and the k <= 100 rule under rerank. Bounded by its examples."""
    schemathesis = Path(sys.executable).with_name("schemathesis")
    command = [
        str(schemathesis), "run", f"{live_server}/openapi.json", "--checks", "all",
        "--max-examples", "12", "--seed", "7", "--workers", "1", "--no-color", "--max-failures", "1",
        "--request-timeout", str(REQUEST_LIMIT_S), "--max-response-time", str(REQUEST_LIMIT_S),
    ]  # fmt: skip
    env = {**os.environ, "SCHEMATHESIS_HOOKS": ""}
    run = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=RUN_LIMIT_S, env=env)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-4000:]
    assert "No issues found" in output and "5 selected / 5 total" in output
    generated = re.search(r"(\d+) generated, \1 passed", output)
    assert generated and 100 < int(generated.group(1)) <= MAX_REQUESTS, output[-1500:]
    print(output[-1500:])


def test_status_codes_and_rules_are_in_the_schema(client) -> None:
    schema = client.get("/openapi.json").json()
    paths = schema["paths"]
    for path in ("/search", "/explain", "/heatmap"):
        assert set(paths[path]["post"]["responses"]) == {"200", "400", "413", "422"}
    assert {"200", "404"} <= set(paths["/tiles/{key}"]["get"]["responses"])
    search = paths["/search"]["post"]["responses"]["200"]["content"]
    assert set(search) == {"application/json", "application/geo+json"}
    request = schema["components"]["schemas"]["SearchRequest"]
    assert request["then"]["properties"]["k"]["maximum"] == 100
    assert request["if"]["properties"]["rerank"]["const"] is True
    assert request["properties"]["format"]["enum"] == ["json", "geojson"]
    assert request["additionalProperties"] is False
    # The region filters: a GeoJSON Polygon or MultiPolygon, and a circle, bounded like WGS84.
    schemas = schema["components"]["schemas"]
    within = {ref["$ref"].rsplit("/", 1)[1] for ref in request["properties"]["within"]["anyOf"][0]["oneOf"]}
    assert within == {"PolygonArea", "MultiPolygonArea"}
    lon, lat = schemas["PolygonArea"]["properties"]["coordinates"]["items"]["items"]["prefixItems"]
    assert (lon["minimum"], lon["maximum"], lat["minimum"], lat["maximum"]) == (-180, 180, -90, 90)
    assert set(schemas["Near"]["required"]) == {"lat", "lon", "radius_km"}


@pytest.mark.parametrize("path", ["/search", "/explain"])
@pytest.mark.parametrize("value", [0, 1, "true", None])
def test_rerank_takes_booleans_only(client, path: str, value: object) -> None:
    response = client.post(path, json={"text": QUERY, "rerank": value})
    assert response.status_code == 422 and "valid boolean" in response.text


def test_counts_are_json_integers(client) -> None:
    assert client.post("/search", json={"text": QUERY, "k": 3.0}).json()["k"] == 3  # JSON Schema's integer
    for k in ("3", True, 3.5):
        assert client.post("/search", json={"text": QUERY, "k": k}).status_code == 422
    refused = client.post("/search", json={"text": QUERY, "k": 549, "rerank": True})
    assert refused.status_code == 422 and "with rerank, k is at most 100" in refused.text


def test_search_answers_geojson(client, served_index) -> None:
    response = client.post("/search", json={"text": QUERY, "k": 5, "format": "geojson"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/geo+json"
    collection = response.json()
    assert collection["type"] == "FeatureCollection" and collection["query"] == QUERY
    features = collection["features"]
    hits = served_index.search(QUERY, k=5)
    assert [f["id"] for f in features] == [h.key for h in hits]
    for feature, hit in zip(features, hits, strict=True):
        assert feature["geometry"] == {"type": "Polygon", "coordinates": [hit.footprint]}
        properties = feature["properties"]
        assert properties["rank"] == hit.rank and (properties["lon"], properties["lat"]) == (hit.lon, hit.lat)
        assert properties["score"] == pytest.approx(hit.score) and properties["tile_url"].startswith(
            "/tiles/"
        )
    json.dumps(collection, allow_nan=False)  # valid JSON, no NaN


def test_heatmap_scores_the_whole_gallery(client, served_index) -> None:
    body = client.post("/heatmap", json={"text": QUERY}).json()
    assert body["tiles"] == len(body["cells"]) == len(served_index) == 40
    best = served_index.search(QUERY, k=1)[0]
    assert body["max"] == pytest.approx(best.score, abs=1e-5)
    top = max(body["cells"], key=lambda cell: cell["score"])
    assert top["south"] < best.lat < top["north"] and top["west"] < best.lon < top["east"]
    # Fewer cells than tiles: the centres are binned, each cell keeping its best score.
    binned = client.post("/heatmap", json={"text": QUERY, "cells": 4}).json()
    assert len(binned["cells"]) <= 4 and sum(c["tiles"] for c in binned["cells"]) == 40
    assert max(c["score"] for c in binned["cells"]) == pytest.approx(body["max"])
