"""An index's tiles and embeddings as GeoParquet 1.1, described by a STAC Collection; and back.

    geoloc index export INDEX --out tiles.parquet     -> tiles.parquet and tiles.collection.json
    geoloc index build MODEL --from tiles.parquet --out INDEX     (no encoding; the model is checked)

One row per tile: `geometry` (WKB: the footprint polygon, else the centre point, else null),
`bbox` (the GeoParquet 1.1 covering column: a struct of xmin, ymin, xmax, ymax), `key`, `image`,
`lat`, `lon`, `group`, `embedding` (a fixed-size list of float32, the unit vector) and `model`
(the model's fingerprint). The file's metadata carries `geo` (GeoParquet 1.1: WKB, the covering;
no `crs`, which means OGC:CRS84, longitude / latitude on WGS84) and `geoloc` (the index
manifest's model record, the galleries, the metric), so the file says exactly which model made
its vectors, as an index manifest does.
Rows are written a row group at a time: a memory-mapped gallery is never read whole.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import shapely
import shapely.geometry

from geoloc.atomic import atomic_path, write_json
from geoloc.errors import GeolocError
from geoloc.geodata.footprint import geometry as footprint_geometry
from geoloc.geodata.footprint import parse_footprint
from geoloc.index.store import Tiles, read_index

GEOPARQUET_VERSION = "1.1.0"
STAC_VERSION = "1.1.0"
MLM_EXTENSION = "https://stac-extensions.github.io/mlm/v1.4.0/schema.json"
# The embeddings extension (geo-embeddings/embeddings-stac-specification, v0.0.1, a proposal): a
# Collection must have emb:type, emb:dimensions, data_type and links of rel emb:model and
# emb:source-data; it allows no other emb: fields (geoloc's own go under geoloc:).
EMB_EXTENSION = "https://stac-extensions.github.io/embeddings/v0.0.1/schema.json"
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
ROW_GROUP = 50_000
_BBOX = pa.struct([(name, pa.float64()) for name in ("xmin", "ymin", "xmax", "ymax")])


def collection_path(parquet: str | Path) -> Path:
    """Where the STAC Collection of `parquet` lies: beside it, `<stem>.collection.json`."""
    parquet = Path(parquet)
    return parquet.with_name(f"{parquet.stem}.collection.json")


def _geometries(tiles: Tiles, rows: range) -> list[Any]:
    """Each tile's shapely geometry: its footprint (RFC 7946: a Polygon, or a MultiPolygon cut at
    the antimeridian), else its centre, else None."""
    out: list[Any] = []
    for i in rows:
        ring, lat, lon = tiles.ring(i), tiles.lat[i], tiles.lon[i]
        if ring:
            out.append(shapely.geometry.shape(footprint_geometry(ring)))
        elif lat is not None and lon is not None:
            out.append(shapely.Point(lon, lat))
        else:
            out.append(None)
    return out


def _schema(dim: int, geo: dict[str, Any], geoloc: dict[str, Any]) -> pa.Schema:
    fields = [
        ("geometry", pa.binary()),
        ("bbox", _BBOX),
        ("key", pa.string()),
        ("image", pa.string()),
        ("lat", pa.float64()),
        ("lon", pa.float64()),
        ("group", pa.string()),
        ("embedding", pa.list_(pa.float32(), dim)),
        ("model", pa.string()),
    ]
    metadata = {b"geo": json.dumps(geo).encode(), b"geoloc": json.dumps(geoloc).encode()}
    return pa.schema(fields, metadata=metadata)


def _batch(
    schema: pa.Schema, vectors: np.ndarray, tiles: Tiles, rows: range, fingerprint: str
) -> pa.RecordBatch:
    geometries = _geometries(tiles, rows)
    boxes = [
        None if g is None else dict(zip(("xmin", "ymin", "xmax", "ymax"), g.bounds, strict=True))
        for g in geometries
    ]
    flat = np.ascontiguousarray(vectors[rows.start : rows.stop], dtype=np.float32).reshape(-1)
    columns = [
        pa.array([None if g is None else shapely.to_wkb(g) for g in geometries], pa.binary()),
        pa.array(boxes, _BBOX),
        pa.array(tiles.key[rows.start : rows.stop], pa.string()),
        pa.array(tiles.image[rows.start : rows.stop], pa.string()),
        pa.array(tiles.lat[rows.start : rows.stop], pa.float64()),
        pa.array(tiles.lon[rows.start : rows.stop], pa.float64()),
        pa.array(tiles.group[rows.start : rows.stop], pa.string()),
        pa.FixedSizeListArray.from_arrays(pa.array(flat), vectors.shape[1]),
        pa.array([fingerprint] * len(rows), pa.string()),
    ]
    return pa.RecordBatch.from_arrays(columns, schema=schema)


def _geo_metadata(tiles: Tiles) -> tuple[dict[str, Any], list[float] | None]:
    kinds, west, south, east, north = set(), np.inf, np.inf, -np.inf, -np.inf
    for start in range(0, len(tiles), ROW_GROUP):
        for geometry in _geometries(tiles, range(start, min(start + ROW_GROUP, len(tiles)))):
            if geometry is None:
                continue
            kinds.add(geometry.geom_type)
            x0, y0, x1, y1 = geometry.bounds
            west, south, east, north = min(west, x0), min(south, y0), max(east, x1), max(north, y1)
    bbox = [west, south, east, north] if kinds else None
    column: dict[str, Any] = {
        "encoding": "WKB",
        "geometry_types": sorted(kinds),
        "covering": {"bbox": {name: ["bbox", name] for name in ("xmin", "ymin", "xmax", "ymax")}},
    }
    if bbox:
        column["bbox"] = bbox
    return {
        "version": GEOPARQUET_VERSION,
        "primary_column": "geometry",
        "columns": {"geometry": column},
    }, bbox


def export_geoparquet(index_path: str | Path, out: str | Path) -> Path:
    """Write the index at `index_path` as GeoParquet `out` and its STAC Collection; return the latter."""
    stored = read_index(index_path)
    out = Path(out)
    model = stored.manifest["model"]
    geo, bbox = _geo_metadata(stored.tiles)
    geoloc = {
        "model": model,
        "metric": stored.manifest.get("metric", "inner_product"),
        "dimension": stored.manifest["dimension"],
        "galleries": stored.manifest["galleries"],
    }
    schema = _schema(stored.manifest["dimension"], geo, geoloc)
    with atomic_path(out) as tmp:
        with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
            for start in range(0, len(stored.tiles), ROW_GROUP):
                rows = range(start, min(start + ROW_GROUP, len(stored.tiles)))
                writer.write_batch(_batch(schema, stored.vectors, stored.tiles, rows, model["fingerprint"]))
    collection = stac_collection(out, stored.manifest, bbox)
    write_json(collection_path(out), collection)
    return collection_path(out)


def _model_link(model: dict[str, Any]) -> dict[str, Any]:
    """The `emb:model` link: the Hub page of a Hugging Face id, the folder of a local model (as
    a file URI), else the name as recorded (a geoloc preset)."""
    model_id = str(model["id"])
    if Path(model_id).is_absolute():
        href = Path(model_id).as_uri()
    elif _HUB_ID.fullmatch(model_id) and not Path(model_id).exists():
        href = f"https://huggingface.co/{model_id}"
    else:
        href = model_id
    return {
        "rel": "emb:model",
        "href": href,
        "title": f"geoloc model {model_id} (fingerprint {model['fingerprint']})",
    }


def _source_links(parquet: Path, galleries: list[str]) -> list[dict[str, Any]]:
    """`emb:source-data` links: the gallery manifests whose tiles were embedded (or, with none
    recorded, the file itself, which names each tile's image)."""
    if not galleries:
        return [{"rel": "emb:source-data", "href": f"./{parquet.name}", "title": "the tiles (image column)"}]
    return [
        {"rel": "emb:source-data", "href": Path(gallery).resolve().as_uri(), "title": "gallery manifest"}
        for gallery in galleries
    ]


def stac_collection(parquet: Path, manifest: dict[str, Any], bbox: list[float] | None) -> dict[str, Any]:
    """A STAC Collection of the embeddings in `parquet`: the vectors (the embeddings extension's
    `emb:` fields and links), the model (ML-model extension, `mlm:`), geoloc's own `geoloc:`
    fields (metric, normalisation, column, the model record)."""
    model, dim = manifest["model"], manifest["dimension"]
    name = f"geoloc-{model['fingerprint'][:12]}"
    return {
        "type": "Collection",
        "stac_version": STAC_VERSION,
        "stac_extensions": [EMB_EXTENSION, MLM_EXTENSION],
        "id": f"{parquet.stem}",
        "title": f"Tile embeddings of {manifest['count']} tiles",
        "description": (
            f"Unit-length {dim}-dimensional embeddings of satellite tiles made by the geoloc model "
            f"{model['id']} (fingerprint {model['fingerprint']}); inner product is cosine similarity. "
            "Queries must be encoded by the same model."
        ),
        "license": "other",
        "extent": {
            "spatial": {"bbox": [bbox or [-180.0, -90.0, 180.0, 90.0]]},
            "temporal": {"interval": [[manifest.get("created"), None]]},
        },
        "emb:type": "chip",  # one vector per tile
        "emb:dimensions": dim,
        "data_type": "float32",
        "emb:fit_for_use": ["retrieval"],
        "geoloc:metric": "cosine",
        "geoloc:normalized": True,
        "geoloc:column": "embedding",
        "mlm:name": name,
        "mlm:architecture": model.get("family") or "unknown",
        "mlm:tasks": ["similarity-search"],
        "mlm:framework": "pytorch",
        "mlm:input": [
            {
                "name": "tile",
                "input": {
                    "shape": [-1, 3, -1, -1],
                    "dim_order": ["batch", "channel", "height", "width"],
                    "data_type": "float32",
                },
            }
        ],
        "mlm:output": [
            {
                "name": "embedding",
                "tasks": ["similarity-search"],
                "result": {"shape": [-1, dim], "dim_order": ["batch", "embedding"], "data_type": "float32"},
            }
        ],
        "geoloc:model": model,
        "assets": {
            "embeddings": {
                "href": f"./{parquet.name}",
                "title": "GeoParquet 1.1: one row per tile, with its embedding",
                "type": "application/vnd.apache.parquet",
                "roles": ["data"],
            }
        },
        "links": [_model_link(model), *_source_links(parquet, manifest.get("galleries", []))],
    }


def read_geoparquet(path: str | Path) -> tuple[np.ndarray, Tiles, dict[str, Any]]:
    """(vectors, tiles, the file's `geoloc` metadata: model, galleries, ...) of an exported file."""
    path = Path(path)
    try:
        file = pq.ParquetFile(path)
        metadata = file.schema_arrow.metadata or {}
        if b"geoloc" not in metadata:
            raise GeolocError(f"{path}: no geoloc metadata: not written by `geoloc index export`")
        info = json.loads(metadata[b"geoloc"])
        table = file.read(columns=["geometry", "key", "image", "lat", "lon", "group", "embedding"])
    except (OSError, ValueError, pa.ArrowException) as error:
        raise GeolocError(f"{path}: not a readable GeoParquet file ({error})") from error
    embedding = table.column("embedding").combine_chunks()
    if not pa.types.is_fixed_size_list(embedding.type) or embedding.type.list_size != info.get("dimension"):
        raise GeolocError(
            f"{path}: the embedding column is not a fixed-size list of {info.get('dimension')} floats"
        )
    if embedding.null_count:
        raise GeolocError(f"{path}: row {embedding.is_null().index(True).as_py()} has no embedding")
    vectors = embedding.flatten().to_numpy().astype(np.float32).reshape(len(table), -1)
    bad = np.flatnonzero(~np.isfinite(vectors).all(axis=1))
    if len(bad):
        raise GeolocError(f"{path}: row {int(bad[0])} has a non-finite embedding")
    keys = table.column("key").to_pylist()
    if len(set(keys)) != len(keys) or None in keys:
        raise GeolocError(f"{path}: tile keys must be present and unique")
    footprints = []
    for row, wkb in enumerate(table.column("geometry").to_pylist()):
        geometry = None if wkb is None else shapely.from_wkb(wkb)
        if geometry is None or geometry.geom_type not in ("Polygon", "MultiPolygon"):
            footprints.append(None)  # a point: the tile's centre, in lat / lon
            continue
        try:
            footprints.append(parse_footprint(json.loads(shapely.to_geojson(geometry))))
        except ValueError as error:
            raise GeolocError(f"{path}: row {row}: not a tile's footprint ({error})") from error
    tiles = Tiles(keys, *(table.column(n).to_pylist() for n in ("image", "lat", "lon", "group")), footprints)
    return vectors, tiles, info
