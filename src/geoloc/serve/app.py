"""The HTTP API and web page of a search index (FastAPI).

    POST /search   {"text": "...", "k": 10, "rerank": false, "format": "json"}  -> ranked tiles with
                   score, key, lat, lon, footprint; "format": "geojson" -> an RFC 7946 FeatureCollection;
                   "within": a GeoJSON Polygon / MultiPolygon, "near": {"lat", "lon", "radius_km"}
                   -> only the tiles whose centre lies there
    POST /explain  {"text": "...", "top": 5, "rerank": false}  -> the generator's verdict on each top tile
    POST /heatmap  {"text": "...", "cells": 2500}  -> every tile's score, as cells on the map
    GET  /tiles/{key}  the image of one of the index's own tiles
    GET  /health       status, tile count, model
    GET  /             the web page (search box, thumbnails, map); /docs: the OpenAPI docs

Input rules: a query is 1..MAX_QUERY_CHARS characters and not blank, k is 1..MAX_K (at most
MAX_JUDGED with rerank), types are strict (no coercion), unknown fields and malformed JSON are
refused with 422 and the reason, request bodies are capped at `max_body_bytes` (413), and /tiles
serves only files the index lists. The OpenAPI schema states every one of these rules and every
status code, and a schemathesis run in the tests holds the server to it.

The generator (rerank, /explain) judges one request at a time, in order of arrival; a request
whose client has closed the connection by its turn is dropped, not generated for nobody.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
import urllib.parse
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from geoloc.errors import GeolocError
from geoloc.geodata.geojson import MEDIA_TYPE as GEOJSON_MEDIA_TYPE
from geoloc.geodata.geojson import feature_collection
from geoloc.index.explain import Judged, search_and_judge
from geoloc.index.heatmap import heat_cells, score_gallery
from geoloc.index.region import Region
from geoloc.index.search import Hit, SearchIndex
from geoloc.serve import auth
from geoloc.serve.batcher import QueryBatcher
from geoloc.serve.limits import MAX_BODY_BYTES
from geoloc.serve.schemas import (
    ExplainRequest,
    ExplainResponse,
    FeatureCollection,
    Health,
    HeatmapRequest,
    HeatmapResponse,
    SearchRequest,
    SearchResponse,
    error_responses,
)

__all__ = ["MAX_BODY_BYTES", "create_app", "tile_url"]

STATIC = Path(__file__).parent / "static"
IMAGE_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
    ".gif": "image/gif",
    ".bmp": "image/bmp",
    ".tif": "image/tiff",
    ".tiff": "image/tiff",
}
CLIENT_GONE = 499  # nginx's status for a request whose client closed the connection first


def tile_url(key: str) -> str:
    return "/tiles/" + urllib.parse.quote(key)


def _rows(items: list[Any]) -> list[dict[str, Any]]:
    return [row | {"tile_url": tile_url(row["key"])} for row in (item.to_dict() for item in items)]


def _took_ms(start: float) -> float:
    return round(1000 * (time.perf_counter() - start), 2)


async def _judge_in_turn(
    turn: asyncio.Lock, client: Request, judge: Callable[[], list[Judged]]
) -> list[Judged]:
    """`judge()` (a `search_and_judge`) once the generator is free, unless the client has gone.

    The generator judges one request at a time (the index's model lock). Requests wait for their
    turn here, on the event loop, not in a thread: one whose client gave up meanwhile (a timeout)
    is dropped instead of generating for nobody, which would hold up every request behind it.
    """
    async with turn:
        if await client.is_disconnected():
            raise HTTPException(CLIENT_GONE, "the client closed the connection before its turn")
        return await run_in_threadpool(judge)


class _Served:
    """What the endpoints share: the index, the count of searches, the query batcher (while the
    app runs) and the generator's turn (one judging request at a time)."""

    def __init__(self, index: SearchIndex):
        self.index = index
        self.searches = 0
        self.batcher: QueryBatcher | None = None
        self.generator_turn = asyncio.Lock()

    def submit(self, text: str, k: int, region: Region | None) -> Future[list[Hit]]:
        """A search for the batcher, which runs while the app does."""
        if self.batcher is None:
            raise RuntimeError("the app is not running: no query batcher")
        return self.batcher.submit(text, k, region)

    @contextlib.asynccontextmanager
    async def lifespan(self, app: FastAPI) -> AsyncGenerator[None]:
        self.batcher = QueryBatcher(self.index)
        try:
            yield
        finally:
            batcher, self.batcher = self.batcher, None
            batcher.close()


def _add_bearer(app: FastAPI, token: str) -> None:
    @app.middleware("http")
    async def _bearer(request: Request, call_next: Any) -> Any:
        if auth.is_open(request.url.path) or auth.authorised(request.headers.get("authorization"), token):
            return await call_next(request)
        return JSONResponse(
            status_code=401,
            content={"detail": "this server needs its bearer token: Authorization: Bearer TOKEN"},
            headers={"WWW-Authenticate": "Bearer"},
        )


async def _user_error(request: Request, error: Exception) -> JSONResponse:
    return JSONResponse(status_code=400, content={"detail": str(error)})


def _add_health(app: FastAPI, served: _Served) -> None:
    index = served.index
    model = index.manifest["model"]

    @app.get("/health", response_model=Health)
    async def health() -> dict[str, Any]:
        """Liveness, what is served, and how many searches have been answered."""
        return {
            "status": "ok",
            "tiles": len(index),
            "model": model["id"],
            "fingerprint": model["fingerprint"],
            "index": index.manifest["index"]["kind"],
            "searches": served.searches,
        }


_SEARCH_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "the ranked tiles; with format geojson, an RFC 7946 FeatureCollection",
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/SearchResponse"}},
            GEOJSON_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/FeatureCollection"}},
        },
    },
    **error_responses(400, 413, 422),
}


