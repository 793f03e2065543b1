"""Search results as an RFC 7946 GeoJSON FeatureCollection, which QGIS and geojson.io open as is.

Each result is a Feature whose properties are the result's fields (rank, score, key, lat, lon,
group, and judgement / explanation when asked), all flat scalars (an array property makes GPKG
warn and Shapefile refuse the field). A collection holds one geometry type, as GIS formats with
one type per layer (Shapefile, GeoPackage) need:

- when any result has a footprint, every geometry is a Polygon, or every one a MultiPolygon when
  a footprint crosses the antimeridian (cut in two there, RFC 7946 section 3.1.9); a result
  without a footprint gets a null geometry, its centre still in its `lon` / `lat` properties;
- otherwise every geometry is a Point (null for a tile with no coordinates).

The collection's `bbox` has west > east when it crosses the antimeridian (section 5.2). It says
which query it answers in foreign members (`query`, `k`).
"""

from __future__ import annotations

from typing import Any

from geoloc.geodata.footprint import bounds, geometry, lon_extent

MEDIA_TYPE = "application/geo+json"  # RFC 7946, section 12


def _geometry(result: dict[str, Any], shapes: bool) -> dict[str, Any] | None:
    ring, lat, lon = result.get("footprint"), result.get("lat"), result.get("lon")
    if shapes:
        return geometry(ring) if ring else None
    return {"type": "Point", "coordinates": [lon, lat]} if lat is not None and lon is not None else None


def feature(result: dict[str, Any], shapes: bool | None = None) -> dict[str, Any]:
    """The Feature of one result (a `Hit.to_dict()` or `Judged.to_dict()`, perhaps with tile_url).

    `shapes`: whether the collection draws footprints (True) or centres (False); None: this
    result's footprint when it has one.
    """
    properties = {name: value for name, value in result.items() if name != "footprint"}
    return {
        "type": "Feature",
        "id": result["key"],
        "geometry": _geometry(result, bool(result.get("footprint")) if shapes is None else shapes),
        "properties": properties,
    }


def _as_multipolygon(shape: dict[str, Any]) -> dict[str, Any]:
    if shape["type"] == "Polygon":
        return {"type": "MultiPolygon", "coordinates": [shape["coordinates"]]}
    return shape


def feature_collection(results: list[dict[str, Any]], **members: Any) -> dict[str, Any]:
    """The FeatureCollection of ranked results, best first; `members` are added at its top level."""
    shapes = any(result.get("footprint") for result in results)
    features = [feature(result, shapes) for result in results]
    if any(f["geometry"] and f["geometry"]["type"] == "MultiPolygon" for f in features):
        for f in features:
            if f["geometry"]:
                f["geometry"] = _as_multipolygon(f["geometry"])
    collection: dict[str, Any] = {"type": "FeatureCollection", **members, "features": features}
    boxes = []  # (west, south, east, north) with continuous longitudes
    for result in results:
        if shapes and result.get("footprint"):
            boxes.append(bounds(result["footprint"]))
        elif not shapes and result.get("lat") is not None and result.get("lon") is not None:
            boxes.append((result["lon"], result["lat"], result["lon"], result["lat"]))
    if boxes:
        west, east = lon_extent((box[0], box[2]) for box in boxes)
        collection["bbox"] = [west, min(box[1] for box in boxes), east, max(box[3] for box in boxes)]
    return collection
