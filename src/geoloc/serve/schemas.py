"""The HTTP API's request and response models: the contract that the OpenAPI schema states.

Input rules: a query is 1..MAX_QUERY_CHARS characters and not blank, k is 1..MAX_K (at most
MAX_JUDGED with rerank), types are strict (no coercion), unknown fields are refused. Responses
are documented, so that the schema is the contract the server keeps.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from geoloc.index.explain import MAX_JUDGED
from geoloc.index.limits import MAX_K, MAX_QUERY_CHARS
from geoloc.index.region import MAX_RADIUS_KM, Region

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


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    what = {
        400: "the request cannot be answered (the message says why)",
        401: "the server needs its bearer token (Authorization: Bearer TOKEN), and this is not it",
        404: "no such tile in this index",
        413: "the request body is larger than the server's limit",
        422: "the body is not valid: malformed JSON, a wrong type, a value out of range, an unknown field",
    }
    return {code: {"model": Problem, "description": what[code]} for code in codes}
