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
import re
import time
import urllib.parse
from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from geoloc.errors import GeolocError
from geoloc.geodata.geojson import MEDIA_TYPE as GEOJSON_MEDIA_TYPE
from geoloc.geodata.geojson import feature_collection
from geoloc.index.explain import MAX_JUDGED, Judged, search_and_judge
from geoloc.index.heatmap import heat_cells, score_gallery
from geoloc.index.limits import MAX_K, MAX_QUERY_CHARS
from geoloc.index.region import MAX_RADIUS_KM, Region
from geoloc.index.search import Hit, SearchIndex
from geoloc.serve import auth
from geoloc.serve.batcher import QueryBatcher
from geoloc.serve.limits import MAX_BODY_BYTES

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
MAX_HEAT_CELLS = 10_000
# "Not blank": at least one character that is not whitespace. The class lists exactly the
# characters Python's str.isspace() calls whitespace, so the schema (read by other regex
# engines) and the server agree on every string.
NOT_BLANK = "[^\\t-\\r\\x1c- \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]"
_NOT_BLANK = re.compile(NOT_BLANK)


class Query(BaseModel):
    # Strict: JSON types are not coerced ("rerank": 0 is not false, "k": "5" is not 5).
    model_config = ConfigDict(extra="forbid", strict=True)
    text: str = Field(
        min_length=1,
        max_length=MAX_QUERY_CHARS,
        description="what the place looks like; not blank",
        json_schema_extra={"pattern": NOT_BLANK},
    )

    @field_validator("text")
    @classmethod
    def _not_blank(cls, text: str) -> str:
        if not _NOT_BLANK.search(text):
            raise ValueError("the text is blank: describe the place in a few words")
        return text


class _Counts(Query):
    """A request with counts: JSON Schema's integer includes 12.0, so an integral float is one."""

    @field_validator("*", mode="before")
    @classmethod
    def _integral_floats(cls, value: Any, info: Any) -> Any:
        field = cls.model_fields[info.field_name]
        if field.annotation in (int, "int") and isinstance(value, float) and value.is_integer():
            return int(value)
        return value


Lon = Annotated[float, Field(ge=-180, le=180, strict=True)]
Lat = Annotated[float, Field(ge=-90, le=90, strict=True)]
# A JSON array is a tuple: only the position's shape is lax, its numbers stay strict.
Position = Annotated[tuple[Lon, Lat], Field(strict=False)]
Ring = Annotated[list[Position], Field(min_length=4, description="[lon, lat] positions, closed")]
Rings = Annotated[list[Ring], Field(min_length=1, description="the outer ring, then any holes")]


class PolygonArea(BaseModel):
    """A GeoJSON Polygon (RFC 7946): the area its rings enclose."""

    model_config = ConfigDict(extra="forbid", strict=True)
    type: Literal["Polygon"]
    coordinates: Rings


