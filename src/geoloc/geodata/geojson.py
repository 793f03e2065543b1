"""Search results as an RFC 7946 GeoJSON FeatureCollection, which QGIS and geojson.io open as is.

Each result is a Feature: its geometry is the tile's footprint (a Polygon, [lon, lat] order,
closed, counter-clockwise) or, for a tile known only by its centre, a Point; a tile with no
coordinates at all has a null geometry, as RFC 7946 allows. Its properties are the result's
fields (rank, score, key, group, and judgement / explanation when asked) and `centre`,
[lon, lat]. The collection says which query it answers in foreign members (`query`, `k`).
"""

from __future__ import annotations

from typing import Any

from geoloc.geodata.footprint import bounds, polygon

MEDIA_TYPE = "application/geo+json"  # RFC 7946, section 12


def feature(result: dict[str, Any]) -> dict[str, Any]:
    """The Feature of one result (a `Hit.to_dict()` or `Judged.to_dict()`, perhaps with tile_url)."""
    lat, lon, ring = result.get("lat"), result.get("lon"), result.get("footprint")
    centre = [lon, lat] if lat is not None and lon is not None else None
    if ring:
        geometry: dict[str, Any] | None = polygon(ring)
    elif centre is not None:
        geometry = {"type": "Point", "coordinates": centre}
    else:
        geometry = None
    properties = {name: value for name, value in result.items() if name != "footprint"}
    return {
        "type": "Feature",
        "id": result["key"],
        "geometry": geometry,
        "properties": properties | {"centre": centre},
    }


def feature_collection(results: list[dict[str, Any]], **members: Any) -> dict[str, Any]:
    """The FeatureCollection of ranked results, best first; `members` are added at its top level."""
    features = [feature(result) for result in results]
    collection: dict[str, Any] = {"type": "FeatureCollection", **members, "features": features}
    rings = [
        f["geometry"]["coordinates"][0]
        for f in features
        if f["geometry"] and f["geometry"]["type"] == "Polygon"
    ]
    points = [
        f["geometry"]["coordinates"] for f in features if f["geometry"] and f["geometry"]["type"] == "Point"
    ]
    positions = [p for ring in rings for p in ring] + points
    if positions:
        collection["bbox"] = list(bounds(positions))
    return collection
