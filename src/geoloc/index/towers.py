"""Query towers of indexes' models, kept in the cache, for servers that start in seconds.

A served index's queries can be encoded by its model's exported query side
(`geoloc.encoder.query_tower`) instead of the model loaded through transformers. The first
`geoloc serve` of a model loads it as before, checks it against the index and exports its query
side to `$GEOLOC_CACHE/query-towers/KEY` (about 80 s for SmolVLM-256M on this 2-core machine);
every later start opens that in under a second.

KEY is `identity.weights_key`: it changes with any of the model's files (path, size, times,
inode), the dtype, geoloc's source and the libraries' versions, so a tower is only ever used for
the files it was exported from. The tower also records the fingerprint of the model it came
from, which must be the index's. Models whose weights are not files alone (presets) have no key
and no tower. A tower that cannot be read is ignored: the model is loaded and exported again.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from geoloc.cache_dirs import cache_dir
from geoloc.errors import GeolocError
from geoloc.index.identity import weights_key

if TYPE_CHECKING:
    from geoloc.encoder.base import Encoder
    from geoloc.encoder.query_tower import QueryTower


def tower_key(record: dict[str, Any], model: str | None, device: str) -> str | None:
    """The cache key of the index model's query tower, or None where it can have none: another
    device than the CPU, weights other than float32, or weights that are not files alone."""
    if device != "cpu" or record.get("dtype") != "float32":
        return None
    return weights_key(model or record["id"], record["dtype"])


def tower_folder(key: str) -> Path:
    return cache_dir("query-towers") / key


def cached_tower(key: str | None, record: dict[str, Any]) -> QueryTower | None:
    """The query tower cached under `key` (`tower_key`, the model's files as they are now), when
    it was made from the model the index names (`record`); else None."""
    if key is None or not tower_folder(key).is_dir():
        return None
    from geoloc.encoder.query_tower import QueryTower

    try:
        tower = QueryTower.load(tower_folder(key))
    except GeolocError:
        return None  # damaged: the model is loaded, and its tower exported again
    if tower.fingerprint != record["fingerprint"]:
        return None
    return tower


def export_tower(encoder: Encoder, record: dict[str, Any], key: str, model: str | None) -> str | None:
    """Export `encoder`'s query side under `key`, the tower key taken before `encoder` was loaded.

    Returns None when it was, else why not. Nothing is kept when the model's files changed
    meanwhile; an export that fails costs the next start its speed, nothing else.
    """
    from geoloc.encoder.query_tower import export_query_tower, exportable

    if not exportable(encoder):
        return "only a float32 MLLM encoder on the CPU has an exported query side"
    folder = tower_folder(key)
    try:
        export_query_tower(encoder, folder, fingerprint=record["fingerprint"])
    except Exception as error:  # the exporter's failures have many types; none may stop a server
        return f"the export failed ({type(error).__name__}: {error})"
    if weights_key(model or record["id"], record["dtype"]) != key:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)
        return "the model's files changed while it was exported"
    return None