class MultiPolygonArea(BaseModel):
    """A GeoJSON MultiPolygon: one that crosses the antimeridian comes split at it (RFC 7946, 3.1.9)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    type: Literal["MultiPolygon"]
    coordinates: Annotated[list[Rings], Field(min_length=1)]


class Near(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    lat: Lat
    lon: Lon
    radius_km: float = Field(gt=0, le=MAX_RADIUS_KM, description="great-circle radius, km")


def _rerank_rule(schema: dict[str, Any]) -> None:
    # The cross-field rule in the schema itself, so that clients (and schemathesis) know it.
    schema["if"] = {"properties": {"rerank": {"const": True}}, "required": ["rerank"]}
    schema["then"] = {"properties": {"k": {"maximum": MAX_JUDGED}}}


class SearchRequest(_Counts):
    model_config = ConfigDict(json_schema_extra=_rerank_rule)
    k: int = Field(10, ge=1, le=MAX_K, description=f"how many tiles; at most {MAX_JUDGED} with rerank")
    rerank: bool = Field(
        False, description=f"re-order the top k (k <= {MAX_JUDGED}) by the generator's judgement"
    )
    format: Literal["json", "geojson"] = Field(
        "json", description="json (default), or geojson: an RFC 7946 FeatureCollection of the footprints"
    )
    within: PolygonArea | MultiPolygonArea | None = Field(
        None,
        discriminator="type",
        description="only tiles whose centre lies in this area (an unclosed ring is closed, a "
        "self-crossing one repaired)",
    )
    near: Near | None = Field(None, description="only tiles within radius_km of this point")

    def region(self) -> Region | None:
        """The tiles this request may return: in `within`, and near `near` (both, when both given)."""
        regions = []
        if self.within is not None:
            regions.append(Region.from_geojson(self.within.model_dump(mode="json"), "within"))
        if self.near is not None:
            regions.append(Region.near(self.near.lat, self.near.lon, self.near.radius_km))
        return regions[0] & regions[1] if len(regions) == 2 else (regions[0] if regions else None)

    @model_validator(mode="after")
    def _rerank_bound(self) -> SearchRequest:
        if self.rerank and self.k > MAX_JUDGED:
            raise ValueError(
                f"with rerank, k is at most {MAX_JUDGED}: each tile costs a pass of the full model"
            )
        return self


class ExplainRequest(_Counts):
    top: int = Field(5, ge=1, le=20, description="how many top tiles to explain")
    rerank: bool = Field(False, description="order them by the generator's judgement")
    max_new_tokens: int = Field(48, ge=1, le=256, description="length of each explanation")


class HeatmapRequest(_Counts):
    cells: int = Field(2500, ge=1, le=MAX_HEAT_CELLS, description="at most this many cells")


# -- responses: documented, so that the schema is the contract the server keeps --------------
class Result(BaseModel):
    rank: int
    score: float = Field(description="cosine similarity of the query and the tile")
    key: str
    lat: float | None
    lon: float | None
    group: str
    footprint: list[list[float]] | None = Field(
        description="the tile's WGS84 outline: a closed, counter-clockwise ring of [lon, lat]"
    )
    tile_url: str
    retrieval_rank: int | None = Field(None, description="with rerank or explain: the rank before")
    judgement: float | None = Field(None, description="with rerank or explain: log P(Yes) - log P(No)")
    explanation: str | None = Field(None, description="with explain: the generator's words")


class SearchResponse(BaseModel):
    query: str
    k: int
    rerank: bool
    took_ms: float
    results: list[Result]


class ExplainResponse(BaseModel):
    query: str
    top: int
    rerank: bool
    took_ms: float
    results: list[Result]


class Geometry(BaseModel):
    # A footprint across the antimeridian is a MultiPolygon cut at 180 degrees (RFC 7946 3.1.9).
    type: Literal["Polygon", "MultiPolygon", "Point"]
    coordinates: list[list[list[list[float]]]] | list[list[list[float]]] | list[float]


class Feature(BaseModel):
    type: Literal["Feature"]
    id: str
    geometry: Geometry | None
    properties: dict[str, Any]


class FeatureCollection(BaseModel):
    """RFC 7946. Foreign members say which query it answers."""

    type: Literal["FeatureCollection"]
    query: str
    k: int
    rerank: bool
    took_ms: float
    bbox: list[float] | None = Field(None, min_length=4, max_length=4)
    features: list[Feature]


class HeatCell(BaseModel):
    south: float
    west: float
    north: float
    east: float
    score: float = Field(description="the best score of the tiles in the cell")
    tiles: int
    footprint: list[list[float]] | None = Field(
        None, description="a cell of one tile: the tile's outline, a closed ring of [lon, lat]; else null"
    )


class HeatmapResponse(BaseModel):
    query: str
    tiles: int = Field(description="gallery tiles with coordinates, all scored")
    min: float | None
    max: float | None
    cells: list[HeatCell]


class Health(BaseModel):
    status: Literal["ok"]
    tiles: int
    model: str
    fingerprint: str
    index: str
    searches: int


class Problem(BaseModel):
    detail: str | list[dict[str, Any]]


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    what = {
        400: "the request cannot be answered (the message says why)",
        401: "the server needs its bearer token (Authorization: Bearer TOKEN), and this is not it",
        404: "no such tile in this index",
        413: "the request body is larger than the server's limit",
        422: "the body is not valid: malformed JSON, a wrong type, a value out of range, an unknown field",
    }
    return {code: {"model": Problem, "description": what[code]} for code in codes}


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


def tile_url(key: str) -> str:
    return "/tiles/" + urllib.parse.quote(key)


def _rows(items: list[Any]) -> list[dict[str, Any]]:
    return [row | {"tile_url": tile_url(row["key"])} for row in (item.to_dict() for item in items)]


CLIENT_GONE = 499  # nginx's status for a request whose client closed the connection first


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


def create_app(index: SearchIndex, max_body_bytes: int = MAX_BODY_BYTES, token: str | None = None) -> FastAPI:
    """The app serving `index`; its query batcher runs while the app does. With `token`, every
    request for data must carry it as a bearer token (see `auth`)."""
    state: dict[str, Any] = {"searches": 0}
    generator_turn = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncGenerator[None]:
        state["batcher"] = QueryBatcher(index)
        try:
            yield
        finally:
            state.pop("batcher").close()

    app = FastAPI(
        title="geoloc search",
        summary="Describe a place in words; get the satellite tiles (and coordinates) that match.",
        lifespan=lifespan,
        max_body_size=max_body_bytes,
    )
    model = index.manifest["model"]

    if token is not None:

        @app.middleware("http")
        async def _bearer(request: Request, call_next: Any) -> Any:
            if auth.is_open(request.url.path) or auth.authorised(request.headers.get("authorization"), token):
                return await call_next(request)
            return JSONResponse(
                status_code=401,
                content={"detail": "this server needs its bearer token: Authorization: Bearer TOKEN"},
                headers={"WWW-Authenticate": "Bearer"},
            )

    @app.exception_handler(GeolocError)
    async def _user_error(request: Request, error: GeolocError) -> JSONResponse:
        return JSONResponse(status_code=400, content={"detail": str(error)})

    @app.get("/health", response_model=Health)
    async def health() -> dict[str, Any]:
        """Liveness, what is served, and how many searches have been answered."""
        return {
            "status": "ok",
            "tiles": len(index),
            "model": model["id"],
            "fingerprint": model["fingerprint"],
            "index": index.manifest["index"]["kind"],
            "searches": state["searches"],
        }

    search_responses: dict[int | str, dict[str, Any]] = {
        200: {
            "description": "the ranked tiles; with format geojson, an RFC 7946 FeatureCollection",
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/SearchResponse"}},
                GEOJSON_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/FeatureCollection"}},
            },
        },
        **_errors(400, 413, 422),
    }

    @app.post("/search", response_model=None, responses=search_responses)
    async def search(request: SearchRequest, client: Request) -> JSONResponse:
        """The top k tiles for a description, best first."""
        start = time.perf_counter()
        results: list[Hit] | list[Any]
        region = request.region()
        if request.rerank:
            judge = functools.partial(search_and_judge, index, request.text, request.k, True, region=region)
            results = await _judge_in_turn(generator_turn, client, judge)
        else:
            results = await asyncio.wrap_future(state["batcher"].submit(request.text, request.k, region))
        state["searches"] += 1
        answer = {
            "query": request.text,
            "k": request.k,
            "rerank": request.rerank,
            "took_ms": round(1000 * (time.perf_counter() - start), 2),
        }
        if request.format == "geojson":
            collection = feature_collection(_rows(results), **answer)
            return JSONResponse(collection, media_type=GEOJSON_MEDIA_TYPE)
        return JSONResponse(answer | {"results": _rows(results)})

    @app.post("/explain", response_model=ExplainResponse, responses=_errors(400, 413, 422))
    async def explain(request: ExplainRequest, client: Request) -> dict[str, Any]:
        """The generator's judgement and explanation of each top tile (retrieval adapter off)."""
        start = time.perf_counter()
        judge = functools.partial(
            search_and_judge, index, request.text, request.top, request.rerank, True, request.max_new_tokens
        )
        judged = await _judge_in_turn(generator_turn, client, judge)
        return {
            "query": request.text,
            "top": request.top,
            "rerank": request.rerank,
            "took_ms": round(1000 * (time.perf_counter() - start), 2),
            "results": _rows(judged),
        }

    @app.post("/heatmap", response_model=HeatmapResponse, responses=_errors(400, 413, 422))
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

    tile_content = {
        media: {"schema": {"type": "string", "format": "binary"}} for media in set(IMAGE_TYPES.values())
    }

    @app.get(
        "/tiles/{key:path}",
        response_class=FileResponse,
        responses={200: {"description": "the tile's image", "content": tile_content}, **_errors(404)},
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

    def openapi() -> dict[str, Any]:
        # FastAPI documents response models it serialises; the GeoJSON answer is documented here.
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

    app.openapi = openapi
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