def _add_search(app: FastAPI, served: _Served) -> None:
    index = served.index

    @app.post("/search", response_model=None, responses=_SEARCH_RESPONSES)
    async def search(request: SearchRequest, client: Request) -> JSONResponse:
        """The top k tiles for a description, best first."""
        start = time.perf_counter()
        results: list[Hit] | list[Any]
        region = request.region()
        if request.rerank:
            judge = functools.partial(search_and_judge, index, request.text, request.k, True, region=region)
            results = await _judge_in_turn(served.generator_turn, client, judge)
        else:
            results = await asyncio.wrap_future(served.submit(request.text, request.k, region))
        served.searches += 1
        answer = {"query": request.text, "k": request.k, "rerank": request.rerank, "took_ms": _took_ms(start)}
        if request.format == "geojson":
            collection = feature_collection(_rows(results), **answer)
            return JSONResponse(collection, media_type=GEOJSON_MEDIA_TYPE)
        return JSONResponse(answer | {"results": _rows(results)})


def _add_explain(app: FastAPI, served: _Served) -> None:
    index = served.index

    @app.post("/explain", response_model=ExplainResponse, responses=error_responses(400, 413, 422))
    async def explain(request: ExplainRequest, client: Request) -> dict[str, Any]:
        """The generator's judgement and explanation of each top tile (retrieval adapter off)."""
        start = time.perf_counter()
        judge = functools.partial(
            search_and_judge, index, request.text, request.top, request.rerank, True, request.max_new_tokens
        )
        judged = await _judge_in_turn(served.generator_turn, client, judge)
        return {
            "query": request.text,
            "top": request.top,
            "rerank": request.rerank,
            "took_ms": _took_ms(start),
            "results": _rows(judged),
        }


def _add_heatmap(app: FastAPI, index: SearchIndex) -> None:
    @app.post("/heatmap", response_model=HeatmapResponse, responses=error_responses(400, 413, 422))
    async def heatmap(request: HeatmapRequest) -> dict[str, Any]:
        """Every tile's score for a description, as cells on the map: where the place likely is."""
        scores = await run_in_threadpool(score_gallery, index, request.text)
        cells = heat_cells(index.stored.tiles, scores, request.cells)
        values = [cell["score"] for cell in cells]
        return {
            "query": request.text,
            "tiles": sum(cell["tiles"] for cell in cells),
            "min": min(values) if values else None,
            "max": max(values) if values else None,
            "cells": cells,
        }


_TILE_CONTENT = {
    media: {"schema": {"type": "string", "format": "binary"}} for media in set(IMAGE_TYPES.values())
}


def _add_tiles_and_page(app: FastAPI, index: SearchIndex) -> None:
    @app.get(
        "/tiles/{key:path}",
        response_class=FileResponse,
        responses={
            200: {"description": "the tile's image", "content": _TILE_CONTENT},
            **error_responses(404),
        },
    )
    async def tile(key: str) -> FileResponse:
        """The image of the tile `key`; only the index's own tiles are served."""
        path = index.image_path(key)
        media_type = IMAGE_TYPES.get(path.suffix.lower()) if path is not None else None
        if path is None or media_type is None:
            raise HTTPException(status_code=404, detail="no such tile in this index")
        return FileResponse(path, media_type=media_type, headers={"Cache-Control": "max-age=3600"})

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")


def _require_bearer(schema: dict[str, Any]) -> None:
    """State the bearer token in the schema: the scheme, and 401 on every operation that needs it."""
    schema["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    problem = {"$ref": "#/components/schemas/Problem"}
    for path, operations in schema["paths"].items():
        if auth.is_open(path):
            continue
        for operation in operations.values():
            operation["security"] = [{"bearer": []}]
            operation["responses"]["401"] = {
                "description": "no bearer token, or not the server's",
                "content": {"application/json": {"schema": problem}},
            }


def _openapi(app: FastAPI, index: SearchIndex, token: str | None) -> dict[str, Any]:
    """The API's description, made once. FastAPI documents the response models it serialises;
    the GeoJSON answer is documented here."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for extra in (SearchResponse, FeatureCollection):
            definition = extra.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(definition.pop("$defs", {}))
            components[extra.__name__] = definition
        if token is not None:
            _require_bearer(schema)
        # A real key as the example, so that a client trying the API can fetch a tile (not
        # when a token guards the data: the description is open).
        elif len(index):
            for parameter in schema["paths"]["/tiles/{key}"]["get"].get("parameters", []):
                parameter["example"] = index.stored.tiles.key[0]
        app.openapi_schema = schema
    return app.openapi_schema


def create_app(index: SearchIndex, max_body_bytes: int = MAX_BODY_BYTES, token: str | None = None) -> FastAPI:
    """The app serving `index`; its query batcher runs while the app does. With `token`, every
    request for data must carry it as a bearer token (see `auth`)."""
    served = _Served(index)
    app = FastAPI(
        title="geoloc search",
        summary="Describe a place in words; get the satellite tiles (and coordinates) that match.",
        lifespan=served.lifespan,
        max_body_size=max_body_bytes,
    )
    if token is not None:
        _add_bearer(app, token)
    app.add_exception_handler(GeolocError, _user_error)
    _add_health(app, served)
    _add_search(app, served)
    _add_explain(app, served)
    _add_heatmap(app, index)
    _add_tiles_and_page(app, index)
    app.openapi = functools.partial(_openapi, app, index, token)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
