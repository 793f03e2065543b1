"""The HTTP API and web page of a search index (FastAPI).

    POST /search   {"text": "...", "k": 10, "rerank": false}  -> ranked tiles with score, key, lat, lon
    POST /explain  {"text": "...", "top": 5, "rerank": false}  -> the generator's verdict on each top tile
    GET  /tiles/{key}  the image of one of the index's own tiles
    GET  /health       status, tile count, model
    GET  /             the web page (search box, thumbnails, map); /docs: the OpenAPI docs

Input rules: a query is 1..MAX_QUERY_CHARS characters and not blank, k is 1..MAX_K, unknown
fields and malformed JSON are refused with 422 and the reason, request bodies are capped at
`max_body_bytes` (413), and /tiles serves only files the index lists.
"""

from __future__ import annotations

import asyncio
import contextlib
import mimetypes
import time
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from geoloc.errors import GeolocError
from geoloc.index.explain import MAX_JUDGED, search_and_judge
from geoloc.index.search import MAX_K, MAX_QUERY_CHARS, Hit, SearchIndex
from geoloc.serve.batcher import QueryBatcher

STATIC = Path(__file__).parent / "static"
MAX_BODY_BYTES = 16 * 1024  # a query is at most MAX_QUERY_CHARS characters: 4 bytes each at worst, plus JSON
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff"}


class Query(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(min_length=1, max_length=MAX_QUERY_CHARS, description="what the place looks like")

    @field_validator("text")
    @classmethod
    def _not_blank(cls, text: str) -> str:
        if not text.strip():
            raise ValueError("the text is blank: describe the place in a few words")
        return text


class SearchRequest(Query):
    k: int = Field(10, ge=1, le=MAX_K, description="how many tiles")
    rerank: bool = Field(
        False, description=f"re-order the top k (k <= {MAX_JUDGED}) by the generator's judgement"
    )

    @model_validator(mode="after")
    def _rerank_bound(self) -> SearchRequest:
        if self.rerank and self.k > MAX_JUDGED:
            raise ValueError(
                f"with rerank, k is at most {MAX_JUDGED}: each tile costs a pass of the full model"
            )
        return self


class ExplainRequest(Query):
    top: int = Field(5, ge=1, le=20, description="how many top tiles to explain")
    rerank: bool = Field(False, description="order them by the generator's judgement")
    max_new_tokens: int = Field(48, ge=1, le=256, description="length of each explanation")


def tile_url(key: str) -> str:
    return "/tiles/" + urllib.parse.quote(key)


def _rows(items: list[Any]) -> list[dict[str, Any]]:
    return [row | {"tile_url": tile_url(row["key"])} for row in (item.to_dict() for item in items)]


def create_app(index: SearchIndex, max_body_bytes: int = MAX_BODY_BYTES) -> FastAPI:
    """The app serving `index`; its query batcher runs while the app does."""
    state: dict[str, Any] = {"searches": 0}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
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

    @app.exception_handler(GeolocError)
    async def _user_error(request: Request, error: GeolocError) -> JSONResponse:
        return JSONResponse(status_code=400, content={"detail": str(error)})

    @app.get("/health")
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

    @app.post("/search")
    async def search(request: SearchRequest) -> dict[str, Any]:
        """The top k tiles for a description, best first."""
        start = time.perf_counter()
        results: list[Hit] | list[Any]
        if request.rerank:
            results = await run_in_threadpool(search_and_judge, index, request.text, request.k, True)
        else:
            results = await asyncio.wrap_future(state["batcher"].submit(request.text, request.k))
        state["searches"] += 1
        return {
            "query": request.text,
            "k": request.k,
            "rerank": request.rerank,
            "took_ms": round(1000 * (time.perf_counter() - start), 2),
            "results": _rows(results),
        }

    @app.post("/explain")
    async def explain(request: ExplainRequest) -> dict[str, Any]:
        """The generator's judgement and explanation of each top tile (retrieval adapter off)."""
        start = time.perf_counter()
        judged = await run_in_threadpool(
            search_and_judge, index, request.text, request.top, request.rerank, True, request.max_new_tokens
        )
        return {
            "query": request.text,
            "top": request.top,
            "rerank": request.rerank,
            "took_ms": round(1000 * (time.perf_counter() - start), 2),
            "results": _rows(judged),
        }

    @app.get("/tiles/{key:path}")
    async def tile(key: str) -> FileResponse:
        """The image of the tile `key`; only the index's own tiles are served."""
        path = index.image_path(key)
        if path is None or path.suffix.lower() not in IMAGE_SUFFIXES:
            raise HTTPException(status_code=404, detail="no such tile in this index")
        media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return FileResponse(path, media_type=media_type, headers={"Cache-Control": "max-age=3600"})

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
